"""GLS: the geometric mean of the task losses; and the helpers of the combiners that take logs of the losses (GLS,
IMTL-L, STCH, DB-MTL): the critic-only check and the run-time check of the log's domain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from mtrl.mto.base import PARTS, Combiner, CombinerConfigBase, Jacobian, NonFiniteError, Weighting


def check_critic_only(name: str, parts: frozenset[str], needs: str) -> None:
    """Raise the one-line ``ValueError`` of a combiner applied to a part of the SAC update other than the critic,
    naming the first such part (in the order critic, actor, alpha).

    The SAC actor loss ``E[alpha log pi - Q]`` and the temperature loss ``-log(alpha) E[log pi + H]`` take any sign;
    the critic loss (a squared TD error) is ``>= 0``.

    :param name: the combiner's command-line name.
    :param parts: the parts it is applied to.
    :param needs: what it needs of the losses, completing "which ...", e.g. ``"takes the log of the task losses"``.
    """
    for part in PARTS:
        if part in parts and part != "critic":
            raise ValueError(
                f"combine_{part}: got true with combiner {name}, which {needs}, and the SAC {part} loss can be "
                f"negative; add --combine_{part} false (critic only)"
            )


class LogLossCombiner(Combiner):
    """A combiner whose rule takes the log of the task losses: :meth:`check_log_domain` rejects a loss outside the
    log's domain (``< 0``, or ``<= 0`` where :attr:`strictly_positive`) with :class:`~mtrl.mto.base.NonFiniteError`
    (its log is not finite), naming the first such task.

    The check costs one host sync, so with :attr:`~mtrl.mto.base.Combiner.defer_finite_checks` (the agent on a GPU)
    it is deferred like the finiteness check and raised by :meth:`raise_deferred`.
    """

    #: the rule takes ``log L`` (``L > 0`` needed); otherwise ``log(L + eps)`` (``L >= 0`` accepted)
    strictly_positive: ClassVar[bool] = False

    def __init__(self, num_tasks: int, seed: int = 0) -> None:
        """:param num_tasks: K.
        :param seed: seed of the generator.
        """
        super().__init__(num_tasks, seed)
        self._deferred_domain: Tensor | None = None  # [K] bool

    def _expected(self) -> str:
        return "> 0" if self.strictly_positive else ">= 0"

    def check_log_domain(self, losses: Tensor) -> None:
        """Raise :class:`~mtrl.mto.base.NonFiniteError` if a loss is outside the log's domain (deferred with
        :attr:`~mtrl.mto.base.Combiner.defer_finite_checks`).

        :param losses: ``[K]`` finite task losses.
        """
        bad = losses <= 0 if self.strictly_positive else losses < 0
        if self.defer_finite_checks:
            self._deferred_domain = bad if self._deferred_domain is None else self._deferred_domain | bad
            return
        if bool(bad.any()):
            task = int(bad.nonzero()[0, 0])
            raise NonFiniteError(
                f"combiner '{self}' takes the log of the task losses: task {task} has loss {float(losses[task]):.4g}, "
                f"expected {self._expected()}; apply it to the critic loss only"
            )

    def raise_deferred(self) -> None:
        """The deferred finiteness check, then the deferred domain check (one host sync each)."""
        bad, self._deferred_domain = self._deferred_domain, None
        super().raise_deferred()
        if bad is not None and bool(bad.any()):
            raise NonFiniteError(
                f"combiner '{self}' takes the log of the task losses: task {int(bad.nonzero()[0, 0])} had a loss "
                f"outside {self._expected()} since the last check; apply it to the critic loss only"
            )


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
