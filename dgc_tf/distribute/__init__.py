"""DGC's sparse gradient exchange for `tf.distribute`.

- `SparseAllGather`: a `CrossDeviceOps` that exchanges all compressed
  gradients of a step in one packed all-gather; use it in
  `tf.distribute.MirroredStrategy(devices, cross_device_ops=SparseAllGather(devices))`.
- `MultiWorkerMirroredStrategy`: TensorFlow's, with that exchange installed.
- `CompressedGradient`: the type the optimizer hands to `all_reduce`; plain
  strategies sum it as an ordinary `tf.IndexedSlices` (correct, more collectives).
- `strategy_from_environment()`, `is_chief()`: what the examples use to run
  both under `dgc_tf.launch` and as one process.
"""

from dgc_tf.distribute.payload import CompressedGradient
from dgc_tf.distribute.sparse_all_gather import SparseAllGather
from dgc_tf.distribute.strategy import MultiWorkerMirroredStrategy
from dgc_tf.distribute.environment import is_chief, strategy_from_environment

__all__ = ["CompressedGradient", "SparseAllGather", "MultiWorkerMirroredStrategy",
           "is_chief", "strategy_from_environment"]
