"""FairGrad: alpha-fair weights, the positive solution of ``G w = w^(-1/alpha)``, by damped Newton."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, fmt
from mtrl.mto.gramian import GramianCombiner
from mtrl.mto.qp import newton_step

#: ridge on the correlation matrix (unit diagonal): keeps the problem bounded where no positive solution exists (a
#: zero ``w >= 0`` combination of the gradients, as ``g`` and ``-g``); removed again where one exists
_RIDGE = 1e-10
#: the ridge is at least this many machine epsilons of the gradients' dtype (float32: 1.2e-6), above the rounding noise
#: of a float32 Gramian's correlations
_RIDGE_EPS = 10.0
#: ``sum_i ridge beta_i^(1+p) / c_i`` (the ridge's share of the equations) below this: a positive solution exists and
#: the ridge is removed
_EXISTS = 0.5


def _potential(beta: Tensor, p: float) -> Tensor:
    """``phi(beta)`` with ``phi' = beta^-p``: ``log beta`` for ``p = 1``, ``beta^(1-p) / (1-p)`` otherwise."""
    if p == 1.0:
        return beta.log()
    return beta.pow(1.0 - p) / (1.0 - p)


def _objective(corr: Tensor, c: Tensor, p: float, beta: Tensor) -> float:
    return float(0.5 * beta @ corr @ beta - (c * _potential(beta, p)).sum())


def fair_newton(
    corr: Tensor, c: Tensor, p: float, ridge: float, start: Tensor | None = None, max_iter: int = 100
) -> tuple[Tensor, bool]:
    r"""The unique ``beta > 0`` with ``(corr + ridge I) beta = c beta^{-p}``: the minimiser of the strictly convex

    .. math:: F(\beta) = \tfrac12 \beta^\top (C + \epsilon I) \beta - \sum_i c_i \varphi(\beta_i), \qquad
        \varphi' = \beta^{-p}

    by Newton's method with an Armijo backtracking line search that stays in ``beta > 0``, the Newton system scaled
    by ``diag(beta)`` (``diag(beta) C diag(beta) + p diag(c beta^(1-p))``); full steps once the Newton decrement
    ``lambda^2 < 0.01`` (and the step keeps ``beta`` positive). Stops after the step at which ``lambda^2 < 1e-20``,
    or, below ``1e-12``, once it no longer shrinks 4-fold (the rounding floor).

    :param corr: ``[K, K]`` float64 PSD.
    :param c: ``[K]`` positive coefficients.
    :param p: ``1 / alpha > 0``.
    :param ridge: ``epsilon``; with 0, ``F`` may be unbounded below (then the iterations run out unconverged).
    :param start: warm start (used when positive and better than the default ``t 1`` with the best ``t``).
    :param max_iter: Newton iterations at most.
    :returns: ``beta`` and whether it converged.
    """
    k = corr.shape[0]
    mat = corr + ridge * torch.eye(k, dtype=corr.dtype)
    total = max(float(mat.sum()), 1e-300)
    beta = torch.full((k,), (float(c.sum()) / total) ** (1.0 / (1.0 + p)), dtype=corr.dtype)
    f = _objective(mat, c, p, beta)
    if start is not None and bool((start > 0).all() & torch.isfinite(start).all()):
        f_start = _objective(mat, c, p, start)
        if f_start < f:
            beta, f = start.clone(), f_start
    previous = math.inf
    for _ in range(max_iter):
        scaled_grad = beta * (mat @ beta) - c * beta.pow(1.0 - p)
        hess = beta[:, None] * mat * beta[None, :] + torch.diag(p * c * beta.pow(1.0 - p))
        s = newton_step(hess, scaled_grad)
        decrement2 = float(-(scaled_grad @ s))
        if not math.isfinite(decrement2):
            return beta, False
        if decrement2 < 1e-20:
            return beta * (1.0 + s) if bool((s > -0.5).all()) else beta, True
        if decrement2 < 1e-2 and bool((s > -0.5).all()):
            if decrement2 < 1e-12 and decrement2 > 0.25 * previous:
                return beta * (1.0 + s), True
            beta, previous = beta * (1.0 + s), decrement2
            f = _objective(mat, c, p, beta)
            continue
        t = 1.0
        if bool((s < 0).any()):  # keep beta > 0: 1 + t s > 0
            t = min(1.0, 0.99 / float((-s).max()))
        while True:
            cand = beta * (1.0 + t * s)
            f_cand = _objective(mat, c, p, cand)
            if f_cand <= f - 0.25 * t * decrement2 or t < 1e-10:
                break
            t *= 0.5
        if not f_cand < f:
            return beta, False
        beta, f, previous = cand, f_cand, decrement2
    return beta, False


