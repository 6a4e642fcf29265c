"""modo: torchjd's MoDoWeighting as the oracle over sequences of calls (both samplings), the double-sampled Gramian,
the simplex projection, convergence to MGDA on a fixed Jacobian, state round trips and finiteness of the options.

Scale conversion: none. torchjd's ``MoDoWeighting`` returns ``lambda_{t+1}``, the coefficients we return
(``d = lambda @ J``). Both get the same ``A`` (from :func:`mtrl.mto.gramian.gramian`, the diagonal replaced by
``g_t . g_{t-1}`` for ``sampling="previous"``) and perform the same operations: the weights agree to 1e-14.
"""

from __future__ import annotations

import math

import pytest
import torch
from combiner_helpers import F64, degenerate, drive, reloaded
from torch import Tensor

from mtrl.mto.base import NonFiniteError
from mtrl.mto.gramian import gramian
from mtrl.mto.memory import TaskMemory, checked_gramians
from mtrl.mto.mgda import min_norm_weights
from mtrl.mto.modo import MoDo, MoDoConfig
from mtrl.mto.qp import project_simplex

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one intra-op thread (tests/unit/conftest.py)


def jacobians(k: int, steps: int, seed: int, scale: float = 0.5, n: int = 16) -> list[Tensor]:
    """Related Jacobians (a common component plus noise), as consecutive batches would give."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(k, n, generator=g, dtype=F64)
    return [scale * (mean + 0.7 * torch.randn(k, n, generator=g, dtype=F64)) for _ in range(steps)]


def weights_of(comb: MoDo) -> Tensor:
    return torch.tensor([comb.stats[f"weight/{i}"] for i in range(comb.num_tasks)], dtype=F64)


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("sampling", ["single", "previous"])
@pytest.mark.parametrize(("gamma", "rho"), [(0.1, 0.1), (0.02, 0.0)])
def test_matches_torchjd_over_a_sequence(k: int, sampling: str, gamma: float, rho: float) -> None:
    agg = pytest.importorskip("torchjd.aggregation", reason="torchjd (test extra) is not installed")
    ref = agg.MoDoWeighting(gamma=gamma, rho=rho)
    comb = MoDoConfig(gamma=gamma, rho=rho, sampling=sampling).build(k)  # type: ignore[arg-type]
    before = None
    interior = 0
    for jac in jacobians(k, 10, seed=k):
        d = comb(jac, torch.ones(k, dtype=F64))
        a = gramian(jac)
        if sampling == "previous" and before is not None:
            a.diagonal().copy_((jac * before).sum(1))
        expected = ref(a)
        torch.testing.assert_close(weights_of(comb), expected, rtol=0, atol=1e-14)
        torch.testing.assert_close(d, expected @ jac, rtol=0, atol=1e-14 * k * float(jac.abs().max()))
        interior += bool((expected > 0).sum() > 1)
        before = jac
    assert interior >= 5  # the sequences exercise the interior of the simplex, not only its vertices


def test_previous_sampling_diagonal_uses_the_previous_call() -> None:
    """``sampling="previous"``: off-diagonal of this batch, diagonal ``g_t . g_{t-1}``; the first call has none; ``G``
    is exactly :func:`~mtrl.mto.gramian.gramian`'s (same chunks, wider than one here); the gradients are stored."""
    g = torch.Generator().manual_seed(1)
    j1, j2 = torch.randn(3, 40_000, generator=g, dtype=F64), torch.randn(3, 40_000, generator=g, dtype=F64)
    memory = TaskMemory(3)
    comb = MoDoConfig().build(3)
    gram, a = checked_gramians(comb, j1, torch.ones(3, dtype=F64), memory)
    torch.testing.assert_close(gram, gramian(j1), rtol=0, atol=0)
    torch.testing.assert_close(a, gram, rtol=0, atol=0)
    blocks = [j2[:, :5], j2[:, 5:]]  # blocks see the same columns
    gram, a = checked_gramians(comb, blocks, torch.ones(3, dtype=F64), memory)
    torch.testing.assert_close(gram, gramian(blocks), rtol=0, atol=0)
    expected = gram.clone()
    expected.diagonal().copy_((j2 * j1).sum(1))
    torch.testing.assert_close(a, expected, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(memory.value, j2, rtol=0, atol=0)
    gram, a = checked_gramians(comb, j2, torch.ones(3, dtype=F64), None)
    assert a is gram


def test_non_finite_gradients_leave_the_memory() -> None:
    comb = MoDoConfig().build(2)
    jac = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=F64)
    comb(jac, torch.ones(2, dtype=F64))
    bad = jac.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="task 1"):
        comb(bad, torch.ones(2, dtype=F64))
    assert comb.memory is not None
    torch.testing.assert_close(comb.memory.value, jac, rtol=0, atol=0)


