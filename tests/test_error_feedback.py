"""TopKErrorFeedback (error-feedback top-k around any Keras optimizer).

Step by step on 2 replicas against the NumPy reference
(tests/error_feedback_reference.py, both Keras flavours), conservation (nothing unsent is lost),
equality with the inner optimizer at compress_ratio=1, the skip protocol,
argument checks, and saving: get_config round trip and a compiled model
saved here and loaded in a new process.
"""

import importlib
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import dgc_tf
from dgc_tf.compressors.error_feedback.keras3 import TopKErrorFeedback
from tests import harness
from tests.error_feedback_reference import ErrorFeedbackReference, KerasAdam, KerasSGD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two compressed variables, a bias and a small kernel (both dense).
SHAPES = [(40, 50), (8, 200), (50,), (10, 10)]
STEPS = 5

# name: (the inner optimizer from a Keras package, the reference's)
INNER = {
    "sgd": (lambda k: k.optimizers.SGD(0.1), lambda: KerasSGD(0.1)),
    "sgd_momentum": (lambda k: k.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
                     lambda: KerasSGD(0.1, momentum=0.9, nesterov=True)),
    "adam": (lambda k: k.optimizers.Adam(0.01), lambda: KerasAdam(0.01)),
    "adamw": (lambda k: k.optimizers.AdamW(0.01, weight_decay=0.05),
              lambda: KerasAdam(0.01, weight_decay=0.05)),
}
CASES = {
    "sgd": ("sgd", dict(compress_ratio=0.02)),
    "sgd_momentum": ("sgd_momentum", dict(compress_ratio=0.01)),
    "adam": ("adam", dict(compress_ratio=0.01)),
    "adamw_warmup": ("adamw", dict(compress_ratio=0.001, warmup_steps=4)),
}


