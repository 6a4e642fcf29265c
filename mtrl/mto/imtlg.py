"""IMTL-G: the update with equal projections on every task's unit gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase
from mtrl.mto.gramian import GramianCombiner


def imtlg_weights(gram: Tensor, rtol: float) -> Tensor:
    """``v = pinv(G) sqrt(diag G)``, ``w = v / sum(v)`` (0 when ``|sum v|`` is negligible).

    :param gram: ``[K, K]`` float64 Gramian.
    :param rtol: relative cut-off of the pseudo-inverse's eigenvalues (rank decision).
    """
    scale = float(gram.diagonal().max())
    if scale <= 0.0:
        return torch.zeros(gram.shape[0], dtype=gram.dtype)
    g = gram / scale  # the weights are invariant to a global scale
    v = torch.linalg.pinv(g, rtol=rtol, hermitian=True) @ g.diagonal().clamp_min(0).sqrt()
    total = float(v.sum())
    if abs(total) < 1e-12:
        return torch.zeros_like(v)
    return v / total


class IMTLG(GramianCombiner):
    r"""IMTL-G (Liu et al. ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr): the combination of the task
    gradients whose projections on all unit gradients ``u_i = g_i / ||g_i||`` are equal.

    .. math:: d = \sum_i w_i g_i, \quad d \cdot u_1 = \dots = d \cdot u_K, \quad \sum_i w_i = 1, \qquad
        w = \frac{G^{+} \sqrt{\operatorname{diag} G}}{\mathbf 1^\top G^{+} \sqrt{\operatorname{diag} G}}

    on the Gramian ``G = J J^T``: torchjd's form (equal to the paper's ``D U^T`` closed form for full-rank ``J``,
    and defined for linearly dependent rows). The pseudo-inverse's rank cut-off is ``K * eps`` of the gradients'
    dtype, so float32 rounding noise in ``G`` is not mistaken for rank.

    Scale: the weights sum to 1, so identical gradients give the mean; K=1 returns the single gradient. Zero
    direction when the weights are undefined (``sum v = 0``).
    """

    def weights(self, gram: Tensor) -> Tensor:
        return imtlg_weights(gram, self.num_tasks * torch.finfo(self.grad_dtype).eps)


@dataclass(frozen=True)
class IMTLGConfig(CombinerConfigBase):
    """IMTL-G: equal projection of the update on every task's unit gradient."""

    name = "imtlg"
    kind = "gradient"

    def build(self, num_tasks: int, seed: int = 0) -> IMTLG:
        self.check(num_tasks, frozenset())
        return IMTLG(num_tasks, seed)
