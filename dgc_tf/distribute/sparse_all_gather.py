"""`SparseAllGather`: DGC's compressed gradients of a step in a few packed collectives.

TensorFlow's `CollectiveAllReduce` sums a `tf.IndexedSlices` by gathering it,
with a size exchange and padding, one collective group per tensor. DGC's
gradients don't need that: every replica sends exactly k entries of each
variable per step, so the layout of a packed buffer is the same everywhere.
Everything that is not a `CompressedGradient` (dense gradients, the
optimizer's finite-gradients flag, metrics) is all-reduced in packs by the
`CollectiveAllReduce` this class extends, so it is accepted wherever that is,
including `MultiWorkerMirroredStrategy`, which asserts that type.

Each compressed variable travels by one of three routes, chosen per variable
and per warm-up stage when the step is traced (`choose_routes`, below), to
move the fewest bytes:

* "allgather" (DGC as published, and Horovod's / PaddlePaddle's exchange):
  every replica's own top-k (values and indices, bit-packed into one float32
  buffer with every other such variable) in ONE all-gather; the update is the
  sum of all replicas' entries. Each worker receives `8k(N-1)` bytes: the
  traffic grows with the number of workers N.
* "leader" (shared leadership; after ScaleCom's cyclic local top-k, Chen et
  al., NeurIPS 2020, which has one leader per step): `S = N * ceil(k/(N-1))`
  index slots, about `kN/(N-1)` (4k/3 at 4 replicas, 8k/7 at 8, k as N
  grows), are shared among the N replicas. Each sends its
  `1.5 * ceil(k/(N-1))` largest entries' indices, largest first, in the
  all-gather that carries the "allgather" route's entries; every replica
  then takes the same slots from them: every replica's first, then every
  replica's second, and so on, skipping an index already taken, until the
  slots are full (`leader_union`). The dense all-reduce sums every replica's
  residual values at the slots. Each worker moves about `6S(N-1)/N` bytes of
  indices and `8S(N-1)/N` of values: `14k` at every N from 3 on (at 2,
  each replica offers all its k entries: 12k). Every replica
  zeroes exactly the entries that were applied; what it selected beyond
  them stays in its residual, nothing is lost. Why this form:
  - One leader per variable and step (ScaleCom's rule) left each replica's
    largest entries waiting up to N-1 steps for its turn: on 4 workers
    (Fashion-MNIST convnet, 20k images, 3 epochs, mean of 2 seeds) it ended
    2.68 points below the all-gather, shared leadership 0.30 (README).
  - Replicas' largest entries overlap: on the PTB LSTM on 4 workers, of
    the slots filled with each replica's top ceil(k/N) (k slots, the earlier
    count), 12% (embedding and
    softmax) and 3% (LSTM kernels) held an index another replica also
    chose (mean of 60 steps). The spare offers fill those slots, so S
    distinct entries are applied unless more than a third of the offered
    indices repeat (then the repeats are padding).
  - Slots: kN/(N-1) rather than k. With k slots a worker moved
    `14k(N-1)/N` bytes, 10.5k at 4 replicas; the slot count that spends
    the large-N price, 14k, at every N from 3 on keeps the traffic flat in N (the
    price at 8 workers is 14% above k slots') and gives a small group the
    breadth it can afford. Breadth is what the leader route lacks against
    the all-gather, which applies up to Nk entries: on the PTB LSTM on 4
    workers (2 x 250 / 2 x 500 steps, test perplexity against the
    all-gather), k slots ended +2.4% / +2.1%, 4k/3 slots +1.3% / +1.4%
    (README).
  - Indices travel by all-gather, not by an all-reduce of zero-padded slots
    (this route's first form): a ring all-gather of c words each moves
    c(N-1) words where the all-reduce of N*c slots moves 2c(N-1), in half
    the hops, and it shares the collective the "allgather" route launches
    anyway.
* "dense": the replica's own top-k scattered into a dense tensor and summed by
  the dense all-reduce: the update of "allgather" exactly, for `8n(N-1)/N`
  bytes, which is fewer where `kN > n` (warm-up densities, many workers).

Why leaders' indices rather than Ok-Topk's split-and-reduce: TensorFlow's
`all_to_all_v2` does run across MultiWorkerMirroredStrategy workers on CPU
(checked with two worker processes), but only with one fixed shape for every
replica's chunk; the counts of a replica's entries per index region vary, so
fixed chunks must be padded to a cap (about 2k/N each), and the owners' global
re-selection must then be all-gathered: at least about 24k bytes per worker
against the leader route's 14k, for more code and a third collective. The
leader route needs nothing but an all-gather and an all-reduce of fixed shapes.

`exchange` picks the routes allowed: "auto" (default) all three, "leader"
leader or dense, "allgather" allgather or dense. On equal bytes the order is
allgather, leader, dense. "auto" takes the leader route only from
`AUTO_LEADER_MIN_REPLICAS` (3) replicas on: with 2 each replica would
offer all its k entries and the route would move more bytes than the
all-gather (12k against 8k) for the same breadth, so 2 replicas run DGC as
published.

The route is chosen per variable and per density stage of DGC's warm-up
(`choose_routes`), each at that stage's count, when the step is traced; the
step then runs the exchange of its stage (`tf.switch_case` over the distinct
route plans, so a step only launches its own collectives). During the
warm-up "auto" leaves the leader route out: the warm-up exists to keep early
training close to dense SGD, and the leader route applies about kN/(N-1) entries
where the others apply up to N*k (measured with ScaleCom's single leader on
4 workers, 20k Fashion-MNIST images, 3 epochs of which 1 is warm-up: with
the all-gather in the warm-up it ended 0.85 points higher, mean of 2 seeds;
the two small layers also took the all-gather after it, being cheaper there
at their final counts).
The all-gather or dense route, whichever moves fewer bytes,
costs no more than a dense all-reduce in any stage, and after the warm-up
the leader route keeps the traffic flat in N.

Where a worker has several replicas (`per_worker`), they sum their gradients
densely first and the routes run once per worker, in a group of one device per
worker: see `dgc_tf.distribute.worker_exchange`.

`wire_dtype=tf.float16` sends every floating tensor of rank >= 1 in half
precision: compressed values, dense gradients (Horovod's fp16 compression:
cast before the all-reduce, summed in float16, cast back after) and the
optimizer's finite flag; leader indices and scalars (losses, metrics) keep
their dtype.
"""

