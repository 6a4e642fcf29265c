"""STCH: smooth Tchebycheff scalarization of the log-normalised task losses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, Jacobian, Weighting, fmt
from mtrl.mto.logloss import LogLossCombiner, check_critic_only

#: added inside the logs (official code): ``log(L + 1e-20)``, ``log(L / z + 1e-20)``
_EPS = 1e-20
#: floor of the nadir point (a task whose warm-up losses were all 0): keeps ``K / (eps z)`` finite in float32
_MIN_NADIR = 1e-8


class STCH(LogLossCombiner):
    r"""STCH, smooth Tchebycheff scalarization (Lin et al. ICML 2024, "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization", https://arxiv.org/abs/2402.19078), in the multi-task form of the official code
    (Xi-L/STCH ``STCH_MTL``, also LibMTL's ``STCH``): a smooth maximum of the log losses normalised by a nadir point
    measured at the end of a warm-up.

    .. math:: \text{warm-up:}\;\; \mathcal L = \sum_k \log(L_k + \epsilon), \quad w_k = \frac{1}{L_k + \epsilon};
        \qquad \text{then:}\;\; x_k = \log\Big(\frac{L_k}{z_k} + \epsilon\Big), \quad
        \mathcal L = K \mu \log \sum_k e^{x_k / \mu}, \quad
        w_k = \frac{\partial \mathcal L}{\partial L_k} = \frac{K \operatorname{softmax}(x / \mu)_k}{L_k + \epsilon z_k}

    with ``epsilon = 1e-20`` and the nadir point ``z``, the mean of each task's loss over the last ``nadir_steps``
    of the ``warmup_steps`` warm-up calls (the official code: 4 warm-up epochs plus one that averages the losses;
    here calls, as RL has no epochs). ``z`` is fixed from then on; a task whose mean warm-up loss is below ``1e-8``
    (all 0: the official code divides by 0) gets ``z = 1e-8``, which keeps the weights finite in float32.
    ``mu -> 0`` approaches the Tchebycheff rule (all weight on the task with the largest normalised loss); at
    ``mu = 1`` the rule is ``log sum_k L_k / z_k``, a linear weighting by ``1 / z_k``. The softmax is taken in
    float64 with its maximum subtracted (no overflow for small ``mu``). State (the call count, the nadir sum and the
    nadir) is in ``state_dict``; no randomness.

    Takes logs of the losses: a loss ``< 0`` raises :class:`~mtrl.mto.base.NonFiniteError`
    (:class:`~mtrl.mto.gls.LogLossCombiner`; 0 is allowed, through ``epsilon``) and :meth:`STCHConfig.check` allows
    the critic only (the SAC actor and temperature losses can be negative). The published ``epsilon`` is no shift
    for negative losses.

    Scale: warm-up ``w_k = 1 / L_k`` (the gradient of ``sum_k log L_k``: K / L times ``mean`` for equal losses
    ``L``); after it, equal normalised losses ``L_k / z_k = r`` give ``w_k = 1 / L_k`` again (the factor K of the
    official code keeps the two phases on one scale). torchjd's ``STCH(mu, weights=ones)`` applied to ``x`` gives
    ``softmax(x / mu)``: ours is K times its gradient w.r.t. the losses. K=1: ``w = 1 / L``.
    """

    nadir_sum: Tensor
    nadir: Tensor

    requires_grads = False

    def __init__(
        self, num_tasks: int, seed: int = 0, mu: float = 1.0, warmup_steps: int = 50_000, nadir_steps: int = 10_000
    ) -> None:
        """:param num_tasks: K.
        :param seed: seed of the (unused) generator.
        :param mu: smoothing ``mu > 0``.
        :param warmup_steps: calls with the warm-up rule, the last ``nadir_steps`` of them measure the nadir.
        :param nadir_steps: calls averaged into the nadir point, ``1 <= nadir_steps <= warmup_steps``.
        """
        super().__init__(num_tasks, seed)
        self.mu, self.warmup_steps, self.nadir_steps = mu, warmup_steps, nadir_steps
        self.register_buffer("nadir_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("nadir", torch.ones(num_tasks, dtype=torch.float64))

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Weighting:
        self.follow_device(losses)
        self.check_log_domain(losses)
        values = losses.detach().to(torch.float64)
        self.calls += 1
        if self.calls <= self.warmup_steps:
            if self.calls > self.warmup_steps - self.nadir_steps:
                self.nadir_sum.add_(values)
            if self.calls == self.warmup_steps:
                self.nadir.copy_((self.nadir_sum / self.nadir_steps).clamp_min(_MIN_NADIR))
            weights = 1.0 / (values + _EPS)
        else:
            x = torch.log(values / self.nadir + _EPS)
            weights = self.num_tasks * torch.softmax(x / self.mu, dim=0) / (values + _EPS * self.nadir)
        self.record_stats(weights=weights)
        return Weighting(weights.to(losses.dtype))

    def __str__(self) -> str:
        return "stch" if self.mu == 1.0 else f"stch-mu{fmt(self.mu)}"


@dataclass(frozen=True)
class STCHConfig(CombinerConfigBase):
    """STCH: smooth Tchebycheff scalarization of the nadir-normalised log losses after a warm-up on their sum (loss
    space); takes logs of the losses, so the critic only (the SAC actor and temperature losses can be negative; no
    published shift)."""

    name = "stch"
    kind = "loss"

    mu: float = 1.0
    """Smoothing mu > 0; smaller is closer to the maximum (official code and LibMTL: 1.0; the paper evaluates 0.01
    to 1)."""
    warmup_steps: int = 50_000
    """Calls on sum_k log L_k before the STCH rule, the last nadir_steps of them measuring the nadir (official code:
    4 + 1 of NYUv2's 200 epochs; here 5 x 10,000 of MT10's 2M updates)."""
    nadir_steps: int = 10_000
    """Last warm-up calls whose mean losses are the nadir point (official code: 1 epoch; here 10,000 updates)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``mu > 0`` finite, ``1 <= nadir_steps <= warmup_steps``; applied to the critic only: STCH takes logs of
        the losses and the SAC actor and temperature losses can be negative."""
        super().check(num_tasks, parts)
        if not (math.isfinite(self.mu) and self.mu > 0):
            raise ValueError(f"combiner.mu: got {self.mu}, expected a number > 0")
        if self.warmup_steps < 1:
            raise ValueError(f"combiner.warmup_steps: got {self.warmup_steps}, expected an integer >= 1")
        if not 1 <= self.nadir_steps <= self.warmup_steps:
            raise ValueError(
                f"combiner.nadir_steps: got {self.nadir_steps}, expected an integer in [1, warmup_steps = "
                f"{self.warmup_steps}]"
            )
        check_critic_only(self.name, parts, "takes the log of the task losses")

    def build(self, num_tasks: int, seed: int = 0) -> STCH:
        self.check(num_tasks, frozenset())
        return STCH(num_tasks, seed, mu=self.mu, warmup_steps=self.warmup_steps, nadir_steps=self.nadir_steps)
