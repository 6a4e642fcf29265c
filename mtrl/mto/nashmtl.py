"""Nash-MTL: the Nash bargaining solution, ``G alpha = 1 / alpha``, by damped Newton on a convex problem."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import CombinerConfigBase, fmt
from mtrl.mto.gramian import GramianCombiner
from mtrl.mto.qp import newton_step

#: ridge added to the unit-diagonal (correlation) Gramian; keeps the problem bounded when some ``alpha >= 0``
#: combination of the gradients is 0 (``g`` and ``-g``, rank 1 with mixed signs): those weights become
#: ``~1/sqrt(ridge)`` instead of infinite, and the direction stays finite. Removed again (:func:`nash_solve`) where a
#: positive solution exists, so it does not bias the fixed point there.
_RIDGE = 1e-10
#: the ridge is at least this many machine epsilons of the gradients' dtype (float32: 1.2e-6): above the rounding noise
#: of the correlations of a float32 Gramian (~1e-7), which would otherwise turn a zero combination into a
#: noise-determined "solution" with weights ~1/sqrt(noise)
_RIDGE_EPS = 10.0
#: ``ridge ||beta||^2`` below this: a positive solution exists (the ridge is removed). Where none exists the tasks of a
#: zero combination ``v >= 0`` (``C v = 0``) get ``ridge ||beta||^2 ~ |supp v| >= 2``; where one exists it is
#: ``ridge ||beta*||^2 -> 0``
_EXISTS = 0.5


def _objective(corr: Tensor, beta: Tensor) -> float:
    return float(0.5 * beta @ corr @ beta - beta.log().sum())


def nash_newton(
    corr: Tensor, start: Tensor | None = None, max_iter: int = 100, ridge: float = _RIDGE
) -> tuple[Tensor, bool]:
    r"""The unique ``beta > 0`` with ``(corr + ridge I) beta = 1 / beta``: minimiser of the strictly convex,
    self-concordant

    .. math:: F(\beta) = \tfrac12 \beta^\top (C + \epsilon I) \beta - \sum_i \log \beta_i

    by Newton's method with backtracking (Armijo, staying in ``beta > 0``), the Newton system scaled by
    ``diag(beta)`` (``diag(beta) C diag(beta) + I``, well conditioned even where ``beta`` is large); full steps once
    the Newton decrement ``lambda^2 < 0.01`` (the quadratic phase of a self-concordant ``F``: the step is feasible,
    ``|s|_inf <= lambda``, and ``lambda^2`` shrinks at least 50-fold per step); stops after the step at which
    ``lambda^2 < 1e-20``, or, in that phase, once ``lambda^2`` no longer shrinks 4-fold (the rounding floor of an
    ill-conditioned ``C``: weights ``~1/sqrt(ridge)``).

    :param corr: ``[K, K]`` float64 PSD, unit diagonal.
    :param start: warm start (used when finite, positive and better than the default ``t 1`` with the best ``t``).
    :param max_iter: Newton iterations at most.
    :param ridge: ``epsilon``; with 0, ``F`` is unbounded below where no positive solution exists (then the iterations
        run out unconverged).
    :returns: ``beta`` and whether it converged (``lambda^2 < 1e-20``, or below ``1e-12`` at the rounding floor).
    """
    k = corr.shape[0]
    c = corr + ridge * torch.eye(k, dtype=corr.dtype)
    beta = torch.full((k,), math.sqrt(k / max(float(c.sum()), 1e-300)), dtype=corr.dtype)
    if start is not None and start.shape == beta.shape and bool((start > 0).all() & torch.isfinite(start).all()):
        if _objective(c, start) < _objective(c, beta):
            beta = start.clone()
    f: float | None = None  # F(beta), evaluated where a line search needs it
    eye = torch.eye(k, dtype=corr.dtype)
    previous = math.inf
    for _ in range(max_iter):
        # Newton step in the scaled variable beta = diag(beta) (1 + s): H~ = D C D + I is well conditioned (>= I)
        cb = c @ beta
        scaled_grad = beta * cb - 1.0  # D grad F
        hess = beta[:, None] * c * beta[None, :] + eye
        s = newton_step(hess, scaled_grad)
        decrement2 = float(-(scaled_grad @ s))
        if decrement2 < 1e-20:  # one more full step is free: the residual goes from ~lambda to ~lambda^2
            return beta * (1.0 + s), True
        if decrement2 < 1e-2:
            if decrement2 > 0.25 * previous:
                return beta * (1.0 + s), decrement2 < 1e-12
            beta, f, previous = beta * (1.0 + s), None, decrement2
            continue
        if f is None:
            f = _objective(c, beta)
        t = 1.0
        if bool((s < 0).any()):  # keep beta > 0: 1 + t s > 0
            t = min(1.0, 0.99 / float((-s).max()))
        while True:
            cand = beta * (1.0 + t * s)
            f_cand = _objective(c, cand)
            if f_cand <= f - 0.25 * t * decrement2 or t < 1e-10:
                break
            t *= 0.5
        if f_cand > f:
            break
        beta, f = cand, f_cand
    return beta, False


def nash_solve(corr: Tensor, start: Tensor | None = None, ridge: float = _RIDGE) -> Tensor:
    """``beta > 0`` with ``corr beta = 1 / beta`` where such a positive solution exists; otherwise the solution with
    the ridge, ``(corr + ridge I) beta = 1 / beta``.

    The correlation matrix of a float32 Gramian can be slightly indefinite (``|C_ij| > 1`` for ``g`` and ``-s g``),
    and then ``F`` is unbounded below even with the ridge: where ``C + ridge I`` has no Cholesky factor, ``C`` is
    replaced by its projection on the PSD cone (negative eigenvalues set to 0). The ridged problem is solved first
    (:func:`nash_newton`); where ``ridge ||beta||^2 < 0.5`` (:data:`_EXISTS`) a positive solution exists and Newton
    continues without the ridge from there (kept when it converges).

    :param corr: ``[K, K]`` float64, unit diagonal.
    :param start: warm start for the ridged solve.
    :param ridge: the ridge (:data:`_RIDGE`, or more for float32 gradients).
    """
    k = corr.shape[0]
    if int(torch.linalg.cholesky_ex(corr + ridge * torch.eye(k, dtype=corr.dtype))[1]) != 0:
        lam, vec = torch.linalg.eigh(corr)
        corr = (vec * lam.clamp_min(0.0)) @ vec.T
        corr = 0.5 * (corr + corr.T)
    beta, _ = nash_newton(corr, start, ridge=ridge)
    if ridge * float(beta @ beta) < _EXISTS:
        exact, converged = nash_newton(corr, beta, ridge=0.0, max_iter=50)
        if converged:
            return exact
    return beta


class NashMTL(GramianCombiner):
    r"""Nash-MTL (Navon et al. ICML 2022, https://arxiv.org/abs/2202.01017): the Nash bargaining solution.

    .. math:: G \alpha = 1 / \alpha \;\; (\alpha > 0) \iff
        \alpha = \arg\min_{\alpha > 0} \tfrac12 \alpha^\top G \alpha - \sum_i \log \alpha_i, \qquad d = J^\top \alpha

    Solved in torch by damped Newton (:func:`nash_solve`) on the correlation matrix ``C = D^{-1} G D^{-1}``
    (``D = diag ||g_i||``), then ``alpha = D^{-1} beta``: exactly invariant to per-task gradient scaling, to machine
    precision (the official code runs up to 20 sequential cvxpy/ECOS convex programs; both reach the same fixed point).
    The weights are recomputed every ``update_every`` calls and reused in between (warm start: the previous solution).
    State (``alpha``, ``beta``, the call counter) is per instance and in ``state_dict``.

    Where no positive solution exists (the answer, documented and tested):

    * a task with a zero gradient gets weight 0, and the others are solved without it;
    * where some ``alpha >= 0`` combination of the (nonzero) gradients is 0 (``g`` and ``-g``, rank 1 with mixed
      signs, 0 in the convex hull of some rows: ``F`` is unbounded below) the answer is the solution with a ridge
      ``epsilon`` on ``C``, ``(C + epsilon I) beta = 1 / beta`` (``epsilon = max(1e-10, 10 eps)`` of the gradients'
      dtype: 1e-10 for float64, 1.2e-6 for float32). The weights of the tasks of such a zero combination become
      ``~1 / sqrt(epsilon)`` (finite) and their gradients cancel in ``d``; and for every task

      .. math:: \|d\|^2 = K - \epsilon \|\beta\|^2 \le K, \qquad
          \frac{g_i^\top d}{\|g_i\|} = \frac{1}{\beta_i} - \epsilon \beta_i \ge -\sqrt{\epsilon K}

      (finite, and no task's loss increases at first order by more than ``sqrt(epsilon K) ||g_i||``; a task outside
      every zero combination keeps its equation up to ``epsilon beta_i^2``; all of it for the Gramian as computed,
      which float32 rounding perturbs by ~1e-7 relative). Where a positive solution exists the ridge is removed
      (:func:`nash_solve`): the fixed point is exact.

    Scale: at the fixed point ``||J^T alpha||^2 = K`` whatever the gradients' scale, so the direction has norm
    ``sqrt(K)`` (K=1: the unit gradient); ``<= sqrt(K)`` without a positive solution. ``max_norm > 0`` rescales
    ``alpha`` so that ``||d|| <= max_norm``, on every call, as the official code's ``clip_grad_norm_(shared,
    max_norm=1.0)`` and torchjd's ``max_norm``; the FAMO-repo MT10 port's "clipping" (divide by 1.0) is a no-op, i.e.
    ``max_norm=0`` here.
    """

    alpha: Tensor
    beta: Tensor

    def __init__(self, num_tasks: int, seed: int = 0, update_every: int = 1, max_norm: float = 1.0) -> None:
        super().__init__(num_tasks, seed)
        self.update_every = update_every
        self.max_norm = max_norm
        self.register_buffer("alpha", torch.ones(num_tasks, dtype=torch.float64))
        self.register_buffer("beta", torch.ones(num_tasks, dtype=torch.float64))

    @property
    def ridge(self) -> float:
        """The solver's ridge for the last call's gradient dtype (its Gramian's rounding noise)."""
        return max(_RIDGE, _RIDGE_EPS * torch.finfo(self.grad_dtype).eps)

    def solve(self, gram: Tensor) -> Tensor:
        """The unclipped weights ``alpha [K]`` for a Gramian (float64 CPU)."""
        norms = gram.diagonal().clamp_min(0).sqrt()
        live = norms > 0
        alpha = torch.zeros_like(norms)
        if not bool(live.any()):
            return alpha
        idx = live.nonzero().flatten()
        d = norms[idx]
        corr = gram[idx][:, idx] / (d[:, None] * d[None, :])
        corr.diagonal().fill_(1.0)
        start = self.beta.detach().to("cpu")[idx]
        beta = nash_solve(corr, start, self.ridge)
        alpha[idx] = beta / d
        full_beta = torch.ones_like(norms)
        full_beta[idx] = beta
        self.beta.copy_(full_beta)
        return alpha

    def weights(self, gram: Tensor) -> Tensor:
        if self.calls % self.update_every == 0:
            self.alpha.copy_(self.solve(gram))
        self.calls += 1
        alpha = self.alpha.detach().to("cpu").clone()
        if self.max_norm > 0:
            norm = math.sqrt(max(float(alpha @ gram @ alpha), 0.0))
            if norm > self.max_norm:
                alpha *= self.max_norm / norm
        return alpha

    def __str__(self) -> str:
        name = "nashmtl"
        if self.update_every != 1:
            name += f"-u{self.update_every}"
        if self.max_norm != 1.0:
            name += f"-n{fmt(self.max_norm)}"
        return name


@dataclass(frozen=True)
class NashMTLConfig(CombinerConfigBase):
    """Nash-MTL: Nash bargaining weights (G alpha = 1/alpha), damped Newton in torch."""

    name = "nashmtl"
    kind = "gradient"

    update_every: int = 1
    """Recompute the weights every this many calls; reuse the previous ones in between (official default 1)."""
    max_norm: float = 1.0
    """Rescale the direction to norm <= max_norm (official clip_grad_norm_ value 1.0); 0 = off (norm sqrt(K), as the
    FAMO-repo MT10 port)."""

    def check(self, num_tasks: int, parts: frozenset[str]) -> None:
        """``update_every >= 1`` and ``max_norm`` finite and ``>= 0``."""
        super().check(num_tasks, parts)
        if self.update_every < 1:
            raise ValueError(f"combiner.update_every: got {self.update_every}, expected an integer >= 1")
        if not (math.isfinite(self.max_norm) and self.max_norm >= 0):
            raise ValueError(f"combiner.max_norm: got {self.max_norm}, expected a number >= 0 (0 = off)")

    def build(self, num_tasks: int, seed: int = 0) -> NashMTL:
        self.check(num_tasks, frozenset())
        return NashMTL(num_tasks, seed, update_every=self.update_every, max_norm=self.max_norm)
