"""UPGrad: the mean of the task gradients, each first projected onto the dual cone of all of them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase
from mtrl.mto.gramian import GramianCombiner
from mtrl.mto.qp import DUAL_CONE_TOL, dual_cone_tol, dual_cone_weights


def upgrad_weights(gram: Tensor, rtol: float = DUAL_CONE_TOL) -> Tensor:
    """The UPGrad weights ``[K]``: the sum of the weights of the projections of ``g_i / K`` onto the dual cone
    (:func:`~mtrl.mto.qp.dual_cone_weights`, all K at once).

    :param gram: ``[K, K]`` float64 CPU Gramian.
    :param rtol: relative optimality tolerance of the projections.
    """
    k = gram.shape[0]
    return dual_cone_weights(gram, torch.eye(k, dtype=torch.float64) / k, rtol).sum(dim=0)


class UPGrad(GramianCombiner):
    r"""UPGrad (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization",
    https://arxiv.org/abs/2406.16232): project every task gradient onto the dual cone of the rows of ``J`` (the
    directions that increase no task loss at first order), then average.

    .. math:: d = \frac1K \sum_{i=1}^K \pi_J(g_i), \qquad
        \pi_J(x) = \arg\min_{y \,:\, J y \ge 0} \|y - x\|^2 = J^\top v, \quad
        v = \arg\min_{v \ge e_i / K} v^\top G v \;\; (x = g_i / K)

    Each projection is a non-negative least-squares problem on the Gramian, solved **exactly** (block principal
    pivoting, Lawson-Hanson where the gradients are linearly dependent; :func:`~mtrl.mto.qp.dual_cone_weights`), not
    with torchjd's quadprog on the trace-normalised ``G + 1e-4 I`` (whose regularisation moves ``d`` by ~1e-3
    relative). The direction is non-conflicting, ``J d >= 0`` (to a tolerance relative to each task's own terms:
    1e-12, or 10 eps of float32 gradients), and ``d`` is in the row span: ``d = sum_k w_k g_k``.

    Scale: torchjd's (preference vector ``1/K``, the default): where no pair of gradients conflicts every projection
    is the gradient itself and ``d`` is exactly ``mean``; otherwise ``||d|| <= mean_i ||g_i||``. The paper's
    ``pref = 1`` version is K times this. K=1 returns the single gradient; a zero row is left out of the constraints
    (it constrains nothing).
    """

    def weights(self, gram: Tensor) -> Tensor:
        return upgrad_weights(gram, dual_cone_tol(self.grad_dtype))


@dataclass(frozen=True)
class UPGradConfig(CombinerConfigBase):
    """UPGrad: mean of the task gradients projected onto the dual cone (exact non-negative least squares)."""

    name = "upgrad"
    kind = "gradient"

    def build(self, num_tasks: int, seed: int = 0) -> UPGrad:
        self.check(num_tasks, frozenset())
        return UPGrad(num_tasks, seed)
