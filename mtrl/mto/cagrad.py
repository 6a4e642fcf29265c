"""CAGrad: conflict-averse gradient descent (exact dual solve, or the MTRL 20-step softmax-SGD solver)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, Jacobian, as_blocks, fmt
from mtrl.mto.gramian import GramianCombiner, checked_gramian, single_thread, weighted_sum
from mtrl.mto.mgda import bordered_solve, simplex_active_set

#: ``||g_w||^2`` below this times ``(sum_k w_k ||g_k||)^2`` counts as 0 (``g_w`` cancelled to rounding noise): the dual
#: optimum may be Pareto-stationary (0 in the convex hull); relative to the combination's own terms, not to the largest
#: gradient, so that a ``g_w`` made of gradients orders of magnitude smaller than the largest one is not taken for 0
_ZERO_NORM2 = 1e-14
#: floor of the vertex scales of the descent test
_TINY = 1e-300
#: restarts of the active set from a point with a negative dual value when it stopped at ``g_w = 0``
_MAX_RESTARTS = 3


def cagrad_dual(gram: Tensor, c: float, base: Tensor, support: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    r"""Exact CAGrad dual solution: the direction before the rescale is

    .. math:: d = g_0 + \phi \frac{g_{w^\star}}{\|g_{w^\star}\|}, \qquad
        w^\star = \arg\min_{w \in \Delta_K} \; g_w^\top g_0 + \phi \|g_w\|, \qquad
        g_w = \sum_k w_k g_k, \quad g_0 = \sum_k \mathrm{base}_k g_k, \quad \phi = c \|g_0\|

    so ``||d - g_0|| = c ||g_0||`` and ``||d|| >= (1 - c) ||g_0||``. Solved exactly with the active-set loop of
    :func:`~mtrl.mto.mgda.simplex_active_set`: on the affine hull of a face the minimiser has a closed form
    (``x = x_0 - s\, P_V g_0`` with ``x_0`` the face's min-norm point and ``P_V g_0`` the projection of ``g_0`` on the
    face's direction space), or ``f`` decreases without bound along ``-P_V g_0`` when ``||P_V g_0|| >= phi``.

    ``f`` is not differentiable where ``g_w = 0``, and there the vertex test of the loop is necessary, not sufficient
    (``f`` can be positive at every vertex and negative on an edge). When the loop stops at ``g_w = 0`` (relative to
    ``sum_k w_k ||g_k||``, :data:`_ZERO_NORM2`), the projection ``d_p = g_0 + J^T lam`` of ``g_0`` on the cone
    ``{d : J d >= 0}`` decides (``lam = argmin_{lam >= 0} 1/2 lam^T G lam + lam^T J g_0``, :func:`nonneg_qp`): if it
    lies in the ball, 0 is the dual optimum (Pareto-stationary: a zero row, ``g`` and ``-g``, ...), every ``d`` of the
    ball with ``J d >= 0`` is primal-optimal and ``d_p`` (the one closest to ``g_0``) is returned; torchjd returns 0
    there, outside the ball when ``c < 1``. Otherwise, with ``r = ||d_p - g_0|| > phi``, the point
    ``v = lam / sum(lam)`` has ``f(v) = r (phi - r) / sum(lam) < 0`` and the loop restarts from it.

    :param gram: ``[K, K]`` float64 CPU Gramian.
    :param base: ``[K]`` weights of ``g_0`` (``1/K``: the mean).
    :param support: optional ``[K]`` bool buffer: read as the warm-start face, overwritten with the optimal support.
    :returns: ``(offset, w)``: ``d = J^T offset + phi J^T w / ||J^T w||`` with ``offset = base``; or
        ``(base + lam, None)`` when the optimum is Pareto-stationary (or ``phi = 0``): ``d = J^T offset``.
    """
    k = gram.shape[0]
    scale = float(gram.diagonal().max())
    if scale <= 0.0:
        return base.clone(), None
    g = gram / scale
    b = g @ base  # [K] g_i . g_0
    norm0 = math.sqrt(max(float(base @ b), 0.0))
    phi = c * norm0
    if phi <= 1e-15:
        return base.clone(), None
    norms = g.diagonal().clamp_min(0).sqrt()
    phi2 = phi * phi

    def is_zero(w: Tensor, n2: float) -> bool:
        return n2 <= _ZERO_NORM2 * float(norms @ w) ** 2

    def score(w: Tensor) -> tuple[Tensor, float, Tensor]:
        gw = g @ w
        n2 = float(gw @ w)
        # s_j - ref = (g_j - g_w) . (g_0 + phi u): terms of size (||g_j|| + ||g_w||) (||g_0|| + phi)
        if not is_zero(w, n2):
            s = b + (phi / math.sqrt(n2)) * gw
            tol = (norms + math.sqrt(n2)) * (norm0 + phi)
            return s, float(s @ w), tol.clamp_min(_TINY)
        # at g_w = 0: the directional derivatives towards each vertex, f(g_j) (necessary, not sufficient)
        return b + phi * norms, float(b @ w), (norms * (norm0 + phi)).clamp_min(_TINY)

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
    w = simplex_active_set(k, score, face, start=int(torch.argmin(b + phi * norms)), init=init)
    for _ in range(_MAX_RESTARTS):
        if not is_zero(w, float(w @ g @ w)):
            break
        lam = nonneg_qp(g, b)
        if float(lam @ g @ lam) <= phi2 * (1.0 + 1e-9) or not float(lam.sum()) > 0.0:
            if support is not None:
                support.copy_(w > 0)
            return base + lam, None  # Pareto-stationary: the projection of g_0 on {d : J d >= 0}, in the ball
        w = simplex_active_set(k, score, face, start=0, init_weights=lam / lam.sum())
    if support is not None:
        support.copy_(w > 0)
    if not float(w @ g @ w) > 0.0:  # g_w = 0 after every restart (rounding): the cone projection
        return base + nonneg_qp(g, b), None
    return base.clone(), w


def cagrad_dual_weights(gram: Tensor, c: float, base: Tensor, support: Tensor | None = None) -> Tensor:
    """The exact CAGrad weights (before the rescale) from the Gramian alone: ``alpha = offset + lambda w`` with
    ``lambda = phi / ||g_w||`` and ``(offset, w)`` from :func:`cagrad_dual` (``alpha = offset`` when ``w`` is None).

    :class:`CAGrad` takes the two norms from the vectors instead (:func:`ball_direction`), which a Gramian of float32
    gradients cannot replace when ``g_w`` cancels.

    :param gram: ``[K, K]`` float64 CPU Gramian.
    :param base: ``[K]`` weights of ``g_0``.
    :param support: optional warm-start buffer (see :func:`cagrad_dual`).
    """
    offset, w = cagrad_dual(gram, c, base, support)
    if w is None:
        return offset
    n2 = float(w @ gram @ w)
    return offset + c * math.sqrt(max(float(offset @ gram @ offset), 0.0) / n2) * w


def ball_direction(grads: Jacobian, offset: Tensor, w: Tensor | None, c: float) -> tuple[Jacobian, Tensor, Tensor]:
    r"""The CAGrad direction from a dual solution, with both norms taken from the vectors:

    .. math:: d = \frac{1}{1 + c^2} \Big( g_0 + c \|g_0\| \frac{g_w}{\|g_w\|} \Big), \qquad
        g_0 = J^\top \mathrm{offset}, \quad g_w = J^\top w

    (``d = g_0 / (1 + c^2)`` when ``w`` is None or ``g_w = 0``). The Gramian's ``w^T G w`` would lose
    ``||g_w||`` to rounding where ``g_w`` cancels (``||g_w|| << sum_k w_k ||g_k||``: float32 gradients of widely
    different scales, near-stationary ``J``): its error is relative to the squared terms, the vector's to the terms.
    Both sums come from one pass over ``J`` (a ``[2, K] x [K, P]`` product), the norms from the two result rows (in
    float64, on the gradients' device: no host sync).

    :param grads: the Jacobian ``[K, P]`` or its column blocks.
    :param offset: ``[K]`` float64 weights of ``g_0``.
    :param w: ``[K]`` float64 weights of ``g_w``, or None.
    :param c: the radius factor.
    :returns: the direction (blocks for blocks), the coefficients ``alpha [K]`` of the task gradients in it (float64,
        on the gradients' device) and its norm (0-d float64 tensor, same device).
    """
    blocks = as_blocks(grads)
    ref = blocks[0]
    rescale = 1.0 / (1.0 + c * c)
    if w is None:
        alpha = (offset * rescale).to(ref.device)
        out = weighted_sum(alpha, grads)
        norm2 = sum(torch.linalg.vector_norm(block, dtype=torch.float64) ** 2 for block in as_blocks(out))
        return out, alpha, torch.as_tensor(norm2, dtype=torch.float64, device=ref.device).sqrt()
    coef = torch.stack([offset * rescale, w]).to(ref.device)  # [2, K] float64
    coef_cast = coef.to(ref.dtype)
    rows = [coef_cast @ block for block in blocks]  # [2, P_i]: g_0 / (1 + c^2), g_w
    gram2 = sum(r @ r.T for r in rows)  # [2, 2]
    assert isinstance(gram2, Tensor)
    gram2 = gram2.double()
    norm_w = gram2[1, 1].clamp_min(0).sqrt()
    lam = torch.where(norm_w > 0, c * gram2[0, 0].clamp_min(0).sqrt() / norm_w.clamp_min(_TINY), 0.0)
    lam = lam.clamp_max(torch.finfo(ref.dtype).max)  # lam * g_w has norm c ||g_0|| / (1 + c^2) (finite)
    lam_cast = lam.to(ref.dtype)
    out = [torch.addcmul(r[0], r[1], lam_cast) for r in rows]
    alpha = coef[0] + lam * coef[1]
    norm = (gram2[0, 0] + 2 * lam * gram2[0, 1] + lam * lam * gram2[1, 1]).clamp_min(0).sqrt()
    return (out if isinstance(grads, list) else out[0]), alpha, norm


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
        d = \frac{g_0 + \lambda g_{w^\star}}{1 + c^2}, \quad \lambda = \frac{c \|g_0\|}{\|g_{w^\star}\|}

    with ``g_0`` the mean gradient and ``w*`` from the dual (:func:`cagrad_dual`), so that (before the rescale)
    ``||d - g_0|| = c ||g_0||`` and ``||d|| >= (1 - c) ||g_0||``.
    ``solver="exact"`` solves the dual exactly in Gramian space (matches torchjd's cvxpy solve and SLSQP; warm-started
    from the previous call's optimal support, a buffer in ``state_dict``) and takes ``||g_0||`` and ``||g_w||`` from
    the vectors (:func:`ball_direction`, one pass over ``J`` for both), so the radius holds to the gradients'
    precision even where ``g_w`` cancels; where the dual optimum is Pareto-stationary (``g_w = 0``) the direction is
    the projection of ``g_0`` on ``{d : J d >= 0}``, inside the ball.
    ``solver="sgd20"`` is the 20-step softmax-SGD solver of the MTRL code used for the MT10/MT50 papers
    (:func:`cagrad_sgd20_weights`, ``lambda`` from the Gramian with its ``1e-4`` terms, as the original).

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
        """The coefficients ``[K]`` of the task gradients in the direction, from the Gramian (float64 CPU) alone
        (``solver="exact"``: ``lambda`` from ``w^T G w``; :meth:`forward` takes it from the vectors)."""
        k = gram.shape[0]
        if self.solver == "sgd20":
            alpha = cagrad_sgd20_weights(gram, self.c)
        else:
            base = torch.full((k,), 1.0 / k, dtype=torch.float64)
            alpha = cagrad_dual_weights(gram, self.c, base, support=self.support)
        return alpha / (1.0 + self.c**2)

    @torch.no_grad()
    def forward(self, grads: Jacobian | None, losses: Tensor) -> Jacobian:
        if self.solver == "sgd20":
            return super().forward(grads, losses)
        assert grads is not None  # checked by Combiner.__call__
        gram = checked_gramian(self, grads, losses)
        k = gram.shape[0]
        with single_thread():
            offset, w = cagrad_dual(gram, self.c, torch.full((k,), 1.0 / k, dtype=torch.float64), self.support)
        direction, alpha, norm = ball_direction(grads, offset, w, self.c)
        record_ball_stats(self, gram, alpha, norm)
        return direction

    def __str__(self) -> str:
        return f"cagrad-c{fmt(self.c)}" + ("-sgd20" if self.solver == "sgd20" else "")


def record_ball_stats(comb: GramianCombiner, gram: Tensor, alpha: Tensor, norm: Tensor) -> None:
    """:meth:`~mtrl.mto.base.Combiner.record_stats` for a direction from :func:`ball_direction`: the weights and the
    norm are tensors on the gradients' device (no host sync)."""
    comb.record_stats(gram)
    comb.stats_tensors["weight"] = alpha
    comb.stats_tensors["grad_norm_after"] = norm


def check_c(c: float) -> None:
    """Raise ``ValueError`` unless the radius factor ``c`` is finite and ``>= 0``."""
    if not (math.isfinite(c) and c >= 0):
        raise ValueError(f"combiner.c: got {c}, expected a number >= 0")


@dataclass(frozen=True)
class CAGradConfig(CombinerConfigBase):
    """CAGrad: conflict-averse gradient descent."""

    name = "cagrad"
    kind = "gradient"

    c: float = 0.4
    """Radius of the ball around the mean gradient, relative to its norm (0 = mean; MTRL runs: 0.9 on MT10, 0.5 on
    MT50; NYUv2: 0.4)."""
    solver: Literal["exact", "sgd20"] = "exact"
    """Dual solver: exact (active-set, exact optimum) or sgd20 (the 20-step softmax-SGD solver of the MTRL code
    used for the published MT10/MT50 numbers)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``c`` finite and ``>= 0``."""
        super().check(num_tasks, parts)
        check_c(self.c)

    def build(self, num_tasks: int, seed: int = 0) -> CAGrad:
        self.check(num_tasks, frozenset())
        return CAGrad(num_tasks, seed, c=self.c, solver=self.solver)