import copy
import itertools

import tensorflow as tf
from tensorflow.python.distribute import cross_device_ops as cross_device_ops_lib
from tensorflow.python.distribute import cross_device_utils
from tensorflow.python.platform import tf_logging as logging
from tensorflow.python.util import nest

from dgc_tf.distribute import wire, worker_exchange
from dgc_tf.distribute.collective_timeout import warn_if_collective_timeout
from dgc_tf.distribute.devices import default_devices
from dgc_tf.distribute.payload import CompressedGradient, ReducedGradient
from dgc_tf.ops import scatter

# Distinct collective group keys for each SparseAllGather built by hand in one
# process, so that two of them (or one beside a MirroredStrategy's own) never
# share instance keys on the same devices.
GROUP_KEY_STARTS = itertools.count(start=10_000, step=10_000)

WIRE_DTYPES = (None, tf.float16, "float16")
EXCHANGES = ("auto", "leader", "allgather")
# Preference on equal bytes: one collective and the published algorithm first.
ROUTES = ("allgather", "leader", "dense")
ALLOWED_ROUTES = {"auto": ROUTES, "leader": ("leader", "dense"),
                  "allgather": ("allgather", "dense")}
# "auto" lets the leader route compete from this many replicas on (module docstring).
AUTO_LEADER_MIN_REPLICAS = 3
# The leader route's two rounds (its indices' all-gather, then its values in
# the all-reduce) are charged this many bytes more when routes are compared: a
# rough price of the messages' headers and latency, enough that near-ties
# (variables of a few entries) keep the one-round route. For the variables
# that matter (k in the thousands) it changes nothing.
SECOND_ROUND_BYTES = 1024


