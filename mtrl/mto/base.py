"""The combiner contract: per-task gradients (or only per-task losses) in, one update direction out.

Scale convention, one for all combiners: :class:`~mtrl.mto.mean.Mean` returns exactly the gradient of the mean task
loss. Every other combiner documents its scale against it.

Diagnostics (``stats``): every combiner records, after each call, **tensors** in :attr:`Combiner.stats_tensors`
(no host sync is added by the bookkeeping); :attr:`Combiner.stats` converts them to floats lazily, with one host
transfer per device, when a logger reads it. The keys are

* ``cos_sim_mean``: mean pairwise cosine similarity of the rows of ``G`` (0 for K=1; zero rows count as cosine 0),
* ``num_conflicts``: number of pairs ``i<j`` with ``g_i . g_j < 0``,
* ``grad_norm_before``: norm of the mean gradient ``||mean_k g_k||``,
* ``grad_norm_after``: norm of the returned direction,
* ``weight/<k>``: the coefficient of task ``k``'s gradient in the result (``d = sum_k weight_k g_k``, or the loss
  weights of a :class:`Weighting`), for methods that have weights.

In ``stats_tensors`` every value is a 0-d tensor except ``weight`` (``[K]``), which :attr:`Combiner.stats` expands to
``weight/<k>``. A logger should read :attr:`Combiner.stats` only when it writes (every ``log_interval`` steps).

Loss-space methods have no ``G`` and record only the weights. Gradient-space methods work in Gramian space: the
``[K, K]`` matrix ``G G^T`` is moved to the CPU in float64 (one host sync, which their solvers need anyway; its
diagonal doubles as the NaN/inf screen of ``G``), the weights are computed there on one intra-op thread
(:func:`single_thread`) and the direction is ``weights @ G`` on the gradients' device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn


class Weighting(NamedTuple):
    """Loss-space answer of a combiner: the direction is ``sum_k weights[k] * grad L_k``.

    The caller realises it with one backward of ``(weights.detach() * losses).sum()``.
    """

    weights: Tensor  # [K]


#: per-task gradients: one ``[K, P]`` matrix, or (for combiners with :attr:`Combiner.accepts_blocks`) a list of
#: ``[K, P_i]`` column blocks, one per parameter, that together form it (saves copying them into one matrix).
Jacobian = Tensor | list[Tensor]


class NonFiniteError(RuntimeError):
    """A combiner was handed a non-finite loss or gradient."""


class Combiner(nn.Module):
    """Maps per-task gradients ``G [K, P]`` (and per-task losses ``[K]``) to one direction ``d [P]``.

    Subclasses set :attr:`requires_grads`: ``False`` for loss-space methods, which get ``grads=None`` and return a
    :class:`Weighting`; ``True`` for gradient-space methods, which return the direction ``[P]``.
    Randomness comes from :attr:`generator` (seeded, saved in :meth:`state_dict`). After each call
    :attr:`stats_tensors` holds scalar diagnostics as tensors and :attr:`stats` the same as floats (converted lazily,
    on read) for TensorBoard (logged under ``mto/``).
    """

    requires_grads: ClassVar[bool] = False
    stats_tensors: dict[str, Tensor]
    _stats_floats: dict[str, float] | None
    #: loss-space methods that learn from the losses after the optimizer step (FAMO) set this and get
    #: :meth:`after_step` called with the per-task losses recomputed on the same batch.
    needs_losses_after_step: ClassVar[bool] = False
    #: methods that only use the Gramian, row sums and weighted sums of ``G`` (through :func:`gramian`,
    #: :meth:`check_finite`, :func:`weighted_sum`) set this: they accept ``G`` as a list of column blocks and then
    #: return the direction as the matching list of blocks.
    accepts_blocks: ClassVar[bool] = False

    def __init__(self, num_tasks: int, seed: int = 0) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.generator = torch.Generator().manual_seed(seed)
        self.stats: dict[str, float] = {}
        #: when set (the agent does on CUDA), :meth:`check_finite` on losses alone only records non-finite tasks
        #: on the device, without a host sync; :meth:`raise_deferred` raises them later.
        self.defer_finite_checks = False
        self._deferred_bad: Tensor | None = None  # [K] bool

    def forward(self, grads: Tensor | None, losses: Tensor) -> Tensor | Weighting:  # pragma: no cover - abstract
        """:param grads: ``[K, P]`` per-task gradients over the shared parameters, or ``None`` for loss-space methods.
        :param losses: ``[K]`` per-task losses (detached).
        :returns: the direction ``[P]`` or a :class:`Weighting`.
        """
        raise NotImplementedError

    def after_step(self, losses_after: Tensor) -> None:
        """Hook for methods with :attr:`needs_losses_after_step`; a no-op otherwise."""

    def check_finite(self, grads: Jacobian | None, losses: Tensor) -> None:
        """Raise :class:`NonFiniteError` naming this combiner and the first offending task.

        One host sync. The gradients are screened through their row sums (any NaN/inf makes the sum non-finite);
        only when a row sum is non-finite are the entries inspected, so a finite matrix costs one reduction pass.
        With :attr:`defer_finite_checks` and no gradients: no sync, the check is left to :meth:`raise_deferred`.
        """
        bad = ~torch.isfinite(losses)
        if grads is None and self.defer_finite_checks:
            self._deferred_bad = bad if self._deferred_bad is None else self._deferred_bad | bad
            return
        blocks = as_blocks(grads)
        for block in blocks:
            bad = bad | ~torch.isfinite(block.sum(dim=1))
        if bool(bad.any()):
            if blocks:  # exact check (a finite row can overflow its float sum)
                bad = ~torch.isfinite(losses)
                for block in blocks:
                    bad = bad | ~torch.isfinite(block).all(dim=1)
                if not bool(bad.any()):
                    return
            task = int(bad.nonzero()[0, 0])
            what = "loss" if not bool(torch.isfinite(losses[task])) else "gradient"
            raise NonFiniteError(f"combiner '{self}' got a non-finite {what} for task {task}")

    def raise_deferred(self) -> None:
        """Raise :class:`NonFiniteError` if a deferred check saw a non-finite loss since the last call (one sync)."""
        bad, self._deferred_bad = self._deferred_bad, None
        if bad is not None and bool(bad.any()):
            raise NonFiniteError(f"combiner '{self}' got a non-finite loss for task {int(bad.nonzero()[0, 0])}")

    def checked_gramian(self, grads: Jacobian, losses: Tensor) -> Tensor:
        """:meth:`check_finite` for the losses, then the Gramian ``[K, K]`` (float64 CPU, :func:`gramian`), whose
        diagonal screens the gradients for NaN/inf without a separate pass over ``G``; when it is non-finite,
        :meth:`check_finite` on the gradients names the task (same errors as calling it first)."""
        self.check_finite(None, losses)
        gram = gramian(grads)
        if not bool(torch.isfinite(gram).all()):
            self.check_finite(grads, losses)
            raise NonFiniteError(
                f"combiner '{self}': the Gramian of the (finite) gradients overflows {as_blocks(grads)[0].dtype}"
            )
        return gram

    # ------------------------------------------------------------------------------------------------ stats

    @property
    def stats(self) -> dict[str, float]:
        """The last call's diagnostics as floats (see the module docstring for the keys).

        Converted from :attr:`stats_tensors` on first read after a call: one host transfer per device.
        """
        if self._stats_floats is None:
            self._stats_floats = stats_to_floats(self.stats_tensors)
        return self._stats_floats

    @stats.setter
    def stats(self, value: dict[str, float]) -> None:
        self.stats_tensors = {k: torch.tensor(float(v)) for k, v in value.items()}
        self._stats_floats = dict(value)

    def record_stats(
        self, gram: Tensor | None = None, weights: Tensor | None = None, direction: Tensor | None = None
    ) -> None:
        """Store this call's diagnostics as tensors (no host sync).

        :param gram: ``[K, K]`` Gramian ``G G^T`` (gradient-space methods); gives the cosine, conflict and norm stats.
        :param weights: ``[K]`` coefficient of each task's gradient (or loss) in the result, if the method has them;
            with ``gram`` it also gives ``grad_norm_after = sqrt(w^T G G^T w)``.
        :param direction: ``[P]`` the returned direction, for methods without weights (``grad_norm_after``).
        """
        out: dict[str, Tensor] = {}
        if gram is not None:
            out.update(gramian_stats(gram))
            if weights is not None:
                w = weights.to(gram)
                out["grad_norm_after"] = (w @ gram @ w).clamp_min(0).sqrt()
        if direction is not None:
            out["grad_norm_after"] = torch.linalg.vector_norm(direction.detach())
        if weights is not None:
            out["weight"] = weights.detach()
        self.stats_tensors = out
        self._stats_floats = None

    # ------------------------------------------------------------------------------------------------ helpers

    def device_generator(self, device: torch.device) -> torch.Generator:
        """A generator for drawing on ``device``: the owned one on CPU; elsewhere a fresh generator on ``device``
        seeded from the owned one, so the saved CPU state still determines every draw."""
        if device.type == "cpu":
            return self.generator
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return torch.Generator(device=device).manual_seed(seed)

    def follow_device(self, ref: Tensor) -> None:
        """Move this module's buffers (state) to ``ref``'s device if they are elsewhere."""
        for buf in self.buffers():
            if buf.device != ref.device:
                self.to(ref.device)
            return

    def check_num_tasks(self, grads: Jacobian | None, losses: Tensor) -> None:
        """Raise ``ValueError`` when the inputs do not have :attr:`num_tasks` rows."""
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"combiner '{self}' expects losses of shape [{self.num_tasks}], got {tuple(losses.shape)}")
        if self.requires_grads:
            if grads is None:
                raise ValueError(f"combiner '{self}' needs the per-task gradients [K, P], got None")
            if isinstance(grads, list) and not self.accepts_blocks:
                raise ValueError(f"combiner '{self}' needs grads as one [{self.num_tasks}, P] matrix, not blocks")
            for block in as_blocks(grads):
                if block.dim() != 2 or block.shape[0] != self.num_tasks:
                    shape = tuple(block.shape)
                    raise ValueError(f"combiner '{self}' expects grads of shape [{self.num_tasks}, P], got {shape}")

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __str__(self) -> str:
        return type(self).__name__.lower()


class GramianCombiner(Combiner):
    """A gradient-space combiner whose direction is ``weights @ G`` with weights computed from the Gramian only.

    Subclasses implement :meth:`weights`; :meth:`forward` checks the inputs, computes ``G G^T`` (on the gradients'
    device, then float64 CPU; :meth:`Combiner.checked_gramian` also checks finiteness), calls :meth:`weights` on one
    intra-op thread (:func:`single_thread`), records the stats and returns ``weights @ G``. Cost beyond the ``K^2 P``
    Gramian and the ``K P`` weighted sum: the ``K x K`` solver only.
    """

    requires_grads = True
    accepts_blocks = True

    def weights(self, gram: Tensor) -> Tensor:  # pragma: no cover - abstract
        """:param gram: ``[K, K]`` float64 CPU Gramian. :returns: ``[K]`` float64 coefficients of the gradients."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:  # type: ignore[override]
        self.check_num_tasks(grads, losses)
        assert grads is not None
        gram = self.checked_gramian(grads, losses)
        with single_thread():
            weights = self.weights(gram)
            self.record_stats(gram, weights)
        return weighted_sum(weights, grads)


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


