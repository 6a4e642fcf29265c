"""GradDrop: keep, per parameter coordinate, only the gradient entries of one sign, chosen at random."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import Combiner, CombinerConfigBase, Jacobian, NonFiniteError, as_blocks, fmt
from mtrl.mto.gramian import GRAM_BLOCK


def gramian_and_column_sums(grads: Jacobian) -> tuple[Tensor, Tensor, Tensor]:
    """``G G^T`` and the column sums ``(sum_i g_i, sum_i |g_i|)`` of ``grads [K, P]`` (or of its column blocks,
    concatenated), in one pass over ``G``.

    Each block is read in column chunks of :data:`~mtrl.mto.gramian.GRAM_BLOCK`: the Gramian update and both column
    sums of a chunk run while it is in cache, and ``|g|`` goes to one reused chunk-sized scratch buffer (no ``[K, P]``
    temporary). The Gramian is accumulated exactly as :func:`mtrl.mto.gramian.gramian` does (same chunks and order,
    float64 CPU, symmetrised) and the sums as ``G^T 1`` per chunk.

    :param grads: ``[K, P]`` gradients or their ``[K, P_i]`` column blocks.
    :returns: the Gramian ``[K, K]`` (float64, CPU) and the two sums ``[P]`` (the gradients' dtype and device).
    """
    blocks = as_blocks(grads)
    ref = blocks[0]
    k = ref.shape[0]
    width = sum(block.shape[1] for block in blocks)
    total, absolute = ref.new_empty(width), ref.new_empty(width)
    gram = ref.new_zeros(k, k)
    ones = ref.new_ones(k)
    scratch = ref.new_empty(k * min(GRAM_BLOCK, max(block.shape[1] for block in blocks)))
    start = 0
    for block in blocks:
        cpu_split = block.device.type == "cpu" and block.shape[1] > GRAM_BLOCK
        if not cpu_split:  # one GEMM per block off the CPU (as gramian())
            gram.addmm_(block, block.T)
        for part in block.split(GRAM_BLOCK, dim=1):
            n = part.shape[1]
            if cpu_split:
                gram.addmm_(part, part.T)
            torch.mv(part.T, ones, out=total[start : start + n])
            magnitude = torch.abs(part, out=scratch[: k * n].view(k, n))
            torch.mv(magnitude.T, ones, out=absolute[start : start + n])
            start += n
    gram = gram.to("cpu", torch.float64)
    return 0.5 * (gram + gram.T), total, absolute


class GradDrop(Combiner):
    r"""GradDrop (Chen et al. NeurIPS 2020, https://arxiv.org/abs/2010.06808), on **parameter** gradients (as
    torchjd and the CAGrad repo's NYUv2 baseline; the official lingvo layer acts on an activation tensor).

    .. math:: P = \tfrac12 \Big(1 + \frac{\sum_i g_i}{\sum_i |g_i|}\Big), \quad U \sim \mathcal U(0, 1), \quad
        M_i = [P > U][g_i > 0] + [P < U][g_i < 0], \quad
        d = \frac1K \sum_i (\ell + (1 - \ell) M_i)\, g_i

    all per coordinate, ``U`` drawn per call from the owned generator. Computed from the two column sums
    ``S = sum_i g_i`` and ``A = sum_i |g_i|`` (the kept positive part is ``(A + S)/2``, the negative ``(S - A)/2``):
    one pass over ``G`` that also accumulates the Gramian for the stats and the finiteness check
    (:func:`gramian_and_column_sums`), then a few passes over ``[P]`` vectors; no ``[K, P]`` masks or temporaries.
    A zero column gives 0.

    Scale: the mean (torchjd and the paper sum: K times this); coordinates where all tasks agree in sign equal
    ``mean``; ``leak = 1`` is exactly ``mean``. K=1 returns the single gradient. Not a weighted method: no
    ``weight/<k>`` stats.
    """

    requires_grads = True
    accepts_blocks = True  # column-wise: each block's column sums, one threshold draw over all P columns

    def __init__(self, num_tasks: int, seed: int = 0, leak: float = 0.0) -> None:
        """:param num_tasks: K.
        :param seed: seed of the generator of the thresholds ``U``.
        :param leak: ``ell``, the fraction of every task gradient that always passes.
        """
        super().__init__(num_tasks, seed)
        self.leak = leak

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        assert grads is not None  # checked by Combiner.__call__
        self.check_finite(None, losses)
        gram, total, absolute = gramian_and_column_sums(grads)
        if not bool(torch.isfinite(gram).all()):  # the diagonal screens G (as checked_gramian)
            self.check_finite(grads, losses)
            raise NonFiniteError(
                f"combiner '{self}': the Gramian of the (finite) gradients overflows {as_blocks(grads)[0].dtype}"
            )
        generator = self.device_generator(total.device)
        threshold = torch.rand(total.shape, generator=generator, dtype=total.dtype, device=total.device)
        # P > U  <=>  S/A > 2U - 1 (a zero column gives NaN: neither sign kept, and its entries are 0 anyway); the
        # 0/1 masks are written as floats (cheaper to apply than bools)
        threshold.mul_(2.0).sub_(1.0)
        ratio = torch.div(total, absolute)
        keep_positive = torch.gt(ratio, threshold, out=torch.empty_like(ratio))
        keep_negative = torch.lt(ratio, threshold, out=threshold)
        negative = torch.sub(total, absolute, out=ratio).mul_(keep_negative)  # 2 x kept negative part
        direction = absolute.add_(total).mul_(keep_positive)  # 2 x kept positive part, in place of A
        direction.add_(negative).mul_((1.0 - self.leak) * 0.5 / self.num_tasks)
        if self.leak:
            direction.add_(total.mul_(self.leak / self.num_tasks))
        self.record_stats(gram, direction=direction)
        return list(direction.split([b.shape[1] for b in as_blocks(grads)])) if isinstance(grads, list) else direction

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
