"""DB-MTL: dual balancing, log losses (loss scale) and equal gradient magnitudes (gradient scale)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, Jacobian, as_blocks, fmt
from mtrl.mto.gramian import GRAM_BLOCK, checked_gramian, weighted_sum
from mtrl.mto.logloss import LogLossCombiner, check_critic_only
from mtrl.mto.memory import TaskMemory

#: the official code's epsilon, in ``log(L + eps)`` and in ``alpha_k = max_j n_j / (n_k + eps)``
_EPS = 1e-8


class DBMTL(LogLossCombiner):
    r"""DB-MTL (Lin et al. 2023, "Dual-Balancing for Multi-Task Learning", https://arxiv.org/abs/2308.12029):
    loss-scale balancing by taking the gradients of the **log** losses, then gradient-magnitude balancing by scaling
    every task's (running-average) gradient to the largest norm among them. Needs the per-task gradients (gradient
    space).

    .. math:: h_k = \nabla \log(L_k + \epsilon) = \frac{g_k}{L_k + \epsilon}, \quad
        \hat g_k \leftarrow \beta_t \hat g_k + (1 - \beta_t) h_k, \quad
        \alpha_k = \frac{\max_j \|\hat g_j\|}{\|\hat g_k\| + \epsilon}, \qquad d = \sum_k \alpha_k \hat g_k

    with ``beta_t = beta / t^beta_sigma`` (``t`` counts the calls from 1) and ``epsilon = 1e-8``, as the official
    code (LibMTL's ``DB_MTL``, by the paper's authors): ``hat g`` starts at 0 and is not bias-corrected, so the first
    ``~1 / (1 - beta)`` updates are shorter. Each ``alpha_k hat g_k`` has the norm ``max_j ||hat g_j||`` (up to
    ``epsilon``).

    State (per instance, in ``state_dict``): ``hat g`` (``[K, P]`` in the gradients' dtype,
    :class:`~mtrl.mto.modo.TaskMemory`, updated in place in column chunks) and the call count. A call with a new
    width ``P`` restarts both. No randomness. Cost beyond the Gramian (stats, finiteness): one pass updating
    ``hat g`` with its row norms and the weighted sum of ``hat g``.

    Takes the log of the losses: a loss ``< 0`` raises :class:`~mtrl.mto.base.NonFiniteError`
    (:class:`~mtrl.mto.gls.LogLossCombiner`) and :meth:`DBMTLConfig.check` allows the critic only (the SAC actor
    and temperature losses can be negative); the published ``epsilon`` is no shift for negative losses.

    Diagnostics: ``weight/<k>`` is the coefficient of this call's gradient ``g_k`` in ``d``,
    ``alpha_k (1 - beta_t) / (L_k + epsilon)`` (the rest of ``d`` is ``beta_t sum_k alpha_k hat g_{k, t-1}``, the
    memory); ``grad_norm_after`` is ``||d||``; the other stats are of this call's gradients.

    Scale: the official code sums the balanced gradients: for K tasks with the same gradient ``g`` and loss ``L``,
    ``d -> K g / L`` (K / L times ``mean``; times ``1 - beta^t`` in the first calls at ``beta_sigma = 0``). K=1
    returns ``hat g`` (``(1 - beta) g / (L + epsilon)`` at the first call).
    """

    requires_grads = True
    accepts_blocks = True  # row norms, Gramian and weighted sums over column views of the state

    def __init__(self, num_tasks: int, seed: int = 0, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        """:param num_tasks: K.
        :param seed: seed of the (unused) generator.
        :param beta: weight of the past in the running average of the log-loss gradients, ``[0, 1)``.
        :param beta_sigma: decay exponent of ``beta_t``, ``>= 0``.
        """
        super().__init__(num_tasks, seed)
        self.beta, self.beta_sigma = beta, beta_sigma
        self.average = TaskMemory(num_tasks)

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        assert grads is not None  # checked by Combiner.__call__
        gram = checked_gramian(self, grads, losses)  # before the state changes
        self.check_log_domain(losses)
        blocks = as_blocks(grads)
        views, filled = self.average.views(grads)
        self.calls = self.calls + 1 if filled else 1
        beta = self.beta / self.calls**self.beta_sigma
        scale = (1.0 - beta) / (losses.detach().to(torch.float64) + _EPS)  # [K]: coefficient of g_k in hat g_k
        coef = scale.to(blocks[0].dtype)[:, None]
        squares = torch.zeros(self.num_tasks, dtype=torch.float64, device=blocks[0].device)
        for view, block in zip(views, blocks, strict=True):
            split = block.device.type == "cpu" and block.shape[1] > GRAM_BLOCK  # chunks stay in cache
            pairs = zip(view.split(GRAM_BLOCK, dim=1), block.split(GRAM_BLOCK, dim=1)) if split else [(view, block)]
            for avg, g in pairs:
                avg.mul_(beta).addcmul_(g, coef)
                squares += torch.linalg.vector_norm(avg, dim=1).to(torch.float64).square()
        self.average.filled = True
        norms = squares.sqrt()
        alpha = norms.max() / (norms + _EPS)
        direction = weighted_sum(alpha, views if isinstance(grads, list) else views[0])
        self.record_stats(gram)  # the weights and ||d|| stay on the gradients' device (no host sync)
        self.stats_tensors["weight"] = alpha * scale
        part_norms = torch.stack([torch.linalg.vector_norm(part) for part in as_blocks(direction)])
        self.stats_tensors["grad_norm_after"] = torch.linalg.vector_norm(part_norms.to(torch.float64))
        return direction

    def __str__(self) -> str:
        name = "dbmtl" if self.beta == 0.9 else f"dbmtl-b{fmt(self.beta)}"
        return name + (f"-s{fmt(self.beta_sigma)}" if self.beta_sigma else "")


@dataclass(frozen=True)
class DBMTLConfig(CombinerConfigBase):
    """DB-MTL: gradients of the log losses, running-averaged and scaled to the largest norm (gradient space); takes
    logs of the losses, so the critic only (the SAC actor and temperature losses can be negative; no published
    shift)."""

    name = "dbmtl"
    kind = "gradient"

    beta: float = 0.9
    """Weight of the past in the running average of the log-loss gradients, in [0, 1) (official code / LibMTL:
    0.9; 0 = this call's gradients only)."""
    beta_sigma: float = 0.0
    """Decay exponent: beta_t = beta / t^beta_sigma (official code / LibMTL: 0, constant)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``0 <= beta < 1``, ``beta_sigma >= 0`` finite; applied to the critic only: DB-MTL takes the log of the
        losses and the SAC actor and temperature losses can be negative."""
        super().check(num_tasks, parts)
        if not (math.isfinite(self.beta) and 0.0 <= self.beta < 1.0):
            raise ValueError(f"combiner.beta: got {self.beta}, expected a number in [0, 1)")
        if not (math.isfinite(self.beta_sigma) and self.beta_sigma >= 0):
            raise ValueError(f"combiner.beta_sigma: got {self.beta_sigma}, expected a number >= 0")
        check_critic_only(self.name, parts, "takes the log of the task losses")

    def build(self, num_tasks: int, seed: int = 0) -> DBMTL:
        self.check(num_tasks, frozenset())
        return DBMTL(num_tasks, seed, beta=self.beta, beta_sigma=self.beta_sigma)
