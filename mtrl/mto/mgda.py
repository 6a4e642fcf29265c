"""MGDA: the exact min-norm point of the convex hull of the task gradients (Wolfe's active-set algorithm)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase
from mtrl.mto.gramian import GramianCombiner

#: the relative optimality tolerance of the active-set solvers: a vertex ``j`` enters while
#: ``s_j < ref - SIMPLEX_TOL * scale_j``, with ``scale_j`` the size of the terms of ``s_j - ref`` (see
#: :func:`simplex_active_set`), so that a vertex (a task gradient) orders of magnitude smaller than the largest one is
#: held to the same relative accuracy
SIMPLEX_TOL = 1e-12

#: floor of the vertex scales (a zero row has scale 0)
_TINY = 1e-300

Score = Callable[[Tensor], tuple[Tensor, float, Tensor]]
Face = Callable[[Tensor], tuple[Tensor, bool]]


def bordered_solve(sub: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``[[M, 1], [1^T, 0]] x = rhs`` for a face ``M [n, n]`` of a Gramian (``rhs [n+1, m]``).

    Nonsingular when the face's points are affinely independent (which the active-set loop maintains); falls back to
    least squares otherwise.
    """
    n = sub.shape[0]
    a = sub.new_zeros(n + 1, n + 1)
    a[:n, :n] = sub
    a[:n, n] = 1.0
    a[n, :n] = 1.0
    sol, info = torch.linalg.solve_ex(a, rhs)
    if int(info) != 0:
        sol = torch.linalg.lstsq(a, rhs, driver="gelsd").solution
    return sol


def simplex_active_set(
    num: int,
    score: Score,
    face: Face,
    start: int,
    init: list[int] | None = None,
    max_iter: int | None = None,
    init_weights: Tensor | None = None,
) -> Tensor:
    """Minimise a convex function of ``x = sum_i w_i g_i`` over the simplex ``w in Delta_K`` (Wolfe 1976).

    Wolfe's min-norm-point algorithm generalised to any convex ``f`` whose minimiser on the affine hull of a face has
    a closed form. Finite in exact arithmetic; every step is exact (no step sizes, no iteration-count accuracy).

    :param num: K.
    :param score: ``w -> (s [K], ref, scale [K])``: the descent test; ``w`` is optimal when
        ``s_j >= ref - SIMPLEX_TOL * scale_j`` for every ``j`` outside the face (for a smooth ``f``: ``s = grad f(w)``,
        ``ref = s . w``; ``scale_j > 0``: the magnitude of the terms of ``s_j - ref``, its rounding-error scale);
        otherwise the vertex with the largest relative violation ``(ref - s_j) / scale_j`` enters the face.
    :param face: ``index [n] -> (y [n], is_ray)``: the minimiser of ``f`` on the affine hull of the face, or, when
        ``f`` is unbounded below there, a descent direction ``y`` (``sum y = 0``) along which ``f`` does not increase.
    :param start: the first vertex (cold start).
    :param init: warm start: a face to start from (e.g. the previous call's optimal support), at its barycentre.
        Changes the path, not the optimum.
    :param init_weights: warm start at a point ``w [K]`` of the simplex (its support is the first face; overrides
        ``init``). The iterates never increase ``f`` from there.
    :returns: the optimal weights ``w [K]`` (float64).
    """
    w = torch.zeros(num, dtype=torch.float64)
    if init_weights is not None:
        w = init_weights.to(torch.float64).clamp_min(0.0)
        w = w / w.sum()
        support = w.nonzero().flatten().tolist()
    else:
        support = sorted(set(init)) if init else [start]
        w[support] = 1.0 / len(support)
    added: int | None = None
    pending = len(support) > 1
    for _ in range(max_iter or 20 * num + 50):
        if pending:
            before = w.clone()
            for _minor in range(len(support)):
                idx = torch.tensor(support)
                y, is_ray = face(idx)
                cur = w[idx]
                if not is_ray and bool((y > 0).all()):
                    w[idx] = y
                    break
                step = y if is_ray else y - cur
                ratios = torch.where(step < 0, cur / (-step).clamp_min(1e-300), torch.full_like(cur, float("inf")))
                pos = int(torch.argmin(ratios))
                theta = float(ratios[pos]) if is_ray else min(float(ratios[pos]), 1.0)
                w[idx] = (cur + theta * step).clamp_min(0.0)
                w[support[pos]] = 0.0
                support = [k for k in support if float(w[k]) > 0.0]
            if added is not None and torch.equal(w, before):  # the new vertex could not enter: converged in fp
                break
        s, ref, scale = score(w)
        rel = (s - ref) / scale
        rel[support] = math.inf
        j = int(torch.argmin(rel))
        if not float(rel[j]) < -SIMPLEX_TOL:
            break
        support.append(j)
        added, pending = j, True
    return w / w.sum()


