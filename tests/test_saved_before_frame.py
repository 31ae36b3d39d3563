"""Models saved before the compressors moved into `dgc_tf.compressors` still load.

The files in tests/data were written by `tests/data/make_saved_models.py` with
the code of commit 62da8e5 (DGCSGD and VGCSGD for Keras 3 as `.keras`, DGCSGD
for tf_keras as `.keras` and as a TensorFlow checkpoint of `save_weights`).
Each loads in a fresh process where only `import dgc_tf` has run, with its
weights, optimizer state (every variable, in order; the checkpoint by
attribute name) and config intact, and trains on.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
WORKER = os.path.join(ROOT, "tests", "workers", "load_saved_model.py")


@pytest.mark.parametrize("name, legacy", [
    ("dgc_keras3.keras", False),
    ("vgc_keras3.keras", False),
    ("dgc_tf_keras.keras", True),
    ("dgc_tf_keras_ckpt/ckpt", True),
])
def test_model_saved_before_the_frame_loads(name, legacy):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_USE_LEGACY_KERAS", None)
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = "1"
    proc = subprocess.run([sys.executable, WORKER, os.path.join(DATA, name)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"loaded {os.path.join(DATA, name)}" in proc.stdout
