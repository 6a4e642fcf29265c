"""MoDo: stochastic MGDA with double sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import (
    CombinerConfigBase,
    Jacobian,
    check_non_negative,
    check_positive,
    fmt,
)
from mtrl.mto.gramian import GramianCombiner, single_thread, weighted_sum
from mtrl.mto.memory import Sampling, TaskMemory, checked_gramians
from mtrl.mto.qp import project_simplex


class MoDo(GramianCombiner):
    r"""MoDo (Chen et al. NeurIPS 2023, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
    Generalization and Conflict-Avoidance", https://arxiv.org/abs/2305.20057): MGDA's weight problem, one projected
    gradient step per update on a double-sampled Gramian, the weights carried over from update to update.

    .. math:: \lambda_{t+1} = \Pi_\Delta\big(\lambda_t - \gamma (A_t \lambda_t + \rho \lambda_t)\big), \qquad
        d = \sum_k \lambda_{t+1,k} g_k

    ``A_t`` stands for ``J_1 J_2^T`` of two independent mini-batches (the paper's double sampling; its parameter
    update uses a third). The agent gives one batch per update, so (:func:`checked_gramians`): ``sampling="previous"``
    (default) keeps this batch's Gramian off the diagonal, where the tasks' gradients come from disjoint rows and are
    already independent, and takes the diagonal across consecutive updates, ``g_{i,t} . g_{i,t-1}`` (independent
    replay draws, one optimizer step apart), at the cost of the previous gradients as state (``[K, P]``, one copy
    per call); ``sampling="single"`` uses this batch's Gramian, whose diagonal is biased up by each task's gradient
    variance. The direction uses this batch's gradients. torchjd's ``MoDoWeighting`` and LibMTL take ``A`` from
    two (three) consecutive batches per step instead.

    Not invariant to the gradients' scale (``gamma`` multiplies ``A``), as published. ``lambda`` starts at ``1/K``
    and is a buffer; with ``sampling="previous"`` so are the previous gradients (:class:`TaskMemory`). No randomness.

    Scale: ``lambda`` is on the simplex, so identical gradients give the mean (``mean`` at ``lambda = 1/K``); K=1
    returns the gradient. Same scale as torchjd and LibMTL; the official code steps with the sum of its two batches'
    gradients (twice this, "averaging via the learning rate").
    """

    lam: Tensor

    def __init__(
        self, num_tasks: int, seed: int = 0, gamma: float = 0.1, rho: float = 0.1, sampling: Sampling = "previous"
    ) -> None:
        """:param num_tasks: K.
        :param seed: seed of the (unused) generator.
        :param gamma: step size of the weights.
        :param rho: l2 regularisation of the weights' subproblem.
        :param sampling: ``previous`` or ``single`` (see the class docstring).
        """
        super().__init__(num_tasks, seed)
        self.gamma, self.rho, self.sampling = gamma, rho, sampling
        self.register_buffer("lam", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))
        self.memory = TaskMemory(num_tasks) if sampling == "previous" else None

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        assert grads is not None  # checked by Combiner.__call__
        gram, a = checked_gramians(self, grads, losses, self.memory)
        with single_thread():
            lam = self.lam.detach().cpu()
            lam = project_simplex(lam - self.gamma * (a @ lam + self.rho * lam))
            self.lam.copy_(lam)
            self.record_stats(gram, lam)
        return weighted_sum(lam, grads)

    def __str__(self) -> str:
        name = f"modo-g{fmt(self.gamma)}"
        if self.rho != 0.1:
            name += f"-r{fmt(self.rho)}"
        return name + ("-single" if self.sampling == "single" else "")


@dataclass(frozen=True)
class MoDoConfig(CombinerConfigBase):
    """MoDo: one projected gradient step on MGDA's weights per update, double-sampled Gramian."""

    name = "modo"
    kind = "gradient"

    gamma: float = 0.1
    """Step size of the task weights (official code and torchjd: 0.1; LibMTL: 0.001)."""
    rho: float = 0.1
    """l2 regularisation of the weights' subproblem (official code, torchjd, LibMTL: 0.1)."""
    sampling: Sampling = "previous"
    """Gramian of the weight step: previous (diagonal g_t . g_{t-1} across consecutive updates, off-diagonal from
    this batch's disjoint task rows; stores the previous gradients) or single (this batch's Gramian)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``gamma > 0`` and ``rho >= 0``, finite."""
        super().check(num_tasks, parts)
        check_positive("gamma", self.gamma)
        check_non_negative("rho", self.rho)

    def build(self, num_tasks: int, seed: int = 0) -> MoDo:
        self.check(num_tasks, frozenset())
        return MoDo(num_tasks, seed, gamma=self.gamma, rho=self.rho, sampling=self.sampling)
