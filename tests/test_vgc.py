"""VGCSGD (variance-based gradient compression) on 2 replicas against a NumPy reference."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from dgc_tf.distribute import SparseAllGather
from tests import harness
from tests.vgc_reference import VGCReference, micro_batch_moments

SHAPES = [(40, 50), (8, 200), (50,), (10, 10)]  # two compressed, a bias, a small kernel
STEPS = 6
DEVICES = [f"/cpu:{i}" for i in range(harness.NUM_REPLICAS)]


@functools.lru_cache(maxsize=None)
def sparse_strategy():
    return tf.distribute.MirroredStrategy(DEVICES, cross_device_ops=SparseAllGather(DEVICES))


def vgc_class(flavour="keras3"):
    import importlib
    return importlib.import_module(f"dgc_tf.compressors.vgc.{flavour}").VGCSGD


class VGCRun:
    """Variables and a VGCSGD under a 2-replica MirroredStrategy, fed chosen values."""

    def __init__(self, kwargs, weights, strategy=None, flavour="keras3"):
        self.strategy = strategy or harness.mirrored_strategy()
        with self.strategy.scope():
            self.variables = [harness.make_variable(flavour, np.array(w, np.float32), f"w{i}")
                              for i, w in enumerate(weights)]
            self.optimizer = vgc_class(flavour)(**kwargs)
            self.optimizer.build(self.variables)

        @tf.function
        def step(grads, sq, batch):
            self.strategy.run(
                lambda g, q, b: self.optimizer.apply_gradients(
                    zip(g, self.variables), grad_sq_means=q, batch_size=b),
                args=(grads, sq, batch))

        self._step = step

    def apply(self, grads, sq, batch_sizes):
        def per_replica(values):
            return self.strategy.experimental_distribute_values_from_function(
                lambda ctx: [tf.constant(np.asarray(v, np.float32))
                             for v in values[ctx.replica_id_in_sync_group]])

        batch = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(float(batch_sizes[ctx.replica_id_in_sync_group])))
        self._step(per_replica(grads), per_replica(sq), batch)

    def weights(self):
        return [np.array(v.numpy()) for v in self.variables]

    def slot(self, j):
        return self.optimizer._compressor_slots.at(j)


def random_inputs(rng, shapes, scale=1.0):
    """Gradients and squared-gradient estimates (>= g^2, as a real estimate is)."""
    grads, sq = [], []
    for _ in range(harness.NUM_REPLICAS):
        g = [rng.normal(size=s).astype(np.float32) * scale for s in shapes]
        q = [(x * x + rng.exponential(size=x.shape) * scale ** 2).astype(np.float32)
             for x in g]
        grads.append(g)
        sq.append(q)
    return grads, sq


CASES = {
    "momentum": dict(momentum=0.9, alpha=1.0),
    "nesterov": dict(momentum=0.9, nesterov=True, alpha=2.0, zeta=0.99),
    "no_momentum": dict(momentum=0.0, alpha=1.0),
    "weight_decay": dict(momentum=0.9, alpha=0.5, weight_decay=0.05),
    "strict": dict(momentum=0.0, alpha=8.0, zeta=0.9),
    "local_clipping": dict(momentum=0.9, alpha=1.0, local_clipnorm=20.0),
}


def check_against_reference(case, strategy=None, steps=STEPS, flavour="keras3"):
    kwargs = dict(CASES[case], learning_rate=0.1)
    rng = np.random.default_rng(sum(map(ord, case)))
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    run = VGCRun(kwargs, weights, strategy, flavour)
    reference = VGCReference(SHAPES, harness.NUM_REPLICAS, dtype=np.float32, **kwargs)
    expected = [w.copy() for w in weights]
    batch_sizes = [4, 6]
    sent = 0
    for step in range(steps):
        grads, sq = random_inputs(rng, SHAPES)
        run.apply(grads, sq, batch_sizes)
        expected = reference.step(expected, grads, sq, batch_sizes)
        for j, (got, want) in enumerate(zip(run.weights(), expected)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{case}: weights {j}, step {step}")
        for j in range(len(SHAPES)):
            if not reference.compressed[j]:
                continue
            for k, (r, s) in enumerate(zip(harness.local_values(run.slot(j).r),
                                           harness.local_values(run.slot(j).s))):
                np.testing.assert_allclose(r, reference.r[k][j], rtol=1e-5, atol=1e-5,
                                           err_msg=f"{case}: r of {j}, replica {k}")
                np.testing.assert_allclose(s, reference.s[k][j], rtol=1e-5, atol=1e-5,
                                           err_msg=f"{case}: s of {j}, replica {k}")
        sent += sum(sum(c) for c in reference.last_counts)
    stats = run.optimizer.compression_stats()
    assert stats["sent_elements"] == sent
    assert 0 < stats["density"] < 1
    assert int(run.optimizer.iterations.numpy()) == steps
    return run, reference


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("flavour", harness.FLAVOURS)
def test_matches_reference_step_by_step(case, flavour):
    check_against_reference(case, flavour=flavour)


@pytest.mark.parametrize("case", ["momentum", "strict"])
def test_matches_reference_under_sparse_all_gather(case):
    check_against_reference(case, strategy=sparse_strategy())


def test_counts_differ_between_replicas_and_steps():
    """The point of the variable-size exchange: counts vary per replica and step."""
    _, reference = check_against_reference("strict", steps=3)
    counts = reference.last_counts
    assert counts[0][0] != counts[1][0] or counts[0][1] != counts[1][1]


def test_nothing_is_lost_without_momentum():
    run, reference = check_against_reference("no_momentum")
    # (sum sent) + r == (sum of gradients), per worker and compressed variable, in TF's state.
    for j in range(len(SHAPES)):
        if not reference.compressed[j]:
            continue
        for k, r in enumerate(harness.local_values(run.slot(j).r)):
            np.testing.assert_allclose(reference.sent_sum[k][j] + r, reference.grad_sum[k][j],
                                       rtol=1e-5, atol=1e-5)


def test_alpha_zero_is_keras_sgd():
    import keras
    rng = np.random.default_rng(7)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    run = VGCRun(dict(learning_rate=0.1, alpha=0.0, momentum=0.9, nesterov=True), weights)
    sgd = harness.Run("keras3", keras.optimizers.SGD,
                      dict(learning_rate=0.1, momentum=0.9, nesterov=True), weights)
    for _ in range(3):
        grads, sq = random_inputs(rng, SHAPES)
        run.apply(grads, sq, [4, 4])
        sgd.apply(grads)
    for a, b in zip(run.weights(), sgd.weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bytes_count_the_size_table_and_the_padding():
    rng = np.random.default_rng(3)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    kwargs = dict(learning_rate=0.1, alpha=8.0, momentum=0.0)
    run = VGCRun(kwargs, weights, strategy=sparse_strategy())
    reference = VGCReference(SHAPES, 2, dtype=np.float32, **kwargs)
    grads, sq = random_inputs(rng, SHAPES)
    run.apply(grads, sq, [4, 6])
    reference.step(weights, grads, sq, [4, 6])
    counts = np.array(reference.last_counts)[:, :2]
    padded = np.maximum(counts.max(axis=0), 1)
    table = 1 + 2 * (2 * 2)  # the non-finite flag, then a [N, 2C] table of float32 words
    dense = 50 + 100
    assert run.optimizer.compression_stats()["last_bytes_sent"] == \
        4 * (table + 2 * padded.sum() + dense)


def test_nonfinite_step_is_skipped_everywhere():
    rng = np.random.default_rng(4)
    weights = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    run = VGCRun(dict(learning_rate=0.1), weights)
    grads, sq = random_inputs(rng, SHAPES)
    grads[1][0][0, 0] = np.nan
    run.apply(grads, sq, [4, 4])
    for a, b in zip(run.weights(), weights):
        np.testing.assert_array_equal(a, b)
    assert all(np.all(r == 0) for r in harness.local_values(run.slot(0).r))
    assert int(run.optimizer.skipped_steps.numpy()) == 1


# -- the estimator --------------------------------------------------------------


def test_micro_batch_moments_match_numpy_and_per_example_formula():
    from dgc_tf.vgc import micro_batch_moments as tf_moments
    rng = np.random.default_rng(5)
    per_example = rng.normal(loc=0.3, size=(12, 3, 4)).astype(np.float32)
    m = 3
    groups = [per_example[j::m] for j in range(m)]
    group_means = [g.mean(axis=0) for g in groups]
    sizes = [len(g) for g in groups]
    means, sq, batch = tf_moments([[tf.constant(g)] for g in group_means], sizes)
    want_mean, want_sq = micro_batch_moments(group_means, sizes)
    np.testing.assert_allclose(means[0].numpy(), per_example.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sq[0].numpy(), want_sq, rtol=1e-5, atol=1e-6)
    assert float(batch.numpy()) == 12
    # m == B: the per-example variance (B - 1 denominator) plus the squared mean.
    means, sq, _ = tf_moments([[tf.constant(x)] for x in per_example], [1] * 12)
    want = per_example.var(axis=0, ddof=1) + per_example.mean(axis=0) ** 2
    np.testing.assert_allclose(sq[0].numpy(), want, rtol=1e-4, atol=1e-6)


def test_micro_batch_gradients_of_a_linear_model():
    from dgc_tf.vgc import micro_batch_gradients
    rng = np.random.default_rng(6)
    x = rng.normal(size=(8, 5)).astype(np.float32)
    y = rng.normal(size=(8, 3)).astype(np.float32)
    w = tf.Variable(rng.normal(size=(5, 3)).astype(np.float32))
    grads, sq, batch = micro_batch_gradients(
        lambda d: tf.reduce_mean(tf.reduce_sum(tf.square(d[0] @ w - d[1]), axis=1)),
        [w], (tf.constant(x), tf.constant(y)), num_groups=4)
    per_example = np.stack([2 * np.outer(x[i], x[i] @ w.numpy() - y[i]) for i in range(8)])
    group_means = [per_example[j::4].mean(axis=0) for j in range(4)]
    want_mean, want_sq = micro_batch_moments(group_means, [2] * 4)
    np.testing.assert_allclose(grads[0].numpy(), per_example.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sq[0].numpy(), want_sq, rtol=1e-4, atol=1e-5)
    assert float(batch.numpy()) == 8


def test_fit_with_vgc_model_trains():
    import keras
    from dgc_tf.vgc import VGCModel, VGCSGD
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 32)).astype(np.float32)
    y = (x[:, :10].argmax(axis=1)).astype(np.int32)
    inputs = keras.Input((32,))
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    model = VGCModel(inputs, keras.layers.Dense(10)(hidden), num_groups=4)
    model.compile(optimizer=VGCSGD(learning_rate=0.1, min_compress_size=256),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=False)
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    stats = model.optimizer.compression_stats()
    assert 0 < stats["density"] < 1, stats


def test_fit_without_the_estimator_says_what_to_do():
    import keras
    from dgc_tf.vgc import VGCSGD
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=VGCSGD(), loss="mse", jit_compile=False)
    with pytest.raises(ValueError, match="use_micro_batch_step"):
        model.fit(np.zeros((8, 4), np.float32), np.zeros((8, 2), np.float32), verbose=0)


# -- configuration ----------------------------------------------------------------


@pytest.mark.parametrize("kwargs, name", [
    (dict(alpha=-1.0), "alpha"), (dict(alpha=float("nan")), "alpha"), (dict(alpha="1"), "alpha"),
    (dict(zeta=1.5), "zeta"), (dict(zeta=-0.1), "zeta"), (dict(momentum=1.0), "momentum"),
    (dict(nesterov=1), "nesterov"), (dict(min_compress_size=0), "min_compress_size"),
    (dict(local_clipnorm=0.0), "local_clipnorm"),
])
def test_arguments_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        vgc_class()(**kwargs)


@pytest.mark.parametrize("bad", [1, 0, 2.0, True])
def test_num_groups_is_validated(bad):
    from dgc_tf.vgc import VGCModel, micro_batch_gradients, use_micro_batch_step
    with pytest.raises(ValueError, match="`num_groups`"):
        micro_batch_gradients(lambda d: 0.0, [], tf.zeros([4]), num_groups=bad)
    with pytest.raises(ValueError, match="`num_groups`"):
        use_micro_batch_step(object(), num_groups=bad)
    with pytest.raises(ValueError, match="`num_groups`"):
        VGCModel(num_groups=bad)


def test_get_config_round_trip():
    import keras
    kwargs = dict(learning_rate=0.05, alpha=2.0, zeta=0.99, momentum=0.8, nesterov=True,
                  min_compress_size=512, local_clipnorm=3.0)
    optimizer = vgc_class()(weight_decay=0.01, **kwargs)
    config = optimizer.get_config()
    for key, value in kwargs.items():
        assert config[key] == pytest.approx(value), key
    clone = vgc_class().from_config(config)
    assert clone.get_config() == config
    assert clone.vgc_config == optimizer.vgc_config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored).__name__ == "VGCSGD"
    assert restored.vgc_config == optimizer.vgc_config


def test_top_level_export():
    import dgc_tf
    assert dgc_tf.VGCSGD is vgc_class()


@pytest.mark.parametrize("use_merge_call", [True, False])
def test_dgc_multi_worker_strategy_locally_with_and_without_merge_call(use_merge_call):
    from dgc_tf.distribute import MultiWorkerMirroredStrategy
    strategy = _local_mwms()
    assert isinstance(strategy.extended._cross_device_ops, SparseAllGather)
    if not use_merge_call:
        strategy.extended._use_merge_call = lambda: False
    try:
        check_against_reference("momentum", strategy=strategy, steps=3)
    finally:
        strategy.extended.__dict__.pop("_use_merge_call", None)
    del MultiWorkerMirroredStrategy


@functools.lru_cache(maxsize=None)
def _local_mwms():
    from dgc_tf.distribute import MultiWorkerMirroredStrategy
    return MultiWorkerMirroredStrategy._from_local_devices(DEVICES)


def test_fit_on_two_replicas_with_use_micro_batch_step():
    import keras
    from dgc_tf.vgc import VGCSGD, use_micro_batch_step
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 32)).astype(np.float32)
    y = (x[:, :10].argmax(axis=1)).astype(np.int32)
    with sparse_strategy().scope():
        model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                                  keras.layers.Dense(10)])
        model.compile(optimizer=VGCSGD(learning_rate=0.1, min_compress_size=256),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=False)
    use_micro_batch_step(model, num_groups=2)
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    # Model weights stay identical on both replicas.
    for variable in model.trainable_variables:
        values = [v.numpy() for v in variable.value.values]
        np.testing.assert_array_equal(values[0], values[1])
    assert 0 < model.optimizer.compression_stats()["density"] < 1
