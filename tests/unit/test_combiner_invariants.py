"""Combiner invariants on hard Jacobians: low rank, ill-conditioned, task scales over orders of magnitude.

``hard_jacobian`` draws ``J = diag(scales) (A B [+ 1 v^T])``: ``A [K, r]``, ``B [r, P]`` standard normal, rank
``r < K`` (with the optional shared component ``v``, ``r + 1 < K``), per-task scales log-uniform in ``[1e-3, 1e3]``
(``[1e-8, 1e8]`` for the finiteness family), cast to float32 (as the agent's gradients; the Gramian is then computed
in float32 by :func:`mtrl.mto.gramian.gramian`) or kept in float64. Every combiner is called as the agent calls it:
``comb(J, losses)`` and, where it accepts blocks, ``comb([J[:, :a], J[:, a:]], losses)``; one combiner instance per
test and ``K`` sees all the Jacobians (warm starts from unrelated previous calls included). The references (``g_0``,
the Gramian of the checks) are computed in float64 from the Jacobian as passed (after the float32 cast).

Invariants, with the number of Jacobians each is checked on in :data:`JACOBIANS_CHECKED` (and in the test ids):

* CAGrad (exact; CAGrad-Fast): ``d' = (1 + c^2) d`` has ``||d' - g_0|| = c ||g_0||`` and ``||d'|| >= (1 - c) ||g_0||``
  for c in {0.1, 0.4, 0.5, 0.9}, to float32 / float64 precision; the MTRL 20-step solver (``sgd20``): its
  ``lambda`` has the original's ``1e-4`` terms, so only ``||d' - g_0|| <= c sqrt(||g_0||^2 + 1e-4 s^2)``.
* MGDA: weights on the simplex; KKT ``g_i . d >= ||d||^2`` for every task, to a tolerance relative to the terms
  ``||g_i|| sum_j w_j ||g_j||``.
* Nash-MTL (``max_norm=0``): where a positive solution exists (the convex hull of the unit gradients is at distance
  ``>= 0.05`` from 0), ``(G alpha)_i alpha_i = 1``; always (the documented answer where none exists)
  ``||d||^2 <= K`` and ``g_i . d / ||g_i|| >= -sqrt(ridge K)``; zero rows get weight 0.
* Every combiner in :data:`mtrl.mto.COMBINERS`: finite direction and stats on degenerate (zero rows, duplicates,
  ``g`` and ``-g``, rank 1, all zero) and hard Jacobians at scales 1e-8..1e8, K from 1 to 50, float32 and float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from mtrl.mto import COMBINERS, Combiner, Weighting
from mtrl.mto.gramian import gramian
from mtrl.mto.mgda import min_norm_weights

F64 = torch.float64
F32 = torch.float32
DTYPES = (F32, F64)
#: columns of the hard Jacobians; split into blocks at column :data:`SPLIT`
P = 256
SPLIT = 100
KS = (2, 3, 5, 10, 20, 50)
C_VALUES = (0.1, 0.4, 0.5, 0.9)
#: Jacobians per (K, dtype[, c]) for each invariant (fewer at large K, where a call costs more)
PER_C = {2: 5, 3: 5, 5: 5, 10: 5, 20: 4, 50: 2}
PER_K = {2: 25, 3: 25, 5: 20, 10: 16, 20: 10, 50: 5}
SEEDS = {"cagrad": PER_C, "cagrad_sgd20": PER_C, "cagrad_fast": PER_C, "mgda": PER_K, "nashmtl": PER_K}
#: the number of Jacobians each invariant is checked on (each one also as blocks where the combiner accepts them)
JACOBIANS_CHECKED = {
    name: sum(per_k.values()) * len(DTYPES) * (len(C_VALUES) if per_k is PER_C else 1) for name, per_k in SEEDS.items()
}
#: relative tolerances of the exact invariants, by dtype of the gradients
TOL = {F32: 2e-6, F64: 1e-12}


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one intra-op thread (tests/unit/conftest.py)


def hard_jacobian(k: int, seed: int, dtype: torch.dtype, lo: float = -3.0, hi: float = 3.0, p: int = P) -> Tensor:
    """``diag(scales) (A [K, r] B [r, P] (+ shared))`` with rank ``< K`` (for ``K >= 2``) and log-uniform task scales
    ``10^[lo, hi]``, computed in float64 and cast to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    shared = k >= 3 and bool(torch.rand(1, generator=g) < 0.5)
    rmax = max(1, k - 1 - int(shared))
    r = int(torch.randint(1, rmax + 1, (1,), generator=g))
    jac = torch.randn(k, r, generator=g, dtype=F64) @ torch.randn(r, p, generator=g, dtype=F64)
    if shared:
        jac = jac + torch.rand(1, generator=g, dtype=F64) * 2 * torch.randn(1, p, generator=g, dtype=F64)
    scales = 10.0 ** (lo + (hi - lo) * torch.rand(k, generator=g, dtype=F64))
    return (scales[:, None] * jac).to(dtype)


