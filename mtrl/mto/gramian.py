"""Gramian-space helpers of the gradient-space combiners: ``G G^T`` in column blocks, the finiteness check that comes
with it, weighted sums of the rows of ``G``, one intra-op thread for the small solvers, and
:class:`GramianCombiner`, the base of the combiners whose weights depend on the Gramian alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from mtrl.mto.base import Combiner, Jacobian, NonFiniteError, as_blocks

#: columns per block of the CPU Gramian (a [K, 32768] float32 block stays in cache; one [K, P] x [P, K] GEMM with
#: P = 700k was 2-3x slower on a 2-core EPYC and less accurate)
GRAM_BLOCK = 32768


def gramian(grads: Jacobian) -> Tensor:
    """``G G^T`` of ``grads [K, P]`` (or the sum over its column blocks), computed on the gradients' device (on CPU
    in column blocks of at most :data:`GRAM_BLOCK`), returned on the CPU in float64 ``[K, K]``, symmetrised."""
    blocks = as_blocks(grads)
    gram = blocks[0].new_zeros(blocks[0].shape[0], blocks[0].shape[0])
    for block in blocks:
        cpu_split = block.device.type == "cpu" and block.shape[1] > GRAM_BLOCK
        for part in block.split(GRAM_BLOCK, dim=1) if cpu_split else [block]:
            gram.addmm_(part, part.T)
    gram = gram.to("cpu", torch.float64)
    return 0.5 * (gram + gram.T)


def checked_gramian(combiner: Combiner, grads: Jacobian, losses: Tensor) -> Tensor:
    """The finiteness check of a gradient-space call and the Gramian ``[K, K]`` (float64 CPU, :func:`gramian`).

    :meth:`~mtrl.mto.base.Combiner.check_finite` for the losses, then the Gramian, whose diagonal screens the
    gradients for NaN/inf without a separate pass over ``G``; when it is non-finite, ``check_finite`` on the gradients
    names the task (same errors as calling it first). Its transfer to the CPU is the call's one host sync.

    :param combiner: the combiner named in the errors.
    :param grads: the checked ``[K, P]`` gradients or their column blocks.
    :param losses: ``[K]`` per-task losses.
    """
    combiner.check_finite(None, losses)
    gram = gramian(grads)
    if not bool(torch.isfinite(gram).all()):
        combiner.check_finite(grads, losses)
        raise NonFiniteError(
            f"combiner '{combiner}': the Gramian of the (finite) gradients overflows {as_blocks(grads)[0].dtype}"
        )
    return gram


def weighted_sum(weights: Tensor, grads: Jacobian) -> Jacobian:
    """``sum_k weights[k] grads[k]``: the direction ``[P]`` on the gradients' device and dtype (a list of its
    blocks when ``grads`` is a list of blocks)."""
    if isinstance(grads, list):
        w = weights.to(device=grads[0].device, dtype=grads[0].dtype)
        return [w @ block for block in grads]
    return weights.to(device=grads.device, dtype=grads.dtype) @ grads


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the enclosed (tiny, ``K x K``) tensor work on one intra-op thread, then restore the thread count.

    Small LAPACK/BLAS calls gain nothing from threads, and on a busy machine the OpenMP barrier of a 50 x 50 solve
    was measured at 10-50 ms instead of 0.05 ms. Toggling costs < 1 us. (Process-global: do not run other torch
    work concurrently from another Python thread.)
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class GramianCombiner(Combiner):
    """A gradient-space combiner whose direction is ``weights @ G`` with weights computed from the Gramian only.

    Subclasses implement :meth:`weights`; :meth:`forward` computes ``G G^T`` (on the gradients' device, then float64
    CPU; :func:`checked_gramian` also checks finiteness), calls :meth:`weights` on one intra-op thread
    (:func:`single_thread`), records the stats and returns ``weights @ G``. Cost beyond the ``K^2 P`` Gramian and the
    ``K P`` weighted sum: the ``K x K`` solver only.
    """

    requires_grads = True
    accepts_blocks = True
    #: dtype of the last call's gradients (float64 before any call): solvers whose tolerances follow the rounding
    #: noise of the Gramian (UPGrad, DualProj, IMTL-G, ConFIG, Nash-MTL, FairGrad) read it in :meth:`weights`
    grad_dtype: torch.dtype = torch.float64

    def weights(self, gram: Tensor) -> Tensor:  # pragma: no cover - abstract
        """:param gram: ``[K, K]`` float64 CPU Gramian. :returns: ``[K]`` float64 coefficients of the gradients."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        assert grads is not None  # checked by Combiner.__call__
        self.grad_dtype = as_blocks(grads)[0].dtype
        gram = checked_gramian(self, grads, losses)
        with single_thread():
            weights = self.weights(gram)
            self.record_stats(gram, weights)
        return weighted_sum(weights, grads)
