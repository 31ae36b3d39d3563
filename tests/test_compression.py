"""DGC's pure steps (dgc_tf.compression) and the wire format (dgc_tf.distribute.wire), against numbers."""

import numpy as np
import pytest
import tensorflow as tf

from dgc_tf import compression
from dgc_tf.distribute import wire


def test_momentum_correction_numbers():
    u, v, g = tf.constant([1.0, -2.0]), tf.constant([0.5, 0.5]), tf.constant([2.0, 1.0])
    u1, v1 = compression.momentum_correction(u, v, g, 0.5)
    # u = 0.5*u + g = [2.5, 0.0]; v = v + u = [3.0, 0.5]
    np.testing.assert_allclose(u1, [2.5, 0.0])
    np.testing.assert_allclose(v1, [3.0, 0.5])
    u2, v2 = compression.momentum_correction(u, v, g, 0.5, nesterov=True)
    # u = 0.5*(u + g) = [1.5, -0.5]; v = v + u + g = [4.0, 1.0]
    np.testing.assert_allclose(u2, [1.5, -0.5])
    np.testing.assert_allclose(v2, [4.0, 1.0])


def test_mask_sent_zeroes_residual_and_optionally_momentum():
    u = tf.reshape(tf.range(1.0, 7.0), [2, 3])
    v = -u
    indices = tf.constant([1, 5])
    u1, v1 = compression.mask_sent(u, v, indices, momentum_masking=True)
    np.testing.assert_array_equal(v1, [[-1, 0, -3], [-4, -5, 0]])
    np.testing.assert_array_equal(u1, [[1, 0, 3], [4, 5, 0]])
    u2, v2 = compression.mask_sent(u, v, indices, momentum_masking=False)
    np.testing.assert_array_equal(u2, u)
    np.testing.assert_array_equal(v2, v1)


def test_local_clip_scales_whole_list_by_sqrt_replicas():
    grads = [tf.constant([3.0, 0.0]), tf.constant([4.0])]  # global norm 5
    clipped = compression.local_clip(grads, clipnorm=2.0, num_replicas=4)  # threshold 1
    np.testing.assert_allclose(clipped[0], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped[1], [0.8], rtol=1e-6)
    unclipped = compression.local_clip(grads, clipnorm=20.0, num_replicas=4)
    np.testing.assert_allclose(unclipped[0], [3.0, 0.0])
    assert compression.local_clip(grads, None, 4)[1] is grads[1]


@pytest.mark.parametrize("step,expected", [
    (0, 0.25), (1, 0.25), (2, 0.0625), (3, 0.0625), (4, 0.015625), (5, 0.015625),
    (6, 0.00390625), (7, 0.00390625), (8, 0.001), (100, 0.001)])
def test_warmup_schedule_stages(step, expected):
    assert float(compression.density_at(step, 0.001, 8)) == expected


def test_warmup_never_below_compress_ratio_and_off_without_warmup():
    assert float(compression.density_at(7, 0.01, 8)) == 0.01
    assert float(compression.density_at(0, 0.01, 0)) == 0.01


@pytest.mark.parametrize("size,density,k", [
    (1000, 0.001, 1), (1001, 0.001, 2), (3000, 0.001, 3), (30, 0.1, 3), (5, 1e-9, 1),
    (7, 1.0, 7), (2**20, 0.001, 1049)])
def test_num_selected_is_exact(size, density, k):
    assert compression.num_selected(size, density) == k


def test_selected_count_follows_the_stages():
    counts = [int(compression.selected_count(4096, s, 0.001, 4)) for s in range(6)]
    assert counts == [1024, 256, 64, 16, 5, 5]


def test_select_returns_exact_topk_by_magnitude():
    x = tf.constant([[0.5, -3.0, 2.0], [-2.0, 0.1, 3.0]])
    values, indices = compression.select(x, 3)
    # |x| = 3 at 1 and 5 (lower index first), then 2 at 2 and 3 -> index 2.
    np.testing.assert_array_equal(indices, [1, 5, 2])
    np.testing.assert_array_equal(values, [-3.0, 3.0, 2.0])


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16, tf.bfloat16, tf.float64, tf.int32,
                                   tf.int64])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_wire_round_trip_is_bit_exact(dtype, n):
    rng = np.random.default_rng(n)
    raw = rng.normal(size=n) * 1000
    tensor = tf.cast(tf.constant(raw), dtype)
    words = wire.to_words(tensor)
    assert words.dtype == wire.WORD_DTYPE
    assert int(tf.size(words)) == wire.word_count(n, dtype)
    back = wire.from_words(words[None, :], dtype, n)[0]
    assert back.dtype == dtype
    np.testing.assert_array_equal(tf.bitcast(back, tf.uint8) if dtype.size > 1 else back,
                                  tf.bitcast(tensor, tf.uint8))


def test_pack_unpack_several_workers():
    a = tf.constant([1.5, -2.5], tf.float32)
    b = tf.constant([7, 9], tf.int32)
    c = tf.constant([0.25, 0.5, 0.75], tf.float16)
    buffer, counts = wire.pack([a, b, c])
    gathered = tf.stack([buffer, buffer])  # what an all-gather of 2 workers holds
    got_a, got_b, got_c = wire.unpack(
        gathered, [(tf.float32, 2), (tf.int32, 2), (tf.float16, 3)], counts)
    np.testing.assert_array_equal(got_a, [[1.5, -2.5]] * 2)
    np.testing.assert_array_equal(got_b, [[7, 9]] * 2)
    np.testing.assert_array_equal(got_c, [[0.25, 0.5, 0.75]] * 2)


def test_fallback_with_size_unknown_at_trace_time_and_k_checked_first():
    from dgc_tf.ops import sampled_topk_tf

    select = tf.function(lambda x, k: sampled_topk_tf(x, k), input_signature=[
        tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.int32)])
    values, indices = select(tf.constant([1.0, -5.0, 3.0, 3.0]), tf.constant(3))
    np.testing.assert_array_equal(values, [-5.0, 3.0, 3.0])
    np.testing.assert_array_equal(indices, [1, 2, 3])
    assert indices.dtype == tf.int64  # size unknown: the wide index type
    with pytest.raises(tf.errors.InvalidArgumentError, match="`k` must be <= size"):
        select(tf.constant([1.0, 2.0]), tf.constant(3))
