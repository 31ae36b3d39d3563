"""VGC's hyperparameters, validated once and shared by both Keras flavours."""

import dataclasses

from dgc_tf.compressors.base.config import CompressorConfig, check_number


def check_num_groups(num_groups):
    """`num_groups` if it is an integer >= 2 (a variance needs two groups), else a ValueError."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 2:
        raise ValueError(f"`num_groups` must be an integer >= 2, got {num_groups!r}.")
    return num_groups


@dataclasses.dataclass(frozen=True)
class VGCConfig(CompressorConfig):
    """What VGC does, independent of the Keras flavour that runs it.

    Attributes (besides `CompressorConfig`'s `momentum`, `nesterov`,
    `min_compress_size` and `local_clipnorm`; for VGC the momentum is that of
    the SGD applied to the summed sparse update, and local clipping also
    scales the squared-gradient estimates by `c^2`):
      alpha: send an element when `r^2 > alpha * s / B`; >= 0 (0 sends every
        nonzero element: plain momentum SGD).
      zeta: decay of `s` on the elements not sent, in [0, 1].
    """

    alpha: float = 1.0
    zeta: float = 0.999

    def __post_init__(self):
        super().__post_init__()
        if not check_number("alpha", self.alpha) >= 0.0:
            raise ValueError(f"`alpha` must be >= 0, got {self.alpha}.")
        if not 0.0 <= check_number("zeta", self.zeta) <= 1.0:
            raise ValueError(f"`zeta` must be in [0, 1], got {self.zeta}.")
