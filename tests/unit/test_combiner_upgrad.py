"""upgrad: the exact dual-cone projections of ``mtrl.mto.qp`` (KKT certificate, both solvers), torchjd as oracle, the
paper's properties (non-conflicting, ``mean`` where nothing conflicts, K=2 equals PCGrad), pinned values.

torchjd 0.18.0 ``UPGrad()`` has our scale (preference ``1/K``: the mean of the projected gradients), so directions
are compared as they are, with errors relative to the mean gradient norm (the direction is 0 on strongly stationary
``J``, where torchjd leaves ~1e-10). Its default projector ``QuadprogProjector(norm_eps=1e-4, reg_eps=1e-4)``
solves the QP on the trace-normalised Gramian plus ``1e-4 I``: that regularisation moves the direction by up to
~1e-2 (measured <= 1.2e-2 on these matrices), hence 3e-2 against it. With ``norm_eps=0, reg_eps=1e-12`` it solves the
same QP as ours up to quadprog's rounding and the ``1e-12`` ridge: 1e-8 (measured <= 1.3e-10).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from combiner_helpers import F64, degenerate, normal
from torch import Tensor

from mtrl.mto import qp
from mtrl.mto.pcgrad import pcgrad_weights
from mtrl.mto.upgrad import UPGradConfig, upgrad_weights

J_A = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one intra-op thread (tests/unit/conftest.py)


def direction(jac: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
    """UPGrad's direction for ``jac`` and its weights (from the stats)."""
    k = jac.shape[0]
    comb = UPGradConfig().build(k, seed)
    d = comb(jac, torch.ones(k, dtype=jac.dtype))
    assert isinstance(d, Tensor)
    return d, torch.tensor([comb.stats[f"weight/{i}"] for i in range(k)], dtype=F64)


def scaled(k: int, n: int, seed: int, rank: int | None = None, spread: float = 3.0) -> Tensor:
    """A random Jacobian (optionally low rank) with per-task scales log-uniform in ``10^[-spread, spread]``."""
    g = torch.Generator().manual_seed(seed + 5000)
    scales = 10.0 ** (spread * (2 * torch.rand(k, 1, generator=g, dtype=F64) - 1))
    return scales * normal(k, n, rank=rank, seed=seed, shift=0.0)


def assert_projections(jac: Tensor, targets: Tensor, weights: Tensor, rtol: float = 1e-9) -> None:
    """KKT certificate that ``J^T weights[b]`` is the projection of ``J^T targets[b]`` on ``{d : J d >= 0}``:
    ``lambda = weights - targets >= 0``, ``J d >= 0``, and ``lambda_j (g_j . d) = 0``, each to ``rtol`` times the
    rounding scale ``||g_j|| sum_k |v_k| ||g_k||``."""
    lam = weights - targets
    assert float(lam.min()) >= 0.0
    norms = jac.norm(dim=1)
    dirs = weights @ jac  # [B, P]
    slack = dirs @ jac.T  # [B, K]: g_j . d_b
    scale = norms[None, :] * (weights.abs() @ norms)[:, None] + 1e-300
    assert float((slack / scale).min()) >= -rtol
    active = lam > 0
    assert float(((slack.abs() / scale) * active).max()) <= rtol


# ----------------------------------------------------------------------------------------------------- the solver