def min_norm_weights(gram: Tensor, init: list[int] | None = None) -> Tensor:
    """Weights ``w in Delta_K`` of the min-norm point of the convex hull of the rows: ``argmin_w w^T gram w``.

    :param gram: ``[K, K]`` float64 CPU Gramian.
    :param init: optional warm-start face (see :func:`simplex_active_set`).
    """
    k = gram.shape[0]
    scale = float(gram.diagonal().max())
    if k == 1 or scale <= 0.0:
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    g = gram / scale
    rhs = torch.zeros(1, 1, dtype=torch.float64)
    norms = g.diagonal().clamp_min(0).sqrt()

    def score(w: Tensor) -> tuple[Tensor, float, Tensor]:
        gw = g @ w
        # s_j - ref = g_j . d - ||d||^2: its terms are of size ||g_j|| sum_i w_i ||g_i||
        return gw, float(gw @ w), (norms * float(norms @ w)).clamp_min(_TINY)

    def face(idx: Tensor) -> tuple[Tensor, bool]:
        n = idx.numel()
        b = rhs.new_zeros(n + 1, 1)
        b[n] = 1.0
        return bordered_solve(g[idx][:, idx], b)[:n, 0], False

    return simplex_active_set(k, score, face, start=int(torch.argmin(g.diagonal())), init=init)


class MGDA(GramianCombiner):
    r"""MGDA (Désidéri 2012; Sener & Koltun 2018, https://arxiv.org/abs/1810.04650): the min-norm point of the
    convex hull of the task gradients.

    .. math:: w^\star = \arg\min_{w \in \Delta_K} \Big\| \sum_k w_k g_k \Big\|^2, \qquad d = \sum_k w^\star_k g_k

    Solved **exactly** on the Gramian with Wolfe's active-set (min-norm-point) algorithm, not with the Frank-Wolfe
    loop of the official code / torchjd (whose default tolerance leaves ``||d||`` 0.5-1.7% above the optimum at
    K=10-30). KKT at the solution: ``g_i . d >= ||d||^2`` for all ``i``, with equality where ``w_i > 0``, to a
    tolerance relative to each task's own terms (``||g_i|| sum_j w_j ||g_j||``), so that a task orders of magnitude
    smaller than the largest is held to the same relative accuracy. Each call warm-starts from the previous call's
    optimal support (a buffer in ``state_dict``; changes the path, not the optimum).

    ``normalization="l2"`` solves on unit-norm gradients and applies the weights to the raw gradients, as the
    official code (isl-org) and Kurin et al.'s RL runs (``normalize="l2"``) do.

    Scale: ``w`` sums to 1, so identical gradients give the mean; otherwise ``||d|| <= min_k ||g_k||`` (nash-mtl
    multiplies the weights by K). K=1 returns the single gradient. Zero direction when 0 is in the convex hull
    (a zero row, ``g`` and ``-g``).
    """

    support: Tensor

    def __init__(self, num_tasks: int, seed: int = 0, normalization: Literal["none", "l2"] = "none") -> None:
        super().__init__(num_tasks, seed)
        self.normalization = normalization
        self.register_buffer("support", torch.zeros(num_tasks, dtype=torch.bool))

    def weights(self, gram: Tensor) -> Tensor:
        if self.normalization == "l2":
            norms = gram.diagonal().clamp_min(0).sqrt()
            if bool((norms == 0).any()):  # a zero gradient: the min-norm point is that vertex
                zero = (norms == 0).to(torch.float64)
                return zero / zero.sum()
            gram = gram / (norms[:, None] * norms[None, :])
        weights = min_norm_weights(gram, init=self.support.nonzero().flatten().tolist())
        self.support.copy_(weights > 0)
        return weights

    def __str__(self) -> str:
        return "mgda" if self.normalization == "none" else f"mgda-{self.normalization}"


@dataclass(frozen=True)
class MGDAConfig(CombinerConfigBase):
    """MGDA: exact min-norm point of the convex hull of the task gradients."""

    name = "mgda"
    kind = "gradient"

    normalization: Literal["none", "l2"] = "none"
    """Gradient normalization before the min-norm solve: none, or l2 (unit-norm gradients, as Kurin et al.'s RL
    runs; the weights are then applied to the raw gradients, as in the official code)."""

    def build(self, num_tasks: int, seed: int = 0) -> MGDA:
        self.check(num_tasks, frozenset())
        return MGDA(num_tasks, seed, normalization=self.normalization)
