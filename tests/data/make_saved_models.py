"""Writes the saved-model fixtures that `tests/test_saved_before_frame.py` loads.

Ran once with the code from before the compressors moved into
`dgc_tf.compressors` (commit 62da8e5), one process per Keras flavour:

    python tests/data/make_saved_models.py keras3 tests/data
    TF_USE_LEGACY_KERAS=1 python tests/data/make_saved_models.py tf_keras tests/data

Each model is tiny (a 16x8 kernel is compressed with `min_compress_size=64`)
and trained 3 steps, so that the optimizer holds non-zero residuals,
momenta and counters. Next to each model, `<name>.npz` keeps what the saving
process saw (weights, the optimizer's variables in order, its config), for
the loading test to compare against.
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 16)).astype(np.float32)
    y = rng.integers(0, 4, size=32).astype(np.int32)
    return x, y


def record(path, model):
    optimizer = model.optimizer
    variables = optimizer.variables() if callable(optimizer.variables) else optimizer.variables
    config = {k: v for k, v in optimizer.get_config().items()
              if isinstance(v, (int, float, str, bool, type(None)))}
    np.savez(path + ".npz", config=json.dumps(config),
             **{f"weight_{i}": np.array(w) for i, w in enumerate(model.get_weights())},
             **{f"optimizer_{i}": np.array(v.numpy()) for i, v in enumerate(variables)})


def keras3(out):
    import keras

    import dgc_tf
    import dgc_tf.keras3
    import dgc_tf.vgc

    x, y = data()
    for name, optimizer in (
            ("dgc_keras3", dgc_tf.keras3.DGCSGD(0.1, momentum=0.9, compress_ratio=0.05,
                                                min_compress_size=64)),
            ("vgc_keras3", dgc_tf.vgc.VGCSGD(0.1, momentum=0.9, alpha=0.5,
                                             min_compress_size=64))):
        keras.utils.set_random_seed(1)
        inputs = keras.Input((16,))
        outputs = keras.layers.Dense(4)(keras.layers.Dense(8, activation="relu")(inputs))
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=optimizer, jit_compile=False,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        if name.startswith("vgc"):
            dgc_tf.vgc.use_micro_batch_step(model, num_groups=2)
        model.fit(x, y, batch_size=8, epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)
        path = os.path.join(out, name)
        model.save(path + ".keras")
        record(path, model)


def tf_keras(out):
    import tf_keras

    import dgc_tf
    import dgc_tf.tf_keras

    x, y = data()
    tf_keras.utils.set_random_seed(1)
    inputs = tf_keras.Input((16,))
    outputs = tf_keras.layers.Dense(4)(tf_keras.layers.Dense(8, activation="relu")(inputs))
    model = tf_keras.Model(inputs, outputs)
    model.compile(optimizer=dgc_tf.tf_keras.DGCSGD(0.1, momentum=0.9, compress_ratio=0.05,
                                                   min_compress_size=64),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=8, epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)
    path = os.path.join(out, "dgc_tf_keras")
    model.save(path + ".keras")
    # A TensorFlow checkpoint (what `ModelCheckpoint(save_weights_only=True)`
    # writes): the optimizer's variables by attribute name, not by order.
    model.save_weights(os.path.join(out, "dgc_tf_keras_ckpt", "ckpt"))
    record(path, model)


if __name__ == "__main__":
    {"keras3": keras3, "tf_keras": tf_keras}[sys.argv[1]](sys.argv[2])
