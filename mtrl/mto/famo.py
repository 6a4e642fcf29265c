"""FAMO: fast adaptive multitask optimization (loss space, learned logits)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.adam import VectorAdam
from mtrl.mto.base import PARTS, Combiner, CombinerConfigBase, Jacobian, NonFiniteError, Weighting

_EPS = 1e-8


class FAMO(Combiner):
    r"""FAMO (Liu et al. NeurIPS 2023, https://arxiv.org/abs/2306.03792): decrease all task losses at about the same
    log rate, from the losses only.

    .. math:: z = \operatorname{softmax}(\xi), \quad \tilde L_i = L_i - b + \epsilon, \quad
        c = \sum_j \frac{z_j}{\tilde L_j}, \qquad
        \mathcal L = \sum_i \frac{z_i}{c} \log \tilde L_i \;\Rightarrow\;
        w_i = \frac{z_i}{c \tilde L_i} \quad (\textstyle\sum_i w_i = 1)

    After the optimizer step, :meth:`after_step` gets the losses recomputed on the same batch and takes one Adam step
    (``lr``, coupled ``weight_decay``) on the logits ``xi`` with gradient
    ``(d softmax / d xi)^T delta``, ``delta = log L~_before - log L~_after``.

    Matches torchjd's ``FAMO`` scalarizer and the official ``famo.py`` / ``methods/weight_methods.py`` (divide by
    ``c``); the FAMO repo's MT10 ``mtrl_files/famo.py`` multiplies by ``c`` (a global gradient scale) and is applied to
    the critic loss only. Default ``weight_decay`` 1e-3 (paper Alg. 2, torchjd, LibMTL); official code 1e-5; the MT10
    ``run.sh`` uses ``gamma=0.01, w_lr=0.025``.

    Requires every ``L_i > b`` (``min_loss``): raises :class:`~mtrl.mto.base.NonFiniteError` otherwise (its log is not
    finite; training stops with one line and keeps its last checkpoint). The SAC actor and temperature losses
    are not bounded below, so :meth:`FAMOConfig.check` allows the critic only, as the paper's MT10 runs. State
    (logits, Adam moments, the losses of the last call) is in ``state_dict``.

    Scale: the weights sum to 1 (a convex combination; ``mean`` at uniform ``z`` and equal losses). K=1 gives weight 1.
    """

    logits: Tensor
    losses_before: Tensor

    requires_grads = False
    needs_losses_after_step = True

    def __init__(
        self, num_tasks: int, seed: int = 0, lr: float = 0.025, weight_decay: float = 1e-3, min_loss: float = 0.0
    ) -> None:
        super().__init__(num_tasks, seed)
        self.lr = lr
        self.weight_decay = weight_decay
        self.min_loss = min_loss
        self.register_buffer("logits", torch.zeros(num_tasks, dtype=torch.float64))
        self.adam = VectorAdam(num_tasks, lr, weight_decay=weight_decay)
        self.register_buffer("losses_before", torch.ones(num_tasks, dtype=torch.float64))
        self.has_losses = False

    def _shifted(self, losses: Tensor) -> Tensor:
        shifted = losses.detach().to(torch.float64) - self.min_loss + _EPS
        if not bool((shifted > 0).all()):
            task = int((shifted <= 0).nonzero()[0, 0])
            raise NonFiniteError(
                f"combiner 'famo': task {task} has loss {float(losses[task]):.4g} <= min_loss {self.min_loss}; "
                "FAMO takes log(loss - min_loss): set combiner.min_loss below the smallest loss, or apply FAMO to the "
                "critic only"
            )
        return shifted

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Weighting:
        self.follow_device(losses)
        shifted = self._shifted(losses)
        z = torch.softmax(self.logits, dim=0)
        inv = z / shifted
        weights = inv / inv.sum()
        self.losses_before.copy_(shifted)
        self.has_losses = True
        self.record_stats(weights=weights)
        return Weighting(weights.to(losses.dtype))

    @torch.no_grad()
    def after_step(self, losses_after: Tensor) -> None:
        """One Adam step on the logits from the change of the losses across the optimizer step (same batch)."""
        if not self.has_losses:
            raise RuntimeError("combiner 'famo': after_step() called before forward()")
        self.check_finite(None, losses_after)
        after = (losses_after.detach().to(self.logits) - self.min_loss + _EPS).clamp_min(_EPS)
        delta = self.losses_before.log() - after.log()
        z = torch.softmax(self.logits, dim=0)
        grad = z * (delta - z @ delta)  # softmax Jacobian^T delta
        self.adam.step(self.logits, grad)

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "has_losses": self.has_losses}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.has_losses = bool(state.get("has_losses", False))


@dataclass(frozen=True)
class FAMOConfig(CombinerConfigBase):
    """FAMO: loss-space balancing of the task losses' log decrease rates."""

    name = "famo"
    kind = "loss"

    lr: float = 0.025
    """Adam learning rate of the task logits (paper, torchjd, MT10 run.sh: 0.025)."""
    weight_decay: float = 1e-3
    """Weight decay of the logits (paper Alg. 2 / torchjd / LibMTL: 1e-3; official code 1e-5; MT10 run.sh 0.01)."""
    min_loss: float = 0.0
    """Lower bound b subtracted from every loss before the log (0 for non-negative losses such as the critic's)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``lr > 0``, ``weight_decay >= 0``, ``min_loss`` finite; applied to the critic only: FAMO takes
        ``log(L - min_loss)`` and the SAC actor and temperature losses are not bounded below."""
        super().check(num_tasks, parts)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"combiner.lr: got {self.lr}, expected a number > 0")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"combiner.weight_decay: got {self.weight_decay}, expected a number >= 0")
        if not math.isfinite(self.min_loss):
            raise ValueError(f"combiner.min_loss: got {self.min_loss}, expected a finite number")
        for part in PARTS:
            if part in parts and part != "critic":
                raise ValueError(
                    f"combine_{part}: got true with combiner famo, which needs losses bounded below and the SAC {part} "
                    f"loss is not; add --combine_{part} false (critic only, as in the FAMO paper's MT10 runs)"
                )

    def build(self, num_tasks: int, seed: int = 0) -> FAMO:
        self.check(num_tasks, frozenset())
        return FAMO(num_tasks, seed, lr=self.lr, weight_decay=self.weight_decay, min_loss=self.min_loss)
