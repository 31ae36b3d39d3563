"""Every Python block of the README runs as written, in each Keras flavour it claims.

Each ```python block is preceded by a marker comment, `<!-- readme-test: FLAVOURS -->`
(`keras3`, `tf_keras`, and `launch` for a `train.py` that `python -m dgc_tf.launch --workers 2`
runs). Blocks run one after another in a fresh process each, in one directory per flavour, as a
user pasting them would (the load block reads the file the quickstart saved). Small data, CPU.
"""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
FLAVOUR_ENV = {"keras3": None, "tf_keras": "1"}
BLOCK = re.compile(r"(?:<!-- readme-test: ([\w ]+) -->\n)?```python\n(.*?)```", re.S)


def readme_blocks():
    """[(tags, code)] for every ```python block of the README, in order."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return [(set((m.group(1) or "").split()), m.group(2)) for m in BLOCK.finditer(text)]


def test_every_python_block_says_where_it_runs():
    blocks = readme_blocks()
    assert len(blocks) >= 4
    for tags, code in blocks:
        assert tags & set(FLAVOUR_ENV), f"README block without a readme-test marker:\n{code}"


def _env(flavour):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_USE_LEGACY_KERAS", None)
    if FLAVOUR_ENV[flavour]:
        env["TF_USE_LEGACY_KERAS"] = FLAVOUR_ENV[flavour]
    return env


def _run(cmd, cwd, env, code):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"README block failed (exit {proc.returncode}):\n{code}\n--- output ---\n"
        f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.mark.parametrize("flavour", sorted(FLAVOUR_ENV))
def test_single_process_blocks_run_as_written(flavour, tmp_path):
    env = _env(flavour)
    ran = 0
    for tags, code in readme_blocks():
        if flavour in tags and "launch" not in tags:
            _run([sys.executable, "-c", code], str(tmp_path), env, code)
            ran += 1
    assert ran >= 2


@pytest.mark.multiworker
@pytest.mark.parametrize("flavour", sorted(FLAVOUR_ENV))
def test_multi_worker_block_runs_under_the_launcher(flavour, tmp_path):
    env = _env(flavour)
    blocks = [code for tags, code in readme_blocks() if flavour in tags and "launch" in tags]
    assert blocks
    for code in blocks:
        (tmp_path / "train.py").write_text(code)
        out = _run([sys.executable, "-m", "dgc_tf.launch", "--workers", "2", "--log-dir",
                    str(tmp_path / "logs"), "--", "train.py"], str(tmp_path), env, code)
        assert "[worker 0]" in out and "dgc_compression_ratio" in out, out[-3000:]
        with open(tmp_path / "logs" / "worker-1.log") as f:
            assert "[worker" not in f.read()  # the other worker's output stays in its file
