"""IMTL-L: impartial multi-task learning, loss balance (learned per-task loss scales)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.adam import VectorAdam
from mtrl.mto.base import Combiner, CombinerConfigBase, Jacobian, Weighting, fmt
from mtrl.mto.logloss import check_critic_only


class IMTLL(Combiner):
    r"""IMTL-L, the loss-balance half of impartial multi-task learning (Liu et al. ICLR 2021, "Towards Impartial
    Multi-task Learning", https://openreview.net/forum?id=IMPnRXEWpvr): learned scales ``e^{s_k}`` that drive every
    scaled loss to 1.

    .. math:: \mathcal L = \sum_k \big(e^{s_k} L_k - s_k\big), \qquad w_k = e^{s_k}, \qquad
        \frac{\partial \mathcal L}{\partial s_k} = e^{s_k} L_k - 1 \;\; (= 0 \text{ at } s_k = -\log L_k)

    The scale parameters ``s`` live in this combiner (a buffer, not a parameter, so no outer optimizer picks them up)
    and are learned by its own Adam (:class:`~mtrl.mto.adam.VectorAdam`) inside :meth:`forward`: each call returns
    the (detached) weights at the current ``s``, then takes one Adam step on ``s`` with the gradient above, as joint
    optimisation of the network and ``s`` does (the paper learns ``s`` with the network's optimizer; torchjd's
    ``IMTLL`` and LibMTL's ``IMTL`` put ``s`` into it). Matches torchjd's ``IMTLL`` scalarizer trained with
    ``torch.optim.Adam(lr)``. State (``s``, the Adam moments and step count) is in ``state_dict``; no randomness.

    Defined for positive losses: at its fixed point ``s_k = -log L_k``; a loss ``<= 0`` has none (``s_k`` grows
    without bound, as UW's log-variances do), so :meth:`IMTLLConfig.check` allows the critic only (the SAC actor and
    temperature losses can be negative). No shift is published.

    Scale: ``w = 1`` at ``s = 0``, i.e. K times ``mean`` at the start (the sum of the losses, as the paper and
    torchjd); at the fixed point ``w_k = 1 / L_k``, the gradient of ``sum_k log L_k``. K=1 gives weight 1 at the
    first call.
    """

    log_scale: Tensor

    requires_grads = False

    def __init__(self, num_tasks: int, seed: int = 0, lr: float = 3e-4, init: float = 0.0) -> None:
        """:param num_tasks: K.
        :param seed: seed of the (unused) generator.
        :param lr: Adam learning rate of ``s``.
        :param init: initial ``s_k`` of every task.
        """
        super().__init__(num_tasks, seed)
        self.lr, self.init = lr, init
        self.register_buffer("log_scale", torch.full((num_tasks,), float(init), dtype=torch.float64))
        self.adam = VectorAdam(num_tasks, lr)

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Weighting:
        self.follow_device(losses)
        weights = torch.exp(self.log_scale)
        self.adam.step(self.log_scale, weights * losses.to(torch.float64) - 1.0)
        self.record_stats(weights=weights)
        return Weighting(weights.to(losses.dtype))

    def __str__(self) -> str:
        return "imtll" if self.lr == 3e-4 else f"imtll-lr{fmt(self.lr)}"


@dataclass(frozen=True)
class IMTLLConfig(CombinerConfigBase):
    """IMTL-L: learned loss scales e^s driving every scaled loss to 1 (loss space); positive losses only, so the
    critic only (the SAC actor and temperature losses can be negative; no published shift)."""

    name = "imtll"
    kind = "loss"

    lr: float = 3e-4
    """Adam learning rate of the scale parameters s (the paper learns s with the network's optimizer: here MT-SAC's
    critic lr, 3e-4)."""
    init: float = 0.0
    """Initial scale parameter s of every task (paper, torchjd, LibMTL: 0, weights 1)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``lr > 0``, ``init`` finite; applied to the critic only: the scales converge to ``-log L`` and the SAC
        actor and temperature losses can be negative."""
        super().check(num_tasks, parts)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"combiner.lr: got {self.lr}, expected a number > 0")
        if not math.isfinite(self.init):
            raise ValueError(f"combiner.init: got {self.init}, expected a finite number")
        check_critic_only(self.name, parts, "learns loss scales e^s -> 1/L (positive losses only)")

    def build(self, num_tasks: int, seed: int = 0) -> IMTLL:
        self.check(num_tasks, frozenset())
        return IMTLL(num_tasks, seed, lr=self.lr, init=self.init)
