"""Tests of the NumPy DGC reference itself (tests/dgc_reference.py), with hand-computed numbers.

Flattened (C-order) arrays are written as lists in the comments: a (2, 2) variable
[[a, b], [c, d]] is [a, b, c, d] with flat indices 0..3.
"""

import math
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dgc_reference import (  # noqa: E402
    DGCReference,
    clip_by_global_norm,
    density_at,
    keras_sgd_update,
    num_selected,
    topk_by_magnitude,
)


def arr(*xs, shape=None):
    a = np.array(xs, dtype=np.float64)
    return a.reshape(shape) if shape is not None else a


def close(a, b):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------- top-k
def test_topk_ordering_and_ties():
    x = arr(1, -3, 3, 0, -1, 2)
    # |x| = [1, 3, 3, 0, 1, 2]; order (|x| desc, index asc): 1, 2, 5, 0, 4, 3
    vals, idx = topk_by_magnitude(x, 3)
    assert idx.tolist() == [1, 2, 5]
    assert vals.tolist() == [-3, 3, 2]
    vals, idx = topk_by_magnitude(x, 4)
    assert idx.tolist() == [1, 2, 5, 0]          # |1| ties at 0 and 4: lower index wins
    assert vals.tolist() == [-3, 3, 2, 1]
    vals, idx = topk_by_magnitude(x, 6)
    assert idx.tolist() == [1, 2, 5, 0, 4, 3]
    assert vals.tolist() == [-3, 3, 2, 1, -1, 0]
    vals, idx = topk_by_magnitude(x, 0)
    assert idx.size == 0 and vals.size == 0


def test_topk_flattens_c_order_and_all_ties():
    x = arr(0, 5, -7, 5, shape=(2, 2))             # flat [0, 5, -7, 5]
    vals, idx = topk_by_magnitude(x, 2)
    assert idx.tolist() == [2, 1] and vals.tolist() == [-7, 5]
    vals, idx = topk_by_magnitude(np.full(7, -2.0), 3)
    assert idx.tolist() == [0, 1, 2] and vals.tolist() == [-2, -2, -2]
    with pytest.raises(ValueError):
        topk_by_magnitude(x, 5)


# ------------------------------------------------------------------------------ num_selected
@pytest.mark.parametrize("size,density,k", [
    (1000, 0.001, 1),      # float 0.001*1000 must not round up to 2
    (1001, 0.001, 2),      # 1.001 -> 2
    (3000, 0.001, 3),      # float64 0.001*3000 = 3.0000000000000004 -> must still be 3
    (30, 0.1, 3),          # float64 0.1*30 = 3.0000000000000004 -> 3
    (5, 1e-9, 1),          # max(1, ceil(5e-9))
    (1, 0.001, 1),
    (4, 0.25, 1),
    (5, 0.25, 2),          # 1.25 -> 2
    (7, 0.5, 4),           # 3.5 -> 4
    (10, 1.0, 10),
    (256, 0.00390625, 1),  # exactly 1
    (257, 0.00390625, 2),
    (1_000_000, 0.001, 1000),
])
def test_num_selected(size, density, k):
    assert num_selected(size, density) == k


