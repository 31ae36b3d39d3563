"""DGCSGD's behaviour as a Keras optimizer: equivalences, invariants, state, errors."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests import harness


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
@pytest.mark.parametrize("nesterov", [False, True])
def test_full_density_without_masking_equals_keras_sgd(flavour, nesterov):
    shapes = [(40, 30), (64, 20), (30,)]
    rng = np.random.default_rng(7)
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
    common = dict(learning_rate=0.05, momentum=0.9, nesterov=nesterov)
    dgc = harness.Run(flavour, harness.optimizer_class(flavour),
                      dict(common, compress_ratio=1.0, momentum_masking=False), weights)
    sgd = harness.Run(flavour, harness.optimizer_class(flavour, "SGD"), common, weights)
    for _ in range(5):
        grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(2)]
        dgc.apply(grads)
        sgd.apply(grads)
    assert dgc.optimizer._compressor_slots.at(0).compressed  # the test must exercise compression
    for got, want in zip(dgc.weights(), sgd.weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(
    rows=st.integers(1, 40), cols=st.integers(1, 60), steps=st.integers(1, 4),
    compress_ratio=st.sampled_from([0.001, 0.01, 0.1, 0.5]),
    nesterov=st.booleans(), seed=st.integers(0, 2**16))
def test_nothing_is_lost_with_zero_momentum(rows, cols, steps, compress_ratio, nesterov, seed):
    """(all values sent) + residual == all gradients, summed over the replicas.

    With momentum 0 and learning rate 1 the weights move by exactly the sum of
    what was sent, and reading an ON_READ residual in cross-replica context
    gives its sum over replicas.
    """
    rng = np.random.default_rng(seed)
    shapes = [(rows, cols)]
    weights = [rng.normal(size=shapes[0]).astype(np.float32)]
    run = harness.Run("keras3", harness.optimizer_class("keras3"),
                      dict(learning_rate=1.0, momentum=0.0, nesterov=nesterov,
                           compress_ratio=compress_ratio, min_compress_size=1), weights)
    total_grad = np.zeros(shapes[0], np.float64)
    for _ in range(steps):
        grads = [[rng.normal(size=shapes[0]).astype(np.float32)] for _ in range(2)]
        run.apply(grads)
        total_grad += grads[0][0].astype(np.float64) + grads[1][0]
    sent = weights[0].astype(np.float64) - run.weights()[0]
    residual = run.optimizer._compressor_slots.at(0).residual.numpy()
    np.testing.assert_allclose(sent + residual, total_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_nonfinite_gradient_skips_the_step_everywhere(flavour):
    shapes = [(32, 40), (40,)]
    rng = np.random.default_rng(3)
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
    run = harness.Run(flavour, harness.optimizer_class(flavour),
                      dict(learning_rate=0.1, compress_ratio=0.01), weights)

    def grads():
        return [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(2)]

    run.apply(grads())
    slots = run.optimizer._compressor_slots
    before = (run.weights(), harness.local_values(slots.at(0).residual),
              harness.local_values(slots.at(0).momentum),
              harness.local_values(slots.at(1).momentum))
    bad = grads()
    bad[1][0][3, 4] = np.nan  # only replica 1, only the compressed variable
    bad[0][1][0] = np.inf
    run.apply(bad)
    after = (run.weights(), harness.local_values(slots.at(0).residual),
             harness.local_values(slots.at(0).momentum),
             harness.local_values(slots.at(1).momentum))
    for b, a in zip(before, after):
        for x, y in zip(b, a):
            np.testing.assert_array_equal(x, y)
    assert int(run.optimizer.skipped_steps.numpy()) == 1
    run.apply(grads())  # training goes on
    assert all(np.isfinite(w).all() for w in run.weights())
    assert not np.array_equal(run.weights()[0], after[0][0])
    assert int(run.optimizer.skipped_steps.numpy()) == 1


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
@pytest.mark.parametrize("bad_replica", [0, 1])
def test_a_skipped_step_loses_no_finite_replicas_gradient(flavour, bad_replica):
    """One replica's NaN skips the step; the other replica's gradient stays pending.

    The skip protocol agrees within the exchange: the bad replica's state is
    untouched, no weight moves, and the finite replica's gradient of the skipped
    step is in its residual, so over good, skipped and good steps (momentum 0,
    learning rate 1) the weights' movement plus the residuals is every finite
    gradient.
    """
    shapes = [(24, 30), (30,)]
    rng = np.random.default_rng(11)
    weights = [rng.normal(size=s).astype(np.float32) for s in shapes]
    run = harness.Run(flavour, harness.optimizer_class(flavour),
                      dict(learning_rate=1.0, momentum=0.0, compress_ratio=0.01,
                           min_compress_size=100), weights)
    slots = run.optimizer._compressor_slots
    assert slots.at(0).compressed and not slots.at(1).compressed

    def grads():
        return [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(2)]

    finite_total = np.zeros(shapes[0], np.float64)
    first = grads()
    run.apply(first)
    finite_total += first[0][0].astype(np.float64) + first[1][0]
    weights_before = run.weights()
    residuals_before = harness.local_values(slots.at(0).residual)
    bad = grads()
    bad[bad_replica][0][5, 6] = np.nan
    run.apply(bad)
    good_replica = 1 - bad_replica
    finite_total += bad[good_replica][0]
    residuals = harness.local_values(slots.at(0).residual)
    for before, after in zip(weights_before, run.weights()):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(residuals[bad_replica], residuals_before[bad_replica])
    np.testing.assert_array_equal(residuals[good_replica],
                                  residuals_before[good_replica] + bad[good_replica][0])
    assert int(run.optimizer.skipped_steps.numpy()) == 1
    last = grads()
    run.apply(last)
    finite_total += last[0][0].astype(np.float64) + last[1][0]
    sent = weights[0].astype(np.float64) - run.weights()[0]
    residual = sum(harness.local_values(slots.at(0).residual))
    np.testing.assert_allclose(sent + residual, finite_total, rtol=1e-4, atol=1e-4)
    assert int(run.optimizer.skipped_steps.numpy()) == 1


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
@pytest.mark.parametrize("kwargs,name", [
    (dict(compress_ratio=0.0), "compress_ratio"), (dict(compress_ratio=1.5), "compress_ratio"),
    (dict(momentum=1.0), "momentum"), (dict(momentum=-0.1), "momentum"),
    (dict(warmup_steps=-1), "warmup_steps"), (dict(sample_ratio=0.0), "sample_ratio"),
    (dict(sample_ratio=2.0), "sample_ratio"), (dict(local_clipnorm=0.0), "local_clipnorm"),
    (dict(min_compress_size=0), "min_compress_size"), (dict(nesterov="yes"), "nesterov"),
])
def test_invalid_arguments_name_the_argument(flavour, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        harness.optimizer_class(flavour)(**kwargs)


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_non_float_variable_is_rejected(flavour):
    optimizer = harness.optimizer_class(flavour)()
    variable = harness.make_variable(flavour, np.zeros((4, 4), np.int32), "counts")
    with pytest.raises(ValueError, match="floating-point"):
        optimizer.build([variable])


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_per_replica_residuals_differ_while_weights_stay_identical(flavour):
    shapes = [(64, 32)]
    rng = np.random.default_rng(11)
    run = harness.Run(flavour, harness.optimizer_class(flavour),
                      dict(learning_rate=0.1, compress_ratio=0.01),
                      [rng.normal(size=shapes[0]).astype(np.float32)])
    for _ in range(3):
        run.apply([[rng.normal(size=shapes[0]).astype(np.float32)] for _ in range(2)])
    residuals = harness.local_values(run.optimizer._compressor_slots.at(0).residual)
    assert not np.allclose(residuals[0], residuals[1])
    copies = harness.local_values(run.variables[0] if flavour == "tf_keras"
                                  else run.variables[0].value)
    np.testing.assert_array_equal(copies[0], copies[1])  # bit-identical


def test_private_keras_hooks_still_exist():
    """dgc_tf overrides or calls these; if Keras moves them, this must fail loudly."""
    import inspect

    import tf_keras
    from keras.src.backend.tensorflow.optimizer import TFOptimizer
    from keras.src.optimizers import base_optimizer

    for name in ("_backend_update_step", "_apply_weight_decay", "_get_variable_index",
                 "_track_variable", "_check_super_called", "_use_weight_decay"):
        assert hasattr(TFOptimizer, name), name
    # Keras 3 must still route apply() through these two, in this order.
    source = inspect.getsource(base_optimizer.BaseOptimizer._backend_apply_gradients)
    assert source.index("_apply_weight_decay(") < source.index("_backend_update_step(")
    assert "_distribution_strategy" in inspect.getsource(TFOptimizer.__init__)
    legacy = tf_keras.optimizers.Optimizer
    for name in ("_compute_current_learning_rate", "_clip_gradients", "_var_key",
                 "_use_weight_decay", "_build_learning_rate", "_serialize_hyperparameter"):
        assert hasattr(legacy, name), name
    legacy_source = inspect.getsource(legacy)
    for attribute in ("self._index_dict", "self._distribution_strategy", "self._iterations",
                      "self._variables"):
        assert attribute in legacy_source, attribute


def test_xla_compiled_step_fails_early_with_advice():
    import keras

    import dgc_tf.keras3

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(40), keras.layers.Dense(2)])
    model.compile(dgc_tf.keras3.DGCSGD(0.1), "mse", jit_compile=True)
    assert model.jit_compile  # the situation Keras 3 creates by itself on one GPU
    with pytest.raises(ValueError, match="jit_compile=False"):
        model.fit(np.ones((8, 40), np.float32), np.ones((8, 2), np.float32), verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 0
