"""CAGrad: conflict-averse gradient descent (exact dual solve, or the MTRL 20-step softmax-SGD solver)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtrl.mto.base import GramianCombiner, fmt
from mtrl.mto.mgda import bordered_solve, simplex_active_set

#: ``||g_w||^2`` below this (on a Gramian scaled to max diagonal 1) counts as 0: the dual optimum is Pareto-stationary
_ZERO_NORM2 = 1e-14


def cagrad_dual_weights(gram: Tensor, c: float, base: Tensor, support: Tensor | None = None) -> Tensor:
    r"""Exact CAGrad weights (before the rescale): ``alpha = base + lambda w*``.

    Dual problem on the simplex, with ``g_0 = sum_k base_k g_k`` and ``phi = c ||g_0||``:

    .. math:: w^\star = \arg\min_{w \in \Delta_K} \; g_w^\top g_0 + \phi \|g_w\|, \qquad
        g_w = \sum_k w_k g_k, \qquad \lambda = \phi / \|g_{w^\star}\|

    Solved exactly with the active-set loop of :func:`~mtrl.mto.mgda.simplex_active_set`: on the affine hull of a
    face the minimiser has a closed form (``x = x_0 - s\, P_V g_0`` with ``x_0`` the face's min-norm point and
    ``P_V g_0`` the projection of ``g_0`` on the face's direction space), or ``f`` decreases without bound along
    ``-P_V g_0`` when ``||P_V g_0|| >= phi``.

    When the optimum has ``g_w = 0`` (0 in the convex hull: a zero row, rank-1 ``G`` with opposite signs) ``lambda``
    is undefined and the primal optima are the points of the ball with ``J d >= 0``; the one closest to ``g_0`` (its
    projection on that cone, :func:`nonneg_qp`) is returned (0 for rank-1 or ``g, -g``, as torchjd; torchjd returns 0
    in every such case, which is outside the ball when ``c < 1``).

    :param gram: ``[K, K]`` float64 CPU Gramian.
    :param base: ``[K]`` weights of ``g_0`` (``1/K``: the mean).
    :param support: optional ``[K]`` bool buffer: read as the warm-start face, overwritten with the optimal support.
    """
    k = gram.shape[0]
    scale = float(gram.diagonal().max())
    if scale <= 0.0:
        return base.clone()
    g = gram / scale
    b = g @ base  # [K] g_i . g_0
    phi = c * math.sqrt(max(float(base @ b), 0.0))
    if phi <= 1e-15:
        return base.clone()
    diag_sqrt = g.diagonal().clamp_min(0).sqrt()
    phi2 = phi * phi

    def score(w: Tensor) -> tuple[Tensor, float]:
        gw = g @ w
        n2 = float(gw @ w)
        if n2 > _ZERO_NORM2:
            s = b + (phi / math.sqrt(n2)) * gw
            return s, float(s @ w)
        return b + phi * diag_sqrt, float(b @ w)  # at g_w = 0: directional derivatives towards each vertex

    def face(idx: Tensor) -> tuple[Tensor, bool]:
        n = idx.numel()
        sub = g[idx][:, idx]
        rhs = sub.new_zeros(n + 1, 2)
        rhs[n, 0] = 1.0
        rhs[:n, 1] = b[idx]
        sol = bordered_solve(sub, rhs)
        sol = sol[:n]  # columns: the affine min-norm point w0; u with P_V g_0 = sum u_i g_i (sum u = 0)
        a, r2 = (sol.T @ sub @ sol).diagonal().clamp_min(0).tolist()
        w0, u = sol[:, 0], sol[:, 1]
        if r2 < phi2 * (1.0 - 1e-12):
            return w0 - math.sqrt(a / (phi2 - r2)) * u, False
        return -u, True

    init = support.nonzero().flatten().tolist() if support is not None else None
    w = simplex_active_set(k, score, face, start=int(torch.argmin(b + phi * diag_sqrt)), init=init)
    if support is not None:
        support.copy_(w > 0)
    n2 = float(w @ g @ w)
    if n2 > _ZERO_NORM2:
        return base + (phi / math.sqrt(n2)) * w
    # g_w = 0 at the optimum (dual value 0): every d in the ball with J d >= 0 is primal-optimal; take the one
    # closest to g_0, its projection on the cone {d : J d >= 0}: d = g_0 + J^T lam, lam = argmin_{lam >= 0}
    # 1/2 lam^T G lam + b^T lam (inside the ball by strong duality)
    return base + nonneg_qp(g, b)


def nonneg_qp(gram: Tensor, lin: Tensor, max_iter: int | None = None) -> Tensor:
    """``argmin_{x >= 0} 1/2 x^T gram x + lin^T x`` for a PSD ``gram`` (Lawson-Hanson active set in Gram form)."""
    k = gram.shape[0]
    x = torch.zeros(k, dtype=gram.dtype)
    passive = torch.zeros(k, dtype=torch.bool)
    tol = 1e-13 * max(float(gram.diagonal().max()), float(lin.abs().max()), 1e-300)
    for _ in range(max_iter or 3 * k + 10):
        neg_grad = -(gram @ x + lin)
        candidates = torch.where(passive, torch.full_like(neg_grad, -math.inf), neg_grad)
        j = int(torch.argmax(candidates))
        if float(candidates[j]) <= tol:
            break
        passive[j] = True
        for _inner in range(k):
            idx = passive.nonzero().flatten()
            sol = torch.linalg.lstsq(gram[idx][:, idx], -lin[idx, None], driver="gelsd").solution[:, 0]
            if bool((sol > 0).all()):
                x = torch.zeros_like(x)
                x[idx] = sol
                break
            cur = x[idx]
            blocked = sol <= 0
            ratios = torch.where(blocked, cur / (cur - sol).clamp_min(1e-300), torch.full_like(cur, math.inf))
            theta = float(ratios.min())
            x[idx] = cur + theta * (sol - cur)
            x[idx[int(torch.argmin(ratios))]] = 0.0
            passive = passive & (x > 0)
            if not bool(passive.any()):
                break
    return x


def cagrad_sgd20_weights(gram: Tensor, c: float) -> Tensor:
    """The MTRL CAGrad solver (Cranial-XIX/CAGrad ``mtrl/mtrl_files/cagrad.py::cagrad``), transcribed.

    ``GG = G / mean(sqrt(diag G + 1e-4))^2``; ``w = softmax(logits)``; 20 SGD steps (momentum 0.5, lr 25, or 50 when
    K == 50) on ``w^T GG 1/K + c sqrt(1^T GG 1/K^2 + 1e-4) sqrt(w^T GG w + 1e-4)``, keeping the best of the 21
    iterates; ``alpha = 1/K + w lambda`` with ``lambda = c' / (sqrt(w^T GG w + 1e-4) + 1e-4)``. The ``1e-4`` terms
    make it not scale-invariant for tiny gradients (as the original). Differs from the exact solution by ~0.2% at
    K=10 and 7-9% at K=50 (cosine >= 0.996).

    :returns: ``alpha`` before the ``1/(1+c^2)`` rescale.
    """
    k = gram.shape[0]
    scale = (gram.diagonal() + 1e-4).sqrt().mean()
    gg_mat = gram / scale**2
    gg_vec = gg_mat.mean(1)  # [K]
    gg = gg_vec.mean()
    cc = float((gg + 1e-4).sqrt()) * c
    lr = 50.0 if k == 50 else 25.0
    logits = torch.zeros(k, dtype=torch.float64)
    buf: Tensor | None = None
    best, best_logits = math.inf, logits
    for i in range(21):
        ww = torch.softmax(logits, 0)
        gw = gg_mat @ ww
        q = float(ww @ gw) + 1e-4
        obj = float(ww @ gg_vec) + cc * math.sqrt(q)
        if obj < best:
            best, best_logits = obj, logits.clone()
        if i < 20:
            d_ww = gg_vec + (cc / math.sqrt(q)) * gw
            grad = ww * (d_ww - ww @ d_ww)  # softmax Jacobian^T
            buf = grad if buf is None else 0.5 * buf + grad
            logits = logits - lr * buf
    ww = torch.softmax(best_logits, 0)
    gw_norm = math.sqrt(float(ww @ gg_mat @ ww) + 1e-4)
    lmbda = cc / (gw_norm + 1e-4)
    return 1.0 / k + ww * lmbda


class CAGrad(GramianCombiner):
    r"""CAGrad (Liu et al. 2021, https://arxiv.org/abs/2110.14048): the update maximising the worst task's
    improvement within a ball around the mean gradient.

    .. math:: \max_d \min_i g_i^\top d \;\; \text{s.t.} \;\; \|d - g_0\| \le c \|g_0\|, \qquad
        d = \frac{g_0 + \lambda g_{w^\star}}{1 + c^2}

    with ``g_0`` the mean gradient and ``w*``, ``lambda`` from the dual (:func:`cagrad_dual_weights`).
    ``solver="exact"`` solves the dual exactly in Gramian space (matches torchjd's cvxpy solve and SLSQP; warm-started
    from the previous call's optimal support, a buffer in ``state_dict``);
    ``solver="sgd20"`` is the 20-step softmax-SGD solver of the MTRL code used for the MT10/MT50 papers
    (:func:`cagrad_sgd20_weights`).

    Scale: the paper's / nash-mtl's / LibMTL's ``rescale=1``: divided by ``1 + c^2``; c=0 is exactly ``mean``.
    torchjd returns the un-rescaled ``g_0 + lambda g_w``; the official NYUv2 code multiplies by K; MTRL's
    ``cagrad_fast`` divides by ``1 + c``. K=1 gives ``(1 + c) / (1 + c^2)`` times the gradient.
    """

    support: Tensor

    def __init__(
        self, num_tasks: int, seed: int = 0, c: float = 0.4, solver: Literal["exact", "sgd20"] = "exact"
    ) -> None:
        super().__init__(num_tasks, seed)
        self.c = c
        self.solver = solver
        self.register_buffer("support", torch.zeros(num_tasks, dtype=torch.bool))

    def weights(self, gram: Tensor) -> Tensor:
        """The coefficients ``[K]`` of the task gradients in the direction, from the Gramian (float64 CPU)."""
        k = gram.shape[0]
        if self.solver == "sgd20":
            alpha = cagrad_sgd20_weights(gram, self.c)
        else:
            base = torch.full((k,), 1.0 / k, dtype=torch.float64)
            alpha = cagrad_dual_weights(gram, self.c, base, support=self.support)
        return alpha / (1.0 + self.c**2)

    def __str__(self) -> str:
        return f"cagrad-c{fmt(self.c)}" + ("-sgd20" if self.solver == "sgd20" else "")


def check_c(c: float) -> None:
    if not (math.isfinite(c) and c >= 0):
        raise ValueError(f"combiner.c: got {c}, expected a number >= 0")


@dataclass(frozen=True)
class CAGradConfig:
    """CAGrad: conflict-averse gradient descent."""

    c: float = 0.4
    """Radius of the ball around the mean gradient, relative to its norm (0 = mean; MTRL runs: 0.9 on MT10, 0.5 on
    MT50; NYUv2: 0.4)."""
    solver: Literal["exact", "sgd20"] = "exact"
    """Dual solver: exact (active-set, exact optimum) or sgd20 (the 20-step softmax-SGD solver of the MTRL code
    used for the published MT10/MT50 numbers)."""

    def validate(self) -> None:
        check_c(self.c)

    def build(self, num_tasks: int, seed: int = 0) -> CAGrad:
        self.validate()
        return CAGrad(num_tasks, seed, c=self.c, solver=self.solver)
