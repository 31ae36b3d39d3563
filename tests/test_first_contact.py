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
    if flavour == "keras3":
        import keras
        import dgc_tf.keras3
        import dgc_tf.vgc.keras3
        cls = {"DGCSGD": dgc_tf.keras3.DGCSGD, "VGCSGD": dgc_tf.vgc.keras3.VGCSGD}[optimizer_name]
    else:
        import tf_keras as keras
        import dgc_tf.tf_keras
        cls = dgc_tf.tf_keras.DGCSGD
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(32), keras.layers.Dense(3)])
    optimizer = cls(learning_rate=0.1, min_compress_size=64)
    extra = {"jit_compile": False} if flavour == "keras3" else {}
    model.compile(optimizer=optimizer, loss="mse", **extra)
    x = np.random.default_rng(0).normal(size=(16, 40)).astype("float32")
    y = np.random.default_rng(1).normal(size=(16, 3)).astype("float32")
    if optimizer_name == "VGCSGD":
        import dgc_tf.vgc
        dgc_tf.vgc.use_micro_batch_step(model, 2)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.save(path)


@pytest.mark.parametrize("flavour,optimizer_name", [
    ("keras3", "DGCSGD"), ("keras3", "VGCSGD"), ("tf_keras", "DGCSGD")])
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
                          "iterations": int(opt.iterations.numpy())}}))
    """)
    loaded = json.loads(out.strip().splitlines()[-1])
    assert loaded["cls"] == optimizer_name
    assert loaded["module"].startswith("dgc_tf.")
    assert loaded["iterations"] == 1


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
