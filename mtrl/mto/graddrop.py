"""GradDrop: keep, per parameter coordinate, only the gradient entries of one sign, chosen at random."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import Combiner, CombinerConfigBase, Jacobian, as_blocks, fmt
from mtrl.mto.gramian import GRAM_BLOCK, checked_gramian


def column_sums(grads: Tensor) -> tuple[Tensor, Tensor]:
    """``(sum_i g_i, sum_i |g_i|)`` over the rows of ``grads [K, P]``, in column blocks (no ``[K, P]`` temporary)."""
    k, p = grads.shape
    ones = grads.new_ones(k)
    total = grads.new_empty(p)
    absolute = grads.new_empty(p)
    for start in range(0, p, GRAM_BLOCK):
        block = grads[:, start : start + GRAM_BLOCK]
        torch.mv(block.T, ones, out=total[start : start + GRAM_BLOCK])
        torch.mv(block.abs().T, ones, out=absolute[start : start + GRAM_BLOCK])
    return total, absolute


class GradDrop(Combiner):
    r"""GradDrop (Chen et al. NeurIPS 2020, https://arxiv.org/abs/2010.06808), on **parameter** gradients (as
    torchjd and the CAGrad repo's NYUv2 baseline; the official lingvo layer acts on an activation tensor).

    .. math:: P = \tfrac12 \Big(1 + \frac{\sum_i g_i}{\sum_i |g_i|}\Big), \quad U \sim \mathcal U(0, 1), \quad
        M_i = [P > U][g_i > 0] + [P < U][g_i < 0], \quad
        d = \frac1K \sum_i (\ell + (1 - \ell) M_i)\, g_i

    all per coordinate, ``U`` drawn per call from the owned generator. Computed from the two column sums
    ``S = sum_i g_i`` and ``A = sum_i |g_i|`` (the kept positive part is ``(A + S)/2``, the negative ``(S - A)/2``): two
    passes over ``G`` and no ``[K, P]`` masks. A zero column gives 0.

    Scale: the mean (torchjd and the paper sum: K times this); coordinates where all tasks agree in sign equal
    ``mean``; ``leak = 1`` is exactly ``mean``. K=1 returns the single gradient. Not a weighted method: no
    ``weight/<k>`` stats.
    """

    requires_grads = True
    accepts_blocks = True  # column-wise: each block's column sums, one threshold draw over all P columns

    def __init__(self, num_tasks: int, seed: int = 0, leak: float = 0.0) -> None:
        super().__init__(num_tasks, seed)
        self.leak = leak

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        assert grads is not None  # checked by Combiner.__call__
        gram = checked_gramian(self, grads, losses)  # for the stats; also the finiteness check
        blocks = as_blocks(grads)
        sums = [column_sums(block) for block in blocks]
        total, absolute = torch.cat([t for t, _ in sums]), torch.cat([a for _, a in sums])  # [P] each
        generator = self.device_generator(total.device)
        threshold = torch.rand(total.shape, generator=generator, dtype=total.dtype, device=total.device)
        # P > U  <=>  S/A > 2U - 1 (a zero column gives NaN: neither sign kept, and its entries are 0 anyway)
        threshold.mul_(2.0).sub_(1.0)
        ratio = total / absolute
        keep_positive, keep_negative = ratio > threshold, ratio < threshold
        del ratio, threshold
        leaked = total * (self.leak / self.num_tasks) if self.leak else None
        direction = absolute.add(total).mul_(keep_positive)  # 2 x kept positive part
        direction.add_(total.sub_(absolute).mul_(keep_negative))  # + 2 x kept negative part
        direction.mul_((1.0 - self.leak) * 0.5 / self.num_tasks)
        if leaked is not None:
            direction.add_(leaked)
        self.record_stats(gram, direction=direction)
        return list(direction.split([b.shape[1] for b in blocks])) if isinstance(grads, list) else direction

    def __str__(self) -> str:
        return "graddrop" if self.leak == 0 else f"graddrop-leak{fmt(self.leak)}"


@dataclass(frozen=True)
class GradDropConfig(CombinerConfigBase):
    """GradDrop on parameter gradients: random per-coordinate sign selection."""

    name = "graddrop"
    kind = "gradient"

    leak: float = 0.0
    """Fraction of every task gradient that always passes (0 = paper default; 1 = mean)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``leak`` in ``[0, 1]``."""
        super().check(num_tasks, parts)
        if not (math.isfinite(self.leak) and 0.0 <= self.leak <= 1.0):
            raise ValueError(f"combiner.leak: got {self.leak}, expected a number in [0, 1]")

    def build(self, num_tasks: int, seed: int = 0) -> GradDrop:
        self.check(num_tasks, frozenset())
        return GradDrop(num_tasks, seed, leak=self.leak)
