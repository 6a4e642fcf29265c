"""nashmtl: the Nash bargaining fixed point, scale invariance, clipping and update interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from combiner_helpers import F64, build, normal, run

from mtrl.mto.nashmtl import NashMTL


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