def calls(comb: Combiner, jac: Tensor) -> Iterator[tuple[str, Tensor]]:
    """The combiner's direction (float64) for ``jac`` as one matrix and, where accepted, as two column blocks; the
    combiner's stats are those of the call just yielded."""
    losses = torch.ones(jac.shape[0], dtype=jac.dtype)
    out = comb(jac, losses)
    assert isinstance(out, Tensor)
    yield "matrix", out.double()
    if comb.accepts_blocks:
        blocks = comb([jac[:, :SPLIT], jac[:, SPLIT:]], losses)
        assert isinstance(blocks, list)
        yield "blocks", torch.cat(blocks).double()


def assert_near(actual: Tensor, expected: Tensor, rtol: float, where: str = "") -> None:
    """``||actual - expected|| <= rtol ||expected||`` (plus a tiny absolute floor)."""
    err = float((actual.double() - expected.double()).norm())
    assert err <= rtol * float(expected.double().norm()) + 1e-300, f"{where}: error {err:.3g} vs {expected}"


def stat_weights(comb: Combiner, k: int) -> Tensor:
    return torch.tensor([comb.stats[f"weight/{i}"] for i in range(k)], dtype=F64)


def seed_of(name: str, k: int, dtype: torch.dtype, index: int, c: float = 0.0) -> int:
    """Distinct seeds per invariant, K, dtype and c."""
    salt = {"cagrad": 1, "cagrad_sgd20": 2, "cagrad_fast": 3, "mgda": 4, "nashmtl": 5}[name]
    return ((salt * 100 + k) * 10 + (dtype == F64)) * 100_000 + int(c * 10) * 1000 + index


def params(name: str) -> list:
    """``(K, dtype)`` cases with the number of Jacobians in the id."""
    per_c = len(C_VALUES) if SEEDS[name] is PER_C else 1
    return [
        pytest.param(k, dtype, id=f"K{k}-{str(dtype).removeprefix('torch.')}-{SEEDS[name][k] * per_c}jac")
        for k in KS
        for dtype in DTYPES
    ]


# ----------------------------------------------------------------------------------------------------- CAGrad


def assert_radius(jac: Tensor, d: Tensor, c: float, tol: float, where: str) -> None:
    """``d' = (1 + c^2) d``: ``| ||d' - g_0|| - c ||g_0|| | <= tol ||g_0||`` and ``||d'|| >= (1 - c - tol) ||g_0||``."""
    g0 = jac.double().mean(0)
    norm0 = float(g0.norm())
    raw = (1 + c * c) * d
    radius = float((raw - g0).norm())
    assert abs(radius - c * norm0) <= tol * norm0, f"{where}: ||d - g0|| = {radius:.9g}, c ||g0|| = {c * norm0:.9g}"
    assert float(raw.norm()) >= (1 - c - tol) * norm0, f"{where}: ||d|| = {float(raw.norm()):.9g}, ||g0|| = {norm0:.9g}"


@pytest.mark.parametrize(("k", "dtype"), params("cagrad"))
def test_cagrad_exact_radius(k: int, dtype: torch.dtype) -> None:
    for c in C_VALUES:
        comb = COMBINERS["cagrad"](c=c).build(k)
        for i in range(SEEDS["cagrad"][k]):
            seed = seed_of("cagrad", k, dtype, i, c)
            jac = hard_jacobian(k, seed, dtype)
            for how, d in calls(comb, jac):
                assert_radius(jac, d, c, TOL[dtype], f"seed {seed} c={c} {how}")


