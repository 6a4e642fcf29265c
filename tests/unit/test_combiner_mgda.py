"""mgda: the exact min-norm point (KKT, SLSQP, normalization)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from combiner_helpers import F64, build, degenerate, normal, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from mtrl.mto.gramian import gramian
from mtrl.mto.mgda import min_norm_weights


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
