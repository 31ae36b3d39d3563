"""What a new user meets first, each checked the way the user meets it.

Saved models reload by name in a fresh process after `import dgc_tf`; an empty
GPU list means the CPU, as for `tf.distribute.MirroredStrategy`; skipped steps
say so; `CompressionStats` works for every optimizer.
"""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import tensorflow as tf

from tests import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, env_extra=None, timeout=240):
    """Runs `code` in a new interpreter (this checkout first on the path); returns stdout."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_USE_LEGACY_KERAS", None)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _saved_model(flavour, optimizer_name, path):
    """Trains a tiny model for one step with the named optimizer and saves it to `path`."""
    import importlib

    keras = harness.keras_module(flavour)
    module = importlib.import_module(
        f"dgc_tf.compressors.{optimizer_name[:3].lower()}.{flavour}")
    cls = getattr(module, optimizer_name)
    keras.utils.set_random_seed(0)
    if optimizer_name == "VGCSGD":  # VGC's model class, which must load by name too
        inputs = keras.Input((40,))
        model = module.VGCModel(inputs, keras.layers.Dense(3)(keras.layers.Dense(32)(inputs)),
                                num_groups=2)
    else:
        model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(32),
                                  keras.layers.Dense(3)])
    optimizer = cls(learning_rate=0.1, min_compress_size=64)
    extra = {"jit_compile": False} if flavour == "keras3" else {}
    model.compile(optimizer=optimizer, loss="mse", **extra)
    x = np.random.default_rng(0).normal(size=(16, 40)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 3)).astype("float32")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.save(path)


@pytest.mark.parametrize("flavour,optimizer_name", [
    ("keras3", "DGCSGD"), ("keras3", "VGCSGD"), ("tf_keras", "DGCSGD"), ("tf_keras", "VGCSGD")])
def test_saved_model_loads_by_name_in_a_new_process(flavour, optimizer_name, tmp_path):
    path = str(tmp_path / "m.keras")
    _saved_model(flavour, optimizer_name, path)
    keras_import = "import keras" if flavour == "keras3" else "import tf_keras as keras"
    # Exactly what the README tells a user to do: no custom_objects.
    out = run_python(f"""
        import json
        {keras_import}
        import dgc_tf
        model = keras.models.load_model({path!r})
        opt = model.optimizer
        print(json.dumps({{"cls": type(opt).__name__, "module": type(opt).__module__,
                          "iterations": int(opt.iterations.numpy()),
                          "model": type(model).__name__,
                          "num_groups": getattr(model, "num_groups", None)}}))
    """)
    loaded = json.loads(out.strip().splitlines()[-1])
    assert loaded["cls"] == optimizer_name
    assert loaded["module"].startswith("dgc_tf.")
    assert loaded["iterations"] == 1
    if optimizer_name == "VGCSGD":
        assert (loaded["model"], loaded["num_groups"]) == ("VGCModel", 2)


def test_empty_device_list_means_the_cpu_as_for_mirrored_strategy():
    """On a machine without GPUs the README's device list is []: MirroredStrategy([])
    falls back to the local CPUs, and so must SparseAllGather([])."""
    from tensorflow.python.distribute import mirrored_strategy

    import dgc_tf.distribute

    def local(name):
        spec = tf.DeviceSpec.from_string(name)
        return spec.device_type, spec.device_index

    expected = [local(d.name) for d in mirrored_strategy.all_local_devices()]
    ops = dgc_tf.distribute.SparseAllGather([])
    assert [local(d) for d in ops._devices] == expected


def _tiny_model(flavour, optimizer):
    keras = harness.keras_module(flavour)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(32), keras.layers.Dense(3)])
    extra = {"jit_compile": False} if flavour == "keras3" else {}
    model.compile(optimizer=optimizer, loss="mse", **extra)
    return model


def _arrays(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 40)).astype("float32"), rng.normal(size=(n, 3)).astype("float32")


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_skipped_steps_warn_once_with_the_count_and_reach_the_logs(flavour):
    import dgc_tf.callbacks

    x, y = _arrays()
    x[16:32] = np.nan  # the second and fourth of four batches give NaN gradients
    x[48:] = np.inf
    model = _tiny_model(flavour, harness.optimizer_class(flavour)(
        learning_rate=0.01, min_compress_size=64))
    callback = (dgc_tf.callbacks.KerasCompressionStats if flavour == "keras3"
                else dgc_tf.callbacks.TfKerasCompressionStats)()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                            callbacks=[callback])
    skipped = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(skipped) == 1, skipped
    assert "1 training step(s)" in skipped[0]
    assert history.history["dgc_skipped_steps"] == [2, 4]
    assert int(model.optimizer.skipped_steps.numpy()) == 4


@pytest.mark.parametrize("optimizer", [
    "dgc_tf.DGCSGD(learning_rate=0.1, momentum=0.9, min_compress_size=8)",
    "dgc_tf.TopKErrorFeedback(keras.optimizers.SGD(0.1), min_compress_size=8)"])
def test_a_custom_loop_traces_without_autograph_warnings(optimizer):
    """The README's custom loop (`strategy.run` in a `tf.function`), in a new process:
    AutoGraph converts the optimizer's methods there, and a failure shows as a
    warning asking the user to report it to the TensorFlow team."""
    out = run_python(f"""
        import logging
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, dgc_tf
        messages = []
        handler = logging.Handler()
        handler.emit = lambda record: messages.append(record.getMessage())
        logging.getLogger("tensorflow").addHandler(handler)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
            optimizer = {optimizer}
            optimizer.build(model.trainable_variables)
        x = tf.ones((8, 8))
        def replica_step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(model(x) ** 2)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        @tf.function
        def step():
            strategy.run(replica_step)
        step()
        print("iterations", int(optimizer.iterations.numpy()))
        print("autograph", [m for m in messages if "AutoGraph" in m])
        """)
    assert "iterations 1" in out, out
    assert "autograph []" in out, out


def test_compression_stats_callback_works_for_vgc():
    import keras

    import dgc_tf.callbacks
    import dgc_tf.vgc

    x, y = _arrays()
    model = _tiny_model("keras3", dgc_tf.vgc.VGCSGD(learning_rate=0.01, min_compress_size=64))
    dgc_tf.vgc.use_micro_batch_step(model, 2)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                        callbacks=[dgc_tf.callbacks.KerasCompressionStats()])
    stats = model.optimizer.compression_stats()
    assert history.history["dgc_density"][-1] == pytest.approx(stats["density"])
    assert 0 < stats["density"] <= 1
    assert history.history["dgc_bytes_sent"][-1] == stats["last_bytes_sent"]
    assert history.history["dgc_skipped_steps"] == [0, 0]
    assert isinstance(model.optimizer, keras.optimizers.Optimizer)


def test_strategy_after_another_tensorflow_call_says_what_to_do():
    """Building data first and the strategy second fails on every worker; the error
    must say to create the strategy first (TensorFlow's names neither)."""
    from dgc_tf.launch import free_ports, tf_config

    ports = free_ports(2)
    config = json.dumps(tf_config([f"127.0.0.1:{p}" for p in ports], 0))
    out = run_python("""
        import tensorflow as tf
        import dgc_tf.distribute
        dataset = tf.data.Dataset.from_tensor_slices(tf.zeros([8, 2]))
        try:
            dgc_tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            print("ERROR", e)
    """, {"TF_CONFIG": config}, timeout=120)
    assert "must be created before any other TensorFlow call" in out, out
