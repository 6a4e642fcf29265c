"""sdmgrad: torchjd's SDMGradWeighting as the oracle over sequences of calls (both samplings), the scale invariance of
the inner solve, the limits in lambda, state round trips and finiteness of the non-default options.

Scale conversion: none. torchjd's ``SDMGradWeighting`` returns ``(w + lambda / K) / (1 + lambda)``, the coefficients
we return (``d = weights @ J``). torchjd normalises ``A`` by ``s^2 + 1e-8`` where we divide by ``s^2``
(``s`` = mean task gradient norm); the Jacobians here have ``s^2 ~ 2e9``, so that difference is below rounding.
Both get the same ``A`` (from :func:`mtrl.mto.gramian.gramian`): the inner steps with the default ``lr = 10`` are not
contractive (a perturbation grows by up to ``lr`` times the largest eigenvalue of ``A / s^2``, ~K, per step until the
projection clips it), so a 1-ulp difference of the input (``J J^T`` instead of the symmetrised blockwise Gramian) was
measured to grow to 4e-6 in the weights within 3 calls. With equal inputs the operations are the same and the
weights agree to 1e-13 absolute over 8 calls.
"""

from __future__ import annotations

import math

import pytest
import torch
from combiner_helpers import F64, degenerate, drive, reloaded
from torch import Tensor

from mtrl.mto.gramian import gramian
from mtrl.mto.mgda import min_norm_weights
from mtrl.mto.sdmgrad import SDMGrad, SDMGradConfig, sdmgrad_step

K_VALUES = (2, 3, 5, 10)


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one intra-op thread (tests/unit/conftest.py)


def jacobians(k: int, steps: int, seed: int, scale: float = 1e4, n: int = 24) -> list[Tensor]:
    """A sequence of related Jacobians (a common component plus noise), as consecutive batches would give."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(k, n, generator=g, dtype=F64)
    return [scale * (mean + 0.7 * torch.randn(k, n, generator=g, dtype=F64)) for _ in range(steps)]


def weights_of(comb: SDMGrad) -> Tensor:
    return torch.tensor([comb.stats[f"weight/{i}"] for i in range(comb.num_tasks)], dtype=F64)


def previous_matrix(jac: Tensor, before: Tensor | None) -> Tensor:
    """``A`` of ``sampling="previous"``: this batch's Gramian with the diagonal ``g_t . g_{t-1}``."""
    a = gramian(jac)
    if before is not None:
        a.diagonal().copy_((jac * before).sum(1))
    return a


@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("sampling", ["single", "previous"])
@pytest.mark.parametrize(("lam", "lr", "momentum", "n_iter"), [(0.3, 10.0, 0.5, 20), (0.6, 2.0, 0.0, 7)])
def test_matches_torchjd_over_a_sequence(
    k: int, sampling: str, lam: float, lr: float, momentum: float, n_iter: int
) -> None:
    """Same ``A`` in, same state sequence: the weights of every call agree with torchjd's."""
    agg = pytest.importorskip("torchjd.aggregation", reason="torchjd (test extra) is not installed")
    ref = agg.SDMGradWeighting(lr=lr, momentum=momentum, n_iter=n_iter, lambda_=lam)
    comb = SDMGradConfig(lam=lam, lr=lr, momentum=momentum, n_iter=n_iter, sampling=sampling).build(k)  # type: ignore[arg-type]
    before = None
    for jac in jacobians(k, 8, seed=k):
        d = comb(jac, torch.ones(k, dtype=F64))
        a = previous_matrix(jac, before) if sampling == "previous" else gramian(jac)
        expected = ref(a)
        tol = 1e-13
        torch.testing.assert_close(weights_of(comb), expected, rtol=0, atol=tol)
        torch.testing.assert_close(d, expected @ jac, rtol=0, atol=k * tol * float(jac.abs().max()))
        torch.testing.assert_close(comb.w, ref._w, rtol=0, atol=tol)
        before = jac


