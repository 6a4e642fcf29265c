"""Static, user-given task weights."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import Combiner, CombinerConfigBase, Jacobian, Weighting


class Fixed(Combiner):
    r"""Linear scalarization with static user weights.

    .. math:: d = \sum_k w_k \nabla L_k

    Scale: the weights are used as given: ``(1/K, ..., 1/K)`` is ``mean``, ``(1, ..., 1)`` is ``sum``.
    """

    task_weights: Tensor

    requires_grads = False

    def __init__(self, num_tasks: int, seed: int = 0, weights: tuple[float, ...] = ()) -> None:
        super().__init__(num_tasks, seed)
        if not weights:
            weights = (1.0 / num_tasks,) * num_tasks
        self.register_buffer("task_weights", torch.tensor(weights, dtype=torch.float64))

    def forward(self, grads: Jacobian | None, losses: Tensor) -> Weighting:
        weights = self.task_weights.to(device=losses.device, dtype=losses.dtype)
        self.record_stats(weights=weights)
        return Weighting(weights)


@dataclass(frozen=True)
class FixedConfig(CombinerConfigBase):
    """Static task weights."""

    name = "fixed"
    kind = "loss"

    weights: tuple[float, ...] = ()
    """One weight per task, in task order, used as given (e.g. 0.1,0.1,...: the mean over 10 tasks); empty = 1/K
    each (the mean)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """Every weight finite and >= 0; none (the mean) or one per task."""
        super().check(num_tasks, parts)
        for w in self.weights:
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"combiner.weights: got {w}, expected numbers >= 0")
        if self.weights and len(self.weights) != num_tasks:
            raise ValueError(f"combiner.weights: got {len(self.weights)} weights, expected {num_tasks} (one per task)")

    def build(self, num_tasks: int, seed: int = 0) -> Fixed:
        self.check(num_tasks, frozenset())
        return Fixed(num_tasks, seed, weights=tuple(float(w) for w in self.weights))
