"""What the loss-space methods that take logarithms of the losses share (IMTL-L, STCH, GLS, DB-MTL): the critic-only
restriction of their configs, and the domain check of their losses."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from mtrl.mto.base import PARTS, Combiner, NonFiniteError


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