@pytest.mark.parametrize(("k", "dtype"), params("cagrad_fast"))
def test_cagrad_fast_radius(k: int, dtype: torch.dtype) -> None:
    """CAGrad on random groups: ``g_0`` is still the mean over the tasks, so the same radius."""
    for c in C_VALUES:
        comb = COMBINERS["cagrad_fast"](c=c, k=4).build(k, seed=k)
        for i in range(SEEDS["cagrad_fast"][k]):
            seed = seed_of("cagrad_fast", k, dtype, i, c)
            jac = hard_jacobian(k, seed, dtype)
            for how, d in calls(comb, jac):
                assert_radius(jac, d, c, TOL[dtype], f"seed {seed} c={c} {how}")


@pytest.mark.parametrize(("k", "dtype"), params("cagrad_sgd20"))
def test_cagrad_sgd20_radius_bound(k: int, dtype: torch.dtype) -> None:
    """The MTRL solver's ``lambda = c' / (sqrt(w^T GG w + 1e-4) + 1e-4)`` with ``c' = c sqrt(||g_0||^2 + 1e-4)`` (on
    ``GG = G / s^2``, ``s = mean_i sqrt(G_ii + 1e-4)``): the radius is at most ``c sqrt(||g_0||^2 + 1e-4 s^2)``."""
    tol = {F32: 1e-6, F64: 1e-12}[dtype]
    for c in C_VALUES:
        comb = COMBINERS["cagrad"](c=c, solver="sgd20").build(k)
        for i in range(SEEDS["cagrad_sgd20"][k]):
            seed = seed_of("cagrad_sgd20", k, dtype, i, c)
            jac = hard_jacobian(k, seed, dtype)
            j64 = jac.double()
            g0 = j64.mean(0)
            s = float((j64.norm(dim=1) ** 2 + 1e-4).sqrt().mean())
            bound = c * math.sqrt(float(g0 @ g0) + 1e-4 * s * s)
            for how, d in calls(comb, jac):
                raw = (1 + c * c) * d
                radius = float((raw - g0).norm())
                assert radius <= bound * (1 + tol), f"seed {seed} c={c} {how}: {radius:.9g} > {bound:.9g}"
                assert float(raw.norm()) >= float(g0.norm()) - bound * (1 + tol), f"seed {seed} c={c} {how}"


def test_cagrad_reported_failure() -> None:
    """The reported case: K=10, rank 3, task gradient norms 3e-3..2e4, float32, c=0.5. The exact solver stopped at
    a ``g_w`` of the small tasks (``||g_w||^2`` below the old absolute threshold on the max-diagonal-scaled
    Gramian) and returned ``d = 0`` (``|d| = 4.9e-4``, ``|g_0| = 2190``, ``|d - g_0| = 2c |g_0|``)."""
    jac = hard_jacobian(10, 1777, F32)
    norms = jac.double().norm(dim=1)
    assert float(norms.max() / norms.min()) > 1e6
    for dtype in DTYPES:
        d = COMBINERS["cagrad"](c=0.5).build(10)(jac.to(dtype), torch.ones(10, dtype=dtype))
        assert isinstance(d, Tensor)
        assert_radius(jac.double(), d.double(), 0.5, TOL[dtype], str(dtype))


