"""GradVac: raise the cosine of every pair of task gradients to its running (EMA) target."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, fmt
from mtrl.mto.gramian import GramianCombiner

#: floor of ``sqrt(1 - target^2)`` in the correction: a target cosine within ~1e-16 of 1 (reached by the EMA of
#: exactly parallel gradients) would need an infinite correction; with the floor it is finite (at most ``1 / floor``
#: times ``||g_i|| / ||g_j||``)
_SINE_FLOOR = math.sqrt(torch.finfo(torch.float64).eps)


def gradvac_coefficients(gram: Tensor, orders: Tensor, targets: Tensor, beta: float) -> Tensor:
    r"""GradVac in Gramian space: the coefficients ``[K, K]`` of every corrected gradient in the original ones.

    Row ``i`` holds ``c_i`` with ``g_i' = sum_j c_ij g_j``, so ``g_i' . g_j = (c_i G)_j`` and
    ``||g_i'||^2 = c_i G c_i^T``. Task ``i`` visits the other tasks in the order ``orders[i]``; at each ``j``, with
    ``phi = cos(g_i', g_j)`` and the target ``t = targets[i, j]``:

    .. math:: \phi < t: \quad g_i' \leftarrow g_i' + \frac{\|g_i'\| \big(t \sqrt{1 - \phi^2} - \phi \sqrt{1 - t^2}\big)}
        {\|g_j\| \sqrt{1 - t^2}} \, g_j, \qquad t \leftarrow (1 - \beta)\, t + \beta \phi

    (after the correction ``cos(g_i', g_j) = t``; the EMA takes the cosine before it). The rows are independent, so
    they are updated together, one round per position in the orders (``K - 1`` rounds of ``K``-vector work). A zero
    ``g_i'`` or ``g_j`` has cosine 0 and is not corrected (nothing to rotate, or nothing to rotate towards).

    :param gram: ``[K, K]`` float64 Gramian.
    :param orders: ``[K, K-1]`` integer: row ``i`` is the order in which task ``i`` visits the other tasks.
    :param targets: ``[K, K]`` float64 EMA targets ``phi_hat``, updated in place.
    :param beta: the EMA rate.
    """
    k = gram.shape[0]
    if k < 2:
        return torch.eye(k, dtype=gram.dtype)
    # NumPy: the K - 1 rounds are ~20 operations on K-vectors each, where torch's per-call overhead (~5-10 us) is
    # most of the cost (K=50: ~1000 calls per update, 3.4x mean's update on an H200)
    full = gram.detach().cpu().numpy()
    top = float(full.diagonal().max())
    g = full / top if top > 0 else full  # cosines and the corrections are invariant to a global scale
    order = orders.numpy()
    rows = np.arange(k)
    dots = g.copy()  # row i: g_i' . g_j for every j
    sq = g.diagonal().copy()  # ||g_i'||^2
    norms = np.sqrt(np.maximum(g.diagonal(), 0.0))[order]  # [K, K-1]: ||g_j|| in visiting order
    diag = g.diagonal()[order]
    saved = targets.numpy()  # shares memory: updated in place below
    goals = np.take_along_axis(saved, order, axis=1)  # the targets in visiting order
    sines = np.maximum(np.sqrt(np.maximum(1.0 - goals * goals, 0.0)), _SINE_FLOOR)
    seen = np.empty_like(goals)  # the cosines before the corrections, for the EMA
    steps = np.empty_like(goals)
    for r in range(k - 1):
        j = order[:, r]
        dot = dots[rows, j]
        norm_i = np.sqrt(np.maximum(sq, 0.0))
        denom = norm_i * norms[:, r]
        phi = np.clip(dot / np.maximum(denom, 1e-300), -1.0, 1.0)  # dot = 0 exactly where a vector is 0
        seen[:, r] = phi
        target, sine_t = goals[:, r], sines[:, r]
        step = norm_i * (target * np.sqrt(np.maximum(1.0 - phi * phi, 0.0)) - phi * sine_t)
        step = step / np.maximum(norms[:, r] * sine_t, 1e-300) * ((phi < target) & (denom > 0))
        steps[:, r] = step
        dots += step[:, None] * g[j]
        sq = sq + step * (2.0 * dot + step * diag[:, r])
    np.put_along_axis(saved, order, (1.0 - beta) * goals + beta * seen, axis=1)
    coef = np.eye(k)
    coef[rows[:, None], order] += steps  # row i's columns are the other tasks, each once
    return torch.from_numpy(coef).to(gram.dtype)


def random_orders(num_tasks: int, generator: torch.Generator) -> Tensor:
    """``[K, K-1]``: for each task ``i`` (in task order) a uniformly random order of the other tasks, drawn as
    ``randperm(K - 1)`` over them (torchjd's draws, so equally seeded generators give its orders)."""
    tasks = torch.arange(num_tasks)
    out = torch.empty(num_tasks, max(num_tasks - 1, 0), dtype=torch.long)
    for i in range(num_tasks):
        others = tasks[tasks != i]
        out[i] = others[torch.randperm(num_tasks - 1, generator=generator)]
    return out


class GradVac(GramianCombiner):
    r"""Gradient Vaccine (Wang et al. ICLR 2021, "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", https://arxiv.org/abs/2010.05874, Algorithm 1), whole-model
    variant: for every task ``i`` and every other task ``j`` (in a random order), if ``cos(g_i', g_j)`` is below its
    running target ``phi_hat_ij``, add the multiple of ``g_j`` that brings it to the target; then move the target
    towards the observed cosine.

    .. math:: g_i' \leftarrow g_i' + \frac{\|g_i'\| \big(\hat\phi_{ij} \sqrt{1 - \phi_{ij}^2}
        - \phi_{ij} \sqrt{1 - \hat\phi_{ij}^2}\big)}{\|g_j\| \sqrt{1 - \hat\phi_{ij}^2}} \, g_j
        \;\; \text{if } \phi_{ij} < \hat\phi_{ij}, \qquad
        \hat\phi_{ij} \leftarrow (1 - \beta) \hat\phi_{ij} + \beta \phi_{ij}, \qquad d = \frac1K \sum_i g_i'

    Computed on the Gramian (:func:`gradvac_coefficients`). The targets ``phi_hat [K, K]`` start at 0 (so the first
    call is PCGrad with random orders) and live in a buffer (``state_dict``); the orders are drawn per task and per
    call from the owned generator, as torchjd draws them. With ``beta = 0`` the targets stay 0 (PCGrad). Per-layer
    grouping (the paper's best NMT variant) is not implemented: one group, the whole shared parameter vector (torchjd
    and LibMTL ``group_type=0``).

    Scale: the **mean** of the corrected gradients (equals ``mean`` where every cosine is at or above its target);
    torchjd, LibMTL and the paper sum them (K times this). Exact cosines (torchjd adds ``eps = 1e-8`` to the
    denominators, which breaks the correction at tiny gradient scales; ours is scale-invariant). K=1 returns the
    single gradient.
    """

    phi_hat: Tensor

    def __init__(self, num_tasks: int, seed: int = 0, beta: float = 0.5) -> None:
        super().__init__(num_tasks, seed)
        self.beta = beta
        self.register_buffer("phi_hat", torch.zeros(num_tasks, num_tasks, dtype=torch.float64))

    def weights(self, gram: Tensor) -> Tensor:
        k = gram.shape[0]
        targets = self.phi_hat.detach().to("cpu", torch.float64).clone()
        coef = gradvac_coefficients(gram, random_orders(k, self.generator), targets, self.beta)
        self.phi_hat.copy_(targets)
        return coef.sum(dim=0) / k

    def __str__(self) -> str:
        return "gradvac" if self.beta == 0.5 else f"gradvac-b{fmt(self.beta)}"


@dataclass(frozen=True)
class GradVacConfig(CombinerConfigBase):
    """GradVac: raise pairwise cosines to their EMA targets (whole model; mean of the corrected gradients)."""

    name = "gradvac"
    kind = "gradient"

    beta: float = 0.5
    """EMA rate of the cosine targets, in [0, 1] (torchjd and LibMTL default 0.5; 0: targets stay 0, i.e. PCGrad)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``beta`` finite and in ``[0, 1]``."""
        super().check(num_tasks, parts)
        if not (math.isfinite(self.beta) and 0.0 <= self.beta <= 1.0):
            raise ValueError(f"combiner.beta: got {self.beta}, expected a number in [0, 1]")

    def build(self, num_tasks: int, seed: int = 0) -> GradVac:
        self.check(num_tasks, frozenset())
        return GradVac(num_tasks, seed, beta=self.beta)
