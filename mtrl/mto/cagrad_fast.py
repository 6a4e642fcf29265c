"""CAGrad-Fast: CAGrad on k random task groups instead of the K tasks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, Jacobian, fmt
from mtrl.mto.cagrad import ball_direction, cagrad_dual, cagrad_dual_weights, check_c, record_ball_stats
from mtrl.mto.gramian import GramianCombiner, checked_gramian, single_thread


def random_groups(num_tasks: int, k: int, grouping: str, generator: torch.Generator) -> Tensor:
    """``[k', K]`` averaging matrix of a random partition of the tasks (``k' = min(k, K)`` groups, row ``m`` is
    ``1/n_m`` on the tasks of group ``m``).

    ``even``: a random permutation cut into ``k'`` groups whose sizes differ by at most one. ``singletons``: ``k'-1``
    random single tasks and one group with all the others (what MTRL's ``cagrad_fast{k}`` intends).
    """
    k = min(k, num_tasks)
    perm = torch.randperm(num_tasks, generator=generator)
    if grouping == "singletons":
        sizes = [1] * (k - 1) + [num_tasks - (k - 1)]
    else:
        sizes = [num_tasks // k + (1 if m < num_tasks % k else 0) for m in range(k)]
    avg = torch.zeros(k, num_tasks, dtype=torch.float64)
    start = 0
    for m, size in enumerate(sizes):
        avg[m, perm[start : start + size]] = 1.0 / size
        start += size
    return avg


class CAGradFast(GramianCombiner):
    r"""CAGrad-Fast (Liu et al. 2021, https://arxiv.org/abs/2110.14048, Sec. 3.3): CAGrad on the average gradients
    of ``k`` random task groups, redrawn every call from the owned generator.

    .. math:: \hat g_m = \frac{1}{n_m} \sum_{i \in m} g_i, \quad g_0 = \sum_m \frac{n_m}{K} \hat g_m = \bar g, \quad
        d = \frac{g_0 + \lambda \hat g_{w^\star}}{1 + c^2}

    with ``w*`` the exact CAGrad dual solution on the ``k x k`` group Gramian ``A G A^T``
    (:func:`~mtrl.mto.cagrad.cagrad_dual` with base weights ``n_m / K``) and ``lambda = c ||g_0|| / ||\hat g_{w^*}||``,
    both norms from the vectors (:func:`~mtrl.mto.cagrad.ball_direction`), so that, as for CAGrad,
    ``||(1 + c^2) d - g_0|| = c ||g_0||`` (``g_0`` is the mean over the tasks, whatever the groups). Here the saving is
    the smaller dual; with per-task gradients from one vmapped pass the ``K`` rows are there anyway.

    Scale: ``1/(1 + c^2)`` like :class:`~mtrl.mto.cagrad.CAGrad` (c=0 is exactly ``mean``); MTRL's ``cagrad_fast``
    divides by ``1 + c``. MTRL's grouping code also drops one task from its averaged group and divides by one too
    many (``range(n, K)`` instead of ``range(n - 1, K)``); not copied. ``k >= K`` is CAGrad.
    """

    def __init__(
        self,
        num_tasks: int,
        seed: int = 0,
        c: float = 0.4,
        k: int = 4,
        grouping: Literal["even", "singletons"] = "even",
    ) -> None:
        super().__init__(num_tasks, seed)
        self.c = c
        self.k = k
        self.grouping = grouping

    def weights(self, gram: Tensor) -> Tensor:
        """The coefficients ``[K]`` from the Gramian alone (``lambda`` from ``w^T G w``; :meth:`forward` takes the
        norms from the vectors); draws the groups."""
        avg, base = self._groups(gram.shape[0])
        alpha = cagrad_dual_weights(avg @ gram @ avg.T, self.c, base)
        return (avg.T @ alpha) / (1.0 + self.c**2)

    def _groups(self, num_tasks: int) -> tuple[Tensor, Tensor]:
        """This call's averaging matrix ``[k, K]`` and the groups' base weights ``n_m / K``."""
        avg = random_groups(num_tasks, self.k, self.grouping, self.generator)
        return avg, (avg > 0).sum(1).to(torch.float64) / num_tasks

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        assert grads is not None  # checked by Combiner.__call__
        gram = checked_gramian(self, grads, losses)
        with single_thread():
            avg, base = self._groups(gram.shape[0])
            offset, w = cagrad_dual(avg @ gram @ avg.T, self.c, base)
            offset_k, w_k = avg.T @ offset, (avg.T @ w if w is not None else None)
        direction, alpha, norm = ball_direction(grads, offset_k, w_k, self.c)
        record_ball_stats(self, gram, alpha, norm)
        return direction

    def __str__(self) -> str:
        name = f"cagrad_fast-c{fmt(self.c)}-k{self.k}"
        return name if self.grouping == "even" else name + "-singletons"


@dataclass(frozen=True)
class CAGradFastConfig(CombinerConfigBase):
    """CAGrad-Fast: CAGrad on k random task groups."""

    name = "cagrad_fast"
    kind = "gradient"

    c: float = 0.4
    """Radius of the ball around the mean gradient, relative to its norm (MTRL MT50 run: 0.5)."""
    k: int = 4
    """Number of random task groups per call (MTRL runs: 4 on MT10, 8 on MT50)."""
    grouping: Literal["even", "singletons"] = "even"
    """even: groups of near-equal size; singletons: k-1 single tasks plus one group of the rest (MTRL's scheme)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``c`` finite and ``>= 0``, ``k >= 1``; ``k >= K`` is allowed (one task per group: CAGrad)."""
        super().check(num_tasks, parts)
        check_c(self.c)
        if self.k < 1:
            raise ValueError(f"combiner.k: got {self.k}, expected an integer >= 1")

    def build(self, num_tasks: int, seed: int = 0) -> CAGradFast:
        self.check(num_tasks, frozenset())
        return CAGradFast(num_tasks, seed, c=self.c, k=self.k, grouping=self.grouping)
