"""Combiners: contract, properties on random and degenerate Jacobians, exact-solver checks, state, pinned values.

Math tests run in float64. The independent torchjd oracle lives in ``test_combiner_oracle.py``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import typing
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from mtrl.config import field_docs
from mtrl.mto import COMBINERS, Combiner, NonFiniteError, Weighting
from mtrl.mto.base import GramianCombiner, VectorAdam, gramian
from mtrl.mto.cagrad import cagrad_dual_weights, cagrad_sgd20_weights
from mtrl.mto.cagrad_fast import random_groups
from mtrl.mto.mgda import min_norm_weights
from mtrl.mto.nashmtl import NashMTL
from mtrl.mto.pcgrad import pcgrad_weights, random_orders

F64 = torch.float64
NAMES = list(COMBINERS)
GRAD_NAMES = [n for n in NAMES if COMBINERS[n]().build(2).requires_grads]
LOSS_NAMES = [n for n in NAMES if n not in GRAD_NAMES]


# ----------------------------------------------------------------------------------------------------- helpers


def build(name: str, tasks: int, seed: int = 0, **options: typing.Any) -> Combiner:
    return COMBINERS[name](**options).build(tasks, seed)


def run(comb: Combiner, jac: Tensor, losses: Tensor | None = None) -> Tensor:
    """The combiner's direction for the Jacobian ``jac`` (loss-space: ``weights @ jac``)."""
    if losses is None:
        losses = torch.linspace(1.0, 2.0, jac.shape[0], dtype=jac.dtype)
    out = comb(jac if comb.requires_grads else None, losses)
    if isinstance(out, Weighting):
        return out.weights.to(jac) @ jac
    return out


def normal(k: int, n: int, rank: int | None = None, seed: int = 0, shift: float = 0.3) -> Tensor:
    """``U S V^T``-style random Jacobian with a chosen rank, plus a common component (some agreement)."""
    g = torch.Generator().manual_seed(seed)
    rank = min(k, n) if rank is None else rank
    j = torch.randn(k, rank, generator=g, dtype=F64) @ torch.randn(rank, n, generator=g, dtype=F64)
    return j + shift * torch.randn(1, n, generator=g, dtype=F64) * (rank == min(k, n))


def degenerate(k: int, n: int = 12) -> dict[str, Tensor]:
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
    return float(a @ b / (a.norm() * b.norm()))


# ----------------------------------------------------------------------------------------------------- contract

ALLOWED_TYPES = (int, float, bool, str)


@pytest.mark.parametrize("name", NAMES)
def test_config_contract(name: str) -> None:
    cfg_cls = COMBINERS[name]
    assert dataclasses.is_dataclass(cfg_cls) and cfg_cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    cfg = cfg_cls()
    docs = field_docs(cfg_cls)
    hints = typing.get_type_hints(cfg_cls)
    for f in dataclasses.fields(cfg_cls):
        assert docs.get(f.name), f"{name}.{f.name} has no docstring"
        tp = hints[f.name]
        origin = typing.get_origin(tp)
        assert tp in ALLOWED_TYPES or origin in (typing.Literal, tuple), f"{name}.{f.name}: type {tp}"
    if hasattr(cfg, "validate"):
        cfg.validate()
    for k in (1, 3):
        comb = cfg.build(k, seed=3)
        assert isinstance(comb, Combiner)
        assert comb.num_tasks == k
        text = str(comb)
        assert text.startswith(name.split("_")[0]) and len(text) <= 32
        assert " " not in text and "__" not in text and "/" not in text


@pytest.mark.parametrize("name", NAMES)
def test_config_loader_round_trip(name: str) -> None:
    from mtrl.config import from_flat, to_flat

    extra = {"combine_actor": False} if name == "famo" else {}  # famo is critic-only (actor losses are unbounded)
    cfg = from_flat({"combiner": name, **extra})
    assert type(cfg.combiner) is COMBINERS[name]
    flat = to_flat(cfg)
    assert flat["combiner"] == name
    assert from_flat(flat).combiner == cfg.combiner


def test_str_names() -> None:
    assert str(build("pcgrad", 3)) == "pcgrad"
    assert str(build("cagrad", 3)) == "cagrad-c0.4"
    assert str(build("cagrad", 3, c=0.9, solver="sgd20")) == "cagrad-c0.9-sgd20"
    assert str(build("cagrad_fast", 3, c=0.5, k=8)) == "cagrad_fast-c0.5-k8"
    assert str(build("nashmtl", 3)) == "nashmtl"
    assert str(build("nashmtl", 3, update_every=5)) == "nashmtl-u5"
    assert str(build("famo", 3)) == "famo"


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("cagrad", {"c": -1.0}, "combiner.c: got -1.0, expected a number >= 0"),
        ("cagrad_fast", {"k": 0}, "combiner.k: got 0"),
        ("nashmtl", {"update_every": 0}, "combiner.update_every: got 0"),
        ("nashmtl", {"max_norm": -1.0}, "combiner.max_norm: got -1.0"),
        ("graddrop", {"leak": 1.5}, "combiner.leak: got 1.5"),
        ("famo", {"lr": 0.0}, "combiner.lr: got 0.0"),
        ("uw", {"lr": -1.0}, "combiner.lr: got -1.0"),
        ("dwa", {"window": 0}, "combiner.window: got 0"),
        ("dwa", {"temperature": 0.0}, "combiner.temperature: got 0.0"),
        ("gradnorm", {"alpha": -1.0}, "combiner.alpha: got -1.0"),
        ("fixed", {"weights": (1.0, -1.0)}, "combiner.weights: got -1.0"),
    ],
)
def test_validate_messages(name: str, options: dict, message: str) -> None:
    cfg = COMBINERS[name](**options)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg.validate()
    with pytest.raises(ValueError):
        cfg.build(3)


def test_fixed_length_checked_at_build() -> None:
    with pytest.raises(ValueError, match=r"combiner.weights: got 2 weights, expected 3 \(one per task\)"):
        COMBINERS["fixed"](weights=(0.5, 0.5)).build(3)
    comb = COMBINERS["fixed"](weights=(1.0, 2.0, 3.0)).build(3)
    out = comb(None, torch.ones(3))
    assert isinstance(out, Weighting)
    assert out.weights.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("name", [n for n in NAMES if n != "mean"])
