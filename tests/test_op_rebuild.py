"""The compiled op follows the running TensorFlow: a library that does not load
(built for another TensorFlow) is rebuilt from the shipped sources into a
per-user cache keyed by TensorFlow version and ABI, and used from then on."""

import os
import re
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


# --- the one source list ------------------------------------------------------
# dgc_tf/ops/build.py's CPU_SOURCES / CUDA_SOURCES are what setup.py, the
# loader's rebuild and the shipped package compile; Bazel's BUILD must name
# the same sources and declare exactly the headers they include (Bazel's
# sandbox only sees declared files, and no Bazel runs here to notice).

CC_DIR = os.path.join(REPO, "custom_ops", "cc")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def _bazel_list(attribute):
    with open(os.path.join(REPO, "BUILD")) as f:
        text = f.read()
    body = re.search(rf"\b{attribute}\s*=\s*\[(.*?)\]", text, re.DOTALL)
    assert body, f"BUILD has no `{attribute}` list"
    return [s.removeprefix("//custom_ops:cc/") for s in re.findall(r'"([^"]+)"', body.group(1))]


def _included_headers(sources):
    """The op's own headers that `sources` include, directly or not (paths under cc/)."""
    seen, todo = set(), list(sources)
    while todo:
        with open(os.path.join(CC_DIR, todo.pop())) as f:
            for name in INCLUDE.findall(f.read()):
                if name not in seen and os.path.exists(os.path.join(CC_DIR, name)):
                    seen.add(name)
                    todo.append(name)
    return seen


def test_bazel_builds_the_sources_of_build_py():
    from dgc_tf.ops import build

    assert _bazel_list("srcs") == build.CPU_SOURCES
    assert _bazel_list("cuda_srcs") == build.CUDA_SOURCES
    on_disk = {os.path.relpath(os.path.join(root, f), CC_DIR)
               for root, _, files in os.walk(CC_DIR) for f in files}
    # Every kernel or registration file is built (standalone tests are .cu).
    assert {f for f in on_disk if f.endswith(".cc") and not f.endswith(".cu.cc")} == set(
        build.CPU_SOURCES)
    assert {f for f in on_disk if f.endswith(".cu.cc")} == set(build.CUDA_SOURCES)
    cpu_headers = _included_headers(build.CPU_SOURCES)
    assert sorted(_bazel_list("hdrs")) == sorted(cpu_headers)
    assert sorted(_bazel_list("cuda_hdrs")) == sorted(
        _included_headers(build.CUDA_SOURCES) - cpu_headers)
    # Includes are rooted at cc/: every op header named is found there.
    assert _bazel_list("include_dirs") == ["custom_ops/cc"]
