"""Adam on the small vectors that combiners learn themselves (task logits, log-variances, task weights)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class VectorAdam(nn.Module):
    r"""Adam (``torch.optim.Adam`` semantics, coupled L2 ``weight_decay``) on one small vector a combiner learns itself
    (FAMO logits, UW log-variances, GradNorm weights).

    .. math:: g \leftarrow g + \lambda \theta, \quad m \leftarrow \beta_1 m + (1 - \beta_1) g, \quad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2, \quad
        \theta \leftarrow \theta - \frac{\eta}{1 - \beta_1^t} \frac{m}{\sqrt{v / (1 - \beta_2^t)} + \epsilon}

    Its moments are buffers and its step count extra state, so the combiner's ``state_dict`` carries them; the step
    count is a Python int (no device sync).
    """

    exp_avg: Tensor
    exp_avg_sq: Tensor

    def __init__(
        self, n: int, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        """:param n: length of the vector.
        :param lr: learning rate ``eta``.
        :param weight_decay: coupled L2 coefficient ``lambda``.
        :param betas: ``(beta_1, beta_2)``.
        :param eps: ``epsilon``.
        """
        super().__init__()
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.register_buffer("exp_avg", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("exp_avg_sq", torch.zeros(n, dtype=torch.float64))
        self.steps = 0

    @torch.no_grad()
    def step(self, param: Tensor, grad: Tensor) -> None:
        """One in-place Adam step on ``param`` with gradient ``grad``."""
        self.steps += 1
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        b1, b2 = self.betas
        self.exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2**self.steps)).add_(self.eps)
        param.addcdiv_(self.exp_avg, denom, value=-self.lr / (1 - b1**self.steps))

    def get_extra_state(self) -> dict:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict) -> None:
        self.steps = int(state["steps"])
