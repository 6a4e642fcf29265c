"""MoDo: stochastic MGDA with double sampling; and the helpers of the stateful stochastic gradient-space combiners
(MoDo, SDMGrad, MoCo, ExcessMTL): the simplex projection, per-task ``[K, P]`` state and the double-sampled Gramian."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtrl.mto.base import Combiner, CombinerConfigBase, Jacobian, NonFiniteError, as_blocks, fmt
from mtrl.mto.gramian import GRAM_BLOCK, GramianCombiner, checked_gramian, single_thread, weighted_sum

#: how the Gramian ``A`` of the weight update is sampled (see :func:`checked_gramians`)
Sampling = Literal["single", "previous"]


def project_simplex(v: Tensor) -> Tensor:
    r"""Euclidean projection of ``v [K]`` onto the probability simplex (sort and threshold, Held et al. 1974):

    .. math:: \Pi_\Delta(v) = \max(v - \theta, 0), \quad
        \theta = \frac{1}{\rho} \Big(\sum_{i \le \rho} u_i - 1\Big), \quad
        \rho = \min\{j : \tfrac{1}{j} (\textstyle\sum_{i \le j} u_i - 1) > u_{j+1}\} \;\; (K \text{ if none})

    with ``u`` the entries of ``v`` in decreasing order: the same operations as torchjd's and the official MoDo /
    SDMGrad code's loop (so equal inputs give bit-equal outputs). Where the result is off the simplex (entries so
    large that ``u_1 - 1`` rounds to ``u_1``: a weight step ``gamma A lambda`` with huge gradients), it is recomputed
    on ``v - max v`` (the projection is invariant to adding a constant to every entry).
    """
    out = _threshold(v)
    if not abs(float(out.sum()) - 1.0) <= 1e-9:
        out = _threshold(v - v.max())
    return out


def _threshold(v: Tensor) -> Tensor:
    k = v.numel()
    u = torch.sort(v, descending=True).values
    means = (u.cumsum(0)[:-1] - 1.0) / torch.arange(1, k, dtype=v.dtype)
    above = (means > u[1:]).nonzero()
    theta = means[int(above[0, 0])] if above.numel() else (v.sum() - 1.0) / k
    return (v - theta).clamp_min(0.0)


class TaskMemory(nn.Module):
    """A ``[K, P]`` tensor kept across calls (previous gradients, tracked gradients, squared-gradient sums): a
    buffer (in ``state_dict``), allocated at the first call to the gradients' width, dtype and device.

    The columns follow the concatenated gradients, so a call with column blocks ``[K, P_i]`` works on column views
    of the same buffer whatever the split. A call whose total width ``P`` differs from the stored one starts afresh
    (:meth:`views` reports it); a change of dtype or device converts the stored values. ``load_state_dict``
    resizes the buffer to the saved one.
    """

    value: Tensor

    def __init__(self, num_tasks: int) -> None:
        """:param num_tasks: K (the rows)."""
        super().__init__()
        self.register_buffer("value", torch.zeros(num_tasks, 0))
        self.filled = False

    def views(self, grads: Jacobian) -> tuple[list[Tensor], bool]:
        """Column views of the buffer matching the blocks of ``grads`` (allocated or converted first).

        :param grads: the call's ``[K, P]`` gradients or their ``[K, P_i]`` blocks.
        :returns: the views and whether they hold values from earlier calls (False: zeros, first call or new ``P``).
        """
        blocks = as_blocks(grads)
        ref = blocks[0]
        width = sum(b.shape[1] for b in blocks)
        if self.value.shape[1] != width:
            self.value = ref.new_zeros(ref.shape[0], width)
            self.filled = False
        elif self.value.dtype != ref.dtype or self.value.device != ref.device:
            self.value = self.value.to(device=ref.device, dtype=ref.dtype)
        out, start = [], 0
        for block in blocks:
            out.append(self.value[:, start : start + block.shape[1]])
            start += block.shape[1]
        return out, self.filled

    def get_extra_state(self) -> dict:
        return {"filled": self.filled}

    def set_extra_state(self, state: dict) -> None:
        self.filled = bool(state["filled"])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        saved = state_dict.get(prefix + "value")
        if isinstance(saved, Tensor) and saved.shape != self.value.shape:
            self.value = torch.empty(saved.shape, dtype=saved.dtype, device=self.value.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def column_chunks(*tensors: Tensor) -> Iterator[tuple[Tensor, ...]]:
    """Matching column chunks of ``[K, P_i]`` tensors: :data:`~mtrl.mto.gramian.GRAM_BLOCK` columns on the CPU (as
    :func:`~mtrl.mto.gramian.gramian`), the whole block elsewhere."""
    if tensors[0].device.type == "cpu" and tensors[0].shape[1] > GRAM_BLOCK:
        yield from zip(*(t.split(GRAM_BLOCK, dim=1) for t in tensors), strict=True)
    else:
        yield tensors


def checked_gramians(
    combiner: Combiner, grads: Jacobian, losses: Tensor, memory: TaskMemory | None
) -> tuple[Tensor, Tensor]:
    r"""This call's Gramian ``G [K, K]`` (float64 CPU, checked as :func:`~mtrl.mto.gramian.checked_gramian`) and the
    Gramian ``A`` of the weight update, the stand-in for ``J_1 J_2^T`` of two independent mini-batches.

    The agent's per-task gradients come from disjoint rows of one batch (each task's loss only reads its own rows),
    so for ``i != j`` the entries ``g_i . g_j`` of this batch's Gramian are already products of independent samples
    (unbiased for ``grad F_i . grad F_j``); only the diagonal ``||g_i||^2`` is biased, by the variance of ``g_i``.
    With a ``memory`` (``sampling="previous"``) the diagonal is taken across consecutive updates instead, whose
    batches are independent draws from the replay buffer:

    .. math:: A_{ij} = g_{i,t} \cdot g_{j,t} \;\; (i \ne j), \qquad A_{ii} = g_{i,t} \cdot g_{i,t-1}

    (the parameters moved by one optimizer step in between), and this call's gradients replace the stored ones once
    they are checked. The dot products are taken in the Gramian's pass over ``G`` (same chunks, same arithmetic for
    ``G``); the first call (or one with a new width) has no previous gradients and uses ``||g_i||^2``.

    :param combiner: the combiner named in the errors.
    :param grads: this call's gradients (or blocks).
    :param losses: ``[K]`` losses.
    :param memory: the previous call's gradients (``sampling="previous"``), or None (``sampling="single"``: ``A = G``).
    :returns: ``(G, A)``, ``A`` symmetric, not PSD in general.
    """
    if memory is None:
        gram = checked_gramian(combiner, grads, losses)
        return gram, gram
    views, filled = memory.views(grads)
    if not filled:
        gram = checked_gramian(combiner, grads, losses)
        a = gram
    else:
        combiner.check_finite(None, losses)
        blocks = as_blocks(grads)
        k = blocks[0].shape[0]
        gram = blocks[0].new_zeros(k, k)
        dots = blocks[0].new_zeros(k)
        for block, view in zip(blocks, views, strict=True):
            for part, before in column_chunks(block, view):
                gram.addmm_(part, part.T)
                dots += torch.linalg.vecdot(part, before)
        gram = gram.to("cpu", torch.float64)
        gram = 0.5 * (gram + gram.T)
        if not bool(torch.isfinite(gram).all()):
            combiner.check_finite(grads, losses)
            dtype = blocks[0].dtype
            raise NonFiniteError(f"combiner '{combiner}': the Gramian of the (finite) gradients overflows {dtype}")
        a = gram.clone()
        a.diagonal().copy_(dots.to("cpu", torch.float64))
    for view, block in zip(views, as_blocks(grads), strict=True):
        view.copy_(block)
    memory.filled = True
    return gram, a


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is finite and ``> 0``."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"combiner.{name}: got {value}, expected a number > 0")


def check_non_negative(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is finite and ``>= 0``."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"combiner.{name}: got {value}, expected a number >= 0")


class MoDo(GramianCombiner):
    r"""MoDo (Chen et al. NeurIPS 2023, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
    Generalization and Conflict-Avoidance", https://arxiv.org/abs/2305.20057): MGDA's weight problem, one projected
    gradient step per update on a double-sampled Gramian, the weights carried over from update to update.

    .. math:: \lambda_{t+1} = \Pi_\Delta\big(\lambda_t - \gamma (A_t \lambda_t + \rho \lambda_t)\big), \qquad
        d = \sum_k \lambda_{t+1,k} g_k

    ``A_t`` stands for ``J_1 J_2^T`` of two independent mini-batches (the paper's double sampling; its parameter
    update uses a third). The agent gives one batch per update, so (:func:`checked_gramians`): ``sampling="previous"``
    (default) keeps this batch's Gramian off the diagonal, where the tasks' gradients come from disjoint rows and are
    already independent, and takes the diagonal across consecutive updates, ``g_{i,t} . g_{i,t-1}`` (independent
    replay draws, one optimizer step apart), at the cost of the previous gradients as state (``[K, P]``, one copy
    per call); ``sampling="single"`` uses this batch's Gramian, whose diagonal is biased up by each task's gradient
    variance. The direction uses this batch's gradients. torchjd's ``MoDoWeighting`` and LibMTL take ``A`` from
    two (three) consecutive batches per step instead.

    Not invariant to the gradients' scale (``gamma`` multiplies ``A``), as published. ``lambda`` starts at ``1/K``
    and is a buffer; with ``sampling="previous"`` so are the previous gradients (:class:`TaskMemory`). No randomness.

    Scale: ``lambda`` is on the simplex, so identical gradients give the mean (``mean`` at ``lambda = 1/K``); K=1
    returns the gradient. Same scale as torchjd and LibMTL; the official code steps with the sum of its two batches'
    gradients (twice this, "averaging via the learning rate").
    """

    lam: Tensor

    def __init__(
        self, num_tasks: int, seed: int = 0, gamma: float = 0.1, rho: float = 0.1, sampling: Sampling = "previous"
    ) -> None:
        """:param num_tasks: K.
        :param seed: seed of the (unused) generator.
        :param gamma: step size of the weights.
        :param rho: l2 regularisation of the weights' subproblem.
        :param sampling: ``previous`` or ``single`` (see the class docstring).
        """
        super().__init__(num_tasks, seed)
        self.gamma, self.rho, self.sampling = gamma, rho, sampling
        self.register_buffer("lam", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))
        self.memory = TaskMemory(num_tasks) if sampling == "previous" else None

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        assert grads is not None  # checked by Combiner.__call__
        gram, a = checked_gramians(self, grads, losses, self.memory)
        with single_thread():
            lam = self.lam.detach().cpu()
            lam = project_simplex(lam - self.gamma * (a @ lam + self.rho * lam))
            self.lam.copy_(lam)
            self.record_stats(gram, lam)
        return weighted_sum(lam, grads)

    def __str__(self) -> str:
        name = f"modo-g{fmt(self.gamma)}"
        if self.rho != 0.1:
            name += f"-r{fmt(self.rho)}"
        return name + ("-single" if self.sampling == "single" else "")


@dataclass(frozen=True)
class MoDoConfig(CombinerConfigBase):
    """MoDo: one projected gradient step on MGDA's weights per update, double-sampled Gramian."""

    name = "modo"
    kind = "gradient"

    gamma: float = 0.1
    """Step size of the task weights (official code and torchjd: 0.1; LibMTL: 0.001)."""
    rho: float = 0.1
    """l2 regularisation of the weights' subproblem (official code, torchjd, LibMTL: 0.1)."""
    sampling: Sampling = "previous"
    """Gramian of the weight step: previous (diagonal g_t . g_{t-1} across consecutive updates, off-diagonal from
    this batch's disjoint task rows; stores the previous gradients) or single (this batch's Gramian)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``gamma > 0`` and ``rho >= 0``, finite."""
        super().check(num_tasks, parts)
        check_positive("gamma", self.gamma)
        check_non_negative("rho", self.rho)

    def build(self, num_tasks: int, seed: int = 0) -> MoDo:
        self.check(num_tasks, frozenset())
        return MoDo(num_tasks, seed, gamma=self.gamma, rho=self.rho, sampling=self.sampling)
