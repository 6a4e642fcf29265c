"""CR-MOGM: a gradient manipulation method (MGDA, PCGrad, CAGrad, IMTL-G) with exponentially averaged weights."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, Jacobian, as_blocks, fmt
from mtrl.mto.cagrad import cagrad_dual_weights, check_c
from mtrl.mto.gramian import GramianCombiner
from mtrl.mto.imtlg import imtlg_weights
from mtrl.mto.mgda import min_norm_weights
from mtrl.mto.pcgrad import pcgrad_weights, random_orders

#: the manipulation methods whose weights are averaged
Base = Literal["mgda", "pcgrad", "cagrad", "imtlg"]


class CRMOGM(GramianCombiner):
    r"""CR-MOGM (Zhou et al. NeurIPS 2022, "On the Convergence of Stochastic Multi-Objective Gradient Manipulation
    and Beyond",
    https://proceedings.neurips.cc/paper_files/paper/2022/hash/f91bd64a3620aad8e70a27ad9cb3ca57-Abstract-Conference.html
    ): the composite weights of a stochastic gradient manipulation method, exponentially averaged across updates.

    .. math:: \lambda_t = \alpha \lambda_{t-1} + (1 - \alpha) \hat\lambda_t, \quad \lambda_0 = \hat\lambda_1,
        \qquad d = \sum_k \lambda_{t,k} g_k

    with ``hat lambda_t`` the weights the ``base`` method computes from this update's Gramian (the paper's unified
    framework writes MGDA, PCGrad and CAGrad as ``d = sum_k lambda_k g_k``; the weights set by the instantaneous
    stochastic gradients alone are what makes them fail to converge): ``mgda`` (exact min-norm weights,
    :func:`~mtrl.mto.mgda.min_norm_weights`, warm-started), ``pcgrad`` (mean of the projected gradients' coefficients,
    random orders from the owned generator), ``cagrad`` (exact dual, ``c``, divided by ``1 + c^2`` as ``cagrad``)
    or ``imtlg``. Corollary 1 lets ``alpha_t`` grow towards 1 as the learning rate decays; MT-SAC's learning rate is
    constant, so ``alpha`` is fixed (torchjd's ``CRMOGMWeighting``, default 0.9). ``alpha = 0`` is the base method.

    State: ``lambda_{t-1}`` (buffer), whether it is set, MGDA's / CAGrad's warm-start support (buffers) and the
    generator (PCGrad's orders), all in ``state_dict``.

    Scale: the base method's (a convex combination of its weights): ``mgda``, ``pcgrad``, ``imtlg`` sum to 1 (mean
    for identical gradients; K=1 returns the gradient), ``cagrad`` as ``cagrad`` (``(1 + c) / (1 + c^2)`` at K=1).
    """

    lam: Tensor
    support: Tensor

    def __init__(self, num_tasks: int, seed: int = 0, base: Base = "mgda", alpha: float = 0.9, c: float = 0.4) -> None:
        """:param num_tasks: K.
        :param seed: seed of the generator (PCGrad's orders).
        :param base: the manipulation method whose weights are averaged.
        :param alpha: weight of the previous average.
        :param c: CAGrad's radius (``base="cagrad"`` only).
        """
        super().__init__(num_tasks, seed)
        self.base, self.alpha, self.c = base, alpha, c
        self.register_buffer("lam", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))
        self.register_buffer("support", torch.zeros(num_tasks, dtype=torch.bool))
        self.started = False
        self._eps = torch.finfo(torch.float64).eps

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        if grads is not None:  # IMTL-G's rank cut-off follows the gradients' precision (as ``imtlg``)
            self._eps = torch.finfo(as_blocks(grads)[0].dtype).eps
        return super().forward(grads, losses)

    def base_weights(self, gram: Tensor) -> Tensor:
        """``hat lambda [K]`` of the base method for a Gramian (float64 CPU); advances the generator (``pcgrad``)
        and the warm-start support (``mgda``, ``cagrad``)."""
        k = gram.shape[0]
        if self.base == "pcgrad":
            return pcgrad_weights(gram, random_orders(k, self.generator)).mean(0)
        if self.base == "imtlg":
            return imtlg_weights(gram, k * self._eps)
        support = self.support.detach().cpu()
        if self.base == "cagrad":
            base = torch.full((k,), 1.0 / k, dtype=torch.float64)
            weights = cagrad_dual_weights(gram, self.c, base, support=support) / (1.0 + self.c**2)
        else:
            weights = min_norm_weights(gram, init=support.nonzero().flatten().tolist())
            support = weights > 0
        self.support.copy_(support)
        return weights

    def weights(self, gram: Tensor) -> Tensor:
        current = self.base_weights(gram)
        if self.started:
            current = self.alpha * self.lam.detach().cpu() + (1.0 - self.alpha) * current
        self.lam.copy_(current)
        self.started = True
        return current

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "started": self.started}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.started = bool(state["started"])

    def __str__(self) -> str:
        name = f"crmogm-{self.base}-a{fmt(self.alpha)}"
        return name + (f"-c{fmt(self.c)}" if self.base == "cagrad" else "")


@dataclass(frozen=True)
class CRMOGMConfig(CombinerConfigBase):
    """CR-MOGM: a gradient manipulation method's weights, exponentially averaged across updates."""

    name = "crmogm"
    kind = "gradient"

    base: Base = "mgda"
    """Manipulation method whose weights are averaged: mgda, pcgrad, cagrad or imtlg (the paper: MGDA, PCGrad,
    CAGrad)."""
    alpha: float = 0.9
    """Weight of the previous average, in [0, 1] (torchjd default 0.9; 0 = the base method, 1 = frozen)."""
    c: float = 0.4
    """CAGrad's radius, for base cagrad (CAGrad's NYUv2 default 0.4)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``0 <= alpha <= 1``, ``c >= 0``, finite."""
        super().check(num_tasks, parts)
        if not (math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"combiner.alpha: got {self.alpha}, expected a number in [0, 1]")
        check_c(self.c)

    def build(self, num_tasks: int, seed: int = 0) -> CRMOGM:
        self.check(num_tasks, frozenset())
        return CRMOGM(num_tasks, seed, base=self.base, alpha=self.alpha, c=self.c)