@pytest.mark.parametrize("c", C_VALUES)
def test_cagrad_not_stationary_when_an_edge_is_negative(c: float) -> None:
    """A zero row with the others around it: ``f(g_w) = g_w . g_0 + c ||g_0|| ||g_w||`` is 0 at the zero row and
    positive at every other vertex, but negative on the edge ``(1, +-3)``; the dual optimum is ``g_w = (1, 0)``, so
    ``d = g_0 + c ||g_0|| (1, 0)``, not the cone projection 0 (outside the ball)."""
    jac = torch.zeros(4, 5, dtype=F64)
    jac[1, :2] = torch.tensor([1.0, 3.0])
    jac[2, :2] = torch.tensor([1.0, -3.0])
    jac[3, :2] = torch.tensor([-5.0, 0.0])
    g0 = jac.mean(0)
    expected = g0 + c * g0.norm() * torch.eye(5, dtype=F64)[0]
    d = COMBINERS["cagrad"](c=c).build(4)(jac, torch.ones(4, dtype=F64))
    assert isinstance(d, Tensor)
    assert_near((1 + c * c) * d, expected, 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cagrad_stationary_answer_in_the_ball(dtype: torch.dtype) -> None:
    """0 in the convex hull and ``f >= 0`` on it (a zero row, the others agreeing with ``g_0``): every ``d`` of the ball
    with ``J d >= 0`` is optimal; the answer is the one closest to ``g_0``, here ``g_0`` itself."""
    jac = torch.zeros(3, 6, dtype=dtype)
    jac[1, :2] = torch.tensor([1.0, 0.5])
    jac[2, :2] = torch.tensor([1.0, -0.5])
    for c in C_VALUES:
        d = COMBINERS["cagrad"](c=c).build(3)(jac, torch.ones(3, dtype=dtype))
        assert isinstance(d, Tensor)
        assert_near((1 + c * c) * d, jac.mean(0), TOL[dtype], f"c={c}")


# ----------------------------------------------------------------------------------------------------- MGDA


@pytest.mark.parametrize(("k", "dtype"), params("mgda"))
def test_mgda_kkt(k: int, dtype: torch.dtype) -> None:
    """``w`` on the simplex, ``g_i . d >= ||d||^2 - tol ||g_i|| sum_j w_j ||g_j||`` for every task."""
    tol = {F32: 2e-6, F64: 1e-10}[dtype]
    comb = COMBINERS["mgda"]().build(k)
    for i in range(SEEDS["mgda"][k]):
        seed = seed_of("mgda", k, dtype, i)
        jac = hard_jacobian(k, seed, dtype)
        j64 = jac.double()
        norms = j64.norm(dim=1)
        for how, d in calls(comb, jac):
            w = stat_weights(comb, k)
            assert float(w.min()) >= 0 and abs(float(w.sum()) - 1) <= 1e-12, f"seed {seed} {how}: {w}"
            slack = (j64 @ d - d @ d) / (norms * float(w @ norms))
            assert float(slack.min()) >= -tol, f"seed {seed} {how}: KKT violated by {float(slack.min()):.3g}"


# ----------------------------------------------------------------------------------------------------- Nash-MTL

#: the convex hull of the unit gradients at least this far from 0: a positive solution exists, with
#: ``sum beta <= sqrt(K) / distance`` (well above the float32 ridge's reach)
NASH_EXISTS = 0.05
#: relative tolerance of the Nash-MTL checks, scaled by the weights (see :func:`check_nash`)
NASH_TOL = {F32: 1e-6, F64: 1e-12}


def nash_ridge(dtype: torch.dtype) -> float:
    return max(1e-10, 10 * torch.finfo(dtype).eps)


def check_nash(jac: Tensor, d: Tensor, alpha: Tensor, exists: bool, dtype: torch.dtype, where: str) -> None:
    """The documented Nash-MTL answer (``max_norm=0``) for ``J`` (float64 values of the gradients, which were in
    ``dtype``), direction ``d`` and weights ``alpha``."""
    tol = NASH_TOL[dtype]
    k = jac.shape[0]
    norms = jac.norm(dim=1)
    live = norms > 0
    assert bool(torch.isfinite(d).all()) and bool(torch.isfinite(alpha).all()), where
    assert bool((alpha[~live] == 0).all()), f"{where}: a zero row has a weight"
    assert bool((alpha[live] > 0).all()), f"{where}: {alpha}"
    beta = alpha * norms
    noise = tol * float(beta.sum())  # rounding of d = sum_i beta_i g_i / ||g_i|| in the gradients' dtype
    proj = (jac[live] @ d) / norms[live]
    assert float(d @ d) <= k * (1 + tol) + 2 * math.sqrt(k) * noise + noise**2, f"{where}: ||d||^2 = {float(d @ d)}"
    floor = -math.sqrt(nash_ridge(dtype) * k) - noise
    assert float(proj.min()) >= floor, f"{where}: g_i . d / ||g_i|| = {float(proj.min()):.3g} < {floor:.3g}"
    if exists:
        residual = (jac @ d) * alpha - 1
        allowed = tol * (1 + beta * float(beta.sum()))
        assert bool((residual.abs() <= allowed).all()), f"{where}: (G alpha)_i alpha_i - 1 = {residual}"


@pytest.mark.parametrize(("k", "dtype"), params("nashmtl"))
def test_nashmtl_fixed_point_or_documented_answer(k: int, dtype: torch.dtype) -> None:
    comb = COMBINERS["nashmtl"](max_norm=0.0).build(k)
    exists = 0
    for i in range(SEEDS["nashmtl"][k]):
        seed = seed_of("nashmtl", k, dtype, i)
        jac = hard_jacobian(k, seed, dtype)
        j64 = jac.double()
        gram = gramian(j64)
        unit = gram / (gram.diagonal().sqrt()[:, None] * gram.diagonal().sqrt()[None, :])
        w = min_norm_weights(unit)
        has_solution = float(w @ unit @ w) >= NASH_EXISTS**2
        exists += has_solution
        for how, d in calls(comb, jac):
            check_nash(j64, d, stat_weights(comb, k), has_solution, dtype, f"seed {seed} {how}")
    assert 0 < exists < SEEDS["nashmtl"][k] or k == 2  # both kinds occur (K=2: rank 1, no solution unless same sign)


def nash_cases(dtype: torch.dtype) -> dict[str, Tensor]:
    """Jacobians without a positive Nash solution (float64 values, then cast)."""
    g = torch.Generator().manual_seed(11)
    base = torch.randn(5, 40, generator=g, dtype=F64) + 0.5 * torch.randn(1, 40, generator=g, dtype=F64)
    zero = base.clone()
    zero[2] = 0
    pm = base.clone()
    pm[1] = -3.0 * pm[0]
    rank1 = torch.tensor([1.0, -2.0, 0.5, 4.0, -1e3], dtype=F64)[:, None] * base[0]
    hull = base.clone()
    hull[3] = -(0.3 * base[0] + 0.7 * base[1]) * 1e-3
    return {k: v.to(dtype) for k, v in {"zero_row": zero, "g_minus_3g": pm, "rank1": rank1, "hull": hull}.items()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["zero_row", "g_minus_3g", "rank1", "hull"])
def test_nashmtl_without_positive_solution(dtype: torch.dtype, case: str) -> None:
    """The documented answer: zero rows weight 0 (and the others solved without them); otherwise the ridge solution,
    finite, ``||d||^2 <= K``, ``g_i . d / ||g_i|| >= -sqrt(ridge K)``, weights of a zero combination ~1/sqrt(ridge)."""
    jac = nash_cases(dtype)[case]
    comb = COMBINERS["nashmtl"](max_norm=0.0).build(5)
    for how, d in calls(comb, jac):
        alpha = stat_weights(comb, 5)
        check_nash(jac.double(), d, alpha, False, dtype, f"{case} {how}")
        beta = alpha * jac.double().norm(dim=1)
        if case == "zero_row":
            rest = COMBINERS["nashmtl"](max_norm=0.0).build(4)
            others = torch.tensor([0, 1, 3, 4])
            expected = rest(jac[others], torch.ones(4, dtype=dtype))
            assert isinstance(expected, Tensor)
            assert_near(d, expected, 1e-5 if dtype == F32 else 1e-9, how)
        else:  # the tasks of the zero combination: ridge ||beta||^2 ~ their number, <= K (float32: up to the
            # Gramian's rounding, eigenvalues of C down to -1e-8 = -0.01 ridge)
            assert 1.0 <= nash_ridge(dtype) * float(beta @ beta) <= 5.0 * (1 + (0.05 if dtype == F32 else 1e-6)), beta


# ----------------------------------------------------------------------------------------------------- finiteness


def degenerate(k: int, dtype: torch.dtype) -> dict[str, Tensor]:
    """Degenerate and hard Jacobians ``[K, 64]`` with per-task scales spread over 1e-8..1e8 and, in float32 with
    ``K <= 10``, also at uniform scales 1e-8 and 1e8 (``test_combiners.py`` has float64 at 1e-8, 1 and 1e8)."""
    g = torch.Generator().manual_seed(100 + k)
    p = 64
    base = torch.randn(k, p, generator=g, dtype=F64)
    v = torch.randn(p, generator=g, dtype=F64)
    cases = {"random": base, "rank1": torch.randn(k, 1, generator=g, dtype=F64) * v, "all_zero": torch.zeros(k, p)}
    zero = base.clone()
    zero[0] = 0
    cases["zero_row"] = zero
    one = torch.zeros(k, p, dtype=F64)
    one[-1] = v
    cases["one_nonzero"] = one
    if k >= 2:
        dup = base.clone()
        dup[-1] = dup[0]
        cases["duplicate"] = dup
        pm = base.clone()
        pm[1] = -pm[0]
        cases["g_minus_g"] = pm
        alt = base[0].repeat(k, 1)
        alt[1::2] *= -1
        cases["alternating"] = alt
    out = {}
    for name, jac in cases.items():
        spread = 10.0 ** (-8 + 16 * torch.rand(k, 1, generator=g, dtype=F64))
        scales = {"spread": spread} if dtype == F64 or k > 10 else {"spread": spread, "1e-8": 1e-8, "1e8": 1e8}
        for label, scale in scales.items():
            out[f"{name}*{label}"] = (jac.to(F64) * scale).to(dtype)
    for i in range(4):
        out[f"hard{i}"] = hard_jacobian(k, 900 + 10 * k + i, dtype, lo=-8.0, hi=8.0, p=p)
    return out


FINITE_KS = (1, 2, 3, 10, 50)
#: Jacobians per gradient-space combiner in the finiteness test (both dtypes, every K)
JACOBIANS_CHECKED["finite_per_gradient_combiner"] = sum(len(degenerate(k, dt)) for k in FINITE_KS for dt in DTYPES)


def _critic_only(name: str) -> bool:
    try:
        COMBINERS[name]().check(2, frozenset({"critic", "actor"}))
    except ValueError:
        return True
    return False


def loss_sets(name: str, k: int, dtype: torch.dtype) -> list[Tensor]:
    """Positive, spread over 1e-8..1e8, equal and large; also zero and negative, except for the critic-only
    combiners, which take logs of the losses or need them bounded below (FAMO, IMTL-L, STCH, GLS: documented to
    refuse losses outside their domain)."""
    out = [
        torch.linspace(0.5, 1.5, k, dtype=dtype),
        torch.logspace(-8, 8, k, dtype=dtype),
        torch.full((k,), 1e8, dtype=dtype),
    ]
    if not _critic_only(name):
        out += [torch.zeros(k, dtype=dtype), -torch.linspace(0.5, 1.5, k, dtype=dtype)]
    return out


GRAD_NAMES = [name for name in COMBINERS if COMBINERS[name]().build(2).requires_grads]
LOSS_NAMES = [name for name in COMBINERS if name not in GRAD_NAMES]
#: loss-space combiners see only the losses: a few Jacobians (``weights @ J``) for each set of losses
LOSS_SPACE_JACOBIANS = ("random*spread", "hard0", "hard1")


@pytest.mark.parametrize("name", GRAD_NAMES)
def test_every_gradient_combiner_finite(name: str) -> None:
    """Finite direction and stats on every degenerate and hard Jacobian, as a matrix and (float32, except the
    uniformly scaled copies) as blocks."""
    for dtype in DTYPES:
        for k in FINITE_KS:
            comb = COMBINERS[name]().build(k)
            losses = torch.linspace(0.5, 1.5, k, dtype=dtype)
            for case, jac in degenerate(k, dtype).items():
                where = f"{name} {dtype} K={k} {case}"
                outs = [comb(jac, losses)]
                if comb.accepts_blocks and dtype == F32 and not case.endswith(("*1e-8", "*1e8")):
                    outs.append(torch.cat(comb([jac[:, :20], jac[:, 20:]], losses)))
                assert all(bool(torch.isfinite(o).all()) for o in outs), where
                assert all(math.isfinite(v) for v in comb.stats.values()), f"{where}: {comb.stats}"


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_combiner_finite(name: str) -> None:
    """Finite weights, stats and ``weights @ J`` for every set of losses (``grads=None``), repeated calls included."""
    for dtype in DTYPES:
        for k in FINITE_KS:
            comb = COMBINERS[name]().build(k)
            jacs = degenerate(k, dtype)
            for j, losses in enumerate(loss_sets(name, k, dtype)):
                for case in LOSS_SPACE_JACOBIANS:
                    where = f"{name} {dtype} K={k} losses{j} {case}"
                    out = comb(None, losses)
                    assert isinstance(out, Weighting)
                    direction = out.weights.to(jacs[case]) @ jacs[case]
                    assert bool(torch.isfinite(out.weights).all() & torch.isfinite(direction).all()), where
                    assert all(math.isfinite(v) for v in comb.stats.values()), f"{where}: {comb.stats}"
                    if comb.needs_losses_after_step:
                        comb.after_step(losses)


def test_counts() -> None:
    """Hundreds of Jacobians per invariant, and per gradient-space combiner for finiteness."""
    finite = JACOBIANS_CHECKED["finite_per_gradient_combiner"]
    assert min(v for name, v in JACOBIANS_CHECKED.items() if not name.startswith("finite")) >= 200, JACOBIANS_CHECKED
    assert finite >= 150, finite