# -------------------------------------------------------------------------------- density_at
def test_density_schedule_stage_boundaries():
    # warmup_steps=8: stage = floor(t*4/8) = floor(t/2)
    expect = [0.25, 0.25, 0.0625, 0.0625, 0.015625, 0.015625, 0.00390625, 0.00390625]
    for t, d in enumerate(expect):
        assert density_at(t, 0.001, 8) == d
    assert density_at(8, 0.001, 8) == 0.001
    assert density_at(1000, 0.001, 8) == 0.001
    # compress_ratio larger than the later stages: max(schedule, ratio)
    expect = [0.25, 0.25, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    for t, d in enumerate(expect):
        assert density_at(t, 0.1, 8) == d
    assert density_at(0, 0.5, 8) == 0.5
    # no warm-up
    assert density_at(0, 0.001, 0) == 0.001
    # warmup_steps=3: floor(0)=0, floor(4/3)=1, floor(8/3)=2, then compress_ratio
    assert [density_at(t, 0.001, 3) for t in range(4)] == [0.25, 0.0625, 0.015625, 0.001]
    # warmup_steps=5: floor(0, .8, 1.6, 2.4, 3.2) = 0, 0, 1, 2, 3
    assert [density_at(t, 0.001, 5) for t in range(6)] == [
        0.25, 0.25, 0.0625, 0.015625, 0.00390625, 0.001]


def test_warmup_changes_k_per_step():
    # (16, 16): size 256, warmup_steps=4, compress_ratio=0.01:
    # t=0 .25 -> 64; t=1 .0625 -> 16; t=2 .015625 -> 4;
    # t=3 max(.00390625, .01) = .01 -> ceil(2.56) = 3; t>=4 .01 -> 3
    ref = DGCReference([(16, 16)], 2, learning_rate=0.1, compress_ratio=0.01, warmup_steps=4,
                       min_compress_size=1)
    rng = np.random.default_rng(0)
    w = [np.zeros((16, 16))]
    for expect_k in [64, 16, 4, 3, 3, 3]:
        w = ref.step(w, [[rng.normal(size=(16, 16))] for _ in range(2)])
        for wk in range(2):
            assert len(ref.last_selected[wk][0]) == expect_k
            assert len(set(ref.last_selected[wk][0].tolist())) == expect_k
    # compress_ratio .001: t=3 .00390625*256 = 1 exactly -> 1; t=4 ceil(.256) -> 1
    ref = DGCReference([(16, 16)], 2, compress_ratio=0.001, warmup_steps=4, min_compress_size=1)
    for expect_k in [64, 16, 4, 1, 1]:
        w = ref.step(w, [[rng.normal(size=(16, 16))] for _ in range(2)])
        assert ref.last_density == density_at(ref.iterations - 1, 0.001, 4)
        assert [len(ref.last_selected[wk][0]) for wk in range(2)] == [expect_k] * 2


# ------------------------------------------------------------------------ which vars compress
def test_compressed_predicate():
    ref = DGCReference([(32, 32), (1024,), (31, 33), (4, 256), (2, 2, 256), (1, 1, 4, 4)], 2)
    # rank >= 2 and size >= 1024 (default min_compress_size)
    assert ref.compressed == [True, False, False, True, True, False]
    ref = DGCReference([(1, 1, 4, 4)], 2, min_compress_size=16)
    assert ref.compressed == [True]
    assert ref.u[0][0].shape == (1, 1, 4, 4) and ref.m[0] is None


# ------------------------------------------------------------- compressed path, hand-computed
G0 = [arr(1, -2, 0.5, 0, shape=(2, 2)), arr(0, 1, 3, -1, shape=(2, 2))]    # step 0, workers 0/1
G1 = [arr(0, 0, 0, 1, shape=(2, 2)), arr(1, 0, 0, 0, shape=(2, 2))]        # step 1, workers 0/1


def _ref(**kw):
    # one (2, 2) variable, compressed (min_compress_size=1); density 0.25 -> k = 1
    args = dict(learning_rate=0.1, momentum=0.5, compress_ratio=0.25, min_compress_size=1)
    args.update(kw)
    return DGCReference([(2, 2)], 2, **args)


def test_momentum_two_steps_by_hand():
    ref = _ref()
    w = [np.ones((2, 2))]
    # step 0: worker 0: u = g = [1,-2,.5,0]; v = u; top-1 is idx 1 (-2); v -> [1,0,.5,0];
    #         masking: u -> [1,0,.5,0]
    #         worker 1: u = v = [0,1,3,-1]; top-1 idx 2 (3); v -> [0,1,0,-1]; u -> [0,1,0,-1]
    #         G = [0,-2,3,0]; w = 1 - 0.1*G = [1, 1.2, 0.7, 1]
    w = ref.step(w, [[G0[0]], [G0[1]]])
    close(w[0].ravel(), [1, 1.2, 0.7, 1])
    close(ref.u[0][0].ravel(), [1, 0, 0.5, 0])
    close(ref.v[0][0].ravel(), [1, 0, 0.5, 0])
    close(ref.u[1][0].ravel(), [0, 1, 0, -1])
    close(ref.v[1][0].ravel(), [0, 1, 0, -1])
    assert ref.last_selected[0][0].tolist() == [1]
    assert ref.last_selected[1][0].tolist() == [2]
    assert ref.iterations == 1
    # step 1: worker 0: u = .5*[1,0,.5,0] + [0,0,0,1] = [.5,0,.25,1];
    #         v = [1,0,.5,0] + u = [1.5,0,.75,1]; top-1 idx 0 (1.5); v -> [0,0,.75,1]; u -> [0,0,.25,1]
    #         worker 1: u = .5*[0,1,0,-1] + [1,0,0,0] = [1,.5,0,-.5];
    #         v = [0,1,0,-1] + u = [1,1.5,0,-1.5]; |1.5| tie at idx 1 and 3 -> idx 1;
    #         v -> [1,0,0,-1.5]; u -> [1,0,0,-.5]
    #         G = [1.5,1.5,0,0]; w = [1-.15, 1.2-.15, .7, 1] = [.85, 1.05, .7, 1]
    w = ref.step(w, [[G1[0]], [G1[1]]])
    close(w[0].ravel(), [0.85, 1.05, 0.7, 1])
    close(ref.u[0][0].ravel(), [0, 0, 0.25, 1])
    close(ref.v[0][0].ravel(), [0, 0, 0.75, 1])
    close(ref.u[1][0].ravel(), [1, 0, 0, -0.5])
    close(ref.v[1][0].ravel(), [1, 0, 0, -1.5])
    assert ref.last_selected[1][0].tolist() == [1]
    close(ref.sent_sum[0][0].ravel(), [1.5, -2, 0, 0])
    close(ref.sent_sum[1][0].ravel(), [0, 1.5, 3, 0])


def test_nesterov_two_steps_by_hand():
    ref = _ref(nesterov=True)
    w = [np.ones((2, 2))]
    # step 0: worker 0: u = .5*(0+g) = [.5,-1,.25,0]; v = 0 + u + g = [1.5,-3,.75,0]; top-1 idx 1;
    #         v -> [1.5,0,.75,0]; u -> [.5,0,.25,0]
    #         worker 1: u = .5*g = [0,.5,1.5,-.5]; v = [0,1.5,4.5,-1.5]; top-1 idx 2 (4.5);
    #         v -> [0,1.5,0,-1.5]; u -> [0,.5,0,-.5]
    #         G = [0,-3,4.5,0]; w = [1, 1.3, .55, 1]
    w = ref.step(w, [[G0[0]], [G0[1]]])
    close(w[0].ravel(), [1, 1.3, 0.55, 1])
    close(ref.u[0][0].ravel(), [0.5, 0, 0.25, 0])
    close(ref.v[0][0].ravel(), [1.5, 0, 0.75, 0])
    close(ref.u[1][0].ravel(), [0, 0.5, 0, -0.5])
    close(ref.v[1][0].ravel(), [0, 1.5, 0, -1.5])
    # step 1: worker 0: u = .5*([.5,0,.25,0] + [0,0,0,1]) = [.25,0,.125,.5];
    #         v = [1.5,0,.75,0] + u + g = [1.75,0,.875,1.5]; top-1 idx 0; v -> [0,0,.875,1.5];
    #         u -> [0,0,.125,.5]
    #         worker 1: u = .5*([0,.5,0,-.5] + [1,0,0,0]) = [.5,.25,0,-.25];
    #         v = [0,1.5,0,-1.5] + u + g = [1.5,1.75,0,-1.75]; tie idx 1/3 -> idx 1;
    #         v -> [1.5,0,0,-1.75]; u -> [.5,0,0,-.25]
    #         G = [1.75,1.75,0,0]; w = [.825, 1.125, .55, 1]
    w = ref.step(w, [[G1[0]], [G1[1]]])
    close(w[0].ravel(), [0.825, 1.125, 0.55, 1])
    close(ref.u[0][0].ravel(), [0, 0, 0.125, 0.5])
    close(ref.v[0][0].ravel(), [0, 0, 0.875, 1.5])
    close(ref.u[1][0].ravel(), [0.5, 0, 0, -0.25])
    close(ref.v[1][0].ravel(), [1.5, 0, 0, -1.75])
    close(ref.sent_sum[0][0].ravel(), [1.75, -3, 0, 0])
    close(ref.sent_sum[1][0].ravel(), [0, 1.75, 4.5, 0])


def test_masking_zeroes_u_only_at_sent_positions():
    masked, unmasked = _ref(), _ref(momentum_masking=False)
    w = [np.ones((2, 2))]
    wm = masked.step(w, [[G0[0]], [G0[1]]])
    wu = unmasked.step(w, [[G0[0]], [G0[1]]])
    close(wm[0], wu[0])                                  # first step identical
    # sent: worker 0 idx 1, worker 1 idx 2
    close(masked.u[0][0].ravel(), [1, 0, 0.5, 0])
    close(unmasked.u[0][0].ravel(), [1, -2, 0.5, 0])
    close(masked.u[1][0].ravel(), [0, 1, 0, -1])
    close(unmasked.u[1][0].ravel(), [0, 1, 3, -1])
    close(masked.v[0][0], unmasked.v[0][0])              # v is zeroed either way
    assert masked.v[0][0].ravel()[1] == 0 and masked.v[1][0].ravel()[2] == 0
    # step 1 without masking: worker 0: u = .5*[1,-2,.5,0] + [0,0,0,1] = [.5,-1,.25,1];
    #   v = [1,0,.5,0] + u = [1.5,-1,.75,1] -> idx 0; v -> [0,-1,.75,1]
    #   worker 1: u = .5*[0,1,3,-1] + [1,0,0,0] = [1,.5,1.5,-.5]; v = [0,1,0,-1] + u =
    #   [1,1.5,1.5,-1.5]: three-way tie -> idx 1; v -> [1,0,1.5,-1.5]
    wu = unmasked.step(wu, [[G1[0]], [G1[1]]])
    close(unmasked.v[0][0].ravel(), [0, -1, 0.75, 1])
    close(unmasked.v[1][0].ravel(), [1, 0, 1.5, -1.5])
    close(unmasked.u[1][0].ravel(), [1, 0.5, 1.5, -0.5])
    close(wu[0].ravel(), [0.85, 1.05, 0.7, 1])


def test_same_index_from_two_workers_is_summed():
    ref = _ref(momentum=0.0, learning_rate=1.0)
    # both workers' top-1 is idx 3: G = [0,0,0,5-2] = [0,0,0,3]; w = 0 - G
    w = ref.step([np.zeros((2, 2))], [[arr(0, 1, 0, 5, shape=(2, 2))],
                                      [arr(0, 0, 1, -2, shape=(2, 2))]])
    close(w[0].ravel(), [0, 0, 0, -3])
    close(ref.v[0][0].ravel(), [0, 1, 0, 0])
    close(ref.v[1][0].ravel(), [0, 0, 1, 0])


def test_momentum_zero_u_is_gradient():
    ref = _ref(momentum=0.0, momentum_masking=False)
    ref.step([np.ones((2, 2))], [[G0[0]], [G0[1]]])
    close(ref.u[0][0], G0[0])
    ref = _ref(momentum=0.0, nesterov=True)
    ref.step([np.ones((2, 2))], [[G0[0]], [G0[1]]])
    close(ref.u[0][0], np.zeros((2, 2)))                 # u = 0*(u+g)
    close(ref.v[0][0].ravel(), [1, 0, 0.5, 0])           # v = g with the top-1 (idx 1) sent


# ------------------------------------------------------------------------------- local clipping
def test_local_clipping_over_all_variables_of_a_worker():
    # N=2, local_clipnorm = 5*sqrt(2) -> per-worker norm 5.
    # worker 0: kernel [6,0,0,0], bias [0,8]: norm 10 -> scaled by .5 -> [3,0,0,0], [0,4]
    #   (if the bias were left out of the norm the kernel would become [5,0,0,0]).
    # worker 1: kernel [0,0,0,1], bias [1,0]: norm sqrt(2) < 5 -> unchanged.
    # compress_ratio 1, momentum 0, lr 1: kernel G = [3,0,0,1], bias g = [1,4]; w = -G.
    ref = DGCReference([(2, 2), (2,)], 2, learning_rate=1.0, momentum=0.0, compress_ratio=1.0,
                       min_compress_size=1, local_clipnorm=5 * math.sqrt(2))
    assert ref.compressed == [True, False]
    w = ref.step([np.zeros((2, 2)), np.zeros(2)],
                 [[arr(6, 0, 0, 0, shape=(2, 2)), arr(0, 8)],
                  [arr(0, 0, 0, 1, shape=(2, 2)), arr(1, 0)]])
    close(w[0].ravel(), [-3, 0, 0, -1])
    close(w[1], [-1, -4])
    close(ref.sent_sum[0][0].ravel(), [3, 0, 0, 0])
    close(ref.sent_sum[1][0].ravel(), [0, 0, 0, 1])


def test_clip_by_global_norm_helper():
    out = clip_by_global_norm([arr(3, 0), arr(4)], 1.0)   # norm 5 -> scale .2
    close(out[0], [0.6, 0])
    close(out[1], [0.8])
    out = clip_by_global_norm([arr(3, 0), arr(4)], 5.0)   # exactly at the norm: unchanged
    close(out[0], [3, 0])
    out = clip_by_global_norm([arr(0, 0)], 1.0)           # zero norm: unchanged, no NaN
    close(out[0], [0, 0])


# ---------------------------------------------------------------------------------- dense path
def test_dense_path_keras_sgd_by_hand():
    # bias (3,), 2 workers, lr .1, momentum .9
    g_step0 = [[arr(1, 2, 0)], [arr(1, 0, -2)]]          # sum [2,2,-2]
    g_step1 = [[arr(0, 0, 1)], [arr(0, 0, 1)]]           # sum [0,0,2]
    # momentum: m = -.1*[2,2,-2] = [-.2,-.2,.2]; w = [1,1,1] + m = [.8,.8,1.2]
    #           m = .9*m - .1*[0,0,2] = [-.18,-.18,-.02]; w = [.62,.62,1.18]
    ref = DGCReference([(3,)], 2, learning_rate=0.1, momentum=0.9)
    w = ref.step([np.ones(3)], g_step0)
    close(w[0], [0.8, 0.8, 1.2])
    close(ref.m[0], [-0.2, -0.2, 0.2])
    w = ref.step(w, g_step1)
    close(w[0], [0.62, 0.62, 1.18])
    close(ref.m[0], [-0.18, -0.18, -0.02])
    assert ref.u[0][0] is None and ref.sent_sum[0][0] is None
    # nesterov: m = [-.2,-.2,.2]; w = 1 + .9*m - .1*g = [1-.18-.2, 1-.18-.2, 1+.18+.2] = [.62,.62,1.38]
    #           m = [-.18,-.18,-.02]; w += .9*m - .1*[0,0,2] = [.458, .458, 1.38-.018-.2=1.162]
    ref = DGCReference([(3,)], 2, learning_rate=0.1, momentum=0.9, nesterov=True)
    w = ref.step([np.ones(3)], g_step0)
    close(w[0], [0.62, 0.62, 1.38])
    w = ref.step(w, g_step1)
    close(w[0], [0.458, 0.458, 1.162])
    # momentum 0: w = w - lr*g: [.8,.8,1.2] then [.8,.8,1.0]
    ref = DGCReference([(3,)], 2, learning_rate=0.1, momentum=0.0)
    w = ref.step([np.ones(3)], g_step0)
    close(w[0], [0.8, 0.8, 1.2])
    w = ref.step(w, g_step1)
    close(w[0], [0.8, 0.8, 1.0])


def test_keras_sgd_update_matches_real_keras():
    """The dense formula against keras.optimizers.SGD itself (skipped if Keras is missing)."""
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(3)
    for momentum, nesterov in [(0.0, False), (0.9, False), (0.9, True)]:
        w0 = rng.normal(size=(5,))
        grads = [rng.normal(size=(5,)) for _ in range(3)]
        var = keras.Variable(w0.astype(np.float32))
        opt = keras.optimizers.SGD(learning_rate=0.1, momentum=momentum, nesterov=nesterov)
        w, m = w0.copy(), np.zeros(5)
        for g in grads:
            opt.apply_gradients([(keras.ops.convert_to_tensor(g.astype(np.float32)), var)])
            w, m = keras_sgd_update(w, g, m, 0.1, momentum, nesterov)
        np.testing.assert_allclose(np.asarray(var.numpy(), np.float64), w, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------- weight decay
def test_weight_decay_applied_before_update_with_current_lr():
    # lr .1, wd .5, momentum 0, compress_ratio 1:
    # kernel w=2: 2 - .1*.5*2 = 1.9, then - .1*G with G = [1,0,0,0] -> [1.8,1.9,1.9,1.9]
    #   (decay after the update would give 1.9*.95 = 1.805 at idx 0)
    # bias [1,2], g = 0: [1,2] - .05*[1,2] = [.95,1.9]
    ref = DGCReference([(2, 2), (2,)], 2, learning_rate=0.1, momentum=0.0, compress_ratio=1.0,
                       min_compress_size=1, weight_decay=0.5)
    w = ref.step([np.full((2, 2), 2.0), arr(1, 2)],
                 [[arr(0.5, 0, 0, 0, shape=(2, 2)), arr(0, 0)],
                  [arr(0.5, 0, 0, 0, shape=(2, 2)), arr(0, 0)]])
    close(w[0].ravel(), [1.8, 1.9, 1.9, 1.9])
    close(w[1], [0.95, 1.9])


def test_learning_rate_callable_gets_step_index():
    # lr(t) = .1*(t+1), momentum 0, compress_ratio 1, g sum = 1 everywhere, wd .5:
    # t=0: w = 1 - .1*.5*1 - .1*1 = .85
    # t=1: w = .85 - .2*.5*.85 - .2*1 = .85 - .085 - .2 = .565
    seen = []

    def lr(t):
        seen.append(t)
        return 0.1 * (t + 1)

    ref = DGCReference([(2, 2)], 2, learning_rate=lr, momentum=0.0, compress_ratio=1.0,
                       min_compress_size=1, weight_decay=0.5)
    half = np.full((2, 2), 0.5)
    w = ref.step([np.ones((2, 2))], [[half], [half]])
    close(w[0], np.full((2, 2), 0.85))
    assert ref.last_lr == pytest.approx(0.1)
    w = ref.step(w, [[half], [half]])
    close(w[0], np.full((2, 2), 0.565))
    assert set(seen) == {0, 1}


# -------------------------------------------------------------------------------- properties
@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
                    min_size=1, max_size=4),
    num_workers=st.integers(1, 3),
    nesterov=st.booleans(),
    masking=st.booleans(),
    compress_ratio=st.sampled_from([0.001, 0.05, 0.3, 1.0]),
    warmup_steps=st.integers(0, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_conservation_momentum_zero(shapes, num_workers, nesterov, masking, compress_ratio,
                                    warmup_steps, seed):
    """docs/algorithm.md: with momentum 0, sent_sum + v == sum of all gradients, per worker and variable."""
    rng = np.random.default_rng(seed)
    ref = DGCReference(shapes, num_workers, learning_rate=0.05, momentum=0.0, nesterov=nesterov,
                       compress_ratio=compress_ratio, warmup_steps=warmup_steps,
                       momentum_masking=masking, min_compress_size=2)
    w = [rng.normal(size=s) for s in shapes]
    total = [[np.zeros(s) for s in shapes] for _ in range(num_workers)]
    for _ in range(5):
        grads = [[rng.normal(size=s) for s in shapes] for _ in range(num_workers)]
        for wk in range(num_workers):
            for j in range(len(shapes)):
                total[wk][j] += grads[wk][j]
        w = ref.step(w, grads)
    for wk in range(num_workers):
        for j in range(len(shapes)):
            if ref.compressed[j]:
                np.testing.assert_allclose(ref.sent_sum[wk][j] + ref.v[wk][j], total[wk][j],
                                           rtol=1e-10, atol=1e-10)


def test_conservation_with_momentum_no_masking():
    """With momentum and no masking, sent_sum + v == sum over steps of u (momentum SGD)."""
    rng = np.random.default_rng(7)
    ref = DGCReference([(8, 8)], 2, momentum=0.9, compress_ratio=0.05, momentum_masking=False,
                       min_compress_size=1)
    w = [np.zeros((8, 8))]
    u_total = [np.zeros((8, 8)) for _ in range(2)]
    for _ in range(6):
        w = ref.step(w, [[rng.normal(size=(8, 8))] for _ in range(2)])
        for wk in range(2):
            u_total[wk] += ref.u[wk][0]
    for wk in range(2):
        np.testing.assert_allclose(ref.sent_sum[wk][0] + ref.v[wk][0], u_total[wk], atol=1e-10)


def _plain_keras_sgd(shapes, w, grads_steps, lr, momentum, nesterov, weight_decay=None):
    """Independent inline Keras-SGD on the summed gradient (not using keras_sgd_update)."""
    w = [x.copy() for x in w]
    m = [np.zeros(s) for s in shapes]
    for grads in grads_steps:
        for j in range(len(shapes)):
            g = sum(gw[j] for gw in grads)
            if weight_decay is not None:
                w[j] -= lr * weight_decay * w[j]
            m[j] = momentum * m[j] - lr * g
            w[j] = w[j] + (momentum * m[j] - lr * g if nesterov else m[j])
    return w


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [None, 0.01])
def test_full_density_no_masking_equals_momentum_sgd(nesterov, weight_decay):
    shapes = [(4, 5), (3, 2, 2), (5,), (1, 3)]
    rng = np.random.default_rng(11)
    w0 = [rng.normal(size=s) for s in shapes]
    steps = [[[rng.normal(size=s) for s in shapes] for _ in range(2)] for _ in range(6)]
    ref = DGCReference(shapes, 2, learning_rate=0.05, momentum=0.9, nesterov=nesterov,
                       compress_ratio=1.0, momentum_masking=False, min_compress_size=4,
                       weight_decay=weight_decay)
    assert ref.compressed == [True, True, False, False]
    w = [x.copy() for x in w0]
    for grads in steps:
        w = ref.step(w, grads)
    expect = _plain_keras_sgd(shapes, w0, steps, 0.05, 0.9, nesterov, weight_decay)
    for a, b in zip(w, expect):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_float32_mode_and_input_not_modified():
    ref = DGCReference([(4, 4)], 2, compress_ratio=0.25, min_compress_size=1, dtype=np.float32)
    w0 = np.ones((4, 4))
    g = np.arange(16.0).reshape(4, 4)
    w = ref.step([w0], [[g], [g]])
    assert w[0].dtype == np.float32 and ref.v[0][0].dtype == np.float32
    close(w0, np.ones((4, 4)))
    close(g, np.arange(16.0).reshape(4, 4))
    assert ref.last_selected[0][0].tolist() == [15, 14, 13, 12]   # k = 4