def ring_all_reduce_bytes(nbytes, group_size):
    """Bytes each replica sends (and receives) in a ring all-reduce of `nbytes`."""
    return 2 * nbytes * (group_size - 1) / group_size


def ring_all_gather_bytes(nbytes, group_size):
    """Bytes each replica sends (and receives) when every replica gathers `nbytes` of each."""
    return nbytes * (group_size - 1)


def route_bytes(route, size, count, group_size, value_bytes, dense_bytes, index_bytes=4):
    """Bytes one replica puts on the wire for one compressed variable.

    Args:
      route: "allgather", "leader" or "dense".
      size: the variable's element count.
      count: entries selected per replica (int or integer tensor).
      group_size: replicas in the whole group.
      value_bytes: bytes per value on the wire (4 for float32, 2 for float16).
      dense_bytes: bytes per element of the dense route on the wire.
      index_bytes: bytes per index in the all-gather (4, or 8 for int64; the
        "allgather" route pads 16-bit values to words, the others pad nothing).
    Returns:
      The bytes, a float or float64 tensor (ring algorithms, no headers).
    """
    if route == "allgather":
        words = (count * value_bytes + 3) // 4 + (count * index_bytes + 3) // 4
        return ring_all_gather_bytes(4 * words, group_size)
    if route == "leader":
        # The all-gather of the offered indices and the ring all-reduce of the slots'
        # values, over one division (integer tensors stay integer until it).
        offered = leader_candidates(count, group_size)
        slots = leader_share(count, group_size) * group_size
        return ((group_size - 1) * (offered * index_bytes * group_size + 2 * slots * value_bytes)
                / group_size)
    if route == "dense":
        return ring_all_reduce_bytes(size * dense_bytes, group_size)
    raise ValueError(f"unknown route {route!r}")


def choose_route(exchange, size, count, group_size, value_bytes, dense_bytes, index_bytes=4):
    """The allowed route with the fewest bytes at `count` (ties: `ROUTES` order).

    The leader route pays `SECOND_ROUND_BYTES` for its second round;
    "auto" allows it from `AUTO_LEADER_MIN_REPLICAS` replicas on.
    """
    allowed = [r for r in ALLOWED_ROUTES[exchange]
               if r != "leader" or exchange != "auto" or group_size >= AUTO_LEADER_MIN_REPLICAS]
    cost = {r: route_bytes(r, size, count, group_size, value_bytes, dense_bytes, index_bytes)
            + (SECOND_ROUND_BYTES if r == "leader" else 0) for r in allowed}
    return min(allowed, key=lambda r: (cost[r], ROUTES.index(r)))


def choose_routes(exchange, size, stage_counts, group_size, value_bytes, dense_bytes,
                  index_bytes=4):
    """The route of each density stage (module docstring): a tuple like `stage_counts`.

    Each stage takes `choose_route` at its own count; "auto" leaves the leader
    route out of the warm-up stages (all but the last).
    """
    last = len(stage_counts) - 1
    return tuple(
        choose_route("allgather" if exchange == "auto" and stage < last else exchange, size,
                     count, group_size, value_bytes, dense_bytes, index_bytes)
        for stage, count in enumerate(stage_counts))


def route_name(routes):
    """One name for a variable's stage routes: "leader", or "allgather then leader"."""
    return " then ".join(dict.fromkeys(routes))


def leader_share(count, group_size):
    """Slots per replica on the leader route: `ceil(count / (group_size - 1))`.

    `N` replicas lead about `kN/(N-1)` slots, which keeps a worker's bytes
    flat in N (module docstring, "Slots"). One replica alone leads k.
    """
    others = max(group_size - 1, 1)
    return (count + others - 1) // others


def leader_candidates(count, group_size):
    """Indices each replica offers on the leader route: its share and half as many
    again (to fill the slots of indices several replicas offer), at most `count`."""
    share = leader_share(count, group_size)
    offered = share + (share + 1) // 2
    return tf.minimum(count, offered) if tf.is_tensor(count) else min(count, offered)


