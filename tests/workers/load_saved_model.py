"""Loads a model saved by the code from before `dgc_tf.compressors` (tests/data) and checks it.

`python load_saved_model.py PATH` in a fresh process (TF_USE_LEGACY_KERAS=1
for tf_keras files): `import dgc_tf` alone must let Keras find the optimizer
by its registered name; the loaded weights, optimizer variables (in order)
and config must equal what the saving process recorded in `PATH`'s .npz; one
more training step must run. Exits non-zero (an AssertionError) otherwise.
"""

import json
import os
import sys

import numpy as np

import dgc_tf  # noqa: F401  (registers the optimizers; nothing else is imported)


def main(path):
    if os.environ.get("TF_USE_LEGACY_KERAS") == "1":
        import tf_keras as keras
    else:
        import keras
    if path.endswith(".keras"):
        stem = path[:-len(".keras")]
        model = keras.models.load_model(path)
    else:
        # A TensorFlow checkpoint (tf_keras `save_weights`) of the model saved as
        # `<stem>.keras`: restored into a new optimizer with the same config.
        stem = os.path.dirname(path)[:-len("_ckpt")]
        model = keras.models.load_model(stem + ".keras", compile=False)
        saved = keras.models.load_model(stem + ".keras").optimizer
        model.compile(optimizer=type(saved).from_config(saved.get_config()), loss=keras.losses.
                      SparseCategoricalCrossentropy(from_logits=True))
        model.load_weights(path)
    expected = np.load(stem + ".npz")
    optimizer = model.optimizer
    assert type(optimizer).__module__.startswith("dgc_tf.compressors."), type(optimizer)
    # A checkpoint restores slot variables when the optimizer creates them.
    optimizer.build(model.trainable_variables)
    variables = optimizer.variables() if callable(optimizer.variables) else optimizer.variables
    weights = model.get_weights()
    assert len(weights) == sum(k.startswith("weight_") for k in expected.files)
    for i, w in enumerate(weights):
        np.testing.assert_array_equal(w, expected[f"weight_{i}"], err_msg=f"weight {i}")
    assert len(variables) == sum(k.startswith("optimizer_") for k in expected.files), \
        [v.name for v in variables]
    for i, v in enumerate(variables):
        np.testing.assert_array_equal(np.array(v.numpy()), expected[f"optimizer_{i}"],
                                      err_msg=f"optimizer variable {i} ({v.name})")
    config = optimizer.get_config()
    for key, value in json.loads(str(expected["config"])).items():
        assert config[key] == value, (key, config[key], value)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 16)).astype(np.float32)
    y = rng.integers(0, 4, size=8).astype(np.int32)
    if "vgc" in os.path.basename(path):
        dgc_tf.vgc.use_micro_batch_step(model, num_groups=2)
    before = [np.array(w) for w in model.get_weights()]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(optimizer.iterations.numpy()) == int(expected["optimizer_0"]) + 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    print("loaded", path, type(optimizer).__name__, len(variables), "optimizer variables")


if __name__ == "__main__":
    main(sys.argv[1])