def stats_to_floats(tensors: dict[str, Tensor]) -> dict[str, float]:
    """Convert a ``stats_tensors`` dict to floats (one transfer per device); a ``weight`` vector ``[K]`` becomes
    ``weight/0 .. weight/K-1``."""
    if not tensors:
        return {}
    by_device: dict[torch.device, list[str]] = {}
    for key, t in tensors.items():
        by_device.setdefault(t.device, []).append(key)
    out: dict[str, float] = {}
    for keys in by_device.values():
        flat = torch.cat([tensors[k].detach().reshape(-1).to(torch.float64) for k in keys]).tolist()
        pos = 0
        for key in keys:
            n = tensors[key].numel()
            if key == "weight":
                for k in range(n):
                    out[f"weight/{k}"] = flat[pos + k]
            else:
                out[key] = flat[pos]
            pos += n
    return out


#: columns per block of the CPU Gramian (a [K, 32768] float32 block stays in cache; one [K, P] x [P, K] GEMM with
#: P = 700k was 2-3x slower on a 2-core EPYC and less accurate)
GRAM_BLOCK = 32768


def as_blocks(grads: Jacobian | None) -> list[Tensor]:
    """The column blocks of a :data:`Jacobian` (``[]`` for None)."""
    if grads is None:
        return []
    return grads if isinstance(grads, list) else [grads]


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


