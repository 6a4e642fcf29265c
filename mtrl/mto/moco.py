"""MoCo: stochastic multi-objective gradient correction (tracked task gradients, projected steps on the weights)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, Jacobian, as_blocks, check_non_negative, check_positive, fmt
from mtrl.mto.gramian import GramianCombiner, checked_gramian, single_thread, weighted_sum
from mtrl.mto.memory import TaskMemory, column_chunks
from mtrl.mto.qp import project_simplex


def track(tracked: list[Tensor], grads: list[Tensor], beta: float) -> Tensor:
    """Move the tracked gradients towards this call's, ``y <- y + beta (g - y)`` in place (``beta = 1``: a copy), and
    return their Gramian ``Y Y^T`` (float64 CPU, symmetrised as :func:`~mtrl.mto.gramian.gramian`), taken chunk by
    chunk right after each chunk's update, while it is in cache.

    :param tracked: the state's column views ``[K, P_i]``.
    :param grads: this call's (checked) blocks.
    :param beta: the tracking step.
    """
    k = grads[0].shape[0]
    yy = grads[0].new_zeros(k, k)
    for y, g in zip(tracked, grads, strict=True):
        for y_part, g_part in column_chunks(y, g):
            if beta == 1.0:
                y_part.copy_(g_part)
            else:
                y_part.lerp_(g_part, beta)
            yy.addmm_(y_part, y_part.T)
    yy = yy.to("cpu", torch.float64)
    return 0.5 * (yy + yy.T)


def moco_weights(yy: Tensor, lam: Tensor, gamma: float, rho: float) -> Tensor:
    r"""One projected gradient step of MoCo's weights on the tracked gradients' Gramian:

    .. math:: \lambda \leftarrow \Pi_\Delta\big(\lambda - \gamma (Y Y^\top + \rho I) \lambda\big)

    :param yy: ``[K, K]`` float64 Gramian ``Y Y^T`` of the tracked gradients.
    :param lam: ``[K]`` float64 weights on the simplex.
    :param gamma: step size.
    :param rho: l2 regularisation.
    """
    return project_simplex(lam - gamma * (yy @ lam + rho * lam))


class MoCo(GramianCombiner):
    r"""MoCo (Fernando et al. ICLR 2023, "Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent
    Approach", https://openreview.net/forum?id=dLAYGdKTi2): MGDA on tracked gradients. Each task's gradient is
    tracked by a running average ``y_k`` (which removes the bias of MGDA's weights on single stochastic gradients),
    the weights take one projected gradient step per update, and the direction combines the tracked gradients.

    .. math:: y_{t,k} = y_{t-1,k} - \beta_t (y_{t-1,k} - g_{t,k}), \quad
        \lambda_{t} = \Pi_\Delta\big(\lambda_{t-1} - \gamma_t (Y_t Y_t^\top + \rho I) \lambda_{t-1}\big), \quad
        d = \sum_k \lambda_{t,k} y_{t,k}

    with ``beta_t = beta / t^beta_sigma`` and ``gamma_t = gamma / t^gamma_sigma`` (``t`` counts the calls from 1;
    the official code's defaults are constant steps, LibMTL's decay with ``sigma = 0.5``). ``beta = 1`` tracks
    nothing (``y_t = g_t``): the weights then take MGDA's projected gradient steps on each batch's Gramian, and on a
    fixed Jacobian converge to MGDA's min-norm weights (``rho = 0``). ``normalization="l2"`` uses the unit tracked
    gradients ``y_k / ||y_k||`` for the weights and the direction (the official code's ``moco_gn="l2"``; a zero
    ``y_k`` gets no weight in the direction); the loss-based normalisations of the official code and LibMTL are left
    out (SAC's actor and temperature losses are not positive).

    Departures: ``y`` starts at the first call's gradients (``beta_1 = 1``), where the official code and LibMTL start
    from 0 and so shrink their first ``~1/beta`` updates; no projection of ``y_k`` on a ball of radius ``L_k`` (the
    paper's analysis; the official code has none).

    State (per instance, in ``state_dict``): ``y`` (``[K, P]`` in the gradients' dtype,
    :class:`~mtrl.mto.modo.TaskMemory`, updated in place), ``lambda`` (``1/K`` at first), the call count. A call
    with a new width ``P`` restarts ``y`` from its gradients. No randomness. Cost beyond a Gramian combiner: one pass
    updating ``y`` with the Gramian of ``y`` taken in the same pass (:func:`track`).

    Diagnostics: ``weight/<k>`` are the coefficients of the **tracked** gradients ``y_k`` (of ``g_k`` at the first
    call); ``grad_norm_after`` is ``||d||``; the other stats are of this batch's gradients.

    Scale: ``lambda`` is on the simplex and ``y`` averages gradients, so identical constant gradients give the mean;
    K=1 returns the (tracked) gradient; with ``l2`` the direction has norm <= 1.
    """

    lam: Tensor

    def __init__(
        self,
        num_tasks: int,
        seed: int = 0,
        beta: float = 0.1,
        beta_sigma: float = 0.0,
        gamma: float = 0.1,
        gamma_sigma: float = 0.0,
        rho: float = 0.1,
        normalization: Literal["none", "l2"] = "none",
    ) -> None:
        """:param num_tasks: K.
        :param seed: seed of the (unused) generator.
        :param beta: step size of the tracking (1 = no tracking).
        :param beta_sigma: decay exponent of ``beta_t``.
        :param gamma: step size of the weights.
        :param gamma_sigma: decay exponent of ``gamma_t``.
        :param rho: l2 regularisation of the weights' subproblem.
        :param normalization: ``none`` or ``l2`` (unit tracked gradients).
        """
        super().__init__(num_tasks, seed)
        self.beta, self.beta_sigma, self.gamma, self.gamma_sigma = beta, beta_sigma, gamma, gamma_sigma
        self.rho, self.normalization = rho, normalization
        self.register_buffer("lam", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))
        self.tracked = TaskMemory(num_tasks)

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        assert grads is not None  # checked by Combiner.__call__
        gram = checked_gramian(self, grads, losses)
        ys, filled = self.tracked.views(grads)
        self.calls += 1
        beta = min(1.0, self.beta / self.calls**self.beta_sigma) if filled else 1.0
        yy = track(ys, as_blocks(grads), beta)
        self.tracked.filled = True
        with single_thread():
            if self.normalization == "l2":
                norms = yy.diagonal().clamp_min(0).sqrt()
                inv = torch.where(norms > 0, 1.0 / norms.clamp_min(1e-300), torch.zeros_like(norms))
                yy = yy * inv[:, None] * inv[None, :]
            else:
                inv = torch.ones(self.num_tasks, dtype=torch.float64)
            lam = moco_weights(yy, self.lam.detach().cpu(), self.gamma / self.calls**self.gamma_sigma, self.rho)
            self.lam.copy_(lam)
            coef = lam * inv
            self.record_stats(gram, coef)
            self.stats_tensors["grad_norm_after"] = (lam @ yy @ lam).clamp_min(0).sqrt()
        return weighted_sum(coef, ys if isinstance(grads, list) else ys[0])

    def __str__(self) -> str:
        name = f"moco-b{fmt(self.beta)}-g{fmt(self.gamma)}"
        if self.beta_sigma or self.gamma_sigma:
            name += f"-s{fmt(self.beta_sigma)}-{fmt(self.gamma_sigma)}"
        if self.rho != 0.1:
            name += f"-r{fmt(self.rho)}"
        return name + ("-l2" if self.normalization == "l2" else "")


@dataclass(frozen=True)
class MoCoConfig(CombinerConfigBase):
    """MoCo: MGDA weights on tracked (running-average) task gradients, one projected step per update."""

    name = "moco"
    kind = "gradient"

    beta: float = 0.1
    """Step size of the gradient tracking, in (0, 1] (official code: 0.1; LibMTL: 0.5 with decay; 1 = no tracking)."""
    beta_sigma: float = 0.0
    """Decay exponent: beta_t = beta / t^beta_sigma (official code: 0, constant; LibMTL: 0.5)."""
    gamma: float = 0.1
    """Step size of the task weights (official code and LibMTL: 0.1)."""
    gamma_sigma: float = 0.0
    """Decay exponent: gamma_t = gamma / t^gamma_sigma (official code: 0, constant; LibMTL: 0.5)."""
    rho: float = 0.1
    """l2 regularisation of the weights' subproblem (official code: 0.1; LibMTL: 0)."""
    normalization: Literal["none", "l2"] = "none"
    """Tracked-gradient normalisation for the weights and the direction: none or l2 (unit rows; official code's
    moco_gn options none/l2)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``0 < beta <= 1``, ``gamma > 0``, ``beta_sigma, gamma_sigma, rho >= 0``, all finite."""
        super().check(num_tasks, parts)
        if not (math.isfinite(self.beta) and 0.0 < self.beta <= 1.0):
            raise ValueError(f"combiner.beta: got {self.beta}, expected a number in (0, 1]")
        check_non_negative("beta_sigma", self.beta_sigma)
        check_positive("gamma", self.gamma)
        check_non_negative("gamma_sigma", self.gamma_sigma)
        check_non_negative("rho", self.rho)

    def build(self, num_tasks: int, seed: int = 0) -> MoCo:
        self.check(num_tasks, frozenset())
        return MoCo(
            num_tasks,
            seed,
            beta=self.beta,
            beta_sigma=self.beta_sigma,
            gamma=self.gamma,
            gamma_sigma=self.gamma_sigma,
            rho=self.rho,
            normalization=self.normalization,
        )
