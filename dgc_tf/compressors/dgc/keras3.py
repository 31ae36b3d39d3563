"""`DGCSGD` for Keras 3 (the `keras` package, TensorFlow backend)."""

import keras

from dgc_tf.compressors.base.keras3 import CompressorOptimizer
from dgc_tf.compressors.dgc import replica
from dgc_tf.compressors.dgc.config import DGCConfig
from dgc_tf.compressors.dgc.optimizer import DGCSGD_DOC, DGCMixin


@keras.saving.register_keras_serializable(package="dgc_tf")
class DGCSGD(DGCMixin, CompressorOptimizer):
    __doc__ = DGCSGD_DOC

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.9,
        nesterov=False,
        compress_ratio=0.001,
        sample_ratio=0.01,
        warmup_steps=0,
        momentum_masking=True,
        local_clipnorm=None,
        min_compress_size=1024,
        name=None,
        **kwargs,
    ):
        # Validate before Keras sees anything, so bad input fails early and clearly.
        config = DGCConfig(
            momentum=momentum, nesterov=nesterov, compress_ratio=compress_ratio,
            sample_ratio=sample_ratio, warmup_steps=warmup_steps,
            momentum_masking=momentum_masking, local_clipnorm=local_clipnorm,
            min_compress_size=min_compress_size)
        super().__init__(config, learning_rate, name=name, **kwargs)

    def _make_slots(self, var):
        config = self.compressor_config
        if config.is_compressed(var.shape):
            momentum = self._add_replica_local(var, "dgc_momentum") if config.momentum else None
            return replica.DGCSlots(True, momentum, self._add_replica_local(var, "dgc_residual"))
        momentum = self._add_mirrored(var, "momentum") if config.momentum else None
        return replica.DGCSlots(False, momentum, None)

    def _compress_and_exchange(self, grads, variables, slots):
        return replica.compress_and_exchange(
            self.compressor_config, grads, variables, slots, self._iterations)
