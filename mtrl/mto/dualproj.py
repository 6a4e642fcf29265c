"""DualProj: the mean gradient projected onto the dual cone of the task gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase
from mtrl.mto.gramian import GramianCombiner
from mtrl.mto.qp import DUAL_CONE_TOL, dual_cone_tol, dual_cone_weights


def dualproj_weights(gram: Tensor, rtol: float = DUAL_CONE_TOL) -> Tensor:
    """The DualProj weights ``[K]``: those of the projection of the mean gradient onto the dual cone
    (:func:`~mtrl.mto.qp.dual_cone_weights`).

    :param gram: ``[K, K]`` float64 CPU Gramian.
    :param rtol: relative optimality tolerance of the projection.
    """
    k = gram.shape[0]
    return dual_cone_weights(gram, torch.full((1, k), 1.0 / k, dtype=torch.float64), rtol)[0]


class DualProj(GramianCombiner):
    r"""DualProj (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization",
    https://arxiv.org/abs/2406.16232; the projection of Lopez-Paz & Ranzato's GEM, eq. 11): the mean gradient
    projected onto the dual cone of the rows of ``J``.

    .. math:: d = \pi_J(\bar g) = \arg\min_{y \,:\, J y \ge 0} \|y - \bar g\|^2 = J^\top v, \qquad
        v = \arg\min_{v \ge \mathbf 1 / K} v^\top G v, \quad \bar g = \frac1K \sum_i g_i

    Solved **exactly** on the Gramian (one non-negative least-squares problem,
    :func:`~mtrl.mto.qp.dual_cone_weights`), not with torchjd's quadprog on the trace-normalised ``G + 1e-4 I``. The
    direction is non-conflicting, ``J d >= 0`` (to a tolerance relative to each task's own terms: 1e-12, or 10 eps of
    float32 gradients), and in the row span.

    Scale: torchjd's (preference ``1/K``, the default): ``mean`` whenever the mean gradient conflicts with no task,
    otherwise shorter (a projection onto a convex cone: ``||d|| <= ||mean||``). K=1 returns the single gradient.
    """

    def weights(self, gram: Tensor) -> Tensor:
        return dualproj_weights(gram, dual_cone_tol(self.grad_dtype))


@dataclass(frozen=True)
class DualProjConfig(CombinerConfigBase):
    """DualProj: the mean gradient projected onto the dual cone of the task gradients (exact)."""

    name = "dualproj"
    kind = "gradient"

    def build(self, num_tasks: int, seed: int = 0) -> DualProj:
        self.check(num_tasks, frozenset())
        return DualProj(num_tasks, seed)