def fairgrad_exact_weights(gram: Tensor, alpha: float, ridge: float = _RIDGE) -> Tensor:
    r"""The exact FairGrad weights: ``w > 0`` with ``G w = w^{-1/alpha}`` where such a solution exists.

    With ``p = 1 / alpha``, ``D = diag ||g_i||`` and ``C = D^{-1} G D^{-1}`` the correlation matrix, ``w = D^{-1}
    beta`` turns the equation into ``C beta = c beta^{-p}`` with ``c_i = ||g_i||^{p-1}`` (solved on the gradients
    scaled by the largest norm ``s``, then ``w = s^{-2/(1+p)} w_s``: ``G`` scales by ``s^2``). Zero gradients get
    weight 0 and are left out. The ridged equation ``(C + ridge I) beta = c beta^{-p}`` is solved first
    (:func:`fair_newton`), and where the ridge's share of the equations is small (a positive solution exists) Newton
    continues without it (kept when it converges); otherwise (some ``w >= 0`` combination of the gradients is 0) the
    ridged solution is the answer: finite, the tasks of the zero combination get large weights that cancel in ``d``.

    :param gram: ``[K, K]`` float64 CPU Gramian.
    :param alpha: the fairness parameter, ``> 0``.
    :param ridge: the ridge on ``C``.
    """
    k = gram.shape[0]
    norms = gram.diagonal().clamp_min(0).sqrt()
    top = float(norms.max())
    w = torch.zeros(k, dtype=torch.float64)
    if not top > 0.0:
        return w
    live = (norms > 0).nonzero().flatten()
    n = norms[live] / top
    corr = (gram[live][:, live] / (top * top)) / (n[:, None] * n[None, :])
    corr.diagonal().fill_(1.0)
    if int(torch.linalg.cholesky_ex(corr + ridge * torch.eye(live.numel(), dtype=corr.dtype))[1]) != 0:
        lam, vec = torch.linalg.eigh(corr)  # float32 rounding can leave C slightly indefinite: project on the PSD cone
        corr = (vec * lam.clamp_min(0.0)) @ vec.T
        corr = 0.5 * (corr + corr.T)
    p = 1.0 / alpha
    c = n.pow(p - 1.0)
    beta, _ = fair_newton(corr, c, p, ridge)
    if float((ridge * beta.pow(1.0 + p) / c).sum()) < _EXISTS:
        exact, converged = fair_newton(corr, c, p, 0.0, start=beta, max_iter=50)
        if converged:
            beta = exact
    w[live] = beta / n * top ** (-2.0 / (1.0 + p))
    return w


def fairgrad_sgd20_weights(gram: Tensor, alpha: float) -> Tensor:
    """The solver of the official MT10/MT50 code (OptMN-Lab/fairgrad ``mtrl_files/fairgrad.py::fairgrad``),
    transcribed in float64: from ``w = 1/K``, 20 SGD steps (lr 0.1, momentum 0.5, gradient norm clipped to 1, ``w``
    clamped to ``>= 1e-8``) on ``||G w - (1 / (w + 1e-8))^(1/alpha)||^2`` with the raw Gramian, keeping the iterate
    with the smallest objective among the first 20 (the one after the last step is not evaluated). Not
    scale-invariant, and far from the fixed point where the Gramian is large or small (as the original)."""
    k = gram.shape[0]
    p = 1.0 / alpha
    w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    best, best_w = math.inf, w
    buf: Tensor | None = None
    for _ in range(20):
        shifted = w + 1e-8
        resid = gram @ w - shifted.pow(-p)
        obj = float(resid @ resid)
        if obj < best:
            best, best_w = obj, w.clone()
        grad = 2.0 * (gram.T @ resid + p * shifted.pow(-p - 1.0) * resid)
        norm = float(grad.norm())
        grad = grad * min(1.0, 1.0 / (norm + 1e-6))
        buf = grad if buf is None else 0.5 * buf + grad
        w = (w - 0.1 * buf).clamp_min(1e-8)
    return best_w


