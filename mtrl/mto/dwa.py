"""DWA: dynamic weight average over sliding iteration windows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import Combiner, CombinerConfigBase, Jacobian, Weighting


class DWA(Combiner):
    r"""Dynamic weight average (Liu et al. CVPR 2019, https://arxiv.org/abs/1803.10704), iteration-window version
    (nash-mtl ``DynamicWeightAverage``): "epochs" are sliding windows of the last ``window`` calls.

    .. math:: r_k = \frac{\operatorname{mean}(L_k \text{ over the last } W \text{ calls})}
        {\operatorname{mean}(L_k \text{ over the } W \text{ calls before})}, \qquad
        w = \operatorname{softmax}(r / T), \qquad d = \sum_k w_k \nabla L_k

    The current call's losses are in the newer window (as nash-mtl). Uniform weights until ``2 W`` calls have been
    seen; nash-mtl starts after ``W + 1`` calls with its history initialised to ones, so its first weights compare
    against windows padded with 1.0 (not copied). The history (``[2W, K]``) and the call count are in ``state_dict``.

    Scale: the weights sum to 1 (``mean`` when uniform); the paper's ``lambda = K softmax`` with nash-mtl's
    ``(lambda * L).mean()`` gives the same. torchjd's epoch-based ``DWA`` equals this one at calls ``n W - 1``
    (windows aligned with its epochs, shifted by its exclusion of the current batch).
    """

    history: Tensor

    requires_grads = False

    def __init__(self, num_tasks: int, seed: int = 0, window: int = 25, temperature: float = 2.0) -> None:
        super().__init__(num_tasks, seed)
        self.window = window
        self.temperature = temperature
        self.register_buffer("history", torch.zeros(2 * window, num_tasks, dtype=torch.float64))

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Weighting:
        self.follow_device(losses)
        self.history.copy_(torch.roll(self.history, -1, dims=0))
        self.history[-1] = losses.to(torch.float64)
        self.calls += 1
        if self.calls >= 2 * self.window:
            older = self.history[: self.window].mean(0)
            newer = self.history[self.window :].mean(0)
            rate = torch.where(older != 0, newer / torch.where(older != 0, older, 1.0), 1.0)
            weights = torch.softmax(rate / self.temperature, dim=0)
        else:
            weights = torch.full_like(self.history[0], 1.0 / self.num_tasks)
        self.record_stats(weights=weights)
        return Weighting(weights.to(losses.dtype))


@dataclass(frozen=True)
class DWAConfig(CombinerConfigBase):
    """Dynamic weight average over sliding iteration windows (nash-mtl variant)."""

    name = "dwa"
    kind = "loss"

    window: int = 25
    """Calls per window ("epoch"); the rates compare the last window with the one before (nash-mtl: 25)."""
    temperature: float = 2.0
    """Softmax temperature T; larger is more uniform (paper: 2)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``window >= 1`` and ``temperature > 0``."""
        super().check(num_tasks, parts)
        if self.window < 1:
            raise ValueError(f"combiner.window: got {self.window}, expected an integer >= 1")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"combiner.temperature: got {self.temperature}, expected a number > 0")

    def build(self, num_tasks: int, seed: int = 0) -> DWA:
        self.check(num_tasks, frozenset())
        return DWA(num_tasks, seed, window=self.window, temperature=self.temperature)
