"""GLS: the geometric mean of the task losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, Jacobian, Weighting
from mtrl.mto.logloss import LogLossCombiner, check_critic_only


class GLS(LogLossCombiner):
    r"""GLS, the geometric loss strategy (Chennupati et al. CVPR Workshops 2019, "MultiNet++: Multi-Stream Feature
    Aggregation and Geometric Loss Strategy for Multi-Task Learning",
    https://openaccess.thecvf.com/content_CVPRW_2019/papers/WAD/Chennupati_MultiNet_Multi-Stream_Feature_Aggregation_and_Geometric_Loss_Strategy_for_Multi-Task_CVPRW_2019_paper.pdf):
    minimise the geometric mean of the task losses.

    .. math:: \mathcal L = \Big(\prod_k L_k\Big)^{1/K}, \qquad
        w_k = \frac{\partial \mathcal L}{\partial L_k} = \frac{\mathcal L}{K L_k}, \qquad d = \sum_k w_k \nabla L_k

    computed in float64 as ``w_k = exp(mean_j log L_j - log L_k) / K`` (no product of K losses to overflow or
    underflow). Stateless, no randomness. Same as torchjd's ``GeometricMean`` and LibMTL's
    ``GLS``.

    Defined for positive losses only (``log L``; a zero loss gives an infinite weight, as the geometric mean's
    gradient there): a loss ``<= 0`` raises :class:`~mtrl.mto.base.NonFiniteError` (:class:`LogLossCombiner`), and
    :meth:`GLSConfig.check` allows the critic only (the SAC actor and temperature losses can be negative). No shift
    is published.

    Scale: ``mean`` when all losses are equal (``w_k = 1/K``); in general the gradient of the geometric mean,
    ``sum_k w_k = GM / HM >= 1`` (geometric over harmonic mean of the losses) and tasks with smaller losses get
    larger weights (``w_k L_k`` is the same for every task). K=1 gives weight 1.
    """

    requires_grads = False
    strictly_positive = True

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Weighting:
        self.check_log_domain(losses)
        logs = losses.detach().to(torch.float64).log()
        weights = torch.exp(logs.mean() - logs) / self.num_tasks
        self.record_stats(weights=weights)
        return Weighting(weights.to(losses.dtype))


@dataclass(frozen=True)
class GLSConfig(CombinerConfigBase):
    """GLS: the geometric mean of the task losses (loss space, no options); positive losses only, so the critic only
    (the SAC actor and temperature losses can be negative; no published shift)."""

    name = "gls"
    kind = "loss"

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """Applied to the critic only: the geometric mean takes ``log L`` and the SAC actor and temperature losses
        can be negative."""
        super().check(num_tasks, parts)
        check_critic_only(self.name, parts, "takes the log of the task losses (the geometric mean)")

    def build(self, num_tasks: int, seed: int = 0) -> GLS:
        self.check(num_tasks, frozenset())
        return GLS(num_tasks, seed)