def random_run(seed, inner, kwargs, strategy=None, flavour="keras3"):
    """`inner(keras_package)` wrapped in the flavour's TopKErrorFeedback, on 2 replicas."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    module = importlib.import_module(f"dgc_tf.compressors.error_feedback.{flavour}")
    keras_package = harness.keras_module(flavour)
    run = harness.Run(
        flavour, lambda **kw: module.TopKErrorFeedback(inner(keras_package), **kw), kwargs,
        weights, strategy=strategy)
    return rng, weights, run


def random_grads(rng):
    # Scaled as tf.distribute scales them: the sum over replicas is the mean.
    return [[rng.normal(size=s).astype(np.float32) / harness.NUM_REPLICAS for s in SHAPES]
            for _ in range(harness.NUM_REPLICAS)]


def residuals(run, j):
    return harness.local_values(run.optimizer._compressor_slots.at(j).residual)


@pytest.mark.parametrize("flavour", harness.FLAVOURS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_reference_step_by_step(case, flavour):
    inner_name, kwargs = CASES[case]
    make_inner, make_reference_inner = INNER[inner_name]
    rng, weights, run = random_run(sum(map(ord, case)), make_inner, kwargs, flavour=flavour)
    reference = ErrorFeedbackReference(SHAPES, harness.NUM_REPLICAS, make_reference_inner(),
                                       dtype=np.float32, **kwargs)
    expected = [w.copy() for w in weights]
    for step in range(STEPS):
        grads = random_grads(rng)
        run.apply(grads)
        expected = reference.step(expected, grads)
        for j, (got, want) in enumerate(zip(run.weights(), expected)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{case}: weights of variable {j}, step {step}")
        for j in (0, 1):
            for replica, got in enumerate(residuals(run, j)):
                np.testing.assert_allclose(
                    got, reference.e[replica][j], rtol=1e-5, atol=1e-6,
                    err_msg=f"{case}: residual of variable {j}, replica {replica}, step {step}")
    assert int(run.optimizer.iterations.numpy()) == STEPS
    assert int(run.optimizer.inner_optimizer.iterations.numpy()) == STEPS


def test_matches_reference_through_sparse_all_gather():
    """dgc_tf's exchange (one all-gather for every compressed variable) gives the same steps."""
    from tests.test_distribute import sparse_strategy

    make_inner, make_reference_inner = INNER["adam"]
    rng, weights, run = random_run(3, make_inner, dict(compress_ratio=0.01),
                                   strategy=sparse_strategy())
    reference = ErrorFeedbackReference(SHAPES, harness.NUM_REPLICAS, make_reference_inner(),
                                       compress_ratio=0.01, dtype=np.float32)
    expected = [w.copy() for w in weights]
    for step in range(3):
        grads = random_grads(rng)
        run.apply(grads)
        expected = reference.step(expected, grads)
    for j, (got, want) in enumerate(zip(run.weights(), expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"variable {j}")
    assert run.optimizer.compression_stats()["compression_ratio"] > 5


def test_nothing_is_lost():
    """Plain SGD at lr 1 inside: what was applied plus what every replica still holds
    equals the sum of all gradients, element by element."""
    rng, weights, run = random_run(11, lambda k: k.optimizers.SGD(1.0),
                                   dict(compress_ratio=0.005))
    total = [np.zeros(s, np.float64) for s in SHAPES]
    for _ in range(6):
        grads = random_grads(rng)
        run.apply(grads)
        for j in range(len(SHAPES)):
            total[j] += sum(np.float64(g[j]) for g in grads)
    for j in range(len(SHAPES)):
        applied = np.float64(weights[j]) - run.weights()[j]
        pending = sum(residuals(run, j)) if j in (0, 1) else 0.0
        np.testing.assert_allclose(applied + pending, total[j], rtol=1e-5, atol=1e-5,
                                   err_msg=f"variable {j}")
    # Only a small part was applied: the test would pass trivially if everything were sent.
    assert np.abs(sum(residuals(run, 0))).sum() > 0.5 * np.abs(total[0]).sum()


def test_compress_ratio_one_is_the_inner_optimizer():
    rng, weights, run = random_run(5, lambda k: k.optimizers.Adam(0.01),
                                   dict(compress_ratio=1.0))
    dense = harness.Run("keras3", lambda: keras.optimizers.Adam(0.01), {}, weights)
    for _ in range(4):
        grads = random_grads(rng)
        run.apply(grads)
        dense.apply(grads)
    for a, b in zip(run.weights(), dense.weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    for j in (0, 1):
        np.testing.assert_array_equal(sum(residuals(run, j)), 0)


def test_non_finite_gradient_skips_the_step_everywhere():
    rng, weights, run = random_run(7, lambda k: k.optimizers.Adam(0.01),
                                   dict(compress_ratio=0.01))
    run.apply(random_grads(rng))
    before = run.weights(), [residuals(run, j) for j in (0, 1)], \
        [np.array(v.numpy()) for v in run.optimizer.inner_optimizer.variables]
    grads = random_grads(rng)
    grads[1][0][3, 4] = np.nan
    run.apply(grads)
    after = run.weights(), [residuals(run, j) for j in (0, 1)], \
        [np.array(v.numpy()) for v in run.optimizer.inner_optimizer.variables]
    for a, b in zip(before[0] + before[2], after[0] + after[2]):
        np.testing.assert_array_equal(a, b)
    # Replica 1 (NaN) touched nothing; replica 0's finite gradient stays pending.
    for j in (0, 1):
        np.testing.assert_array_equal(after[1][j][1], before[1][j][1])
        np.testing.assert_array_equal(after[1][j][0], before[1][j][0] + grads[0][j])
    assert int(run.optimizer.skipped_steps.numpy()) == 1
    assert int(run.optimizer.iterations.numpy()) == 2
    assert int(run.optimizer.inner_optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(compress_ratio=0.0), "`compress_ratio` must be in (0, 1]"),
    (dict(compress_ratio=1.5), "`compress_ratio` must be in (0, 1]"),
    (dict(sample_ratio=0), "`sample_ratio` must be in (0, 1]"),
    (dict(warmup_steps=-1), "`warmup_steps` must be an integer >= 0"),
    (dict(min_compress_size=0), "`min_compress_size` must be an integer >= 1"),
    (dict(momentum=0.9), "`momentum` is not an argument of TopKErrorFeedback"),
    (dict(weight_decay=0.1), "set it on the inner_optimizer"),
    (dict(clipnorm=1.0), "set it on the inner_optimizer"),
])
def test_bad_arguments_fail_early_naming_them(kwargs, message):
    with pytest.raises(ValueError) as error:
        TopKErrorFeedback(keras.optimizers.Adam(), **kwargs)
    assert message in str(error.value)


@pytest.mark.parametrize("inner, message", [
    (lambda: dgc_tf.DGCSGD(), "must be a plain Keras optimizer"),
    (lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()),
     "must be a plain Keras optimizer"),
    (lambda: keras.optimizers.Adam(use_ema=True), "the inner optimizer's `use_ema`"),
    (lambda: keras.optimizers.Adam(gradient_accumulation_steps=2),
     "the inner optimizer's `gradient_accumulation_steps`"),
])
def test_unsupported_inner_optimizers_are_refused(inner, message):
    with pytest.raises(ValueError) as error:
        TopKErrorFeedback(inner())
    assert message in str(error.value)