def test_wrong_shapes_rejected(name: str) -> None:
    comb = build(name, 3)
    with pytest.raises(ValueError):
        comb(torch.randn(4, 5) if comb.requires_grads else None, torch.rand(4))
    if comb.requires_grads:
        with pytest.raises(ValueError, match="needs the per-task gradients"):
            comb(None, torch.rand(3))


@pytest.mark.parametrize(("name", "where"), [(n, "loss") for n in NAMES] + [(n, "grad") for n in GRAD_NAMES])
def test_non_finite_names_combiner_and_task(name: str, where: str) -> None:
    comb = build(name, 4)
    jac = torch.randn(4, 6, dtype=F64)
    losses = torch.rand(4, dtype=F64) + 0.5
    if where == "loss":
        losses[2] = float("nan")
    else:
        jac[2, 3] = float("inf")
    with pytest.raises(NonFiniteError, match=rf"combiner '{comb}'.*task 2"):
        comb(jac if comb.requires_grads else None, losses)


def test_check_finite_fast_path_not_fooled_by_overflowing_sum() -> None:
    comb = build("pcgrad", 2)
    jac = torch.full((2, 4), 3e38, dtype=torch.float32)  # finite entries, infinite row sums
    comb.check_finite(jac, torch.ones(2))  # no error


# ----------------------------------------------------------------------------------------------------- mean / sum


def test_mean_and_sum_are_gradients_of_mean_and_sum_loss() -> None:
    g = torch.Generator().manual_seed(0)
    k, n = 5, 7
    a = torch.randn(k, 3, n, generator=g, dtype=F64)
    b = torch.randn(k, 3, generator=g, dtype=F64)
    x = torch.randn(n, dtype=F64, requires_grad=True)
    losses = ((a @ x - b) ** 2).mean(1)  # [K]
    jac = torch.stack([torch.autograd.grad(losses[i], x, retain_graph=True)[0] for i in range(k)])
    (grad_mean,) = torch.autograd.grad(losses.mean(), x, retain_graph=True)
    (grad_sum,) = torch.autograd.grad(losses.sum(), x)
    torch.testing.assert_close(run(build("mean", k), jac, losses.detach()), grad_mean)
    torch.testing.assert_close(run(build("sum", k), jac, losses.detach()), grad_sum)
    torch.testing.assert_close(run(build("fixed", k), jac, losses.detach()), grad_mean)


# ----------------------------------------------------------------------------------------------------- all combiners

K_VALUES = (1, 2, 3, 10, 50)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", K_VALUES)
def test_finite_on_degenerate_inputs(name: str, k: int) -> None:
    for case, jac in degenerate(k).items():
        for scale in (1e-8, 1.0, 1e8):
            comb = build(name, k)
            losses = torch.linspace(0.5, 1.5, k, dtype=F64) * (scale if scale > 1 else 1.0)
            d = run(comb, jac * scale, losses)
            assert d.shape == (jac.shape[1],)
            assert bool(torch.isfinite(d).all()), (name, k, case, scale)
            stats = comb.stats
            assert all(math.isfinite(v) for v in stats.values()), (name, k, case, scale, stats)


#: the direction at K=1 as a multiple of the single gradient g (documented scales)
K1_SCALE = {
    "uw": lambda g: 0.5,
    "cagrad": lambda g: 1.4 / 1.16,
    "cagrad_fast": lambda g: 1.4 / 1.16,
    "nashmtl": lambda g: 1.0 / float(g.norm()),
}


@pytest.mark.parametrize("name", NAMES)
def test_single_task_returns_the_gradient(name: str) -> None:
    g = torch.tensor([[3.0, -4.0, 1.0, 0.5]], dtype=F64)
    d = run(build(name, 1), g, torch.tensor([2.0], dtype=F64))
    expected = K1_SCALE.get(name, lambda g: 1.0)(g) * g[0]
    torch.testing.assert_close(d, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", GRAD_NAMES)
def test_stats_keys_and_values(name: str) -> None:
    jac = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=F64)
    comb = build(name, 3)
    d = run(comb, jac)
    assert isinstance(comb.stats_tensors["cos_sim_mean"], Tensor)
    stats = comb.stats
    assert stats["num_conflicts"] == 1.0
    assert stats["cos_sim_mean"] == pytest.approx(-1 / math.sqrt(2) / 3)
    assert stats["grad_norm_before"] == pytest.approx(float(jac.mean(0).norm()))
    assert stats["grad_norm_after"] == pytest.approx(float(d.norm()))
    weights = [stats[f"weight/{k}"] for k in range(3) if f"weight/{k}" in stats]
    if name != "graddrop":
        torch.testing.assert_close(torch.tensor(weights, dtype=F64) @ jac, d)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_space_stats_are_weights(name: str) -> None:
    comb = build(name, 3)
    out = comb(None, torch.tensor([1.0, 2.0, 3.0]))
    assert isinstance(out, Weighting)
    if name == "mean":
        return
    assert [comb.stats[f"weight/{k}"] for k in range(3)] == pytest.approx(out.weights.tolist())


def test_stats_conversion_is_lazy() -> None:
    comb = build("pcgrad", 3)
    run(comb, torch.randn(3, 5, dtype=F64))
    assert comb._stats_floats is None  # nothing converted until read
    first = comb.stats
    assert comb.stats is first


@pytest.mark.parametrize("name", ["pcgrad", "cagrad", "mgda", "imtlg", "alignedmtl", "cagrad_fast"])
def test_positively_homogeneous(name: str) -> None:
    jac = normal(4, 9, seed=1)
    for s in (1e-8, 3.0, 1e8):
        torch.testing.assert_close(run(build(name, 4), s * jac), s * run(build(name, 4), jac), rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", ["mgda", "cagrad", "imtlg", "alignedmtl", "nashmtl"])
def test_permutation_invariant(name: str) -> None:
    jac = normal(6, 11, seed=2)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run(build(name, 6), jac[perm]), run(build(name, 6), jac), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in GRAD_NAMES if n != "graddrop"])  # graddrop: U depends on dtype
