"""DGC's sparse gradient exchange for `tf.distribute`.

- `SparseAllGather`: a `CrossDeviceOps` that exchanges all compressed
  gradients of a step in a few packed collectives; use it in
  `tf.distribute.MirroredStrategy(devices, cross_device_ops=SparseAllGather(devices))`.
  Where a worker has several replicas, they sum their gradients densely and
  the worker exchanges compressed entries once (`worker_exchange`).
- `MultiWorkerMirroredStrategy`: TensorFlow's, with that exchange installed.
- `CompressedGradient`: the type the optimizer hands to `all_reduce`; plain
  strategies sum it as an ordinary `tf.IndexedSlices` (correct, more collectives).
- `exchange_of(strategy)`: the exchange (and so the byte counts) a
  compressing optimizer's step goes through.
- `strategy_from_environment()`, `is_chief()`: what the examples use to run
  both under `dgc_tf.launch` and as one process; `configure_logical_cpus(n)`:
  the device configuration it (or a script) sets for replicas without GPUs.
"""

from dgc_tf.distribute.payload import CompressedGradient
from dgc_tf.distribute.sparse_all_gather import SparseAllGather
from dgc_tf.distribute.strategy import MultiWorkerMirroredStrategy
from dgc_tf.distribute.devices import configure_logical_cpus
from dgc_tf.distribute.environment import is_chief, strategy_from_environment
from dgc_tf.distribute.worker_exchange import exchange_of

__all__ = ["CompressedGradient", "SparseAllGather", "MultiWorkerMirroredStrategy",
           "configure_logical_cpus", "exchange_of", "is_chief", "strategy_from_environment"]
