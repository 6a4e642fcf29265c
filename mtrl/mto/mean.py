"""Unitary scalarization: the mean of the task losses (the baseline every combiner is measured against)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import Combiner, CombinerConfigBase, Jacobian, Weighting


class Mean(Combiner):
    r"""Gradient of the mean task loss (Kurin et al. 2022, https://arxiv.org/abs/2201.04122).

    .. math:: d = \frac{1}{K} \sum_k \nabla L_k

    One backward of ``losses.mean()``; no per-task gradients. With a uniform replay batch (unequal rows per task) it
    is the mean over the batch's rows, as mtrl's unitary baseline (``row_weighted``, see :mod:`mtrl.mto.grads`).
    """

    requires_grads = False
    #: with a uniform batch (unequal rows per task) the weights apply to rows: the batch mean (see mtrl.mto.grads)
    row_weighted = True

    def forward(self, grads: Jacobian | None, losses: Tensor) -> Weighting:
        return Weighting(torch.full_like(losses, 1.0 / self.num_tasks))


@dataclass(frozen=True)
class MeanConfig(CombinerConfigBase):
    """Unitary scalarization: no options."""

    name = "mean"
    kind = "loss"

    def build(self, num_tasks: int, seed: int = 0) -> Mean:
        self.check(num_tasks, frozenset())
        return Mean(num_tasks, seed)