def test_float32_close_to_float64(name: str) -> None:
    jac = normal(5, 40, seed=3)
    d64 = run(build(name, 5), jac)
    d32 = run(build(name, 5), jac.float()).double()
    tol = 1e-3 if name == "imtlg" else 1e-4  # IMTL-G inverts the Gramian
    assert float((d32 - d64).norm() / d64.norm()) < tol


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(GRAD_NAMES),
    st.integers(1, 8),
    st.integers(1, 8),
    st.integers(0, 10_000),
    st.floats(-8, 8),
)
def test_gradient_space_hypothesis(name: str, k: int, rank: int, seed: int, log_scale: float) -> None:
    """Finite output in the row span (weighted methods: ``d = sum_k weight_k g_k``) on random low-rank J."""
    jac = normal(k, 10, rank=min(rank, k), seed=seed) * 10.0**log_scale
    comb = build(name, k, seed=seed)
    d = run(comb, jac)
    assert bool(torch.isfinite(d).all())
    if name != "graddrop":
        weights = torch.tensor([comb.stats[f"weight/{i}"] for i in range(k)], dtype=F64)
        torch.testing.assert_close(weights @ jac, d, rtol=1e-7, atol=1e-12 * 10.0**log_scale)


# ----------------------------------------------------------------------------------------------------- PCGrad


def pcgrad_reference(jac: Tensor, orders: Tensor) -> Tensor:
    """Sequential PCGrad on vectors (paper Alg. 1 with given orders), mean reduction."""
    out = []
    for i in range(jac.shape[0]):
        gi = jac[i].clone()
        for j in orders[i].tolist():
            dot = gi @ jac[j]
            if dot < 0:
                gi = gi - dot / (jac[j] @ jac[j]) * jac[j]
        out.append(gi)
    return torch.stack(out).mean(0)


def test_pcgrad_matches_sequential_reference() -> None:
    for seed in range(5):
        jac = normal(6, 20, seed=seed, shift=0.0)
        orders = random_orders(6, torch.Generator().manual_seed(seed))
        coef = pcgrad_weights(jac @ jac.T, orders)
        torch.testing.assert_close(coef.mean(0) @ jac, pcgrad_reference(jac, orders), rtol=1e-10, atol=1e-12)


def test_pcgrad_random_orders_are_permutations_of_the_others() -> None:
    orders = random_orders(7, torch.Generator().manual_seed(0))
    for i, row in enumerate(orders.tolist()):
        assert sorted(row) == [j for j in range(7) if j != i]


def test_pcgrad_equals_mean_without_conflicts() -> None:
    jac = torch.rand(5, 8, dtype=F64)  # non-negative rows: no pair conflicts
    torch.testing.assert_close(run(build("pcgrad", 5), jac), jac.mean(0), rtol=0, atol=1e-15)


def test_pcgrad_two_tasks_closed_form() -> None:
    g1 = torch.tensor([-4.0, 1.0, 1.0], dtype=F64)
    g2 = torch.tensor([6.0, 1.0, 1.0], dtype=F64)
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g1 @ g2) / (g1 @ g1) * g1
    torch.testing.assert_close(run(build("pcgrad", 2), torch.stack([g1, g2])), (p1 + p2) / 2, rtol=1e-12, atol=0)


def test_pcgrad_seeded_reproducible() -> None:
    jac = normal(6, 10, seed=4, shift=0.0)
    a = [run(build("pcgrad", 6, seed=1), jac) for _ in range(2)]
    b = build("pcgrad", 6, seed=2)
    outs_b = [run(b, jac) for _ in range(5)]
    torch.testing.assert_close(a[0], a[1])
    assert any(not torch.allclose(o, a[0]) for o in outs_b)


# ----------------------------------------------------------------------------------------------------- CAGrad


def slsqp_cagrad_dual(gram: np.ndarray, c: float) -> float:
    minimize = pytest.importorskip("scipy.optimize", reason="scipy (test extra) is not installed").minimize

    k = gram.shape[0]
    b = gram.mean(1)
    phi = c * math.sqrt(max(gram.mean(), 0.0))
    best = math.inf
    for x0 in [np.ones(k) / k, *np.eye(k)[:2]]:
        res = minimize(
            lambda w: w @ b + phi * math.sqrt(max(w @ gram @ w, 0.0)),
            x0,
            bounds=[(0, 1)] * k,
            constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 300},
        )
        best = min(best, float(res.fun))
    return best


def test_cagrad_c0_is_mean() -> None:
    for case, jac in degenerate(5).items():
        torch.testing.assert_close(run(build("cagrad", 5, c=0.0), jac), jac.mean(0), rtol=1e-12, atol=1e-15, msg=case)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("c", [0.2, 1.0, 3.0])
