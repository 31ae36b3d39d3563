"""VGC's flavour-independent parts, by their first module name; they live in
`dgc_tf.compressors.vgc` (`config`, `compression`, `estimator`, `replica`)."""

from dgc_tf.compressors.vgc.compression import (accumulate, decay_unsent, pad_to, reset_sent,
                                                select, unambiguous)
from dgc_tf.compressors.vgc.config import VGCConfig
from dgc_tf.compressors.vgc.estimator import micro_batch_gradients, micro_batch_moments
from dgc_tf.compressors.vgc.replica import (VGCExchanged, VGCSlots, compress_and_exchange,
                                            densify_momentum_updates, record_sent)

__all__ = ["VGCConfig", "accumulate", "unambiguous", "select", "reset_sent", "decay_unsent",
           "pad_to", "micro_batch_moments", "micro_batch_gradients", "VGCSlots", "VGCExchanged",
           "compress_and_exchange", "densify_momentum_updates", "record_sent"]
