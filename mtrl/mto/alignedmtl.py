"""Aligned-MTL: align the task gradients into an orthogonal, equal-norm system before combining them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, Jacobian, as_blocks
from mtrl.mto.gramian import GramianCombiner


def aligned_weights(gram: Tensor, scale_mode: str, eps: float) -> Tensor:
    """``B @ (1/K)``: the balance transformation ``B = sqrt(s) V diag(lambda^{-1/2}) V^T`` of the Gramian applied to
    the mean preference (torchjd's ``AlignedMTLWeighting``).

    :param gram: ``[K, K]`` float64 Gramian.
    :param scale_mode: ``min``, ``median`` or ``rmse`` (mean eigenvalue): which eigenvalue ``s`` sets the norm.
    :param eps: machine epsilon of the gradients' dtype; eigenvalues below ``lambda_max * K * eps`` are dropped.
    """
    k = gram.shape[0]
    pref = torch.full((k,), 1.0 / k, dtype=gram.dtype)
    lam, vec = torch.linalg.eigh(gram)
    keep = lam > lam.max() * k * eps
    if not bool(keep.any()):
        return pref
    lam, vec = lam[keep], vec[:, keep]
    if scale_mode == "min":
        s = lam.min()
    elif scale_mode == "median":
        s = lam.median()
    else:
        s = lam.mean()
    balance = s.sqrt() * (vec * lam.rsqrt()) @ vec.T
    return balance @ pref


class AlignedMTL(GramianCombiner):
    r"""Aligned-MTL (Senushkin et al. CVPR 2023, https://arxiv.org/abs/2305.19000): make the task gradients
    orthogonal with equal norms (the closest such system, Procrustes on the Gramian's eigendecomposition), then
    average them.

    .. math:: G = V \Lambda V^\top, \quad B = \sqrt{\lambda_{\min}}\, V \Lambda^{-1/2} V^\top, \quad
        \hat J = B J \;(\hat J \hat J^\top = \lambda_{\min} I \text{ on the range}), \quad
        d = \frac{1}{K} \mathbf 1^\top \hat J

    Eigenvalues below ``lambda_max * K * eps`` (eps of the gradients' dtype) are dropped (rank-deficient ``G``);
    with none left (``J = 0``) the result is the mean (zero).

    Scale: torchjd's (``pref = 1/K``): orthogonal gradients of equal norm give the mean; the official SamsungLabs code
    sums the aligned gradients (K times this). ``scale_mode`` ``min`` (default), ``median`` or ``rmse`` (mean
    eigenvalue) as in both. K=1 returns the single gradient.
    """

    def __init__(self, num_tasks: int, seed: int = 0, scale_mode: Literal["min", "median", "rmse"] = "min") -> None:
        super().__init__(num_tasks, seed)
        self.scale_mode = scale_mode
        self._eps = torch.finfo(torch.float64).eps

    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        if grads is not None:
            self._eps = torch.finfo(as_blocks(grads)[0].dtype).eps
        return super().forward(grads, losses)

    def weights(self, gram: Tensor) -> Tensor:
        return aligned_weights(gram, self.scale_mode, self._eps)

    def __str__(self) -> str:
        return "alignedmtl" if self.scale_mode == "min" else f"alignedmtl-{self.scale_mode}"


@dataclass(frozen=True)
class AlignedMTLConfig(CombinerConfigBase):
    """Aligned-MTL: orthogonal, equal-norm aligned task gradients, averaged."""

    name = "alignedmtl"
    kind = "gradient"

    scale_mode: Literal["min", "median", "rmse"] = "min"
    """Which eigenvalue of the Gramian sets the aligned gradients' norm: min (paper default), median, or rmse (mean
    eigenvalue)."""

    def build(self, num_tasks: int, seed: int = 0) -> AlignedMTL:
        self.check(num_tasks, frozenset())
        return AlignedMTL(num_tasks, seed, scale_mode=self.scale_mode)