def test_cagrad_exact_is_primal_optimal(k: int, c: float) -> None:
    """Strong duality: d' = (1+c^2) d is in the ball and reaches the (SLSQP) dual value; holds on degenerate J."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case, jac in {**degenerate(k, 8), "normal": normal(k, 8, seed=k)}.items():
            gram = jac @ jac.T
            scale = float(gram.diagonal().max())
            if scale == 0:
                continue
            d = run(build("cagrad", k, c=c), jac) * (1 + c * c)
            g0 = jac.mean(0)
            assert float((d - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-9) + 1e-12, case
            primal = float((jac @ d).min())
            assert (slsqp_cagrad_dual(gram.numpy(), c) - primal) / scale < 1e-7, case


@pytest.mark.parametrize("c", [1.0, 2.0])
def test_cagrad_large_c_is_non_conflicting(c: float) -> None:
    for seed in range(4):
        jac = normal(6, 10, seed=seed, shift=0.0)
        d = run(build("cagrad", 6, c=c), jac)
        assert float((jac @ d).min()) >= -1e-10 * float((jac @ jac.T).diagonal().max())


def mtrl_cagrad_transcription(grads: Tensor, cagrad_c: float) -> Tensor:
    """Cranial-XIX/CAGrad mtrl/mtrl_files/cagrad.py::cagrad, line by line (float64, autograd + torch.optim.SGD)."""
    num_tasks = grads.shape[0]
    gg_mat = grads.mm(grads.t()).cpu()
    scale = (torch.diag(gg_mat) + 1e-4).sqrt().mean()
    gg_mat = gg_mat / scale.pow(2)
    gg_vec = gg_mat.mean(1, keepdims=True)
    gg = gg_vec.mean(0, keepdims=True)
    w = torch.zeros(num_tasks, 1, requires_grad=True, dtype=F64)
    w_opt = torch.optim.SGD([w], lr=50 if num_tasks == 50 else 25, momentum=0.5)
    c = (gg + 1e-4).sqrt() * cagrad_c
    w_best, obj_best = None, np.inf
    for i in range(21):
        w_opt.zero_grad()
        ww = torch.softmax(w, 0)
        obj = ww.t().mm(gg_vec) + c * (ww.t().mm(gg_mat).mm(ww) + 1e-4).sqrt()
        if obj.item() < obj_best:
            obj_best = obj.item()
            w_best = w.clone()
        if i < 20:
            obj.backward()
            w_opt.step()
    ww = torch.softmax(w_best, 0)
    gw_norm = (ww.t().mm(gg_mat).mm(ww) + 1e-4).sqrt()
    lmbda = c.view(-1) / (gw_norm + 1e-4)
    return ((1 / num_tasks + ww * lmbda).view(-1, 1) * grads).sum(0) / (1 + cagrad_c**2)


@pytest.mark.parametrize("k", [3, 10, 50])
def test_cagrad_sgd20_is_the_mtrl_solver(k: int) -> None:
    for seed in range(2):
        jac = normal(k, 60, seed=seed)
        expected = mtrl_cagrad_transcription(jac, 0.5).detach()
        torch.testing.assert_close(run(build("cagrad", k, c=0.5, solver="sgd20"), jac), expected, rtol=1e-9, atol=0)


def test_cagrad_sgd20_close_to_exact_at_k10() -> None:
    jac = normal(10, 200, seed=5)
    exact = run(build("cagrad", 10, c=0.5), jac)
    sgd = run(build("cagrad", 10, c=0.5, solver="sgd20"), jac)
    assert cos(exact, sgd) > 0.99


def test_cagrad_fast_groups() -> None:
    gen = torch.Generator().manual_seed(0)
    avg = random_groups(10, 4, "even", gen)
    assert sorted((avg > 0).sum(1).tolist()) == [2, 2, 3, 3]
    torch.testing.assert_close(avg.sum(1), torch.ones(4, dtype=F64))
    assert ((avg > 0).sum(0) == 1).all()  # a partition
    single = random_groups(10, 4, "singletons", gen)
    assert sorted((single > 0).sum(1).tolist()) == [1, 1, 1, 7]
    assert random_groups(3, 8, "even", gen).shape == (3, 3)


def test_cagrad_fast_c0_is_mean_and_k_ge_K_is_cagrad() -> None:
    jac = normal(7, 15, seed=6)
    torch.testing.assert_close(run(build("cagrad_fast", 7, c=0.0, k=3), jac), jac.mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(run(build("cagrad_fast", 7, c=0.4, k=7), jac), run(build("cagrad", 7, c=0.4), jac))


def test_cagrad_fast_is_cagrad_on_group_means() -> None:
    jac = normal(8, 15, seed=8)
    comb = build("cagrad_fast", 8, c=0.6, k=3, seed=5)
    avg = random_groups(8, 3, "even", torch.Generator().manual_seed(5))
    d = run(comb, jac)
    group = avg @ jac
    base = (avg > 0).sum(1).to(F64) / 8
    alpha = cagrad_dual_weights(group @ group.T, 0.6, base) / 1.36
    torch.testing.assert_close(d, alpha @ group)


# ----------------------------------------------------------------------------------------------------- MGDA


def assert_min_norm_kkt(jac: Tensor, weights: Tensor, tol: float = 1e-10) -> None:
    d = weights @ jac
    scale = float((jac @ jac.T).diagonal().max())
    assert float(weights.min()) >= 0 and abs(float(weights.sum()) - 1) < 1e-12
    proj = jac @ d
    assert float(proj.min() - d @ d) >= -tol * scale  # g_i . d >= ||d||^2
    support = weights > 1e-9
    assert float((proj[support] - d @ d).abs().max()) <= 1e-8 * scale  # equality on the support


@pytest.mark.parametrize("k", [2, 3, 10, 50])
def test_mgda_kkt_on_random_and_degenerate(k: int) -> None:
    cases = {**degenerate(k), "normal": normal(k, 80, seed=k), "lowrank": normal(k, 80, rank=2, seed=k)}
    for case, jac in cases.items():
        comb = build("mgda", k)
        d = run(comb, jac)
        weights = torch.tensor([comb.stats[f"weight/{i}"] for i in range(k)], dtype=F64)
        torch.testing.assert_close(weights @ jac, d, msg=case)
        if float(jac.abs().max()) > 0:
            assert_min_norm_kkt(jac, weights)


def test_mgda_matches_slsqp_min_norm() -> None:
    minimize = pytest.importorskip("scipy.optimize", reason="scipy (test extra) is not installed").minimize

    for k, seed in [(3, 0), (5, 1), (8, 2)]:
        jac = normal(k, 20, seed=seed, shift=0.0)
        gram = (jac @ jac.T).numpy()
        res = minimize(
            lambda w, gram=gram: w @ gram @ w,
            np.ones(k) / k,
            jac=lambda w, gram=gram: 2 * gram @ w,
            bounds=[(0, 1)] * k,
            constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
            method="SLSQP",
            options={"ftol": 1e-16, "maxiter": 1000},
        )
        ours = float(run(build("mgda", k), jac).norm() ** 2)
        assert ours <= res.fun * (1 + 1e-9) + 1e-15
        assert ours == pytest.approx(res.fun, rel=1e-6)


def test_mgda_zero_on_strongly_stationary() -> None:
    g = torch.tensor([[1.0, 2.0, -1.0], [-1.0, -2.0, 1.0], [0.5, 0.0, 3.0]], dtype=F64)
    assert float(run(build("mgda", 3), g).norm()) < 1e-14


def test_mgda_l2_normalization() -> None:
    jac = normal(4, 10, seed=9, shift=0.0) * torch.tensor([[1.0], [10.0], [0.1], [3.0]], dtype=F64)
    unit = jac / jac.norm(dim=1, keepdim=True)
    weights = min_norm_weights(unit @ unit.T)
    torch.testing.assert_close(run(build("mgda", 4, normalization="l2"), jac), weights @ jac)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 12), st.integers(1, 12), st.integers(0, 10_000), st.floats(-8, 8))
def test_mgda_kkt_hypothesis(k: int, rank: int, seed: int, log_scale: float) -> None:
    jac = normal(k, 15, rank=min(rank, k), seed=seed) * 10.0**log_scale
    weights = min_norm_weights(gramian(jac))
    assert_min_norm_kkt(jac, weights)


# ----------------------------------------------------------------------------------------------------- IMTL-G


def test_imtlg_equal_projections_and_closed_form() -> None:
    for k, seed in [(2, 0), (3, 1), (6, 2)]:
        jac = normal(k, 12, seed=seed)
        comb = build("imtlg", k)
        d = run(comb, jac)
        unit = jac / jac.norm(dim=1, keepdim=True)
        proj = unit @ d
        torch.testing.assert_close(proj, proj[0].expand(k), rtol=1e-10, atol=0)
        weights = torch.tensor([comb.stats[f"weight/{i}"] for i in range(k)], dtype=F64)
        assert float(weights.sum()) == pytest.approx(1.0)
        # paper closed form: alpha_{2:K} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum
        dmat = jac[0] - jac[1:]
        umat = unit[0] - unit[1:]
        rest = jac[0] @ umat.T @ torch.linalg.inv(dmat @ umat.T)
        torch.testing.assert_close(weights, torch.cat([(1 - rest.sum()).reshape(1), rest]), rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------------------------------------------- Aligned-MTL


def test_alignedmtl_aligned_rows_orthogonal_equal_norm() -> None:
    from mtrl.mto.alignedmtl import aligned_weights

    for k, n in [(3, 10), (6, 20)]:
        jac = normal(k, n, seed=k)
        gram = jac @ jac.T
        lam, vec = torch.linalg.eigh(gram)
        balance = lam.min().sqrt() * (vec * lam.rsqrt()) @ vec.T
        aligned = balance @ jac
        torch.testing.assert_close(aligned @ aligned.T, lam.min() * torch.eye(k, dtype=F64), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(
            aligned_weights(gram, "min", torch.finfo(F64).eps), balance @ torch.full((k,), 1 / k, dtype=F64)
        )
        torch.testing.assert_close(run(build("alignedmtl", k), jac), aligned.mean(0))


def test_alignedmtl_orthonormal_rows_give_mean() -> None:
    jac = torch.eye(4, 6, dtype=F64) * 2.5
    torch.testing.assert_close(run(build("alignedmtl", 4), jac), jac.mean(0))


# ----------------------------------------------------------------------------------------------------- Nash-MTL


@pytest.mark.parametrize("k", [2, 3, 10, 50])
def test_nashmtl_fixed_point(k: int) -> None:
    jac = normal(k, 3 * k, seed=k)
    comb = build("nashmtl", k, max_norm=0.0)
    d = run(comb, jac)
    alpha = torch.tensor([comb.stats[f"weight/{i}"] for i in range(k)], dtype=F64)
    gram = jac @ jac.T
    assert float((gram @ alpha - 1 / alpha).norm() / (1 / alpha).norm()) < 1e-8
    assert float(d.norm()) == pytest.approx(math.sqrt(k), rel=1e-8)


def test_nashmtl_matches_log_barrier_reference() -> None:
    minimize = pytest.importorskip("scipy.optimize", reason="scipy (test extra) is not installed").minimize

    jac = normal(5, 12, seed=11)
    gram = (jac @ jac.T).numpy()
    res = minimize(
        lambda a: 0.5 * a @ gram @ a - np.log(a).sum(),
        np.ones(5) * 0.1,
        jac=lambda a: gram @ a - 1 / a,
        bounds=[(1e-9, None)] * 5,
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )
    alpha = NashMTL(5).solve(torch.from_numpy(gram))
    np.testing.assert_allclose(alpha.numpy(), res.x, rtol=1e-5)


def test_nashmtl_per_task_scale_invariant() -> None:
    jac = normal(6, 15, seed=12)
    s = torch.tensor([[1e-6], [3.0], [1e4], [0.5], [1.0], [70.0]], dtype=F64)
    torch.testing.assert_close(run(build("nashmtl", 6), s * jac), run(build("nashmtl", 6), jac), rtol=1e-9, atol=0)


def test_nashmtl_max_norm_and_update_every() -> None:
    j1, j2 = normal(4, 9, seed=13), normal(4, 9, seed=14)
    clipped = build("nashmtl", 4, max_norm=1.0)
    assert float(run(clipped, j1).norm()) == pytest.approx(1.0)
    comb = build("nashmtl", 4, update_every=3, max_norm=0.0)
    run(comb, j1)
    first = comb.alpha.clone()
    run(comb, j2)
    torch.testing.assert_close(comb.alpha, first)  # reused
    run(comb, j2)
    run(comb, j2)  # 4th call: recomputed for j2
    torch.testing.assert_close(comb.alpha, NashMTL(4, max_norm=0.0).solve(j2 @ j2.T))


def test_nashmtl_non_conflicting() -> None:
    for seed in range(4):
        jac = normal(5, 8, seed=seed, shift=0.0)
        assert float((jac @ run(build("nashmtl", 5), jac)).min()) > 0


# ----------------------------------------------------------------------------------------------------- GradDrop


def test_graddrop_same_sign_columns_and_leak_one_give_mean() -> None:
    jac = torch.rand(4, 9, dtype=F64) * torch.tensor([1, -1, 1, 1, -1, 1, 1, 1, -1], dtype=F64)
    torch.testing.assert_close(run(build("graddrop", 4), jac), jac.mean(0))
    mixed = torch.randn(4, 9, dtype=F64)
    torch.testing.assert_close(run(build("graddrop", 4, leak=1.0), mixed), mixed.mean(0))


def test_graddrop_matches_masked_formula_and_is_seeded() -> None:
    jac = torch.randn(5, 50, dtype=F64)
    d = run(build("graddrop", 5, seed=3), jac)
    u = torch.rand(50, generator=torch.Generator().manual_seed(3), dtype=F64)
    purity = 0.5 * (1 + jac.sum(0) / jac.abs().sum(0))
    mask = ((purity > u) & (jac > 0)) | ((purity < u) & (jac < 0))
    torch.testing.assert_close(d, (mask * jac).sum(0) / 5)
    torch.testing.assert_close(run(build("graddrop", 5, seed=3), jac), d)
    assert not torch.allclose(run(build("graddrop", 5, seed=4), jac), d)


# ----------------------------------------------------------------------------------------------------- loss space


def test_rlw_weights() -> None:
    comb = build("rlw", 6, seed=1)
    draws = torch.stack([comb(None, torch.ones(6)).weights for _ in range(400)])
    torch.testing.assert_close(draws.sum(1), torch.ones(400))
    assert float(draws.min()) > 0
    assert draws.mean(0).tolist() == pytest.approx([1 / 6] * 6, abs=0.02)
    again = build("rlw", 6, seed=1)
    torch.testing.assert_close(again(None, torch.ones(6)).weights, draws[0])


def test_uw_weights_and_update() -> None:
    comb = build("uw", 2, lr=0.1)
    out = comb(None, torch.tensor([4.0, 0.25], dtype=F64))
    assert out.weights.tolist() == [0.5, 0.5]
    # d/ds = 0.5 (1 - e^{-s} L): negative for L > 1 (s grows, weight shrinks), positive for L < 1
    assert float(comb.log_var[0]) == pytest.approx(0.1) and float(comb.log_var[1]) == pytest.approx(-0.1)
    out = comb(None, torch.tensor([4.0, 0.25], dtype=F64))
    assert out.weights[0] < 0.5 < out.weights[1]


def test_dwa_windows() -> None:
    comb = build("dwa", 3, window=2, temperature=2.0)
    seq = torch.tensor([[1.0, 1, 1], [2, 2, 2], [1, 2, 4], [1, 2, 4], [5, 5, 5]], dtype=F64)
    weights = [comb(None, row).weights for row in seq]
    for w in weights[:3]:
        torch.testing.assert_close(w, torch.full((3,), 1 / 3, dtype=F64))
    rate = seq[2:4].mean(0) / seq[0:2].mean(0)
    torch.testing.assert_close(weights[3], torch.softmax(rate / 2, 0))
    rate = seq[3:5].mean(0) / seq[1:3].mean(0)
    torch.testing.assert_close(weights[4], torch.softmax(rate / 2, 0))


def test_famo_weights_and_update_direction() -> None:
    comb = build("famo", 3)
    losses = torch.tensor([1.0, 2.0, 4.0], dtype=F64)
    w = comb(None, losses).weights
    torch.testing.assert_close(w, (1 / losses) / (1 / losses).sum())  # z uniform: inverse-loss weighting
    comb.after_step(torch.tensor([0.5, 2.0, 4.0], dtype=F64))  # task 0 improved, the others did not
    z = torch.softmax(comb.logits, 0)
    assert z[0] < 1 / 3 < z[1]
    with pytest.raises(ValueError, match="famo.*task 1 has loss"):
        comb(None, torch.tensor([1.0, -0.5, 2.0], dtype=F64))
    shifted = build("famo", 3, min_loss=-1.0)
    assert torch.isfinite(shifted(None, torch.tensor([1.0, -0.5, 2.0], dtype=F64)).weights).all()
    with pytest.raises(RuntimeError, match="before forward"):
        build("famo", 3).after_step(losses)


def test_gradnorm_initial_loss_and_renormalization() -> None:
    comb = build("gradnorm", 3, lr=0.1, alpha=1.5)
    jac = torch.diag(torch.tensor([1.0, 1.0, 1.0], dtype=F64))
    d = run(comb, jac, torch.tensor([1.0, 1.0, 1.0], dtype=F64))
    torch.testing.assert_close(d, jac.mean(0))  # w = 1 at the first call: mean
    torch.testing.assert_close(comb.initial_losses, torch.ones(3, dtype=F64))
    for _ in range(5):  # task 2 trains slowest (its ratio L/L0 stays 1)
        run(comb, jac, torch.tensor([0.5, 0.5, 1.0], dtype=F64))
        assert float(comb.task_weights.sum()) == pytest.approx(3.0)
    torch.testing.assert_close(comb.initial_losses, torch.ones(3, dtype=F64))  # kept, not overwritten
    assert comb.task_weights[2] > 1.0 > comb.task_weights[0]


def test_vector_adam_matches_torch_adam() -> None:
    p = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    ref = p.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.05, weight_decay=0.01)
    adam = VectorAdam(3, lr=0.05, weight_decay=0.01)
    for step in range(1, 8):
        g = torch.tensor([math.sin(step), math.cos(step), 0.1 * step], dtype=F64)
        adam.step(p, g)
        ref.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p, ref.detach(), rtol=1e-14, atol=1e-15)


# ----------------------------------------------------------------------------------------------------- state


def drive(comb: Combiner, calls: int, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    outs = []
    k = comb.num_tasks
    for _ in range(calls):
        jac = torch.randn(k, 8, generator=g, dtype=F64)
        losses = torch.rand(k, generator=g, dtype=F64) + 0.5
        outs.append(run(comb, jac, losses))
        if comb.needs_losses_after_step:
            comb.after_step(losses * (0.8 + 0.3 * torch.rand(k, generator=g, dtype=F64)))
    return outs


STATEFUL_OR_RANDOM = [
    "uw",
    "dwa",
    "famo",
    "gradnorm",
    "nashmtl",
    "mgda",
    "cagrad",
    "pcgrad",
    "rlw",
    "graddrop",
    "cagrad_fast",
]


@pytest.mark.parametrize("name", STATEFUL_OR_RANDOM)
def test_state_dict_round_trip(name: str) -> None:
    options = {"dwa": {"window": 2}, "nashmtl": {"update_every": 2}}.get(name, {})
    comb = build(name, 4, seed=5, **options)
    drive(comb, 5, seed=0)
    buffer = io.BytesIO()
    torch.save(comb.state_dict(), buffer)
    expected = drive(comb, 4, seed=1)
    restored = build(name, 4, seed=99, **options)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    for a, b in zip(drive(restored, 4, seed=1), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_seeded_reproducibility(name: str) -> None:
    a = drive(build(name, 4, seed=3), 3, seed=0)
    b = drive(build(name, 4, seed=3), 3, seed=0)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_gramian_combiners_share_the_base() -> None:
    for name in ["pcgrad", "cagrad", "cagrad_fast", "mgda", "imtlg", "nashmtl", "alignedmtl"]:
        assert isinstance(build(name, 2), GramianCombiner)


def test_cagrad_sgd20_weights_direct() -> None:
    gram = torch.eye(3, dtype=F64)
    alpha = cagrad_sgd20_weights(gram, 0.0)
    torch.testing.assert_close(alpha, torch.full((3,), 1 / 3, dtype=F64))


# ----------------------------------------------------------------------------------------------------- pinned values

#: torchjd's regression matrix and a 3 x 4 one
J_A = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
J_B = [[1.0, -2.0, 0.5, 3.0], [-1.5, 1.0, 2.0, -0.5], [0.25, 0.5, -1.0, 1.0]]
L_A = [[1.0, 2.0], [0.8, 1.9], [0.7, 1.7]]
L_B = [[1.0, 2.0, 0.5], [0.9, 1.5, 0.45], [0.85, 1.4, 0.5]]

#: three consecutive calls (default config, seed 0) on the same J with the losses above; FAMO gets
#: ``after_step(0.95 * losses)`` after each call. Computed once from this implementation after the property and
#: oracle tests passed; a change here means the math changed.
PINNED: dict[str, tuple[list[list[float]], list[list[float]]]] = {
    "mean": (
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        [
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
        ],
    ),
    "sum": (
        [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]],
        [[-0.25, -0.5, 1.5, 3.5], [-0.25, -0.5, 1.5, 3.5], [-0.25, -0.5, 1.5, 3.5]],
    ),
    "fixed": (
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        [
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
        ],
    ),
    "rlw": (
        [
            [-2.6228802853750466, 1.0, 1.0],
            [5.397561910517844, 0.9999999999999999, 0.9999999999999999],
            [0.2212086545897063, 1.0000000000000002, 1.0000000000000002],
        ],
        [
            [0.6474136712227216, -1.5441392383159194, 0.6716289998006629, 2.4869295717156983],
            [0.5616401516296998, -1.3058722997825671, 0.5581490526237479, 2.286489282241318],
            [-0.43044863752261486, -0.1020302359464308, 1.1371496649501058, 0.8896470142963955],
        ],
    ),
    "uw": (
        [
            [1.0, 1.0, 1.0],
            [0.9701495018415343, 0.995024916973589, 0.995024916973589],
            [0.9258130649055563, 0.9938597799514318, 0.9938597799514318],
        ],
        [
            [-0.125, -0.25, 0.75, 1.75],
            [-0.11628110462536506, -0.252462541356374, 0.7350247506071039, 1.7575126248532795],
            [-0.10441916357139633, -0.2619617009390616, 0.7226673085570153, 1.7760842310209939],
        ],
    ),
    "dwa": (
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        [
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
        ],
    ),
    "famo": (
        [[-0.6666666555555558, 1.0, 1.0], [-1.0377183650133204, 1.0, 1.0], [-1.0127992619574782, 1.0, 1.0]],
        [
            [0.21428571285714287, -0.14285714571428565, -0.14285713642857156, 1.357142857857143],
            [0.16674673450101649, -0.11100407830411035, -0.08362891947521195, 1.3055470514625145],
            [0.15330329864136558, -0.17500334392282813, 0.022097271958130382, 1.334304253270118],
        ],
    ),
    "gradnorm": (
        [[1.0, 1.0, 1.0], [0.9950000000099468, 1.0, 1.0], [0.990000000019891, 0.9999999999999999, 0.9999999999999999]],
        [
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08311103701383632, -0.16622207402633554, 0.4989996665606339, 1.1665555185061243],
            [-0.0828886665708583, -0.16577733313904203, 0.4979989995656027, 1.1664443332838412],
        ],
    ),
    "pcgrad": (
        [
            [0.2923976608187129, 1.9005847953216375, 1.9005847953216375],
            [0.2923976608187129, 1.9005847953216375, 1.9005847953216375],
            [0.2923976608187129, 1.9005847953216375, 1.9005847953216375],
        ],
        [
            [-0.3468824087245138, 0.06529951003635209, 0.8419155998103366, 1.5772364469732891],
            [-0.3468824087245138, 0.06529951003635209, 0.8419155998103366, 1.5772364469732891],
            [-0.3712225383278013, 0.18478741899794532, 0.7500869290342972, 1.521917970602181],
        ],
    ),
    "cagrad": (
        [
            [0.29896787522225843, 1.002844238090987, 1.002844238090987],
            [0.29896787522225843, 1.002844238090987, 1.002844238090987],
            [0.29896787522225843, 1.002844238090987, 1.002844238090987],
        ],
        [
            [-0.24515996927461287, 0.1865301949836662, 0.44746790448509977, 1.2431325047851365],
            [-0.24515996927461287, 0.1865301949836662, 0.44746790448509977, 1.2431325047851365],
            [-0.24515996927461287, 0.1865301949836662, 0.44746790448509977, 1.2431325047851365],
        ],
    ),
    "cagrad_fast": (
        [
            [0.29896787522225843, 1.002844238090987, 1.002844238090987],
            [0.29896787522225843, 1.002844238090987, 1.002844238090987],
            [0.29896787522225843, 1.002844238090987, 1.002844238090987],
        ],
        [
            [-0.24515996927461287, 0.1865301949836662, 0.44746790448509977, 1.2431325047851365],
            [-0.24515996927461287, 0.1865301949836662, 0.44746790448509977, 1.2431325047851365],
            [-0.24515996927461287, 0.1865301949836662, 0.44746790448509977, 1.2431325047851365],
        ],
    ),
    "mgda": (
        [[4.440892098500626e-16, 1.0, 1.0], [4.440892098500626e-16, 1.0, 1.0], [4.440892098500626e-16, 1.0, 1.0]],
        [
            [-0.2699553792761527, 0.48934060485870096, 0.08539910758552316, 0.6488596926127913],
            [-0.2699553792761527, 0.48934060485870096, 0.08539910758552316, 0.6488596926127913],
            [-0.2699553792761527, 0.48934060485870096, 0.08539910758552316, 0.6488596926127913],
        ],
    ),
    "imtlg": (
        [[0.0766968306220206, 1.0, 1.0], [0.0766968306220206, 1.0, 1.0], [0.0766968306220206, 1.0, 1.0]],
        [
            [-0.28210889531363215, 0.3456621830228586, 0.28557381102525736, 0.7258132133020556],
            [-0.28210889531363215, 0.3456621830228586, 0.28557381102525736, 0.7258132133020556],
            [-0.28210889531363215, 0.3456621830228586, 0.28557381102525736, 0.7258132133020556],
        ],
    ),
    "graddrop": (
        [[-2.0, 1.0, 1.0], [-2.0, 1.0, 1.0], [3.0, 1.0, 1.0]],
        [
            [-0.5, -0.6666666666666666, 0.8333333333333334, -0.16666666666666666],
            [-0.5, -0.6666666666666666, 0.8333333333333334, 1.3333333333333333],
            [-0.5, 0.5, 0.8333333333333334, 1.3333333333333333],
        ],
    ),
    "nashmtl": (
        [
            [0.05415326964997469, 0.7060691975246538, 0.7060691975246538],
            [0.05415326964997469, 0.7060691975246538, 0.7060691975246538],
            [0.05415326964997469, 0.7060691975246538, 0.7060691975246538],
        ],
        [
            [-0.26022584205535415, 0.29268551404883003, 0.31524069778353914, 0.8644310287428959],
            [-0.26022584205535415, 0.29268551404883003, 0.31524069778353914, 0.8644310287428959],
            [-0.26022584205535415, 0.29268551404883003, 0.31524069778353914, 0.8644310287428959],
        ],
    ),
    "alignedmtl": (
        [
            [0.21327874596866891, 0.9673329837557125, 0.9673329837557125],
            [0.21327874596866891, 0.9673329837557125, 0.9673329837557125],
            [0.21327874596866891, 0.9673329837557125, 0.9673329837557125],
        ],
        [
            [-0.17080095054571945, 0.19271767880118518, 0.20908711501443544, 0.5933116546871156],
            [-0.17080095054571945, 0.19271767880118518, 0.20908711501443544, 0.5933116546871156],
            [-0.17080095054571945, 0.19271767880118518, 0.20908711501443544, 0.5933116546871156],
        ],
    ),
}


def pinned_outputs(name: str, jac_rows: list[list[float]], loss_rows: list[list[float]]) -> list[list[float]]:
    jac = torch.tensor(jac_rows, dtype=F64)
    comb = build(name, jac.shape[0])
    outs = []
    for row in loss_rows:
        losses = torch.tensor(row, dtype=F64)
        outs.append(run(comb, jac, losses).tolist())
        if comb.needs_losses_after_step:
            comb.after_step(0.95 * losses)
    return outs


#: torchjd 0.18.0 ``tests/unit/aggregation/test_values.py`` on J_A (atol 1e-4 there), in our scales
TORCHJD_VALUES = {
    "pcgrad": ([0.5848, 3.8012, 3.8012], 1 / 2),  # torchjd sums
    "mgda": ([0.0, 1.0, 1.0], 1.0),
    "imtlg": ([0.0767, 1.0, 1.0], 1.0),
    "nashmtl": ([0.0542, 0.7061, 0.7061], 1.0),
}


@pytest.mark.parametrize("name", list(TORCHJD_VALUES))
def test_torchjd_published_values(name: str) -> None:
    values, factor = TORCHJD_VALUES[name]
    d = run(build(name, 2), torch.tensor(J_A, dtype=F64))
    np.testing.assert_allclose(d.tolist(), [factor * v for v in values], atol=1e-4)


def test_torchjd_published_cagrad_value() -> None:
    d = run(build("cagrad", 2, c=0.5), torch.tensor(J_A, dtype=F64)) * (1 + 0.5**2)  # torchjd: no rescale
    np.testing.assert_allclose(d.tolist(), [0.1835, 1.2041, 1.2041], atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_pinned_values(name: str) -> None:
    assert name in PINNED, f"no pinned values for {name}"
    expected_a, expected_b = PINNED[name]
    np.testing.assert_allclose(pinned_outputs(name, J_A, L_A), expected_a, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pinned_outputs(name, J_B, L_B), expected_b, rtol=1e-9, atol=1e-12)


BLOCK_NAMES = [n for n in GRAD_NAMES if build(n, 2).accepts_blocks]


def test_every_gradient_combiner_accepts_blocks() -> None:
    assert BLOCK_NAMES == GRAD_NAMES


@pytest.mark.parametrize("name", BLOCK_NAMES)
@pytest.mark.parametrize("k", [1, 3, 10])
def test_blocks_give_the_matrix_result_split(name: str, k: int) -> None:
    """``G`` as column blocks (what the agent passes, no copy) gives the direction of ``G`` whole, split alike."""
    whole, split = build(name, k, seed=4), build(name, k, seed=4)
    sizes = [7, 1, 40000, 12]  # one block over GRAM_BLOCK columns
    for call in range(2):  # twice: stateful methods (GradNorm, Nash-MTL warm start) use their state the second time
        jac = normal(k, sum(sizes), seed=call).float()
        losses = torch.linspace(1.0, 2.0, k) + call
        expected = whole(jac, losses)
        parts = split(list(jac.split(sizes, dim=1)), losses)
        assert isinstance(parts, list) and [p.shape[0] for p in parts] == sizes
        # float32 Gramians summed in another order: equal up to rounding, relative to the direction's size
        scale = expected.abs().max().item()
        torch.testing.assert_close(torch.cat(parts), expected, rtol=1e-4, atol=1e-4 * scale)
        for key, value in whole.stats_tensors.items():
            torch.testing.assert_close(split.stats_tensors[key], value, rtol=1e-4, atol=1e-6)


def test_blocks_refused_by_a_combiner_that_needs_the_matrix() -> None:
    class WholeMatrix(Combiner):
        requires_grads = True

        def forward(self, grads, losses):
            self.check_num_tasks(grads, losses)
            return grads.mean(0)

    with pytest.raises(ValueError, match="needs grads as one"):
        WholeMatrix(2)([torch.ones(2, 3), torch.ones(2, 4)], torch.ones(2))


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_non_finite_in_a_block_names_the_task(name: str) -> None:
    comb = build(name, 3)
    blocks = [torch.randn(3, 5, dtype=F64), torch.randn(3, 4, dtype=F64)]
    blocks[1][1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=rf"combiner '{comb}'.*task 1"):
        comb(blocks, torch.ones(3, dtype=F64))