def leader_union(offered, slots):
    """The leader route's slots, taken from every replica's offered indices.

    Args:
      offered: `[N, c]` indices, row r replica r's c largest entries' indices,
        largest first.
      slots: how many to take: `N * leader_share(k, N)`, at most `N * c`.
    Returns:
      `[slots]` indices: the distinct ones in the order every replica's first,
      every replica's second, and so on; where fewer than `slots` are
      distinct, the first is repeated (`first_occurrence` keeps it once).
      `offered` is never empty: DGC selects at least one entry.
    """
    by_rank = tf.reshape(tf.transpose(offered), [-1])
    distinct = tf.boolean_mask(by_rank, first_occurrence(by_rank))[:slots]
    return tf.concat([distinct, tf.fill([slots - tf.size(distinct)], distinct[0])], 0)


def first_occurrence(indices):
    """True where an index appears for the first time in `indices` (a bool tensor)."""
    position = tf.unique(indices).idx
    order = tf.range(tf.size(indices))
    first = tf.math.unsorted_segment_min(order, position, tf.size(indices))
    return tf.equal(tf.gather(first, position), order)


def check_arguments(wire_dtype, exchange, per_worker=None):
    """A ValueError naming the argument unless all are allowed values."""
    if per_worker not in (None, True, False):
        raise ValueError(f"`per_worker` must be None, True or False, got {per_worker!r}.")
    if wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"`wire_dtype` must be None or tf.float16, got {wire_dtype!r}.")
    if exchange not in EXCHANGES:
        raise ValueError(
            f"`exchange` must be one of {', '.join(map(repr, EXCHANGES))}, got {exchange!r}.")


