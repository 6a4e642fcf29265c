"""ConFIG: the direction with equal cosine to every task gradient, with the length of the mean gradient on it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase
from mtrl.mto.gramian import GramianCombiner


def con_fig_weights(gram: Tensor, rtol: float) -> Tensor:
    r"""The ConFIG weights ``[K]`` from the Gramian alone (mean scale):

    .. math:: C = D^{-1} G D^{-1} = U U^\top, \quad a = C^{+} \mathbf 1, \quad b = D^{-1} a \;\;
        (U^{+} \mathbf 1 = U^\top a = J^\top b), \qquad
        w = \frac{\mathbf 1^\top G b}{K \, b^\top G b} \, b

    with ``D = diag ||g_i||`` (a zero row of ``U`` for a zero gradient). The pseudo-inverse keeps the eigenvalues of
    ``C`` above ``rtol`` times the largest (the rank decision). Zero weights when ``C^+ 1`` is 0: ``J = 0``, or the
    component of ``1`` in the range of ``C`` at most ``rtol sqrt(K)`` (``g`` and ``-g``; rank one with as many
    positive as negative multiples), where the unit direction is rounding noise.

    :param gram: ``[K, K]`` float64 CPU Gramian.
    :param rtol: relative cut-off of the eigenvalues of ``C``.
    """
    k = gram.shape[0]
    norms = gram.diagonal().clamp_min(0).sqrt()
    top = float(norms.max())
    if not top > 0.0:
        return torch.zeros(k, dtype=torch.float64)
    g = gram / (top * top)  # the weights are invariant to a global scale
    norms = norms / top
    inv = torch.where(norms > 0, 1.0 / norms.clamp_min(1e-300), 0.0)
    corr = g * inv[:, None] * inv[None, :]
    lam, vec = torch.linalg.eigh(corr)
    keep = lam > float(lam.max()) * rtol
    coef = vec[:, keep].T @ torch.ones(k, dtype=torch.float64)  # components of 1 in the kept eigenvectors
    if not float(coef.norm()) > rtol * math.sqrt(k):  # 1 orthogonal to the range (to rounding): U^+ 1 = 0
        return torch.zeros(k, dtype=torch.float64)
    norm2 = float((coef * coef / lam[keep]).sum())  # ||U^+ 1||^2 = a^T C a
    b = (vec[:, keep] @ (coef / lam[keep])) * inv
    length = float((g @ b).sum()) / math.sqrt(norm2)  # sum_i g_i . u with u = J^T b / ||J^T b||
    return b * (length / (k * math.sqrt(norm2)))


class ConFIG(GramianCombiner):
    r"""ConFIG (Liu et al. 2024, "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks",
    https://arxiv.org/abs/2408.11104, eq. 2): the unit direction with the same cosine to every task gradient, scaled
    by the projections of the gradients on it.

    .. math:: u = \frac{U^{+} \mathbf 1}{\|U^{+} \mathbf 1\|}, \quad
        U = \Big[\frac{g_1}{\|g_1\|}, \dots, \frac{g_K}{\|g_K\|}\Big]^\top, \qquad
        d = \frac1K \Big(\sum_i g_i^\top u\Big) u = (\bar g^\top u)\, u

    Computed on the Gramian (:func:`con_fig_weights`): ``U^+ 1 = U^T (U U^T)^+ 1`` with ``U U^T`` the correlation
    matrix, so no ``[K, P]`` pseudo-inverse (torchjd's ``pinv(U)`` takes seconds at P = 700k). The pseudo-inverse
    cut-off is ``K eps`` of the gradients' dtype (eigenvalues of ``U U^T``), so float32 rounding in ``G`` is not taken
    for rank. ``U u = 1 / ||U^+ 1||`` when the unit gradients are linearly independent: every task gets the same
    cosine ``1 / ||U^+ 1|| > 0`` (conflict-free); ``d`` is in the row span.

    Scale: the **mean** of the projections (the projection of the mean gradient on ``u``), so identical gradients give
    ``mean`` and ``||d|| <= ||mean||``; the paper, torchjd and the official code (``ProjectionLength``) sum them (K
    times this). K=1 returns the single gradient. Zero direction where ``U^+ 1 = 0``.
    """

    def weights(self, gram: Tensor) -> Tensor:
        return con_fig_weights(gram, self.num_tasks * torch.finfo(self.grad_dtype).eps)

    def __str__(self) -> str:
        return "con_fig"


@dataclass(frozen=True)
class ConFIGConfig(CombinerConfigBase):
    """ConFIG: equal cosine to every task gradient, mean of the projections as length (Gramian-space pseudo-inverse)."""

    name = "con_fig"
    kind = "gradient"

    def build(self, num_tasks: int, seed: int = 0) -> ConFIG:
        self.check(num_tasks, frozenset())
        return ConFIG(num_tasks, seed)