def test_projection_onto_the_simplex() -> None:
    """Closest point of the simplex (KKT: ``v - p = theta`` on the support, ``<= theta`` off it), robust to huge
    entries (torchjd's loop returns all zeros for ``[1e17, -1e17, 3e16]``)."""
    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3, 7, 50):
        for _ in range(20):
            v = torch.randn(k, generator=g, dtype=F64) * 3
            p = project_simplex(v)
            assert abs(float(p.sum()) - 1) < 1e-12 and float(p.min()) >= 0
            theta = v[p > 0] - p[p > 0]
            assert float(theta.max() - theta.min()) < 1e-12
            assert bool((v[p == 0] <= theta.mean() + 1e-12).all())
    torch.testing.assert_close(
        project_simplex(torch.tensor([1e17, -1e17, 3e16], dtype=F64)), torch.eye(3, dtype=F64)[0]
    )


def test_converges_to_mgda_on_a_fixed_jacobian() -> None:
    """``rho = 0``, a small step, the same Jacobian every call: projected gradient descent on ``lambda^T G lambda``,
    whose minimiser on the simplex is MGDA's min-norm weights."""
    jac = jacobians(4, 1, seed=2, scale=1.0)[0]
    comb = MoDoConfig(gamma=0.05, rho=0.0, sampling="single").build(4)
    for _ in range(600):
        comb(jac, torch.ones(4, dtype=F64))
    torch.testing.assert_close(comb.lam, min_norm_weights(jac @ jac.T), rtol=0, atol=1e-7)


def test_one_step_by_hand_and_scale() -> None:
    jac = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=F64)
    comb = MoDoConfig(gamma=0.1, rho=0.1, sampling="single").build(3)
    d = comb(jac, torch.ones(3, dtype=F64))
    lam0 = torch.full((3,), 1 / 3, dtype=F64)
    step = lam0 - 0.1 * ((jac @ jac.T) @ lam0 + 0.1 * lam0)
    lam1 = step - (step.sum() - 1) / 3  # interior: the projection only shifts
    torch.testing.assert_close(comb.lam, lam1)
    torch.testing.assert_close(d, lam1 @ jac)
    g = torch.tensor([[3.0, -4.0]], dtype=F64)
    torch.testing.assert_close(MoDoConfig().build(1)(g, torch.ones(1, dtype=F64)), g[0])


@pytest.mark.parametrize("sampling", ["single", "previous"])
def test_state_dict_round_trip(sampling: str) -> None:
    """Saved and loaded into a fresh instance, the sequence continues identically (``lambda`` and the previous
    gradients; the memory buffer is resized on load)."""
    seq = jacobians(4, 9, seed=4)
    comb = MoDoConfig(sampling=sampling).build(4, seed=1)  # type: ignore[arg-type]
    drive(comb, seq[:5])
    restored = reloaded(comb, MoDoConfig(sampling=sampling).build(4, seed=7))  # type: ignore[arg-type]
    expected = drive(comb, seq[5:])
    for a, b in zip(drive(restored, seq[5:]), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_new_width_restarts_the_memory() -> None:
    comb = MoDoConfig().build(3)
    drive(comb, jacobians(3, 2, seed=5, n=8))
    fresh = MoDoConfig().build(3)
    fresh.lam.copy_(comb.lam)
    jac = jacobians(3, 1, seed=6, n=11)
    torch.testing.assert_close(drive(comb, jac)[0], drive(fresh, jac)[0], rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_finite_with_single_sampling_and_large_steps(k: int) -> None:
    """The non-default options on the degenerate Jacobians, at scales 1e-8..1e8, float32 and float64."""
    for options in ({"sampling": "single"}, {"gamma": 10.0, "rho": 0.0}):
        comb = MoDoConfig(**options).build(k)  # type: ignore[arg-type]
        for dtype in (torch.float32, F64):
            for case, jac in degenerate(k).items():
                for scale in (1e-8, 1.0, 1e8):
                    d = comb((jac * scale).to(dtype), torch.ones(k, dtype=dtype))
                    assert bool(torch.isfinite(d).all()), (options, case, scale, dtype)
                    assert all(math.isfinite(v) for v in comb.stats.values()), (case, scale, comb.stats)
                    assert abs(float(comb.lam.sum()) - 1) < 1e-9


def test_config_checks() -> None:
    for options, message in [
        ({"gamma": 0.0}, "combiner.gamma: got 0.0, expected a number > 0"),
        ({"rho": -0.1}, "combiner.rho: got -0.1, expected a number >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            MoDoConfig(**options).check(3, frozenset())  # type: ignore[arg-type]
    assert str(MoDoConfig().build(3)) == "modo-g0.1"
    assert str(MoDoConfig(gamma=0.001, rho=0.0, sampling="single").build(3)) == "modo-g0.001-r0-single"
