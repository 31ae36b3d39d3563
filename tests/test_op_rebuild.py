"""The compiled op follows the running TensorFlow: a library that does not load
(built for another TensorFlow) is rebuilt from the shipped sources into a
per-user cache keyed by TensorFlow version and ABI, and used from then on."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = textwrap.dedent("""
    import json, warnings
    import numpy as np
    import tensorflow as tf
    from dgc_tf.ops import _custom_op, build, topk
    _custom_op.library_path = lambda: {library!r}  # what another TensorFlow left behind
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        op = _custom_op.load()
    x = tf.constant(np.random.default_rng(0).normal(size=5000).astype("float32"))
    values, indices = op(x, 7) if op else (None, None)
    _, ref = topk.sampled_topk_tf(x, 7)
    print(json.dumps({{"loaded": op is not None, "cached": build.cached_library_path(),
                      "same": op is not None and indices.numpy().tolist() == ref.numpy().tolist(),
                      "warnings": [str(w.message) for w in caught]}}))
""")


def _run(library, cache_dir, **env_extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", DGC_TF_CACHE_DIR=str(cache_dir),
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), **env_extra)
    env.pop("DGC_TF_FORCE_FALLBACK", None)
    proc = subprocess.run([sys.executable, "-c", CHECK.format(library=str(library))], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import json
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(shutil.which(os.environ.get("DGC_TF_CXX", "g++")) is None,
                    reason="no C++ compiler")
def test_a_library_for_another_tensorflow_is_rebuilt_into_the_cache(tmp_path):
    stale = tmp_path / "_dgc_ops.so"
    stale.write_bytes(b"\x7fELF built for another TensorFlow")
    first = _run(stale, tmp_path / "cache")
    assert first["loaded"] and first["same"], first
    assert first["cached"].startswith(str(tmp_path / "cache")) and os.path.exists(first["cached"])
    assert first["warnings"] == [], first["warnings"]  # rebuilt quietly (a log line says so)
    # A second process loads the cached build without compiling again.
    mtime = os.path.getmtime(first["cached"])
    second = _run(stale, tmp_path / "cache")
    assert second["loaded"] and second["cached"] == first["cached"]
    assert os.path.getmtime(first["cached"]) == mtime


def test_without_a_compiler_one_warning_gives_the_one_line_fix(tmp_path):
    result = _run(tmp_path / "missing.so", tmp_path / "cache", DGC_TF_CXX="no-such-compiler-dgc")
    assert not result["loaded"]
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "python -m dgc_tf.ops.build" in result["warnings"][0]
    assert "no C++ compiler" in result["warnings"][0]
