"""The combiner contract: per-task gradients (or only per-task losses) in, one update direction out.

A combiner is a :class:`Combiner` (an ``nn.Module`` that holds its state) made from its config: a frozen dataclass of
its options (the command-line options ``--combiner.OPTION``) deriving from :class:`CombinerConfigBase`, registered
in :data:`mtrl.mto.COMBINERS` under its :attr:`~CombinerConfigBase.name`.

* ``config.check(num_tasks, parts)`` owns the combiner's restrictions: it raises a one-line ``ValueError``
  (``field: got X, expected Y``) for an option out of range or not finite, an option that does not fit K (``fixed``:
  one weight per task), or a part of the SAC update the combiner may not be applied to (FAMO: the critic only).
* ``config.build(num_tasks, seed)`` checks the options against K (``check(num_tasks, frozenset())``) and makes the
  combiner.
* ``combiner(grads, losses)`` (:meth:`Combiner.__call__`) checks the inputs once, for every combiner: ``losses``
  ``[K]``; for gradient-space methods ``grads`` present, ``[K, P]``, as column blocks ``[K, P_i]`` only where
  :attr:`Combiner.accepts_blocks`. Then :meth:`Combiner.forward`. NaN/inf are checked where it is cheapest, with
  one host sync per call: loss-space methods in :meth:`Combiner.__call__` (:meth:`Combiner.check_finite` on the
  losses, or deferred: :attr:`Combiner.defer_finite_checks`); gradient-space methods in ``forward``, with the
  Gramian (:func:`mtrl.mto.gramian.checked_gramian`), whose diagonal screens ``G`` and whose transfer to the CPU is
  the sync their solvers need anyway.

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

Loss-space methods have no ``G`` and record only the weights. Gradient-space methods work in Gramian space
(:mod:`mtrl.mto.gramian`): the ``[K, K]`` matrix ``G G^T`` is moved to the CPU in float64, the weights are computed
there on one intra-op thread and the direction is ``weights @ G`` on the gradients' device.

Helpers that are not the contract live beside it: :mod:`mtrl.mto.gramian` (the Gramian in column blocks, weighted
sums, thread control, :class:`~mtrl.mto.gramian.GramianCombiner`), :mod:`mtrl.mto.adam` (the Adam state of learned
task weights), :mod:`mtrl.mto.grads` (per-task gradients, and how the agent calls a combiner).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

#: the parts of the SAC update a combiner can be applied to (config keys ``combine_<part>``), in this order
PARTS = ("critic", "actor", "alpha")


class Weighting(NamedTuple):
    """Loss-space answer of a combiner: the direction is ``sum_k weights[k] * grad L_k``.

    The caller realises it with one backward of ``(weights.detach() * losses).sum()``.
    """

    weights: Tensor  # [K]


#: per-task gradients: one ``[K, P]`` matrix, or (for combiners with :attr:`Combiner.accepts_blocks`) a list of
#: ``[K, P_i]`` column blocks, one per parameter, that together form it (saves copying them into one matrix).
Jacobian = Tensor | list[Tensor]


def as_blocks(grads: Jacobian | None) -> list[Tensor]:
    """The column blocks of a :data:`Jacobian` (``[]`` for None)."""
    if grads is None:
        return []
    return grads if isinstance(grads, list) else [grads]


class NonFiniteError(RuntimeError):
    """A combiner was handed a non-finite loss or gradient."""


class Combiner(nn.Module):
    """Maps per-task gradients ``G [K, P]`` (and per-task losses ``[K]``) to one direction ``d [P]``.

    Subclasses set :attr:`requires_grads`: ``False`` for loss-space methods, which get ``grads=None`` and return a
    :class:`Weighting`; ``True`` for gradient-space methods, which return the direction ``[P]``. They implement
    :meth:`forward`; callers call the combiner (:meth:`__call__`), which checks the inputs first.
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
    #: methods that only use the Gramian, row sums and weighted sums of ``G`` (through
    #: :func:`~mtrl.mto.gramian.gramian`, :meth:`check_finite`, :func:`~mtrl.mto.gramian.weighted_sum`) set this: they
    #: accept ``G`` as a list of column blocks and then return the direction as the matching list of blocks.
    accepts_blocks: ClassVar[bool] = False

    def __init__(self, num_tasks: int, seed: int = 0) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.generator = torch.Generator().manual_seed(seed)
        #: calls so far, for the methods with a warm-up or a schedule (they count them); saved in checkpoints
        self.calls = 0
        self.stats: dict[str, float] = {}
        #: when set (the agent does on CUDA), :meth:`check_finite` on losses alone only records non-finite tasks
        #: on the device, without a host sync; :meth:`raise_deferred` raises them later.
        self.defer_finite_checks = False
        self._deferred_bad: Tensor | None = None  # [K] bool

    def __call__(self, grads: Jacobian | None, losses: Tensor) -> Jacobian | Weighting:
        """Check the inputs, then :meth:`forward` (through ``nn.Module.__call__``).

        Raises ``ValueError`` unless ``losses`` is ``[K]`` and, for gradient-space methods, ``grads`` is a ``[K, P]``
        matrix or (where :attr:`accepts_blocks`) a non-empty list of ``[K, P_i]`` blocks; for loss-space methods
        :class:`NonFiniteError` for a NaN/inf loss (:meth:`check_finite`; deferred with :attr:`defer_finite_checks`).

        :param grads: per-task gradients over the shared parameters, or ``None`` (loss-space methods ignore them).
        :param losses: ``[K]`` per-task losses (detached).
        :returns: what :meth:`forward` returns.
        """
        k = self.num_tasks
        if losses.shape != (k,):
            raise ValueError(f"combiner '{self}' expects losses of shape [{k}], got {tuple(losses.shape)}")
        if not self.requires_grads:
            self.check_finite(None, losses)
        else:
            if grads is None:
                raise ValueError(f"combiner '{self}' needs the per-task gradients [K, P], got None")
            if isinstance(grads, list) and not self.accepts_blocks:
                raise ValueError(f"combiner '{self}' needs grads as one [{k}, P] matrix, not blocks")
            if isinstance(grads, list) and not grads:
                raise ValueError(f"combiner '{self}' expects grads as [{k}, P_i] blocks, got an empty list")
            for block in as_blocks(grads):
                if block.dim() != 2 or block.shape[0] != k:
                    raise ValueError(f"combiner '{self}' expects grads of shape [{k}, P], got {tuple(block.shape)}")
        return super().__call__(grads, losses)

    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian | Weighting:  # pragma: no cover - abstract
        """The combination; called by :meth:`__call__` after the input checks.

        :param grads: ``[K, P]`` per-task gradients over the shared parameters (or their column blocks, where
            :attr:`accepts_blocks`); ``None`` for loss-space methods.
        :param losses: ``[K]`` per-task losses (detached).
        :returns: the direction ``[P]`` (the matching blocks for blocks) or a :class:`Weighting`.
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

    # ------------------------------------------------------------------------------------------------ state

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

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state(), "calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.calls = int(state.get("calls", 0))

    def __str__(self) -> str:
        return type(self).__name__.lower()


def fmt(x: float) -> str:
    """Short float for run names (``str(combiner)``): 0.4 -> '0.4', 1.0 -> '1', 1e-05 -> '1e-05'."""
    return f"{x:g}"


@dataclasses.dataclass(frozen=True)
class CombinerConfigBase:
    """What every combiner config has. A config is a frozen dataclass of the combiner's options deriving from this
    one (which has no fields); its fields are the command-line options ``--combiner.OPTION`` (the class variables
    below are not fields).

    Subclasses set :attr:`name` and :attr:`kind`, implement :meth:`build`, and extend :meth:`check` (calling this
    one first) with their own restrictions.
    """

    #: the command-line name (``--combiner NAME``) and the key in :data:`mtrl.mto.COMBINERS`
    name: ClassVar[str]
    #: ``loss``: the combiner weights the task losses (``requires_grads = False``, one backward of the weighted loss);
    #: ``gradient``: it needs the per-task gradients ``[K, P]``
    kind: ClassVar[Literal["loss", "gradient"]]

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """Raise ``ValueError`` with a one-line message ``field: got X, expected Y`` for anything that does not fit.

        This base checks ``num_tasks``, that ``parts`` are parts of :data:`PARTS`, and every ``Literal`` option;
        subclasses add their options' ranges, their options against K and where the combiner may not be applied.

        :param num_tasks: K.
        :param parts: the parts of the SAC update (of :data:`PARTS`) the combiner is applied to; empty to check the
            options alone (:meth:`build` does).
        """
        if num_tasks < 1:
            raise ValueError(f"num_tasks: got {num_tasks}, expected an integer >= 1")
        for part in sorted(parts):
            if part not in PARTS:
                raise ValueError(f"parts: got {part!r}, expected some of {', '.join(PARTS)}")
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            allowed = typing.get_args(hints[field.name]) if typing.get_origin(hints[field.name]) is Literal else ()
            value = getattr(self, field.name)
            if allowed and value not in allowed:
                expected = ", ".join(str(a) for a in allowed)
                raise ValueError(f"combiner.{field.name}: got {value!r}, expected one of {expected}")

    def build(self, num_tasks: int, seed: int = 0) -> Combiner:  # pragma: no cover - abstract
        """Check the options against K and make the combiner.

        :param num_tasks: K.
        :param seed: seed of the combiner's generator.
        """
        raise NotImplementedError


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


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is finite and ``> 0``."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"combiner.{name}: got {value}, expected a number > 0")


def check_non_negative(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is finite and ``>= 0``."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"combiner.{name}: got {value}, expected a number >= 0")
