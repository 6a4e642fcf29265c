"""dualproj: the mean gradient projected onto the dual cone (KKT certificate, ``mean`` where it conflicts with no
task, non-expansive, zero on strongly stationary J), torchjd as oracle, pinned values.

torchjd 0.18.0 ``DualProj()`` has our scale (preference ``1/K``: the mean), so directions are compared as they are,
with errors relative to the mean gradient norm. Its default projector regularises the trace-normalised Gramian with
``1e-4 I``, which moves the direction by up to ~1e-2 (measured <= 1.2e-2): 3e-2 against it; with
``QuadprogProjector(norm_eps=0, reg_eps=1e-12)`` it solves our QP up to quadprog's rounding: 1e-8 (measured
<= 1.3e-10).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from combiner_helpers import F64, degenerate, normal
from torch import Tensor

from mtrl.mto.dualproj import DualProjConfig, dualproj_weights

J_A = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
J_B = [[1.0, -2.0, 0.5, 3.0], [-1.5, 1.0, 2.0, -0.5], [0.25, 0.5, -1.0, 1.0]]


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one intra-op thread (tests/unit/conftest.py)


def direction(jac: Tensor) -> tuple[Tensor, Tensor]:
    """DualProj's direction for ``jac`` and its weights (from the stats)."""
    k = jac.shape[0]
    comb = DualProjConfig().build(k)
    d = comb(jac, torch.ones(k, dtype=jac.dtype))
    assert isinstance(d, Tensor)
    return d, torch.tensor([comb.stats[f"weight/{i}"] for i in range(k)], dtype=F64)


def scaled(k: int, n: int, seed: int, rank: int | None = None) -> Tensor:
    """A random Jacobian (optionally low rank) with per-task scales log-uniform in ``10^[-3, 3]``."""
    g = torch.Generator().manual_seed(seed + 7000)
    return 10.0 ** (6 * torch.rand(k, 1, generator=g, dtype=F64) - 3) * normal(k, n, rank=rank, seed=seed, shift=0.0)


@pytest.mark.parametrize("k", [2, 3, 5, 10, 50])
def test_dualproj_is_the_projection_of_the_mean(k: int) -> None:
    """KKT certificate: ``w = 1/K + lambda``, ``lambda >= 0``, ``J d >= 0``, ``lambda_j g_j . d = 0``."""
    cases = {
        "normal": normal(k, 2 * k + 5, seed=k, shift=0.0),
        "scaled": scaled(k, 2 * k + 5, seed=k),
        "scaled_low_rank": scaled(k, 2 * k + 5, seed=k + 1, rank=max(1, k // 2)),
        **degenerate(k),
    }
    for case, jac in cases.items():
        d, weights = direction(jac)
        torch.testing.assert_close(weights @ jac, d, msg=case)
        lam = weights - 1.0 / k
        assert float(lam.min()) >= 0.0, case
        norms = jac.norm(dim=1)
        scale = norms * float(weights.abs() @ norms) + 1e-300
        slack = (jac @ d) / scale
        assert float(slack.min()) >= -1e-9, case
        assert float((slack.abs() * (lam > 0)).max()) <= 1e-9, case
        assert float(d.norm()) <= float(jac.mean(0).norm()) * (1 + 1e-12) + 1e-15, case


def test_dualproj_is_mean_when_the_mean_conflicts_with_no_task() -> None:
    jac = torch.tensor([[1.0, 0.0, 0.0, 0.5], [-0.5, 1.0, 0.0, 0.0], [0.2, 0.3, 1.0, -0.1]], dtype=F64)
    mean = jac.mean(0)  # g_1 . g_2 < 0, but the mean conflicts with no task
    assert float((jac @ mean).min()) > 0 and float((jac @ jac.T).min()) < 0
    torch.testing.assert_close(direction(jac)[0], mean, rtol=1e-14, atol=0)


def test_dualproj_zero_on_strongly_stationary() -> None:
    g = normal(2, 6, seed=8, shift=0.0)
    jac = torch.cat([g, -(2 * g[0] + g[1])[None]])
    assert float(direction(jac)[0].norm()) <= 1e-12 * float(jac.norm(dim=1).mean())


def test_dualproj_positively_homogeneous_and_permutation_invariant() -> None:
    jac = normal(6, 13, seed=4, shift=0.0)
    d = direction(jac)[0]
    for s in (1e-8, 3.0, 1e8):
        torch.testing.assert_close(direction(s * jac)[0], s * d, rtol=1e-10, atol=0)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(direction(jac[perm])[0], d, rtol=1e-10, atol=1e-14)


def test_dualproj_float32_close_to_float64() -> None:
    jac = normal(8, 60, seed=5, shift=0.0)
    d64 = direction(jac)[0]
    d32 = direction(jac.float())[0].double()
    assert float((d32 - d64).norm() / d64.norm()) < 1e-5


def test_dualproj_pinned_values() -> None:
    """J_A: the mean (1, 1, 1) conflicts with g_1 only: ``d = mean + g_1 / 9``."""
    np.testing.assert_allclose(direction(torch.tensor(J_A, dtype=F64))[0].tolist(), [5 / 9, 10 / 9, 10 / 9], rtol=1e-12)
    jac = torch.tensor(J_B, dtype=F64)  # the mean conflicts with no task: d = mean
    np.testing.assert_allclose(direction(jac)[0].tolist(), jac.mean(0).tolist(), rtol=1e-12)


def test_dualproj_weights_function_and_str() -> None:
    jac = normal(4, 9, seed=6)
    torch.testing.assert_close(dualproj_weights(jac @ jac.T), direction(jac)[1])
    assert str(DualProjConfig().build(3)) == "dualproj"


@pytest.mark.parametrize("k", [2, 3, 5, 7, 10])
def test_dualproj_matches_torchjd(k: int) -> None:
    torchjd = pytest.importorskip("torchjd", reason="torchjd==0.18.0 (the test extra) is not installed")
    from torchjd._linalg import QuadprogProjector

    try:
        exact = torchjd.aggregation.DualProj(projector=QuadprogProjector(norm_eps=0.0, reg_eps=1e-12))
        default = torchjd.aggregation.DualProj()
    except ImportError as exc:
        pytest.skip(f"torchjd optional dependency missing ({exc})")
    cases = {f"n{n}_s{seed}": normal(k, n, seed=100 * k + seed) for n in (5, 9, 30) for seed in range(2)}
    cases["low_rank"] = normal(k, 12, rank=2, seed=k, shift=0.0)
    cases["conflicting"] = normal(k, 30, seed=k, shift=0.0)
    for case, jac in cases.items():
        d = direction(jac)[0]
        size = float(jac.norm(dim=1).mean())
        assert float((d - exact(jac)).norm()) < 1e-8 * size, case
        assert float((d - default(jac)).norm()) < 3e-2 * size, case
