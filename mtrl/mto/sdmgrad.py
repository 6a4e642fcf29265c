"""SDMGrad: stochastic direction-oriented multi-objective gradient (warm-started projected SGD on the task weights)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, Jacobian, check_non_negative, check_positive, fmt
from mtrl.mto.gramian import GramianCombiner, single_thread, weighted_sum
from mtrl.mto.memory import Sampling, TaskMemory, checked_gramians
from mtrl.mto.qp import project_simplex


def sdmgrad_step(a: Tensor, w: Tensor, lam: float, lr: float, momentum: float, n_iter: int) -> Tensor:
    r"""SDMGrad's inner solver: ``n_iter`` projected SGD steps with heavy-ball momentum (velocity reset per call) on

    .. math:: \min_{w \in \Delta_K} \tfrac12 \|g_w + \lambda g_0\|^2, \qquad
        \nabla = \hat A (w + \lambda \tilde w), \quad \hat A = A / s^2, \quad
        s = \operatorname{mean}_i \sqrt{\max(A_{ii}, 0)}

    from the warm start ``w`` (``tilde w = 1/K``, ``g_0`` the mean gradient). ``A`` is normalised by the mean task
    gradient norm ``s`` squared (so ``lr`` does not depend on the gradients' scale); a zero ``A`` leaves ``w``.

    :param a: ``[K, K]`` float64 ``A`` (see :func:`~mtrl.mto.modo.checked_gramians`).
    :param w: ``[K]`` float64 warm start on the simplex.
    :returns: the new ``w`` (on the simplex).
    """
    k = a.shape[0]
    s2 = float(a.diagonal().clamp_min(0).sqrt().mean()) ** 2
    if not s2 > 0.0:
        return w.clone()
    a_hat = a / s2
    pref = lam * torch.full((k,), 1.0 / k, dtype=torch.float64)
    velocity: Tensor | None = None
    for _ in range(n_iter):
        grad = a_hat @ (w + pref)
        velocity = grad if velocity is None else momentum * velocity + grad
        w = project_simplex(w - lr * velocity)
    return w


class SDMGrad(GramianCombiner):
    r"""SDMGrad (Xiao et al. NeurIPS 2023, "Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms", https://arxiv.org/abs/2305.18409): MGDA's min-norm problem regularised towards the mean
    gradient, solved approximately by a few warm-started projected SGD steps per update.

    .. math:: w^\star \approx \arg\min_{w \in \Delta_K} \tfrac12 \|g_w + \lambda g_0\|^2, \qquad
        d = \frac{g_{w^\star} + \lambda g_0}{1 + \lambda} = \sum_k \frac{w^\star_k + \lambda / K}{1 + \lambda} g_k

    (:func:`sdmgrad_step`: ``n_iter`` SGD steps of step size ``lr`` with momentum, each projected on the simplex,
    from the previous call's ``w``; ``lambda -> infinity`` gives ``mean``, ``lambda = 0`` an approximate MGDA).
    The paper's double sampling feeds the ``w`` steps ``J_1 J_2^T`` of two independent mini-batches and the update
    a third; the agent gives one batch per update (:func:`~mtrl.mto.modo.checked_gramians`): ``sampling="single"``
    (default) uses this batch's Gramian, exactly as the authors' MT10/MT50 code (OptMN-Lab/sdmgrad
    ``mtrl_files/sdmgrad.py``: ``GG = grads grads^T`` of the one batch); ``sampling="previous"`` takes the diagonal
    across consecutive updates (``g_{i,t} . g_{i,t-1}``, independent replay draws) and keeps the off-diagonal of
    this batch, whose tasks' gradients come from disjoint rows. The direction uses this batch's gradients.

    Matches torchjd's ``SDMGradWeighting`` (fed the same ``A``) except the normalisation: ``A / s^2`` exactly, where
    torchjd and LibMTL divide by ``s^2 + 1e-8`` and the MT10 code uses ``s = mean sqrt(A_ii + 1e-4)`` (both
    not invariant to the gradients' scale when they are small). State: ``w`` (buffer, ``1/K`` at first) and, with
    ``sampling="previous"``, the previous gradients (:class:`~mtrl.mto.modo.TaskMemory`). No randomness.

    Scale: the weights ``(w + lambda/K) / (1 + lambda)`` sum to 1, so identical gradients give the mean (as torchjd,
    LibMTL and the official code); K=1 returns the gradient.
    """

    w: Tensor

    def __init__(
        self,
        num_tasks: int,
        seed: int = 0,
        lam: float = 0.3,
        lr: float = 10.0,
        momentum: float = 0.5,
        n_iter: int = 20,
        sampling: Sampling = "single",
    ) -> None:
        """:param num_tasks: K.
        :param seed: seed of the (unused) generator.
        :param lam: ``lambda``, the pull towards the mean gradient.
        :param lr: step size of the inner SGD.
        :param momentum: heavy-ball momentum of the inner SGD.
        :param n_iter: inner SGD steps per call.
        :param sampling: ``single`` or ``previous`` (see the class docstring).
        """
        super().__init__(num_tasks, seed)
        self.lam, self.lr, self.momentum, self.n_iter, self.sampling = lam, lr, momentum, n_iter, sampling
        self.register_buffer("w", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))
        self.memory = TaskMemory(num_tasks) if sampling == "previous" else None

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        assert grads is not None  # checked by Combiner.__call__
        gram, a = checked_gramians(self, grads, losses, self.memory)
        with single_thread():
            w = sdmgrad_step(a, self.w.detach().cpu(), self.lam, self.lr, self.momentum, self.n_iter)
            self.w.copy_(w)
            weights = (w + self.lam / self.num_tasks) / (1.0 + self.lam)
            self.record_stats(gram, weights)
        return weighted_sum(weights, grads)

    def __str__(self) -> str:
        name = f"sdmgrad-l{fmt(self.lam)}"
        if (self.lr, self.momentum, self.n_iter) != (10.0, 0.5, 20):
            name += f"-lr{fmt(self.lr)}-m{fmt(self.momentum)}-n{self.n_iter}"
        return name + ("-prev" if self.sampling == "previous" else "")


@dataclass(frozen=True)
class SDMGradConfig(CombinerConfigBase):
    """SDMGrad: warm-started projected SGD on MGDA's weights, regularised towards the mean gradient."""

    name = "sdmgrad"
    kind = "gradient"

    lam: float = 0.3
    """lambda, the pull towards the mean gradient (torchjd, LibMTL, the paper's NYUv2/Cityscapes runs: 0.3; the
    authors' MT10/MT50 run.sh: 0.6)."""
    lr: float = 10.0
    """Step size of the inner SGD on the weights (official code and torchjd: 10; LibMTL: 5)."""
    momentum: float = 0.5
    """Momentum of the inner SGD, in [0, 1) (official code, torchjd, LibMTL: 0.5)."""
    n_iter: int = 20
    """Inner SGD steps per update (official code, torchjd, LibMTL: 20)."""
    sampling: Sampling = "single"
    """Gramian of the weight steps: single (this batch's, as the authors' MT10 code) or previous (diagonal
    g_t . g_{t-1} across consecutive updates; stores the previous gradients)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``lam >= 0``, ``lr > 0``, ``0 <= momentum < 1``, ``n_iter >= 1``."""
        super().check(num_tasks, parts)
        check_non_negative("lam", self.lam)
        check_positive("lr", self.lr)
        if not (0.0 <= self.momentum < 1.0):
            raise ValueError(f"combiner.momentum: got {self.momentum}, expected a number in [0, 1)")
        if self.n_iter < 1:
            raise ValueError(f"combiner.n_iter: got {self.n_iter}, expected an integer >= 1")

    def build(self, num_tasks: int, seed: int = 0) -> SDMGrad:
        self.check(num_tasks, frozenset())
        return SDMGrad(
            num_tasks,
            seed,
            lam=self.lam,
            lr=self.lr,
            momentum=self.momentum,
            n_iter=self.n_iter,
            sampling=self.sampling,
        )
