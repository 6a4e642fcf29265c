"""PCGrad: project each task gradient away from the gradients it conflicts with (mtrl variant: mean reduction)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase
from mtrl.mto.gramian import GramianCombiner


def pcgrad_weights(gram: Tensor, orders: Tensor) -> Tensor:
    """PCGrad in Gramian space: the coefficients ``[K, K]`` of every projected gradient in the original ones.

    Row ``i`` of the result holds ``c_i`` with ``g_i^PC = sum_j c_ij g_j``. The projections are onto the
    **original** gradients, so ``g_i^PC . g_j = (c_i @ gram)_j`` and every step is a ``K``-vector update; all rows
    are updated together, one round per position in the orders (``K - 1`` rounds), exactly like the vectorised mtrl
    code.

    :param gram: ``[K, K]`` Gramian (float64).
    :param orders: ``[K, K-1]`` integer: row ``i`` is the order in which task ``i`` visits the other tasks.
    """
    k = gram.shape[0]
    # NumPy: K - 1 rounds of a few operations on K-vectors, where torch's per-call overhead would dominate
    full = gram.detach().cpu().numpy()
    order = orders.numpy()
    coef = np.eye(k, dtype=full.dtype)
    rows = np.arange(k)
    diag = full.diagonal()
    tiny = np.finfo(full.dtype).tiny
    for r in range(k - 1):
        j = order[:, r]  # [K]
        dots = np.einsum("ij,ij->i", coef, full[j])  # g_i^PC . g_j  (gram symmetric: gram[:, j]^T = gram[j])
        gjj = diag[j]
        step = np.where((dots < 0) & (gjj > 0), dots / np.maximum(gjj, tiny), 0.0)
        coef[rows, j] -= step
    return torch.from_numpy(coef)


def random_orders(num_tasks: int, generator: torch.Generator) -> Tensor:
    """``[K, K-1]``: for each task ``i`` a uniformly random order of the other tasks."""
    keys = torch.rand(num_tasks, num_tasks, generator=generator)
    keys.fill_diagonal_(2.0)  # task i itself sorts last and is cut off
    return keys.argsort(dim=1)[:, : num_tasks - 1]


class PCGrad(GramianCombiner):
    r"""PCGrad (Yu et al. 2020, https://arxiv.org/abs/2001.06782), mtrl variant (facebookresearch/mtrl
    ``mtrl/agent/pcgrad.py``): the **mean** of the projected gradients.

    .. math:: g_i^{PC} \leftarrow g_i^{PC} - \frac{\min(g_i^{PC} \cdot g_j, 0)}{\|g_j\|^2} g_j
        \;\; \text{for } j \in \pi_i, \qquad d = \frac{1}{K} \sum_i g_i^{PC}

    with ``pi_i`` a random order of the other tasks, drawn per task and per call from the owned generator, and the
    projections onto the original ``g_j``. Computed on the Gramian (:func:`pcgrad_weights`), so the cost beyond
    ``G G^T`` is ``O(K^3)`` on ``K``-vectors, not ``O(K^2 P)``.

    Scale: equals ``mean`` when no pair conflicts; the paper, torchjd, LibMTL and nash-mtl sum (K times this).
    Differences to mtrl: exact ``||g_j||^2`` (mtrl adds 1e-8 to ``||g_j||``, which breaks projections at tiny
    scales); torch generator instead of an unseeded numpy one. K=1 returns the single gradient.
    """

    def weights(self, gram: Tensor) -> Tensor:
        k = gram.shape[0]
        return pcgrad_weights(gram, random_orders(k, self.generator)).mean(0)


@dataclass(frozen=True)
class PCGradConfig(CombinerConfigBase):
    """PCGrad (mtrl variant: mean of the projected gradients, random order per task)."""

    name = "pcgrad"
    kind = "gradient"

    def build(self, num_tasks: int, seed: int = 0) -> PCGrad:
        self.check(num_tasks, frozenset())
        return PCGrad(num_tasks, seed)
