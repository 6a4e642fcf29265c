r"""Exact projections onto the dual cone of the task gradients, in Gramian space (UPGrad, DualProj).

The projection of ``J^T u`` onto the dual cone ``{d : J d >= 0}`` of the rows of ``J [K, P]`` is ``J^T v`` with
(Quinton & Rey 2024, https://arxiv.org/abs/2406.16232, Proposition 1)

.. math:: v = \arg\min_{v \ge u} v^\top G v = u + \lambda, \qquad
    \lambda = \arg\min_{\lambda \ge 0} \tfrac12 \lambda^\top G \lambda + \lambda^\top G u

a non-negative least-squares problem in Gram form (``min ||J^T lambda + J^T u||^2`` over ``lambda >= 0``), solved
exactly, for a batch of targets ``u`` at once (:func:`dual_cone_weights`): by block principal pivoting (a few batched
Cholesky solves of the faces), with Lawson and Hanson's active-set algorithm where that does not converge (linearly
dependent gradients). No step sizes, no iteration-count accuracy: each iterate is a face's exact solution.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: relative optimality tolerance: a task ``j`` enters the active set while
#: ``g_j . d < -tol ||g_j|| sum_k |v_k| ||g_k||`` (the rounding scale of ``g_j . d``, relative to the task's own norm,
#: so that a task orders of magnitude smaller than the largest is held to the same relative accuracy)
DUAL_CONE_TOL = 1e-12
#: block principal pivoting iterations at most (it needs 2-5 on full-rank Gramians up to K=50; where it cycles, on
#: singular faces, the row goes to Lawson-Hanson)
_PIVOT_ITER = 20


def dual_cone_tol(dtype: torch.dtype) -> float:
    """The optimality tolerance for gradients of ``dtype``: :data:`DUAL_CONE_TOL`, or ten machine epsilons of a
    coarser dtype (float32: 1.2e-6), above the rounding noise of its Gramian (which would otherwise let near-duplicate
    tasks enter the active set on noise)."""
    return max(DUAL_CONE_TOL, 10.0 * torch.finfo(dtype).eps)


def _solve_faces(corr: Tensor, rhs: Tensor, passive: Tensor) -> Tensor:
    """``z`` with ``corr[P, P] z[P] = rhs[P]`` and ``z = 0`` off ``P``, for each row's passive set ``P`` (batched).

    The faces are gathered into ``[B, m, m]`` systems, ``m`` the largest face, padded with the identity, and solved
    by one batched Cholesky factorisation; a row whose face is singular (linearly dependent gradients) falls back to
    the minimum-norm least-squares solution.
    """
    rows, k = passive.shape
    m = int(passive.sum(dim=1).max())
    z = torch.zeros(rows, k, dtype=corr.dtype)
    if m == 0:
        return z
    order = torch.argsort((~passive).to(torch.int8), dim=1, stable=True)[:, :m]  # the passive tasks first
    taken = torch.gather(passive, 1, order)
    pair = taken[:, :, None] & taken[:, None, :]
    mats = torch.where(pair, corr[order[:, :, None], order[:, None, :]], torch.eye(m, dtype=corr.dtype))
    b = torch.where(taken, torch.gather(rhs, 1, order), 0.0)[:, :, None]
    chol, info = torch.linalg.cholesky_ex(mats)
    sol = torch.cholesky_solve(b, chol)[:, :, 0]
    for row in (info != 0).nonzero().flatten().tolist():
        sol[row] = torch.linalg.lstsq(mats[row], b[row], driver="gelsd").solution[:, 0]
    z.scatter_(1, order, torch.where(taken, sol, 0.0))
    return z


def _lawson_hanson(corr: Tensor, lin: Tensor, size: Tensor, live: Tensor, rtol: float, max_iter: int) -> Tensor:
    """Lawson-Hanson on ``min_{y >= 0} 1/2 y^T corr y + lin^T y`` for every row of ``lin [B, K]`` (batched).

    From ``y = 0`` and an empty passive set: while a task outside the face has ``(corr y + lin)_j < -tol``, the most
    violated one enters; where the face's least-squares solution leaves ``y >= 0``, step from the current point
    towards it up to the first zero and drop that task. Finite in exact arithmetic; ``corr`` may be singular (the
    passive columns stay independent). ``tol = rtol (size + sum y)`` per row.
    """
    rows, k = lin.shape
    y = torch.zeros(rows, k, dtype=lin.dtype)
    passive = torch.zeros(rows, k, dtype=torch.bool)
    active = torch.ones(rows, dtype=torch.bool)
    entered = torch.full((rows,), -1, dtype=torch.long)  # the task that entered at the previous iteration
    tasks = torch.arange(k)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        z = _solve_faces(corr, -lin, passive)
        neg = (z <= 0) & passive
        feasible = ~neg.any(dim=1)
        # infeasible face solution: step towards it up to the first zero, drop that task
        ratios = torch.where(neg, y / (y - z).clamp_min(1e-300), math.inf)
        theta, leave = ratios.min(dim=1)
        keep = passive & (tasks[None, :] != leave[:, None])
        step = torch.where(keep, y + theta.clamp(0.0, 1.0)[:, None] * (z - y), 0.0).clamp_min(0.0)
        stuck = ~feasible & (theta <= 0) & (leave == entered)  # the entering task cannot grow: converged in fp
        new_y = torch.where(feasible[:, None], z, torch.where(stuck[:, None], y, step))
        # interior face solution: price the tasks outside the face
        grad = new_y @ corr + lin
        tol = rtol * (size + new_y.sum(dim=1))
        best, j = torch.where(passive | ~live[None, :], -math.inf, -grad).max(dim=1)
        enter = feasible & (best > tol)
        grown = passive | (enter[:, None] & (tasks[None, :] == j[:, None]))
        shrunk = torch.where(stuck[:, None], keep, step > 0)
        y = torch.where(active[:, None], new_y, y)
        passive = torch.where(active[:, None], torch.where(feasible[:, None], grown, shrunk), passive)
        entered = torch.where(enter, j, -1)
        active = active & ~(feasible & ~enter) & ~stuck
    return y


def _block_pivoting(
    corr: Tensor, lin: Tensor, size: Tensor, live: Tensor, rtol: float, init: Tensor, max_iter: int
) -> tuple[Tensor, Tensor]:
    """Block principal pivoting (Kim & Park 2011, Júdice & Pires 1994) on ``min_{y >= 0} 1/2 y^T corr y + lin^T y``
    for every row of ``lin [B, K]`` (batched), from the passive sets ``init``.

    Each iteration solves every row's face exactly, then exchanges all its infeasible tasks at once (``y_j < 0`` on
    the face, ``(corr y + lin)_j < -tol`` off it); after three exchanges without fewer infeasible tasks it exchanges
    only the last one (Murty's rule: finite for a positive definite ``corr``). Usually a few iterations where
    Lawson-Hanson needs one per active task.

    :returns: ``y [B, K]`` and ``[B]`` bool: rows whose final face solution is exact and satisfies the KKT conditions
        (a singular face, as for linearly dependent gradients, or an exhausted budget leaves the row unconverged).
    """
    rows, k = lin.shape
    y = torch.zeros(rows, k, dtype=lin.dtype)
    converged = torch.zeros(rows, dtype=torch.bool)
    passive = init & live[None, :]
    fewest = torch.full((rows,), k + 1, dtype=torch.long)
    budget = torch.full((rows,), 3, dtype=torch.long)
    order = torch.arange(1, k + 1)
    running = torch.arange(rows)
    for _ in range(max_iter):
        pas = passive[running]
        z = _solve_faces(corr, -lin[running], pas)
        grad = z @ corr + lin[running]
        tol = rtol * (size[running] + z.abs().sum(dim=1))
        infeasible = (pas & (z < 0)) | (~pas & live[None, :] & (grad < -tol[:, None]))
        count = infeasible.sum(dim=1)
        exact = (torch.where(pas, grad.abs(), 0.0) <= tol[:, None]).all(dim=1)
        done = (count == 0) & exact
        failed = ~exact  # a singular face without an exact solution: leave the row to Lawson-Hanson
        y[running[done]] = z[done]
        converged[running[done]] = True
        better = count < fewest[running]
        fewest[running] = torch.where(better, count, fewest[running])
        bulk = better | (budget[running] > 0)
        budget[running] = torch.where(better, 3, budget[running] - (~better).long())
        last = (infeasible * order).argmax(dim=1)
        single = infeasible & (order[None, :] == (last + 1)[:, None])
        passive[running] = pas ^ torch.where(bulk[:, None], infeasible, single)
        running = running[~done & ~failed]
        if running.numel() == 0:
            break
    return y, converged


def dual_cone_weights(gram: Tensor, targets: Tensor, rtol: float = DUAL_CONE_TOL) -> Tensor:
    r"""Weights ``V [B, K]`` of the projections of ``J^T u_b`` onto the dual cone ``{d : J d >= 0}``, for the rows
    ``u_b`` of ``targets [B, K]``: ``V = U + Lambda`` with ``Lambda >= 0`` (see the module docstring).

    Solved exactly, all rows at once, on the correlation matrix (``lambda_j ||g_j||`` as unknowns, so that task
    scales over orders of magnitude do not degrade it): block principal pivoting (:func:`_block_pivoting`, a few
    batched Cholesky solves from the empty face), and Lawson-Hanson's active-set algorithm
    (:func:`_lawson_hanson`, robust to linearly dependent gradients) for the rows it leaves unconverged after
    :data:`_PIVOT_ITER` iterations. Either way the result satisfies the KKT conditions
    ``g_j . d >= -rtol ||g_j|| sum_k |v_k| ||g_k||`` for every task, ``lambda >= 0``, and ``lambda_j > 0`` only where
    ``g_j . d = 0`` (to rounding). Zero gradients never enter (their ``lambda`` stays 0).

    :param gram: ``[K, K]`` float64 CPU Gramian.
    :param targets: ``[B, K]`` float64 weights of the vectors ``J^T u_b`` to project.
    :param rtol: relative optimality tolerance (:data:`DUAL_CONE_TOL`; :func:`dual_cone_tol` for float32 gradients).
    :returns: ``V [B, K]`` float64: the direction of row ``b`` is ``J^T V[b]``.
    """
    k = gram.shape[0]
    rows = targets.shape[0]
    norms = gram.diagonal().clamp_min(0).sqrt()
    top = float(norms.max()) if k else 0.0
    if not top > 0.0:
        return targets.clone()
    norms = norms / top
    live = norms > 0
    inv = torch.where(live, 1.0 / norms.clamp_min(1e-300), 0.0)
    corr = (gram / (top * top)) * inv[:, None] * inv[None, :]
    lin = (targets @ (gram / (top * top))) * inv  # [B, K]: g_j . J^T u_b / ||g_j||
    size = targets.abs() @ norms  # [B]: sum_k |u_k| ||g_k||
    y, converged = _block_pivoting(corr, lin, size, live, rtol, torch.zeros(rows, k, dtype=torch.bool), _PIVOT_ITER)
    rest = (~converged).nonzero().flatten()
    if rest.numel():
        y[rest] = _lawson_hanson(corr, lin[rest], size[rest], live, rtol, 10 * k + 20)
    return targets + y * inv


def newton_step(hess: Tensor, grad: Tensor) -> Tensor:
    """``s`` with ``hess s = -grad`` (Nash-MTL's and FairGrad's Newton steps): a Cholesky solve, least squares where
    the factorisation fails (a numerically singular Hessian)."""
    chol, info = torch.linalg.cholesky_ex(hess)
    if int(info) == 0:
        return torch.cholesky_solve(-grad[:, None], chol)[:, 0]
    return torch.linalg.lstsq(hess, -grad[:, None]).solution[:, 0]


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