def test_inner_solver_is_projected_momentum_sgd_on_the_official_objective() -> None:
    """One inner step from ``w``: the gradient of the official MT10 objective ``1/2 w^T A w + lambda w . A 1/K``
    (on ``A / s^2``), a step of ``lr``, the projection onto the simplex."""
    jac = jacobians(4, 1, seed=1, scale=1.0)[0]
    a = jac @ jac.T
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    s2 = float(a.diagonal().sqrt().mean()) ** 2
    wr = w.clone().requires_grad_(True)
    (0.5 * wr @ (a / s2) @ wr + 0.3 * wr @ (a / s2).mean(1)).backward()  # the official MT10 objective
    assert wr.grad is not None
    step = w - 0.01 * wr.grad
    step -= (step.sum() - 1) / 4  # a small step stays inside the simplex: the projection only shifts it
    assert float(step.min()) > 0
    torch.testing.assert_close(sdmgrad_step(a, w, 0.3, 0.01, 0.5, 1), step, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("sampling", ["single", "previous"])
def test_scale_invariant(sampling: str) -> None:
    """``A / s^2`` makes every call positively homogeneous: ``d(c J) = c d(J)`` along a whole sequence."""
    seq = jacobians(5, 5, seed=2, scale=1.0)
    for c in (1e-8, 1e-3, 1e5):
        ref = SDMGradConfig(sampling=sampling).build(5)  # type: ignore[arg-type]
        scaled = SDMGradConfig(sampling=sampling).build(5)  # type: ignore[arg-type]
        for jac in seq:
            ones = torch.ones(5, dtype=F64)
            torch.testing.assert_close(scaled(c * jac, ones), c * ref(jac, ones), rtol=1e-9, atol=0)


def test_lambda_limits() -> None:
    """``lambda -> infinity``: the mean; ``lambda = 0`` with many small steps: MGDA's min-norm weights."""
    jac = jacobians(4, 1, seed=3, scale=1.0)[0]
    d = SDMGradConfig(lam=1e12).build(4)(jac, torch.ones(4, dtype=F64))
    torch.testing.assert_close(d, jac.mean(0), rtol=1e-8, atol=1e-12)
    comb = SDMGradConfig(lam=0.0, lr=0.2, momentum=0.0, n_iter=1500).build(4)
    comb(jac, torch.ones(4, dtype=F64))
    torch.testing.assert_close(weights_of(comb), min_norm_weights(jac @ jac.T), rtol=0, atol=1e-6)


def test_single_task_and_zero_gradients() -> None:
    g = torch.tensor([[3.0, -4.0]], dtype=F64)
    torch.testing.assert_close(SDMGradConfig().build(1)(g, torch.ones(1, dtype=F64)), g[0])
    comb = SDMGradConfig().build(3)
    d = comb(torch.zeros(3, 5, dtype=F64), torch.ones(3, dtype=F64))
    assert bool((d == 0).all())
    torch.testing.assert_close(comb.w, torch.full((3,), 1 / 3, dtype=F64))  # A = 0: w is left


@pytest.mark.parametrize("sampling", ["single", "previous"])
def test_state_dict_round_trip(sampling: str) -> None:
    """Saved and loaded into a fresh instance (other seed), the sequence continues identically."""
    seq = jacobians(4, 9, seed=4, scale=1.0)
    comb = SDMGradConfig(sampling=sampling).build(4, seed=1)  # type: ignore[arg-type]
    drive(comb, seq[:5])
    restored = reloaded(comb, SDMGradConfig(sampling=sampling).build(4, seed=7))  # type: ignore[arg-type]
    expected = drive(comb, seq[5:])
    for a, b in zip(drive(restored, seq[5:]), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_previous_sampling_blocks_and_matrix_share_the_memory() -> None:
    """The stored gradients follow the columns, whatever the split of the calls."""
    seq = jacobians(3, 4, seed=5, scale=1.0)
    whole, mixed = SDMGradConfig(sampling="previous").build(3), SDMGradConfig(sampling="previous").build(3)
    expected = drive(whole, seq)
    got = [drive(mixed, [jac], split=3 if i % 2 == 1 else None)[0] for i, jac in enumerate(seq)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_finite_with_previous_sampling(k: int) -> None:
    """The non-default sampling on the degenerate Jacobians, at scales 1e-8..1e8, float32 and float64."""
    comb = SDMGradConfig(sampling="previous").build(k)
    for dtype in (torch.float32, F64):
        for case, jac in degenerate(k).items():
            for scale in (1e-8, 1.0, 1e8):
                d = comb((jac * scale).to(dtype), torch.ones(k, dtype=dtype))
                assert bool(torch.isfinite(d).all()), (case, scale, dtype)
                assert all(math.isfinite(v) for v in comb.stats.values()), (case, scale, comb.stats)


def test_config_checks() -> None:
    for options, message in [
        ({"lam": -1.0}, "combiner.lam: got -1.0, expected a number >= 0"),
        ({"lr": 0.0}, "combiner.lr: got 0.0, expected a number > 0"),
        ({"momentum": 1.0}, r"combiner.momentum: got 1.0, expected a number in \[0, 1\)"),
        ({"n_iter": 0}, "combiner.n_iter: got 0, expected an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            SDMGradConfig(**options).check(3, frozenset())  # type: ignore[arg-type]
    assert str(SDMGradConfig().build(3)) == "sdmgrad-l0.3"
    assert str(SDMGradConfig(lam=0.6, sampling="previous").build(3)) == "sdmgrad-l0.6-prev"
