"""What every compressor's configuration shares, validated once for both Keras flavours."""

import dataclasses
import math
from typing import Optional


def check_number(name, value):
    """`value` if it is a finite real number (not a bool), else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    return value


@dataclasses.dataclass(frozen=True)
class CompressorConfig:
    """What every compressor here shares: the SGD it drives and what it compresses.

    Attributes:
      momentum: momentum factor `m`, in [0, 1).
      nesterov: Nesterov momentum.
      local_clipnorm: clip each worker's gradient list to global norm
        `local_clipnorm / sqrt(num_replicas)` before accumulation; None: off.
      min_compress_size: variables with fewer elements, or of rank < 2, are
        exchanged densely with ordinary momentum SGD.
    """

    momentum: float = 0.9
    nesterov: bool = False
    local_clipnorm: Optional[float] = None
    min_compress_size: int = 1024

    def __post_init__(self):
        if not 0.0 <= check_number("momentum", self.momentum) < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), got {self.momentum}.")
        if not isinstance(self.min_compress_size, int) or isinstance(self.min_compress_size, bool) \
                or self.min_compress_size < 1:
            raise ValueError(
                f"`min_compress_size` must be an integer >= 1, got {self.min_compress_size!r}.")
        if self.local_clipnorm is not None and not check_number(
                "local_clipnorm", self.local_clipnorm) > 0:
            raise ValueError(f"`local_clipnorm` must be > 0 or None, got {self.local_clipnorm}.")
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"`nesterov` must be True or False, got {self.nesterov!r}.")

    def is_compressed(self, shape):
        """Variables of rank >= 2 with at least `min_compress_size` elements are compressed."""
        return len(shape) >= 2 and math.prod(shape) >= self.min_compress_size

    def as_dict(self):
        return dataclasses.asdict(self)