class SparseAllGather(cross_device_ops_lib.CollectiveAllReduce):
    """A `tf.distribute.CrossDeviceOps` for DGC's sparse exchange.

    Args:
      devices: the local devices to reduce across; None or an empty list (as
        `[d.name for d in tf.config.list_logical_devices("GPU")]` is on a
        machine without GPUs) means the logical GPUs, or the logical CPUs when
        there is no GPU, as for `tf.distribute.MirroredStrategy`.
      group_size: replicas in the whole group (all workers); defaults to
        `len(devices)`.
      options: a `tf.distribute.experimental.CommunicationOptions`. A
        `timeout_seconds` there is passed on, with a warning: TensorFlow keeps
        a sleeping thread per collective launch for that long (see
        `dgc_tf.distribute.collective_timeout`).
      wire_dtype: None sends values in their own dtype; `tf.float16` sends
        every floating tensor of rank >= 1 (compressed values and dense
        gradients alike) in half precision, summed in float16 by all-reduces.
      exchange: which routes compressed variables may take (module docstring):
        "auto" (default: the fewest bytes, flat in the number of workers),
        "leader" (about kN/(N-1) slots shared among the replicas, filled from
        each one's largest entries; values all-reduced) or
        "allgather" (every replica's own top-k, as published). Each may fall
        back to a dense all-reduce where that moves fewer bytes.
      per_worker: whether each worker's replicas sum their gradients densely
        and the worker exchanges compressed entries once, in a group of one
        device per worker (`dgc_tf.distribute.worker_exchange`). None
        (default): where `group_size` spans several workers and `devices`
        holds several replicas; with one worker, True compresses the sum of
        all replicas once and exchanges nothing over a network.
      collective_keys: internal; `MultiWorkerMirroredStrategy` passes its own.

    Example:

        devices = ["/gpu:0", "/gpu:1"]
        strategy = tf.distribute.MirroredStrategy(
            devices, cross_device_ops=dgc_tf.distribute.SparseAllGather(devices))
    """

    def __init__(self, devices=None, group_size=None, options=None, wire_dtype=None,
                 exchange="auto", per_worker=None, collective_keys=None,
                 canonicalize_devices=True):
        check_arguments(wire_dtype, exchange, per_worker)
        devices = list(devices or ()) or default_devices()
        group_size = group_size or len(devices)
        if group_size % len(devices):
            raise ValueError(f"`group_size` ({group_size}) must be a multiple of the number of "
                             f"local devices ({len(devices)}): every worker has as many.")
        warn_if_collective_timeout(options)
        if collective_keys is None:
            collective_keys = cross_device_utils.CollectiveKeys(
                group_key_start=next(GROUP_KEY_STARTS))
        super().__init__(
            devices=devices, group_size=group_size,
            options=options or tf.distribute.experimental.CommunicationOptions(),
            collective_keys=collective_keys, canonicalize_devices=canonicalize_devices)
        self.wire_dtype = None if wire_dtype is None else tf.float16
        self.exchange = exchange
        self.per_worker = per_worker
        # Of the compressed variables, as last traced: {name: route after the
        # warm-up} and {name: (route of each density stage)}.
        self.routes = {}
        self.stage_routes = {}
        self._worker_exchange = None
        if worker_exchange.per_worker_applies(per_worker, len(self._devices), group_size):
            # One device per worker; with the same keys, so every worker takes
            # the same group key for it (TensorFlow's own broadcast of initial
            # values uses that group too).
            self._worker_exchange = type(self)(
                devices=self._devices[:1], group_size=group_size // len(self._devices),
                options=self._options, wire_dtype=wire_dtype, exchange=exchange,
                per_worker=False, collective_keys=collective_keys,
                canonicalize_devices=canonicalize_devices)
            self._local_reduction = worker_exchange.local_reduction(self._devices)

    @classmethod
    def replacing(cls, collective, wire_dtype=None, exchange="auto", per_worker=None):
        """A `SparseAllGather` on the same devices, group and keys as `collective`."""
        return cls(devices=collective._devices, group_size=collective._group_size,
                   options=collective._options, wire_dtype=wire_dtype, exchange=exchange,
                   per_worker=per_worker, collective_keys=collective._collective_keys,
                   canonicalize_devices=collective._canonicalize_devices)

    def __deepcopy__(self, memo):
        # TensorFlow deep-copies strategies (and so their CrossDeviceOps), as
        # CollectiveAllReduce.__deepcopy__ notes; the inherited method would
        # return a plain CollectiveAllReduce without the sparse exchange.
        return type(self)(devices=self._devices, group_size=self._group_size,
                          options=self._options, wire_dtype=self.wire_dtype,
                          exchange=self.exchange, per_worker=self.per_worker,
                          collective_keys=copy.deepcopy(self._collective_keys, memo),
                          canonicalize_devices=self._canonicalize_devices)

    # -- one compressed exchange per worker -------------------------------------

    @property
    def num_workers(self):
        """Workers in the group (every worker has `len(devices)` replicas)."""
        return self._group_size // len(self._devices)

    @property
    def compressed_exchange(self):
        """The exchange compressed gradients go through: with per-worker
        compression, the one across workers (a device per worker); else `self`."""
        return self._worker_exchange or self

    def reduce_within_worker(self, per_replica_values):
        """Sums each value over this worker's replicas, densely (cross-replica context).

        Args:
          per_replica_values: a list of `PerReplica` tensors or `tf.IndexedSlices`.
        Returns:
          A list of `Mirrored` sums, bit for bit the same on every local device.
        """
        return self._local_reduction.batch_reduce(
            tf.distribute.ReduceOp.SUM, [(v, v) for v in per_replica_values])

    def all_reduce_across_workers(self, reduce_op, per_replica_values, options=None):
        """Reduces values already identical on each worker's replicas, once per worker.

        The first local device's values go through the worker-level exchange
        (a group of one device per worker); its results are copied to the
        other local devices. Cross-replica context.

        Args:
          reduce_op: a `tf.distribute.ReduceOp`.
          per_replica_values: a flat list of `PerReplica` values (or values
            that are the same object on every replica).
          options: a `tf.distribute.experimental.CommunicationOptions`, merged
            into this exchange's.
        Returns:
          A list of `Mirrored` results.
        """
        options = self._options.merge(options) if options is not None else self._options
        first = [v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
                 for v in per_replica_values]
        reduced = self.compressed_exchange._all_reduce(reduce_op, first, 0, options)
        return worker_exchange.mirror(reduced, self._devices)

    # -- routes and bytes -------------------------------------------------------

    def _travels_as(self, value):
        """The dtype a dense tensor travels in: `wire_dtype` for floating rank >= 1."""
        if (self.wire_dtype is not None and isinstance(value, tf.Tensor)
                and value.dtype.is_floating and value.dtype.size > self.wire_dtype.size
                and value.shape.rank != 0):
            return self.wire_dtype
        return value.dtype

    def routes_of(self, gradient):
        """The route of each density stage of one `CompressedGradient` (module docstring)."""
        if gradient.residual is None or gradient.stage_counts is None:
            return ("allgather",)  # pre-masked entries (VGC's, hand-built): as they are
        return self.routes_for(gradient.residual.shape.num_elements(), gradient.stage_counts,
                               gradient.values.dtype, gradient.indices.dtype)

    def routes_for(self, size, stage_counts, value_dtype, index_dtype):
        """The routes a compressed variable will take, known before it is selected.

        Args:
          size: the variable's number of elements.
          stage_counts: the entries it sends in each density stage (the
            warm-up's, then the final one's).
          value_dtype: the dtype of its values (before `wire_dtype`).
          index_dtype: `tf.int32` or `tf.int64`, its flat indices' dtype.
        Returns:
          A tuple of "leader", "allgather" or "dense", one per stage. Only
          "leader" applies other entries than the replica's own selection.
        """
        value_bytes = (self.wire_dtype or tf.as_dtype(value_dtype)).size
        return choose_routes(self.exchange, size, stage_counts, self._group_size, value_bytes,
                             value_bytes, tf.as_dtype(index_dtype).size)

    def wire_bytes(self, flat_values):
        """Bytes a replica puts on the wire when it all-reduces `flat_values` here.

        Ring algorithms, without protocol headers: compressed gradients by their
        route, everything else as a dense all-reduce in the dtype it travels in.
        Returns a float64 scalar tensor.
        """
        total = tf.constant(0.0, tf.float64)
        for value in flat_values:
            if isinstance(value, CompressedGradient):
                count = tf.size(value.indices, out_type=tf.int64)
                value_bytes = (self.wire_dtype or value.values.dtype).size
                size = tf.cast(value.dense_shape[0], tf.int64)
                routes = self.routes_of(value)
                per_stage = [tf.cast(route_bytes(r, size, count, self._group_size, value_bytes,
                                                 value_bytes, value.indices.dtype.size),
                                     tf.float64)
                             for r in routes]
                nbytes = (per_stage[0] if len(set(routes)) == 1
                          else tf.gather(tf.stack(per_stage), value.stage))
            else:
                nbytes = ring_all_reduce_bytes(
                    tf.size(value, out_type=tf.int64) * self._travels_as(value).size,
                    self._group_size)
            total += tf.cast(nbytes, tf.float64)
        return total

    def dense_wire_bytes(self, variables):
        """What a dense all-reduce of `variables`' gradients in their dtype puts on the wire."""
        return float(ring_all_reduce_bytes(
            sum(v.shape.num_elements() * v.dtype.size for v in variables), self._group_size))

    # -- the exchange ------------------------------------------------------------

    def _all_reduce(self, reduce_op, value, replica_id, options):
        # Split by route, not by `cross_device_utils.split_by_sparsity`: a plain
        # tf.IndexedSlices (a dense variable's embedding gradient) must take
        # TensorFlow's own gather, and compressed gradients take three routes.
        flat = nest.flatten(value)
        compressed = [i for i, v in enumerate(flat) if isinstance(v, CompressedGradient)]
        if reduce_op != tf.distribute.ReduceOp.SUM:
            compressed = []  # a mean of sparse contributions: TensorFlow's own path
        stage_routes = {i: self.routes_of(flat[i]) for i in compressed}
        if stage_routes and replica_id == 0:
            self._record_routes({flat[i].variable_name: r for i, r in stage_routes.items()})
        # One plan {variable: route} per density stage; the step runs its stage's.
        stages = max((len(r) for r in stage_routes.values()), default=1)
        plans = [{i: r[min(stage, len(r) - 1)] for i, r in stage_routes.items()}
                 for stage in range(stages)]
        distinct = [dict(p) for p in {tuple(sorted(p.items())): p for p in plans}.values()]
        if len(distinct) == 1:
            return nest.pack_sequence_as(
                value, self._exchange_by_plan(reduce_op, flat, distinct[0], replica_id, options))
        # Every variable that changes route shares the optimizer's stage.
        stage = next(flat[i].stage for i, r in stage_routes.items() if len(set(r)) > 1)
        branch_of_stage = tf.constant([distinct.index(p) for p in plans], tf.int32)

        def run(plan):
            def branch():
                results = self._exchange_by_plan(reduce_op, flat, plan, replica_id, options)
                # A switch_case returns tensors: a compressed variable's result as
                # (values, indices, applied, dense), rebuilt below with its route name.
                return [(r.values, r.indices, r.applied, tf.constant(r.dense))
                         if i in stage_routes else r for i, r in enumerate(results)]
            return branch

        with tf.device(self._devices[replica_id]):
            results = tf.switch_case(tf.gather(branch_of_stage, stage),
                                     [run(plan) for plan in distinct])
        results = [ReducedGradient(*r[:2], flat[i].dense_shape, applied=r[2],
                                   route=route_name(stage_routes[i]), dense=r[3])
                   if i in stage_routes else r for i, r in enumerate(results)]
        return nest.pack_sequence_as(value, results)

    def _exchange_by_plan(self, reduce_op, flat, routes, replica_id, options):
        """The exchange of `flat` with compressed variable i taking `routes[i]`: a flat list."""
        # One all-gather carries the "allgather" route's entries and the leaders'
        # indices; then one all-reduce (per dtype) sums the dense tensors, the
        # dense route's densified entries and the residual values at the
        # leaders' indices together.
        gathered = [i for i, r in routes.items() if r == "allgather"]
        led = [i for i, r in routes.items() if r == "leader"]
        gathered_results, leader_indices = self._all_gather(
            [flat[i] for i in gathered], [flat[i] for i in led], replica_id, options)
        dense = [i for i in range(len(flat)) if i not in routes or routes[i] == "dense"]
        with tf.device(self._devices[replica_id]):
            to_reduce = [self._densify(flat[i]) if i in routes else flat[i] for i in dense]
            # An index led by several replicas is summed in its first slot only.
            to_reduce += [tf.where(first_occurrence(idx), tf.gather(flat[i].residual, idx),
                                   tf.zeros_like(idx, flat[i].residual.dtype))
                          for i, idx in zip(led, leader_indices)]
        reduced = self._reduce_dense(reduce_op, to_reduce, replica_id, options) if to_reduce else []
        dense_results = [self._reduced(flat[i], r) if i in routes else r
                         for i, r in zip(dense, reduced)]
        led_results = [ReducedGradient(tf.cast(summed, flat[i].values.dtype), idx,
                                       flat[i].dense_shape, applied=idx, route="leader")
                       for i, idx, summed in zip(led, leader_indices, reduced[len(dense):])]
        return cross_device_utils.stitch_values(
            [(gathered_results, gathered), (dense_results, dense), (led_results, led)])

    def _record_routes(self, stage_routes):
        final = {name: routes[-1] for name, routes in stage_routes.items()}
        if stage_routes != {name: self.stage_routes.get(name) for name in stage_routes}:
            counts = {r: sum(1 for v in final.values() if v == r) for r in ROUTES}
            changing = {name: route_name(r) for name, r in stage_routes.items() if len(set(r)) > 1}
            logging.info("dgc_tf exchange (%s, %d replicas): compressed variables by route: %s%s",
                         self.exchange, self._group_size,
                         ", ".join(f"{r} {n}" for r, n in counts.items() if n),
                         f"; by warm-up stage: {changing}" if changing else "")
        self.routes.update(final)
        self.stage_routes.update(stage_routes)

    def _reduce_dense(self, reduce_op, values, replica_id, options):
        """TensorFlow's packed all-reduce, one per dtype, in `wire_dtype` where that applies."""
        dtypes = [self._travels_as(v) for v in values]
        results = [None] * len(values)
        for dtype in dict.fromkeys(dtypes):
            group = [i for i, d in enumerate(dtypes) if d == dtype]
            with tf.device(self._devices[replica_id]):
                cast = [tf.cast(values[i], dtype) if values[i].dtype != dtype else values[i]
                        for i in group]
            reduced = super()._all_reduce(reduce_op, cast, replica_id, options)
            with tf.device(self._devices[replica_id]):
                for i, r in zip(group, reduced):
                    results[i] = tf.cast(r, values[i].dtype) if values[i].dtype != dtype else r
        return results

    def _densify(self, gradient):
        """A replica's own entries as a dense flat tensor (no index repeats within one)."""
        return scatter.dense_at(gradient.values, gradient.indices,
                                gradient.residual.shape.num_elements())

    @staticmethod
    def _reduced(gradient, dense_sum):
        """The dense route's sum, as entries at every index."""
        indices = tf.range(tf.size(dense_sum, out_type=gradient.indices.dtype))
        return ReducedGradient(dense_sum, indices, gradient.dense_shape,
                               applied=gradient.indices, route="dense")

    def _all_gather(self, gathered, led, replica_id, options):
        """The "allgather" route's entries and the leaders' indices, in one all-gather.

        A led variable's replicas each offer their `leader_candidates(k, N)`
        largest entries' indices (the first of their selection, which the
        selection ops order by magnitude, largest first); `leader_union` takes
        its `N * leader_share(k, N)` slots from them, the same on every
        replica. Every piece (values, indices) is bit-packed into one float32
        buffer of the same layout on every replica, so one collective with no
        size exchange carries them all.

        Args:
          gathered: `CompressedGradient`s taking the "allgather" route.
          led: `CompressedGradient`s taking the "leader" route.
          replica_id: the local replica's index into `self._devices`.
          options: a `tf.distribute.experimental.CommunicationOptions`.
        Returns:
          `(results, leader_indices)`: a `ReducedGradient` (every replica's
          entries) per gathered variable, and per led variable its slots'
          indices (the first of them repeated where too few were distinct).
        """
        if not gathered and not led:
            return [], []
        n = self._group_size
        with tf.device(self._devices[replica_id]):
            pieces, specs = [], []
            for gradient in gathered:
                values = gradient.values
                if self.wire_dtype is not None:
                    values = tf.cast(values, self.wire_dtype)
                count = tf.size(gradient.indices)
                pieces += [values, gradient.indices]
                specs += [(values.dtype, count), (gradient.indices.dtype, count)]
            for gradient in led:
                offered = leader_candidates(tf.size(gradient.indices), n)
                pieces.append(gradient.indices[:offered])
                specs.append((gradient.indices.dtype, offered))
            buffer, word_counts = wire.pack(pieces)
            # Same shape on every replica: no size exchange, one collective.
            received = self._launchers[replica_id]._all_gather(buffer, options)
            received = wire.unpack(tf.reshape(received, [n, -1]), specs, word_counts)
        results = []
        for i, gradient in enumerate(gathered):
            values = tf.cast(tf.reshape(received[2 * i], [-1]), gradient.values.dtype)
            indices = tf.reshape(received[2 * i + 1], [-1])
            results.append(ReducedGradient(values, indices, gradient.dense_shape,
                                           applied=gradient.indices, route="allgather"))
        with tf.device(self._devices[replica_id]):
            leader_indices = [
                leader_union(offered, n * leader_share(tf.size(gradient.indices), n))
                for gradient, offered in zip(led, received[2 * len(gathered):])]
        return results, leader_indices
