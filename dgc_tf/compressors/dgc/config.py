"""DGC's hyperparameters, validated once and shared by both Keras flavours."""

import dataclasses

from dgc_tf.compressors.base.config import CompressorConfig, check_number


@dataclasses.dataclass(frozen=True)
class DGCConfig(CompressorConfig):
    """What DGC does, independent of the Keras flavour that runs it.

    Attributes (besides `CompressorConfig`'s):
      compress_ratio: fraction of each compressed variable sent per step after
        warm-up, in (0, 1]; 0.001 is the paper's 99.9% sparsity.
      sample_ratio: fraction of a variable sampled to pick the selection
        threshold, in (0, 1].
      warmup_steps: steps of the paper's exponential sparsity warm-up (>= 0).
      momentum_masking: zero the momentum of sent entries (the paper's default).
    """

    compress_ratio: float = 0.001
    sample_ratio: float = 0.01
    warmup_steps: int = 0
    momentum_masking: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < check_number("compress_ratio", self.compress_ratio) <= 1.0:
            raise ValueError(f"`compress_ratio` must be in (0, 1], got {self.compress_ratio}.")
        if not 0.0 < check_number("sample_ratio", self.sample_ratio) <= 1.0:
            raise ValueError(f"`sample_ratio` must be in (0, 1], got {self.sample_ratio}.")
        if not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool) \
                or self.warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be an integer >= 0, got {self.warmup_steps!r}.")
        if not isinstance(self.momentum_masking, bool):
            raise ValueError(
                f"`momentum_masking` must be True or False, got {self.momentum_masking!r}.")