def test_inner_optimizer_by_name_and_learning_rate_delegation():
    optimizer = dgc_tf.TopKErrorFeedback("adam")
    assert isinstance(optimizer.inner_optimizer, keras.optimizers.Adam)
    optimizer.learning_rate = 0.005
    assert float(optimizer.inner_optimizer.learning_rate.numpy()) == pytest.approx(0.005)


def test_get_config_round_trip():
    inner = keras.optimizers.AdamW(
        keras.optimizers.schedules.ExponentialDecay(0.01, 100, 0.5), weight_decay=0.02,
        beta_1=0.8, clipnorm=2.0)
    optimizer = TopKErrorFeedback(inner, compress_ratio=0.01, sample_ratio=0.05,
                                  warmup_steps=8, local_clipnorm=3.0, min_compress_size=512)
    config = optimizer.get_config()
    assert config["inner_optimizer"]["class_name"] == "AdamW"
    clone = TopKErrorFeedback.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    assert clone.compressor_config == optimizer.compressor_config
    assert clone.inner_optimizer.get_config() == inner.get_config()
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is TopKErrorFeedback


LOAD_IN_A_NEW_PROCESS = """
import json, sys
import numpy as np
import keras
import dgc_tf  # registers TopKErrorFeedback: no custom_objects
model = keras.models.load_model(sys.argv[1])
opt = model.optimizer
print(json.dumps({
    "class": type(opt).__name__, "inner": type(opt.inner_optimizer).__name__,
    "compress_ratio": opt.compressor_config.compress_ratio,
    "iterations": int(opt.iterations.numpy()),
    "inner_iterations": int(opt.inner_optimizer.iterations.numpy()),
    "variables": [np.asarray(v).tolist() for v in opt.variables]}))
"""


def test_compiled_model_saved_loads_in_a_new_process(tmp_path):
    (x, y) = np.random.default_rng(0).normal(size=(96, 40)).astype(np.float32), \
        np.arange(96) % 10
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=TopKErrorFeedback(keras.optimizers.Adam(0.01), compress_ratio=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=False)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(LOAD_IN_A_NEW_PROCESS), path],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert (loaded["class"], loaded["inner"]) == ("TopKErrorFeedback", "Adam")
    assert loaded["compress_ratio"] == 0.01
    assert loaded["iterations"] == loaded["inner_iterations"] == 3
    saved = [np.asarray(v) for v in model.optimizer.variables]
    assert len(loaded["variables"]) == len(saved)
    residual = model.optimizer._compressor_slots.at(0).residual.numpy()
    assert np.abs(residual).sum() > 0  # the residual is part of what was saved
    for a, b in zip(loaded["variables"], saved):
        np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=1e-6)


def test_tf_keras_get_config_round_trip():
    import tf_keras

    from dgc_tf.compressors.error_feedback.tf_keras import TopKErrorFeedback as TfKerasEF

    optimizer = TfKerasEF(tf_keras.optimizers.Adam(0.003, beta_2=0.99), compress_ratio=0.01,
                          warmup_steps=4)
    config = optimizer.get_config()
    clone = TfKerasEF.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    assert isinstance(clone.inner_optimizer, tf_keras.optimizers.Adam)
    assert tf_keras.optimizers.get(tf_keras.optimizers.serialize(optimizer)).get_config() == config


def test_pure_functions_are_the_reference_step():
    """accumulate -> select -> zero_sent is one worker's reference step; summed_gradient
    sums what several workers sent to the same index."""
    from dgc_tf.compressors.error_feedback import compression
    from tests.dgc_reference import topk_by_magnitude

    rng = np.random.default_rng(2)
    residual, grad = (rng.normal(size=(30, 20)).astype(np.float32) for _ in range(2))
    e = compression.accumulate(tf.constant(residual), tf.constant(grad))
    values, indices = compression.select(e, 12)
    want_values, want_indices = topk_by_magnitude(residual + grad, 12)
    np.testing.assert_array_equal(np.sort(indices.numpy()), np.sort(want_indices))
    np.testing.assert_allclose(np.sort(values.numpy()), np.sort(want_values), rtol=1e-6)
    kept = (residual + grad).ravel()
    kept[want_indices] = 0
    np.testing.assert_allclose(compression.zero_sent(e, indices).numpy().ravel(), kept,
                               rtol=1e-6)

    update = tf.IndexedSlices(tf.constant([1.0, 2.0, 4.0]), tf.constant([5, 7, 5]),
                              tf.constant([600]))
    dense = compression.summed_gradient(update, tf.TensorShape([30, 20])).numpy().ravel()
    assert (dense[5], dense[7], np.abs(dense).sum()) == (5.0, 2.0, 7.0)
