"""Config, saving and checkpoint resume, on real Fashion-MNIST data (single replica)."""

import numpy as np
import pytest
import tensorflow as tf

from dgc_tf.data import fashion_mnist_arrays
from tests import harness

KWARGS = dict(learning_rate=0.05, momentum=0.8, nesterov=True, compress_ratio=0.01,
              sample_ratio=0.05, warmup_steps=4, momentum_masking=False, local_clipnorm=2.0,
              min_compress_size=512)


@pytest.fixture(scope="module")
def data():
    (x, y), _ = fashion_mnist_arrays(train_size=256)
    return x, y


def keras_module(flavour):
    if flavour == "keras3":
        import keras
        return keras
    import tf_keras
    return tf_keras


def small_model(flavour, seed=0):
    keras = keras_module(flavour)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10)])
    return model


def compile_model(model, flavour, **kwargs):
    keras = keras_module(flavour)
    extra = {"jit_compile": False} if flavour == "keras3" else {}
    model.compile(optimizer=harness.optimizer_class(flavour)(**dict(KWARGS, **kwargs)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **extra)


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_get_config_round_trip(flavour):
    cls = harness.optimizer_class(flavour)
    optimizer = cls(weight_decay=0.01, **KWARGS)
    config = optimizer.get_config()
    for key, value in KWARGS.items():
        assert config[key] == pytest.approx(value), key
    clone = cls.from_config(config)
    assert clone.get_config() == config
    assert clone.dgc_config == optimizer.dgc_config


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_checkpoint_resume_continues_bit_for_bit(flavour, tmp_path, data):
    x, y = data

    def fit(model, epochs):
        model.fit(x, y, batch_size=64, epochs=epochs, shuffle=False, verbose=0)

    model = small_model(flavour)
    compile_model(model, flavour)
    fit(model, 1)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(str(tmp_path / "ck"))
    fit(model, 1)

    resumed = small_model(flavour, seed=1)  # different initial weights: restore must overwrite
    compile_model(resumed, flavour)
    resumed.optimizer.build(resumed.trainable_variables)
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).restore(path) \
        .assert_existing_objects_matched()
    assert int(resumed.optimizer.iterations.numpy()) == 4
    fit(resumed, 1)

    for a, b in zip(model.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_model_save_and_load_keeps_optimizer_state(flavour, tmp_path, data):
    x, y = data
    keras = keras_module(flavour)
    model = small_model(flavour)
    compile_model(model, flavour)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.dgc_config == model.optimizer.dgc_config
    residual = model.optimizer._compressor_slots.at(0).residual
    loaded_residual = loaded.optimizer._compressor_slots.at(0).residual
    assert np.abs(residual.numpy()).sum() > 0
    np.testing.assert_array_equal(residual.numpy(), loaded_residual.numpy())


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_embedding_gradients_arrive_as_indexed_slices(flavour):
    keras = keras_module(flavour)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(300, 8),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    optimizer = harness.optimizer_class(flavour)(learning_rate=0.1, compress_ratio=0.01)
    tokens = tf.constant(np.random.default_rng(0).integers(0, 300, size=(16, 5)), tf.int32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(tokens)))
    grads = tape.gradient(loss, model.trainable_variables)
    assert isinstance(grads[0], tf.IndexedSlices)
    before = np.array(model.trainable_variables[0].numpy())
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    residual = optimizer._compressor_slots.at(0).residual.numpy()
    sent = before - model.trainable_variables[0].numpy()
    dense_grad = tf.convert_to_tensor(grads[0]).numpy()
    # momentum correction on the first step: u = g, v = g; lr * sent + residual = g
    np.testing.assert_allclose(sent / 0.1 + residual, dense_grad, rtol=1e-5, atol=1e-6)
    assert np.count_nonzero(sent) == 24  # ceil(0.01 * 2400)


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_compression_stats_reach_the_fit_history(flavour, data):
    import dgc_tf.callbacks

    x, y = data
    model = small_model(flavour)
    compile_model(model, flavour, warmup_steps=0, compress_ratio=0.001, min_compress_size=1024)
    callback = (dgc_tf.callbacks.KerasCompressionStats if flavour == "keras3"
                else dgc_tf.callbacks.TfKerasCompressionStats)()
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[callback])
    assert history.history["dgc_density"] == [0.001, 0.001]
    stats = model.optimizer.compression_stats()
    assert history.history["dgc_bytes_sent"][-1] == stats["last_bytes_sent"]
    # 784*32 kernel -> 26 entries (values + indices); dense: 32 + 320 + 10 floats; flag word.
    expected_bytes = 4 * (2 * 26 + 32 + 320 + 10 + 1)
    assert stats["last_bytes_sent"] == expected_bytes
    dense = 4 * (784 * 32 + 32 + 320 + 10)
    assert history.history["dgc_compression_ratio"][-1] == pytest.approx(dense / expected_bytes)


def test_compression_stats_per_step_in_tensorboard(tmp_path, data):
    import glob

    import keras
    from tensorflow.core.util import event_pb2

    import dgc_tf.callbacks

    x, y = data
    model = small_model("keras3")
    compile_model(model, "keras3", warmup_steps=0)
    log_dir = str(tmp_path / "logs")
    model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[
        dgc_tf.callbacks.KerasCompressionStats(log_dir), keras.callbacks.TensorBoard(log_dir)])
    steps = {}
    for path in glob.glob(f"{log_dir}/train/events*"):
        for record in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    assert sorted(steps["batch_dgc_compression_ratio"]) == list(range(1, 9))
    assert sorted(steps["epoch_dgc_bytes_sent"]) == [0, 1]
    assert "batch_dgc_density" in steps
