"""ExcessMTL: task weights from exponentiated steps on estimated excess risks (AdaGrad-preconditioned gradients)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, Jacobian, as_blocks, check_positive, fmt
from mtrl.mto.gramian import GramianCombiner, checked_gramian, single_thread, weighted_sum
from mtrl.mto.memory import TaskMemory

#: added to the squared-gradient sums under the square root (official code, torchjd, LibMTL)
_SQ_EPS = 1e-7
#: CPU column chunks of the excess-risk pass hold about this many entries (~256 kB of float32: the chunk, its state
#: and its temporary stay in cache), at least :data:`_MIN_CHUNK` columns
_CHUNK_ELEMENTS = 65536
_MIN_CHUNK = 1024
#: added to the baseline excess risk before dividing by it (torchjd; the official code divides by it as is)
_BASE_EPS = 1e-7


def excess_risks(grads: Jacobian, sq_sums: list[Tensor]) -> Tensor:
    r"""Accumulate ``S += g * g`` (in place, on the blocks of the ``[K, P]`` state) and return the excess-risk
    estimates

    .. math:: \hat E_k = \sum_j \frac{g_{kj}^2}{\sqrt{S_{kj} + 10^{-7}}} = g_k^\top H_k^{-1} g_k

    (``H_k`` the diagonal AdaGrad preconditioner), ``[K]`` float64 CPU. On the CPU it works in column chunks of
    ~64k entries (cache-resident temporaries), on other devices per block: no ``[K, P]`` temporary besides the state.

    :param grads: the call's ``[K, P]`` gradients or their blocks.
    :param sq_sums: the state's column views matching the blocks.
    """
    blocks = as_blocks(grads)
    k = blocks[0].shape[0]
    out = blocks[0].new_zeros(k)
    width = max(_MIN_CHUNK, _CHUNK_ELEMENTS // k) if blocks[0].device.type == "cpu" else None
    for block, state in zip(blocks, sq_sums, strict=True):
        parts = zip(block.split(width, dim=1), state.split(width, dim=1), strict=True) if width else [(block, state)]
        for g, s in parts:
            s.addcmul_(g, g)
            out += torch.linalg.vecdot(s.add(_SQ_EPS).rsqrt_().mul_(g), g)
    return out.to("cpu", torch.float64)


class ExcessMTL(GramianCombiner):
    r"""ExcessMTL (He et al. ICML 2024, "Robust Multi-Task Learning with Excess Risks",
    https://arxiv.org/abs/2402.02009): exponentiated-gradient task weights driven by each task's estimated excess
    risk relative to its first estimates.

    .. math:: S_k \mathrel{+}= g_k \odot g_k, \quad
        \hat E_k = \Big\langle g_k, \frac{g_k}{\sqrt{S_k + 10^{-7}}} \Big\rangle, \quad
        r_k = \frac{\hat E_k}{\bar E_k + 10^{-7}}, \quad
        \alpha \leftarrow \frac{\alpha \odot e^{\eta r}}{\sum_k \alpha_k e^{\eta r_k}}, \qquad d = \sum_k \alpha_k g_k

    (paper Eqs. 6-9: second-order Taylor estimate of the excess risk with the diagonal AdaGrad Hessian ``H_k``,
    scale processing by the baseline ``bar E_k``, exponentiated gradient ascent on the weights). The first
    ``warmup_steps`` calls only collect: the weights stay ``1/K`` and the baseline is the mean of their estimates
    (``warmup_steps=1``, the default: the first call's estimate, as the official code and LibMTL; the paper's
    appendix C.1 collects 3 epochs). As torchjd's ``ExcessMTLWeighting(n_warmup_steps=warmup_steps)``; the official
    code and LibMTL start the weights at 1 and renormalise them to sum to K. The weights are kept as log-weights (no
    underflow to a weight of exactly 0 from which a task could not recover).

    The ``1e-7`` under the square root is the official code's: with per-coordinate squared gradients far below it
    (``||g||^2 / P``, MT-SAC's first updates), ``E_k`` starts near ``||g_k||^2 / sqrt(1e-7)``. A task whose baseline
    is 0 (zero gradients during the warm-up) gets ``r_k = E_k / 1e-7`` once its gradient is nonzero (the official
    code divides by 0).

    State (per instance, in ``state_dict``): the squared-gradient sums ``S`` (``[K, P]`` in the gradients' dtype,
    :class:`~mtrl.mto.modo.TaskMemory`; updated in place, in column chunks), the log-weights, the baseline, the
    warm-up sum and the call count. A call with a new width ``P`` restarts the sums. No randomness.

    Scale: the weights sum to 1 (``mean`` at the start); the official code and LibMTL weight the losses by
    ``K alpha`` (K times this). K=1 returns the gradient.
    """

    log_weights: Tensor
    baseline: Tensor
    warmup_sum: Tensor

    def __init__(self, num_tasks: int, seed: int = 0, step_size: float = 1e-2, warmup_steps: int = 1) -> None:
        """:param num_tasks: K.
        :param seed: seed of the (unused) generator.
        :param step_size: ``eta``, the step size of the exponentiated weight update.
        :param warmup_steps: calls that only collect the baseline (``>= 1``).
        """
        super().__init__(num_tasks, seed)
        self.step_size, self.warmup_steps = step_size, warmup_steps
        self.register_buffer("log_weights", torch.full((num_tasks,), -math.log(num_tasks), dtype=torch.float64))
        self.register_buffer("baseline", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("warmup_sum", torch.zeros(num_tasks, dtype=torch.float64))
        self.sq_sums = TaskMemory(num_tasks)

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        assert grads is not None  # checked by Combiner.__call__
        gram = checked_gramian(self, grads, losses)
        views, _ = self.sq_sums.views(grads)
        risks = excess_risks(grads, views)
        self.sq_sums.filled = True
        with single_thread():
            log_w = self.log_weights.detach().cpu()
            if self.calls < self.warmup_steps:
                warm = self.warmup_sum.detach().cpu() + risks
                self.warmup_sum.copy_(warm)
                if self.calls + 1 == self.warmup_steps:
                    self.baseline.copy_(warm / self.warmup_steps)
            else:
                ratio = risks / (self.baseline.detach().cpu() + _BASE_EPS)
                log_w = torch.log_softmax(log_w + self.step_size * ratio, dim=0)
                self.log_weights.copy_(log_w)
            self.calls += 1
            weights = log_w.exp()
            self.record_stats(gram, weights)
        return weighted_sum(weights, grads)

    def __str__(self) -> str:
        name = f"excessmtl-e{fmt(self.step_size)}"
        return name + (f"-w{self.warmup_steps}" if self.warmup_steps != 1 else "")


@dataclass(frozen=True)
class ExcessMTLConfig(CombinerConfigBase):
    """ExcessMTL: exponentiated-gradient task weights from estimated excess risks."""

    name = "excessmtl"
    kind = "gradient"

    step_size: float = 1e-2
    """eta, the step size of the exponentiated weight update (LibMTL's robust_step_size: 0.01; torchjd: 1.0)."""
    warmup_steps: int = 1
    """Calls that only collect the baseline excess risks, weights uniform (official code and LibMTL: 1, the first
    call; the paper's appendix C.1: 3 epochs)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``step_size > 0`` finite, ``warmup_steps >= 1``."""
        super().check(num_tasks, parts)
        check_positive("step_size", self.step_size)
        if self.warmup_steps < 1:
            raise ValueError(f"combiner.warmup_steps: got {self.warmup_steps}, expected an integer >= 1")

    def build(self, num_tasks: int, seed: int = 0) -> ExcessMTL:
        self.check(num_tasks, frozenset())
        return ExcessMTL(num_tasks, seed, step_size=self.step_size, warmup_steps=self.warmup_steps)
