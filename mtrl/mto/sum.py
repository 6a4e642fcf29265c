"""Sum of the task losses (linear scalarization with unit weights)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import Combiner, CombinerConfigBase, Jacobian, Weighting


class Sum(Combiner):
    r"""Gradient of the summed task losses.

    .. math:: d = \sum_k \nabla L_k

    Scale: K times ``mean`` (under Adam the global factor mostly cancels, except against coupled weight decay and
    Adam's epsilon). One backward of ``losses.sum()``; no per-task gradients.
    """

    requires_grads = False
    #: with a uniform batch (unequal rows per task) the weights apply to rows: the batch mean (see mtrl.mto.grads)
    row_weighted = True

    def forward(self, grads: Jacobian | None, losses: Tensor) -> Weighting:
        weights = torch.ones_like(losses)
        self.record_stats(weights=weights)
        return Weighting(weights)


@dataclass(frozen=True)
class SumConfig(CombinerConfigBase):
    """Sum of the task losses: no options."""

    name = "sum"
    kind = "loss"

    def build(self, num_tasks: int, seed: int = 0) -> Sum:
        self.check(num_tasks, frozenset())
        return Sum(num_tasks, seed)
