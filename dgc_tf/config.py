"""DGC's hyperparameters, validated once and shared by both Keras flavours."""

import dataclasses
import math
from typing import Optional


@dataclasses.dataclass(frozen=True)
class DGCConfig:
    """What DGC does, independent of the Keras flavour that runs it.

    Attributes:
      momentum: momentum factor `m`, in [0, 1).
      nesterov: Nesterov momentum correction (Algorithm 4) instead of Algorithm 3.
      compress_ratio: fraction of each compressed variable sent per step after
        warm-up, in (0, 1]; 0.001 is the paper's 99.9% sparsity.
      sample_ratio: fraction of a variable sampled to pick the selection
        threshold, in (0, 1].
      warmup_steps: steps of the paper's exponential sparsity warm-up (>= 0).
      momentum_masking: zero the momentum of sent entries (the paper's default).
      local_clipnorm: clip each worker's gradient list to global norm
        `local_clipnorm / sqrt(num_replicas)` before accumulation; None: off.
      min_compress_size: variables with fewer elements, or of rank < 2, are
        exchanged densely with ordinary momentum SGD.
    """

    momentum: float = 0.9
    nesterov: bool = False
    compress_ratio: float = 0.001
    sample_ratio: float = 0.01
    warmup_steps: int = 0
    momentum_masking: bool = True
    local_clipnorm: Optional[float] = None
    min_compress_size: int = 1024

    def __post_init__(self):
        def number(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"`{name}` must be a number, got {value!r}.")
            if not math.isfinite(value):
                raise ValueError(f"`{name}` must be finite, got {value!r}.")
            return value

        if not 0.0 <= number("momentum") < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), got {self.momentum}.")
        if not 0.0 < number("compress_ratio") <= 1.0:
            raise ValueError(f"`compress_ratio` must be in (0, 1], got {self.compress_ratio}.")
        if not 0.0 < number("sample_ratio") <= 1.0:
            raise ValueError(f"`sample_ratio` must be in (0, 1], got {self.sample_ratio}.")
        if not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool) \
                or self.warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be an integer >= 0, got {self.warmup_steps!r}.")
        if not isinstance(self.min_compress_size, int) or isinstance(self.min_compress_size, bool) \
                or self.min_compress_size < 1:
            raise ValueError(
                f"`min_compress_size` must be an integer >= 1, got {self.min_compress_size!r}.")
        if self.local_clipnorm is not None and not number("local_clipnorm") > 0:
            raise ValueError(f"`local_clipnorm` must be > 0 or None, got {self.local_clipnorm}.")
        for name in ("nesterov", "momentum_masking"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")

    def is_compressed(self, shape):
        """DGC compresses variables of rank >= 2 with at least `min_compress_size` elements."""
        return len(shape) >= 2 and math.prod(shape) >= self.min_compress_size

    def as_dict(self):
        return dataclasses.asdict(self)
