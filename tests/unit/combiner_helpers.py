"""Shared helpers of the combiner tests (``tests/unit/test_combiner_*.py``): the registry's names, building and
running a combiner, and random and degenerate Jacobians. Math tests run in float64."""

from __future__ import annotations

import io
import typing

import torch
from torch import Tensor

from mtrl.mto import COMBINERS, Combiner, Weighting

F64 = torch.float64
NAMES = list(COMBINERS)
GRAD_NAMES = [n for n in NAMES if COMBINERS[n].kind == "gradient"]
LOSS_NAMES = [n for n in NAMES if n not in GRAD_NAMES]


def build(name: str, tasks: int, seed: int = 0, **options: typing.Any) -> Combiner:
    """The registry's combiner ``name`` for ``tasks`` tasks, with config ``options``."""
    return COMBINERS[name](**options).build(tasks, seed)


def run(comb: Combiner, jac: Tensor, losses: Tensor | None = None) -> Tensor:
    """The combiner's direction for the Jacobian ``jac`` (loss-space: ``weights @ jac``)."""
    if losses is None:
        losses = torch.linspace(1.0, 2.0, jac.shape[0], dtype=jac.dtype)
    out = comb(jac if comb.requires_grads else None, losses)
    if isinstance(out, Weighting):
        return out.weights.to(jac) @ jac
    assert isinstance(out, Tensor)
    return out


def drive(comb: Combiner, jacs: typing.Iterable[Tensor], split: int | None = None) -> list[Tensor]:
    """The gradient-space combiner's direction on each Jacobian in turn, with unit losses; given as two column blocks
    ``[:, :split]`` and ``[:, split:]`` when ``split`` is set (the direction is concatenated back)."""
    out = []
    for jac in jacs:
        ones = torch.ones(jac.shape[0], dtype=jac.dtype)
        d = comb(list(jac.split([split, jac.shape[1] - split], dim=1)) if split else jac, ones)
        out.append(torch.cat(d) if isinstance(d, list) else d)
        assert isinstance(out[-1], Tensor)
    return out


def reloaded(comb: Combiner, fresh: Combiner) -> Combiner:
    """``fresh`` holding ``comb``'s current state, passed through ``torch.save`` and ``torch.load`` as a checkpoint
    would be."""
    buffer = io.BytesIO()
    torch.save(comb.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    return fresh


def normal(k: int, n: int, rank: int | None = None, seed: int = 0, shift: float = 0.3) -> Tensor:
    """``U S V^T``-style random Jacobian with a chosen rank, plus a common component (some agreement)."""
    g = torch.Generator().manual_seed(seed)
    rank = min(k, n) if rank is None else rank
    j = torch.randn(k, rank, generator=g, dtype=F64) @ torch.randn(rank, n, generator=g, dtype=F64)
    return j + shift * torch.randn(1, n, generator=g, dtype=F64) * (rank == min(k, n))


def degenerate(k: int, n: int = 12) -> dict[str, Tensor]:
    """Jacobians ``[k, n]``: random, a zero row, a duplicate row, ``g`` and ``-g``, rank 1, all zero."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(k, n, generator=g, dtype=F64)
    cases = {"random": base}
    zero = base.clone()
    zero[0] = 0
    cases["zero_row"] = zero
    dup = base.clone()
    dup[-1] = dup[0]
    cases["duplicate"] = dup
    if k >= 2:
        pm = base.clone()
        pm[1] = -pm[0]
        cases["g_minus_g"] = pm
    v = torch.randn(n, generator=g, dtype=F64)
    cases["rank1"] = torch.randn(k, 1, generator=g, dtype=F64) * v
    cases["all_zero"] = torch.zeros(k, n, dtype=F64)
    return cases


def cos(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two vectors."""
    return float(a @ b / (a.norm() * b.norm()))