def gramian_stats(gram: Tensor) -> dict[str, Tensor]:
    """``cos_sim_mean``, ``num_conflicts`` and ``grad_norm_before`` from a Gramian ``[K, K]`` (0-d tensors)."""
    k = gram.shape[0]
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    cos = torch.where(denom > 0, gram / denom.clamp_min(torch.finfo(gram.dtype).tiny), torch.zeros_like(gram))
    iu = torch.triu_indices(k, k, 1, device=gram.device)
    pairs = cos[iu[0], iu[1]]
    zero = torch.zeros((), dtype=gram.dtype, device=gram.device)
    return {
        "cos_sim_mean": pairs.mean() if k > 1 else zero,
        "num_conflicts": (gram[iu[0], iu[1]] < 0).sum().to(gram.dtype),
        "grad_norm_before": gram.sum().clamp_min(0).sqrt() / k,
    }


def weighted_sum(weights: Tensor, grads: Jacobian) -> Jacobian:
    """``sum_k weights[k] grads[k]``: the direction ``[P]`` on the gradients' device and dtype (a list of its
    blocks when ``grads`` is a list of blocks)."""
    if isinstance(grads, list):
        w = weights.to(device=grads[0].device, dtype=grads[0].dtype)
        return [w @ block for block in grads]
    return weights.to(device=grads.device, dtype=grads.dtype) @ grads


class VectorAdam(nn.Module):
    """Adam (``torch.optim.Adam`` semantics, coupled L2 ``weight_decay``) on one small vector a combiner learns itself
    (FAMO logits, UW log-variances, GradNorm weights). Its moments are buffers and its step count extra state, so
    the combiner's ``state_dict`` carries them; the step count is a Python int (no device sync)."""

    exp_avg: Tensor
    exp_avg_sq: Tensor

    def __init__(
        self, n: int, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
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


def fmt(x: float) -> str:
    """Short float for run names: 0.4 -> '0.4', 1.0 -> '1', 1e-05 -> '1e-05'."""
    return f"{x:g}"