class FairGrad(GramianCombiner):
    r"""FairGrad (Ban & Ji, ICML 2024, "Fair Resource Allocation in Multi-Task Learning",
    https://arxiv.org/abs/2402.15638, eq. 4 / Algorithm 1): the update that maximises the alpha-fair utility of the
    tasks' first-order loss decreases; its weights solve

    .. math:: G w = w^{-1/\alpha} \;\; (w > 0, \text{ elementwise}), \qquad d = J^\top w

    i.e. every task's improvement ``g_i . d = w_i^{-1/alpha}``. ``alpha = 1`` is Nash-MTL (proportional fairness),
    ``alpha -> inf`` max-min fairness; ``alpha = 0`` is linear scalarisation: ``mean`` (as the paper and torchjd).

    ``solver="exact"`` solves it as the minimiser of the strictly convex
    ``1/2 w^T G w - sum_i phi(w_i)`` (``phi' = w^{-1/alpha}``) by damped Newton on the correlation matrix
    (:func:`fairgrad_exact_weights`), to machine precision (torchjd calls scipy's ``least_squares`` from ``1/K``, to
    its default tolerances); zero gradients get weight 0, and where no positive solution exists a tiny ridge on the
    correlations makes it finite (``max(1e-10, 10 eps)`` of the gradients' dtype). ``solver="sgd20"`` is the 20-step
    SGD solver of the official MT10/MT50 code (:func:`fairgrad_sgd20_weights`).

    Scale: not a multiple of ``mean``: at the fixed point ``||d||^2 = sum_i w_i^{1 - 1/alpha}``, and scaling all
    gradients by ``s`` scales ``d`` by ``s^{(1-alpha)/(1+alpha)}`` (``alpha = 1``: norm ``sqrt(K)`` whatever the
    scale, as Nash-MTL; ``alpha = 2``: ``s^{-1/3}``). K=1 gives ``||g||^{-2 alpha/(1+alpha)} g``. The official code
    applies no clipping (the agent's ``max_grad_norm`` still does).
    """

    def __init__(
        self, num_tasks: int, seed: int = 0, alpha: float = 2.0, solver: Literal["exact", "sgd20"] = "exact"
    ) -> None:
        super().__init__(num_tasks, seed)
        self.alpha = alpha
        self.solver = solver

    @property
    def ridge(self) -> float:
        """The solver's ridge for the last call's gradient dtype (its Gramian's rounding noise)."""
        return max(_RIDGE, _RIDGE_EPS * torch.finfo(self.grad_dtype).eps)

    def weights(self, gram: Tensor) -> Tensor:
        k = gram.shape[0]
        if self.alpha == 0.0:
            return torch.full((k,), 1.0 / k, dtype=torch.float64)
        if self.solver == "sgd20":
            return fairgrad_sgd20_weights(gram, self.alpha)
        return fairgrad_exact_weights(gram, self.alpha, self.ridge)

    def __str__(self) -> str:
        return f"fairgrad-a{fmt(self.alpha)}" + ("-sgd20" if self.solver == "sgd20" else "")


@dataclass(frozen=True)
class FairGradConfig(CombinerConfigBase):
    """FairGrad: alpha-fair task weights, G w = w^(-1/alpha)."""

    name = "fairgrad"
    kind = "gradient"

    alpha: float = 2.0
    """Fairness parameter, >= 0 (0: mean; 1: Nash-MTL's proportional fairness; the official MT10/MT50 runs: 2)."""
    solver: Literal["exact", "sgd20"] = "exact"
    """Solver of G w = w^(-1/alpha): exact (damped Newton, to machine precision) or sgd20 (the 20-step SGD solver of
    the official MT10/MT50 code)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``alpha`` finite and ``>= 0``."""
        super().check(num_tasks, parts)
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"combiner.alpha: got {self.alpha}, expected a number >= 0")

    def build(self, num_tasks: int, seed: int = 0) -> FairGrad:
        self.check(num_tasks, frozenset())
        return FairGrad(num_tasks, seed, alpha=self.alpha, solver=self.solver)
