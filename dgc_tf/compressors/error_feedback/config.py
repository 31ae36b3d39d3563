"""Error-feedback top-k's hyperparameters, validated once for every Keras flavour."""

import dataclasses

from dgc_tf.compressors.dgc.config import DGCConfig

# What the wrapped optimizer owns: the compressor adds no momentum of its own.
_INNER_OWNS = ("momentum", "nesterov", "momentum_masking")


@dataclasses.dataclass(frozen=True)
class ErrorFeedbackConfig(DGCConfig):
    """DGC's selection without its momentum: what `TopKErrorFeedback` compresses with.

    Error-feedback top-k is DGC with the momentum factor at 0 (the paper's
    "gradient accumulation" baseline): the residual accumulates the raw
    gradient, so DGC's replica step runs it unchanged. Momentum, its Nesterov
    variant and momentum masking are refused: the wrapped optimizer applies
    its own (Adam's moments, SGD's momentum) to the exchanged gradient.

    Attributes: `compress_ratio`, `sample_ratio`, `warmup_steps`,
    `local_clipnorm` and `min_compress_size`, as in `DGCConfig`.
    """

    momentum: float = 0.0
    momentum_masking: bool = False

    def __post_init__(self):
        super().__post_init__()
        for name in _INNER_OWNS:
            if getattr(self, name):
                raise ValueError(
                    f"`{name}` is not an argument of TopKErrorFeedback: the wrapped optimizer "
                    f"owns its momentum (got {name}={getattr(self, name)!r}). Set it on the "
                    "inner optimizer, e.g. `keras.optimizers.SGD(momentum=0.9)`.")

    @staticmethod
    def inner_owned(kwargs):
        """Pops from `kwargs` the arguments the inner optimizer owns, so that passing
        them to the config refuses them with the message above."""
        return {name: kwargs.pop(name) for name in _INNER_OWNS if name in kwargs}

    def as_dict(self):
        """The constructor's arguments (without the fields fixed at their DGC-free values)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _INNER_OWNS}
