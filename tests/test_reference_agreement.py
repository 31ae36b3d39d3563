"""DGCSGD under a 2-replica MirroredStrategy, step by step against the NumPy reference.

The reference (tests/dgc_reference.py) was written from the specification
alone; agreement of weights and of every replica's residual and momentum after
every step checks momentum correction, selection, masking, clipping, weight
decay, warm-up and the exchange together, for both Keras flavours and both
paths of the fused compress step: the compiled `DGC>CompressStep` kernel and
the pure-TensorFlow fallback.
"""


import numpy as np
import pytest

from tests import harness
from tests.dgc_reference import DGCReference

# Two compressed variables, a bias and a small kernel (both dense).
SHAPES = [(40, 50), (8, 200), (50,), (10, 10)]
STEPS = 6

CASES = {
    "momentum": dict(momentum=0.9, compress_ratio=0.01),
    "nesterov": dict(momentum=0.9, nesterov=True, compress_ratio=0.01),
    "no_masking": dict(momentum=0.9, compress_ratio=0.01, momentum_masking=False),
    "local_clipping": dict(momentum=0.9, compress_ratio=0.01, local_clipnorm=1.0),
    "weight_decay": dict(momentum=0.9, compress_ratio=0.01, weight_decay=0.05),
    "warmup": dict(momentum=0.9, compress_ratio=0.001, warmup_steps=4),
    "no_momentum": dict(momentum=0.0, compress_ratio=0.02),
}


@pytest.fixture(params=["compiled", "fallback"])
def path(request, monkeypatch):
    """Which compress step runs: the compiled kernel, or the fallback (the op switched off)."""
    from dgc_tf.ops import _custom_op

    if request.param == "fallback":
        monkeypatch.setattr(_custom_op, "load", lambda: None)
    elif _custom_op.load_compress_step() is None:
        harness.skip_without_op()
    return request.param


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference_step_by_step(flavour, case, path):
    kwargs = dict(CASES[case], learning_rate=0.1)
    rng = np.random.default_rng(sum(map(ord, case)))
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    run = harness.Run(flavour, harness.optimizer_class(flavour), kwargs, weights)
    reference = DGCReference(SHAPES, harness.NUM_REPLICAS, dtype=np.float32, **kwargs)
    expected = [w.copy() for w in weights]

    for step in range(STEPS):
        # Scaled as tf.distribute scales them: the sum over replicas is the mean.
        grads = [[rng.normal(size=s).astype(np.float32) / harness.NUM_REPLICAS for s in SHAPES]
                 for _ in range(harness.NUM_REPLICAS)]
        run.apply(grads)
        expected = reference.step(expected, grads)

        for j, (got, want) in enumerate(zip(run.weights(), expected)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{case}: weights of variable {j}, step {step}")
        slots = run.optimizer._compressor_slots
        for j in range(len(SHAPES)):
            slot = slots.at(j)
            if not slot.compressed:
                continue
            for replica, got in enumerate(harness.local_values(slot.residual)):
                np.testing.assert_allclose(
                    got, reference.v[replica][j], rtol=1e-5, atol=1e-5,
                    err_msg=f"{case}: residual of variable {j}, replica {replica}, step {step}")
            if slot.momentum is not None:
                for replica, got in enumerate(harness.local_values(slot.momentum)):
                    np.testing.assert_allclose(
                        got, reference.u[replica][j], rtol=1e-5, atol=1e-5,
                        err_msg=f"{case}: momentum of variable {j}, replica {replica}")
    assert int(run.optimizer.iterations.numpy()) == STEPS


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_matches_reference_with_a_learning_rate_schedule(flavour):
    """A schedule is evaluated per replica; the update must still see one value."""
    if flavour == "keras3":
        from keras.optimizers.schedules import PiecewiseConstantDecay
    else:
        from tf_keras.optimizers.schedules import PiecewiseConstantDecay
    boundaries, values = [1, 3], [0.2, 0.1, 0.05]
    rng = np.random.default_rng(9)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    kwargs = dict(momentum=0.9, compress_ratio=0.01, weight_decay=0.01)
    run = harness.Run(flavour, harness.optimizer_class(flavour),
                      dict(kwargs, learning_rate=PiecewiseConstantDecay(boundaries, values)),
                      weights)
    reference = DGCReference(
        SHAPES, harness.NUM_REPLICAS, dtype=np.float32,
        learning_rate=lambda t: values[sum(t > b for b in boundaries)], **kwargs)
    expected = [w.copy() for w in weights]
    for step in range(5):
        grads = [[rng.normal(size=s).astype(np.float32) / 2 for s in SHAPES] for _ in range(2)]
        run.apply(grads)
        expected = reference.step(expected, grads)
        for j, (got, want) in enumerate(zip(run.weights(), expected)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"variable {j}, step {step}")
