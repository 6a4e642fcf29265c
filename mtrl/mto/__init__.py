"""Multi-task optimization: combiners that turn per-task losses/gradients into one update.

:data:`COMBINERS` maps the name used on the command line (``--combiner NAME``) to the combiner's frozen config
dataclass; ``config.build(num_tasks, seed)`` makes the combiner.
"""

from __future__ import annotations

from mtrl.mto.base import Combiner, NonFiniteError, Weighting
from mtrl.mto.mean import Mean, MeanConfig

COMBINERS: dict[str, type] = {
    "mean": MeanConfig,
}

__all__ = ["COMBINERS", "Combiner", "Mean", "MeanConfig", "NonFiniteError", "Weighting"]
