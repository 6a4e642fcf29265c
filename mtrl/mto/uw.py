"""UW: uncertainty weighting with learned per-task log-variances."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.adam import VectorAdam
from mtrl.mto.base import Combiner, CombinerConfigBase, Jacobian, Weighting


class UW(Combiner):
    r"""Uncertainty weighting (Kendall et al. CVPR 2018, https://arxiv.org/abs/1705.07115).

    .. math:: \mathcal L = \sum_i \tfrac12 \big(e^{-s_i} L_i + s_i\big), \qquad w_i = \tfrac12 e^{-s_i}, \qquad
        \frac{\partial \mathcal L}{\partial s_i} = \tfrac12 \big(1 - e^{-s_i} L_i\big)

    The log-variances ``s`` live in this combiner (a buffer, not a parameter, so no outer optimizer picks them up)
    and are learned by its own Adam inside :meth:`forward`: each call returns the (detached) weights at the current
    ``s``, then takes one Adam step on ``s`` with the gradient above, i.e. ``s`` and the model are updated from the
    same losses, as joint optimisation does. Matches torchjd's ``UW`` scalarizer trained with ``Adam(lr)`` and
    nash-mtl's / the FAMO repo's MT10 ``uw.py`` (Adam, lr 0.01, init 0).

    Scale: ``w = 1/2`` at ``s = 0``: K/2 times ``mean`` at the start. With negative losses (the SAC actor loss) the
    gradient on ``s`` is always positive and the weights grow without bound, as in the FAMO-repo port.
    """

    log_var: Tensor

    requires_grads = False

    def __init__(self, num_tasks: int, seed: int = 0, lr: float = 0.01, init: float = 0.0) -> None:
        super().__init__(num_tasks, seed)
        self.lr = lr
        self.register_buffer("log_var", torch.full((num_tasks,), float(init), dtype=torch.float64))
        self.adam = VectorAdam(num_tasks, lr)

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Weighting:
        self.follow_device(losses)
        precision = torch.exp(-self.log_var)
        weights = 0.5 * precision
        grad = 0.5 * (1.0 - precision * losses.to(torch.float64))
        self.adam.step(self.log_var, grad)
        self.record_stats(weights=weights)
        return Weighting(weights.to(losses.dtype))


@dataclass(frozen=True)
class UWConfig(CombinerConfigBase):
    """Uncertainty weighting: learned per-task log-variances."""

    name = "uw"
    kind = "loss"

    lr: float = 0.01
    """Adam learning rate of the log-variances (FAMO repo MT10 uw.py: 0.01)."""
    init: float = 0.0
    """Initial log-variance of every task (paper / torchjd: 0; LibMTL: -0.5)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``lr > 0`` and ``init`` finite. Any part: with a negative loss the weights grow without bound (see
        :class:`UW`), as in the FAMO-repo port, which applies UW to the actor too."""
        super().check(num_tasks, parts)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"combiner.lr: got {self.lr}, expected a number > 0")
        if not math.isfinite(self.init):
            raise ValueError(f"combiner.init: got {self.init}, expected a finite number")

    def build(self, num_tasks: int, seed: int = 0) -> UW:
        self.check(num_tasks, frozenset())
        return UW(num_tasks, seed, lr=self.lr, init=self.init)
