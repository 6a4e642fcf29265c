"""Per-task state of the stateful stochastic gradient-space combiners (MoDo, SDMGrad, MoCo, ExcessMTL, DB-MTL): a
``[K, P]`` tensor kept across calls, and the double-sampled Gramian built from it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtrl.mto.base import Combiner, Jacobian, NonFiniteError, as_blocks
from mtrl.mto.gramian import GRAM_BLOCK, checked_gramian

#: how the Gramian ``A`` of the weight update is sampled (see :func:`checked_gramians`)
Sampling = Literal["single", "previous"]


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
