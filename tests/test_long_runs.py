"""Long runs under dgc_tf's strategy: threads stay flat; a collective timeout is warned about.

The soak runs are real: 2 worker processes with TF_CONFIG on localhost, `fit`
for 3,000 steps, each worker sampling its own thread count from
/proc/self/status (`benchmarks/workers/soak_worker.py`, which
`benchmarks/soak_bench.py` runs for 20,000+ steps).
"""

import json
import os
import warnings

import pytest
import tensorflow as tf

from dgc_tf.distribute import SparseAllGather
from dgc_tf.distribute.collective_timeout import CollectiveTimeoutWarning
from tests.test_multiworker import run_workers

SOAK_WORKER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "benchmarks", "workers", "soak_worker.py")
STEPS = 3000
# Threads TensorFlow may still start after the first steps (pools growing to
# their size); a per-collective leak adds hundreds per second instead.
THREAD_SLACK = 16


@pytest.mark.multiworker
@pytest.mark.parametrize("flavour,optimizer", [
    ("tf_keras", "dgc"),   # SparseAllGather's packed all-gather + dense all-reduce
    ("keras3", "dgc"),
    ("keras3", "vgc"),     # VGC's size exchange and padded gather
    ("keras3", "sgd"),     # no compressed gradient: plain packed all-reduce
])
def test_thread_count_stays_flat_over_3000_steps(tmp_path, flavour, optimizer):
    codes, outputs = run_workers(
        SOAK_WORKER, [str(tmp_path), str(STEPS), "--flavour", flavour,
                      "--optimizer", optimizer, "--samples", "10"], timeout=900)
    assert codes == [0, 0], "\n".join(o[-3000:] for o in outputs)
    for index in range(2):
        samples = json.loads((tmp_path / f"soak.{index}.json").read_text())["samples"]
        assert samples[-1]["step"] == STEPS
        early, last = samples[1]["threads"], samples[-1]["threads"]
        assert last <= early + THREAD_SLACK, (index, [s["threads"] for s in samples])


def test_a_collective_timeout_is_warned_about():
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=30)
    with pytest.warns(CollectiveTimeoutWarning, match="timeout_seconds=30"):
        SparseAllGather(options=options)


def test_defaults_set_no_collective_timeout():
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollectiveTimeoutWarning)
        exchange = SparseAllGather()
    assert not exchange._options.timeout_seconds
