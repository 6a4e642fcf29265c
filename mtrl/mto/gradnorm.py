"""GradNorm: learn task weights that equalise the weighted gradient norms, adjusted by relative training rates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.adam import VectorAdam
from mtrl.mto.base import Combiner, CombinerConfigBase, Jacobian
from mtrl.mto.gramian import checked_gramian, single_thread, weighted_sum

_EPS = 1e-12


class GradNorm(Combiner):
    r"""GradNorm (Chen et al. ICML 2018, https://arxiv.org/abs/1711.02257).

    .. math:: G_i = w_i \|g_i\|, \quad \tilde L_i = \frac{L_i(t)}{L_i(0)}, \quad r_i = \frac{\tilde L_i}
        {\operatorname{mean}_j \tilde L_j}, \quad
        \mathcal L_{grad} = \sum_i \big| G_i - \overline{G}\, r_i^{\alpha} \big| \;(\text{target constant}), \quad
        d = \frac1K \sum_i w_i g_i

    Per-task gradient norms: the row norms of ``G`` (over all shared parameters, from the Gramian's diagonal), so
    this is a gradient-space combiner; mtrl takes them on the "last shared layer" only. Each call returns the
    direction with the current weights, then takes one Adam step on ``w`` with
    ``d L_grad / d w_i = sign(G_i - target_i) ||g_i||``, clamps ``w`` at 1e-6 and renormalises it to sum to K.

    Not copied from mtrl's ``gradnorm.py``: its ``initial_task_loss`` is overwritten every call (the ratio is then
    relative to the previous step; here ``L(0)`` are the losses of the first call, kept in ``state_dict``), and its
    renormalisation rebinds a local variable (the stored weights are never renormalised); its weight Adam has lr 1e-6.
    Loss ratios use ``|L|`` (the SAC actor loss can be negative).

    Scale: ``w`` sums to K and the direction is ``(1/K) sum w_i g_i``: ``mean`` at ``w = 1`` (the first call).
    """

    task_weights: Tensor
    initial_losses: Tensor

    requires_grads = True
    accepts_blocks = True

    def __init__(self, num_tasks: int, seed: int = 0, alpha: float = 1.5, lr: float = 1e-3) -> None:
        super().__init__(num_tasks, seed)
        self.alpha = alpha
        self.lr = lr
        self.register_buffer("task_weights", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("initial_losses", torch.ones(num_tasks, dtype=torch.float64))
        self.adam = VectorAdam(num_tasks, lr)

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        assert grads is not None  # checked by Combiner.__call__
        gram = checked_gramian(self, grads, losses)
        current = losses.detach().to("cpu", torch.float64).abs()
        with single_thread():
            self.follow_device(gram)
            k = self.num_tasks
            coef = self.task_weights / k
            if self.adam.steps == 0:
                self.initial_losses.copy_(current)
            norms = gram.diagonal().clamp_min(0).sqrt()
            ratio = current / self.initial_losses.clamp_min(_EPS)
            rate = ratio / ratio.mean().clamp_min(_EPS)
            scaled = self.task_weights * norms
            target = scaled.mean() * rate**self.alpha
            grad = torch.sign(scaled - target) * norms
            self.adam.step(self.task_weights, grad)
            self.task_weights.clamp_min_(1e-6)
            self.task_weights.mul_(k / self.task_weights.sum())
            self.record_stats(gram, coef)
        return weighted_sum(coef, grads)


@dataclass(frozen=True)
class GradNormConfig(CombinerConfigBase):
    """GradNorm: task weights learned to balance the weighted per-task gradient norms."""

    name = "gradnorm"
    kind = "gradient"

    alpha: float = 1.5
    """Asymmetry alpha: how strongly slower-training tasks get larger gradient norms (paper: 1.5 on NYUv2)."""
    lr: float = 1e-3
    """Adam learning rate of the task weights (no MT-SAC reference; mtrl hard-codes 1e-6, i.e. frozen weights)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``alpha >= 0`` and ``lr > 0``. Any part: the loss ratios use ``|L|``."""
        super().check(num_tasks, parts)
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"combiner.alpha: got {self.alpha}, expected a number >= 0")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"combiner.lr: got {self.lr}, expected a number > 0")

    def build(self, num_tasks: int, seed: int = 0) -> GradNorm:
        self.check(num_tasks, frozenset())
        return GradNorm(num_tasks, seed, alpha=self.alpha, lr=self.lr)
