"""What the optimizer hands to the exchange, and what it gets back."""

import tensorflow as tf

from dgc_tf.distribute import wire


class CompressedGradient(tf.IndexedSlices):
    """One replica's sparse contribution for a compressed variable.

    `values[i]` belongs at flat index `indices[i]` of the variable, whose
    flattened size is `dense_shape[0]`. Every replica sends the same number of
    entries for a variable in a step, which `SparseAllGather` relies on to pack
    all of them into fixed-layout collectives. To any other `CrossDeviceOps`
    it is an ordinary `tf.IndexedSlices`, which `tf.distribute` sums correctly
    (by gathering), only with one or two collectives per variable.

    DGC's `indices` come from the selection ops, largest magnitude first: on
    the leader route each replica offers the first of them (`leader_candidates`).

    DGC's optimizer also passes what lets the exchange choose *which* entries
    are applied (`SparseAllGather`'s "leader" route) instead of summing every
    replica's own selection; a contribution without them (VGC's, or one built
    by hand) is always exchanged as its own entries.

    Attributes (besides `tf.IndexedSlices`'s):
      residual: this replica's flat accumulated gradient (DGC's `v`) from which
        `values` were selected, not yet zeroed where they were sent; or None.
      stage_counts: the entry count of each density stage of this variable's
        schedule (Python ints; the warm-up's stages, then the count after
        it; one count without warm-up). The exchange chooses a route per
        stage when the step is traced, so that no step moves more bytes than
        the dense alternative.
      stage: which of `stage_counts` this step sends (int32 scalar, the same
        on every replica).
      variable_name: the variable's name, for the exchange's record of routes.
    """

    def __init__(self, values, indices, dense_shape, residual=None, stage_counts=None,
                 stage=None, variable_name=None):
        super().__init__(values, indices, dense_shape)
        self.variable_name = variable_name
        self.residual = residual
        self.stage_counts = None if stage_counts is None else tuple(stage_counts)
        self.stage = stage


class ReducedGradient(tf.IndexedSlices):
    """The exchanged sum for one compressed variable, identical on every replica.

    `values` / `indices` (flat) are the entries to apply; several replicas'
    entries at the same index are summed by the scatter that applies them.
    When the sum travelled as a dense tensor, `indices` is every index.

    Attributes:
      applied: the flat indices of THIS replica's residual whose values the sum
        includes: they, and only they, are zeroed after the step (what is not
        applied stays in the residual, so nothing is lost).
      route: how it travelled: "allgather", "leader" or "dense"; for a
        variable whose route changes with its density stage, the routes of
        its stages joined by " then " (which one this step took is known
        only when it runs).
      dense: whether `values` is the whole flat sum (`indices` every index, in
        order): True or False, or a bool tensor where the route changes with
        the stage. It is then applied as the dense tensor it is.
    """

    def __init__(self, values, indices, dense_shape, applied, route, dense=None):
        super().__init__(values, indices, dense_shape)
        self.applied = applied
        self.route = route
        self.dense = route == "dense" if dense is None else dense


def handed_bytes(flat_values, wire_dtype=None):
    """Bytes a replica hands to collectives when it all-reduces `flat_values`.

    Compressed gradients count their values (in `wire_dtype` when given) and
    indices in packed words (`wire.word_count`); anything else counts its
    dense size.
    """
    total = 0
    for value in flat_values:
        if isinstance(value, CompressedGradient):
            value_dtype = tf.as_dtype(wire_dtype) if wire_dtype is not None else value.values.dtype
            count = tf.size(value.indices, out_type=tf.int64)
            words = wire.word_count(count, value_dtype) + wire.word_count(count,
                                                                          value.indices.dtype)
            total += words * wire.WORD_BYTES
        else:
            total += tf.size(value, out_type=tf.int64) * value.dtype.size
    return tf.cast(total, tf.float64)