@pytest.mark.parametrize("k", [2, 3, 5, 10, 20, 50])
def test_dual_cone_projections_satisfy_kkt(k: int) -> None:
    """Exact projections (UPGrad's K targets at once) on full-rank, low-rank, widely scaled and degenerate J."""
    cases = {
        "normal": normal(k, 3 * k + 5, seed=k),
        "low_rank": normal(k, 3 * k + 5, rank=max(1, k // 3), seed=k),
        "scaled": scaled(k, 2 * k + 5, seed=k),
        "scaled_low_rank": scaled(k, 2 * k + 5, seed=k + 1, rank=max(1, k // 2)),
        **degenerate(k),
    }
    targets = torch.eye(k, dtype=F64) / k
    for case, jac in cases.items():
        weights = qp.dual_cone_weights(jac @ jac.T, targets)
        if float(jac.abs().max()) > 0:
            assert_projections(jac, targets, weights)
        else:
            torch.testing.assert_close(weights, targets, msg=case)


@pytest.mark.parametrize("k", [3, 10, 30])
def test_block_pivoting_and_lawson_hanson_agree(k: int) -> None:
    """The fast path (block principal pivoting) and the fallback (Lawson-Hanson) give the same projections."""
    for rank in (None, max(1, k // 2)):
        jac = scaled(k, 2 * k + 3, seed=10 + k, rank=rank, spread=2.0)
        gram = jac @ jac.T
        targets = torch.eye(k, dtype=F64) / k
        norms = gram.diagonal().sqrt() / float(gram.diagonal().sqrt().max())
        inv = 1.0 / norms
        corr = gram / float(gram.diagonal().max()) * inv[:, None] * inv[None, :]
        lin = (targets @ (gram / float(gram.diagonal().max()))) * inv
        size = targets.abs() @ norms
        live = torch.ones(k, dtype=torch.bool)
        lh = targets + qp._lawson_hanson(corr, lin, size, live, qp.DUAL_CONE_TOL, 10 * k + 20) * inv
        assert_projections(jac, targets, lh)
        both = qp.dual_cone_weights(gram, targets)
        torch.testing.assert_close(lh @ jac, both @ jac, rtol=1e-9, atol=1e-12 * float(jac.abs().max()))
        if rank is None:  # full rank: block pivoting converges on every row
            start = torch.zeros(k, k, dtype=torch.bool)
            _, converged = qp._block_pivoting(corr, lin, size, live, qp.DUAL_CONE_TOL, start, 20)
            assert bool(converged.all())


def test_dual_cone_tolerance_by_dtype() -> None:
    assert qp.dual_cone_tol(torch.float64) == qp.DUAL_CONE_TOL
    assert qp.dual_cone_tol(torch.float32) == pytest.approx(10 * torch.finfo(torch.float32).eps)


# ----------------------------------------------------------------------------------------------------- the method


@pytest.mark.parametrize("k", [2, 3, 5, 10, 50])
def test_upgrad_non_conflicting_and_in_row_span(k: int) -> None:
    for seed in range(3):
        for jac in (normal(k, 2 * k + 7, seed=seed, shift=0.0), scaled(k, 2 * k + 7, seed=seed, rank=max(1, k - 2))):
            d, weights = direction(jac)
            torch.testing.assert_close(weights @ jac, d)
            norms = jac.norm(dim=1)
            assert float((jac @ d / (norms * float(weights.abs() @ norms))).min()) >= -1e-9
            assert float(d.norm()) <= float(norms.mean()) * (1 + 1e-12)


def test_upgrad_is_mean_without_conflict() -> None:
    jac = normal(6, 20, seed=3, shift=0.0).abs()  # non-negative rows: no pair conflicts
    assert float((jac @ jac.T).min()) > 0
    torch.testing.assert_close(direction(jac)[0], jac.mean(0), rtol=1e-14, atol=0)


def test_upgrad_two_tasks_is_pcgrad_mean() -> None:
    """K=2: projecting each gradient on the other's half-space is both methods (torchjd's own equivalence test)."""
    for seed in range(5):
        jac = normal(2, 7, seed=seed, shift=0.0)
        pc = pcgrad_weights(jac @ jac.T, torch.tensor([[1], [0]])).mean(0) @ jac
        torch.testing.assert_close(direction(jac)[0], pc, rtol=1e-12, atol=1e-14)


def test_upgrad_positively_homogeneous_and_permutation_invariant() -> None:
    jac = normal(6, 13, seed=4, shift=0.0)
    d = direction(jac)[0]
    for s in (1e-8, 3.0, 1e8):
        torch.testing.assert_close(direction(s * jac)[0], s * d, rtol=1e-10, atol=0)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(direction(jac[perm])[0], d, rtol=1e-10, atol=1e-14)


def test_upgrad_zero_on_strongly_stationary() -> None:
    """``sum_i v_i g_i = 0`` with ``v > 0``: the dual cone is the null space of ``J``, every projection is 0."""
    g = normal(2, 6, seed=7, shift=0.0)
    jac = torch.cat([g, -(g[0] + 2 * g[1])[None], 3 * g[1:]])
    d = direction(jac)[0]
    assert float(d.norm()) <= 1e-12 * float(jac.norm(dim=1).mean())


def test_upgrad_float32_close_to_float64() -> None:
    jac = normal(8, 60, seed=5, shift=0.0)
    d64 = direction(jac)[0]
    d32 = direction(jac.float())[0].double()
    assert float((d32 - d64).norm() / d64.norm()) < 1e-5


def test_upgrad_pinned_values() -> None:
    """torchjd's regression matrix: exactly PCGrad's mean here (K=2); torchjd publishes [0.2929, 1.9004, 1.9004]
    (atol 1e-4) with its 1e-4 regularisation."""
    d = direction(torch.tensor(J_A, dtype=F64))[0]
    np.testing.assert_allclose(d.tolist(), [50 / 171, 325 / 171, 325 / 171], rtol=1e-12)
    np.testing.assert_allclose(d.tolist(), [0.2929, 1.9004, 1.9004], atol=1e-3)
    jac = torch.tensor([[1.0, -2.0, 0.5, 3.0], [-1.5, 1.0, 2.0, -0.5], [0.25, 0.5, -1.0, 1.0]], dtype=F64)
    np.testing.assert_allclose(
        direction(jac)[0].tolist(),
        [-0.37669018992855907, 0.15273566823488416, 0.795713538944067, 1.4947682523087644],
        rtol=1e-10,
    )


def test_upgrad_weights_function_and_str() -> None:
    jac = normal(4, 9, seed=6)
    torch.testing.assert_close(upgrad_weights(jac @ jac.T), direction(jac)[1])
    assert str(UPGradConfig().build(3)) == "upgrad"


# ----------------------------------------------------------------------------------------------------- oracle


def matrices(k: int) -> dict[str, Tensor]:
    """Random Jacobians of several shapes, a low-rank one, and a zero row / duplicate row."""
    out = {f"n{n}_s{seed}": normal(k, n, seed=100 * k + seed) for n in (5, 9, 30) for seed in range(2)}
    out["low_rank"] = normal(k, 12, rank=2, seed=k, shift=0.0)
    zero = normal(k, 9, seed=k + 1, shift=0.0)
    zero[0] = 0
    out["zero_row"] = zero
    dup = normal(k, 9, seed=k + 2, shift=0.0)
    dup[-1] = dup[0]
    out["duplicate"] = dup
    return out


@pytest.mark.parametrize("k", [2, 3, 5, 7, 10])
def test_upgrad_matches_torchjd(k: int) -> None:
    torchjd = pytest.importorskip("torchjd", reason="torchjd==0.18.0 (the test extra) is not installed")
    from torchjd._linalg import QuadprogProjector

    try:
        exact = torchjd.aggregation.UPGrad(projector=QuadprogProjector(norm_eps=0.0, reg_eps=1e-12))
        default = torchjd.aggregation.UPGrad()
    except ImportError as exc:
        pytest.skip(f"torchjd optional dependency missing ({exc})")
    for case, jac in matrices(k).items():
        d = direction(jac)[0]
        size = float(jac.norm(dim=1).mean())
        assert float((d - exact(jac)).norm()) < 1e-8 * size, case
        assert float((d - default(jac)).norm()) < 3e-2 * size, case
