"""gls: the geometric mean of the task losses; positive losses, critic only; the log-domain helpers it shares with
imtll, stch and dbmtl; torchjd's GeometricMean as the oracle."""

from __future__ import annotations

import math

import pytest
import torch

from mtrl.mto.base import PARTS, NonFiniteError, Weighting
from mtrl.mto.gls import GLS, GLSConfig

F64 = torch.float64


def weights(comb: GLS, losses: list[float] | torch.Tensor) -> torch.Tensor:
    out = comb(None, losses if isinstance(losses, torch.Tensor) else torch.tensor(losses, dtype=F64))
    assert isinstance(out, Weighting)
    return out.weights


def test_gls_weights_are_the_gradient_of_the_geometric_mean() -> None:
    losses = torch.tensor([0.5, 2.0, 8.0, 1.0], dtype=F64)
    w = weights(GLS(4), losses)
    gm = float(losses.prod() ** 0.25)
    torch.testing.assert_close(w, gm / (4 * losses), rtol=1e-15, atol=0)
    torch.testing.assert_close(w * losses, torch.full_like(losses, gm / 4), rtol=1e-15, atol=0)  # equal w_k L_k
    hm = 4 / float((1 / losses).sum())
    assert float(w.sum()) == pytest.approx(gm / hm, rel=1e-15)  # GM / HM >= 1
    torch.testing.assert_close(weights(GLS(4), [3.0] * 4), torch.full((4,), 0.25, dtype=F64))  # equal: mean
    assert weights(GLS(1), [7.0]).tolist() == [1.0]


@pytest.mark.parametrize("k", [1, 2, 10, 50])
def test_gls_finite_on_tiny_huge_and_equal_losses(k: int) -> None:
    cases = {
        "tiny": torch.full((k,), 1e-8, dtype=F64),
        "huge": torch.full((k,), 1e8, dtype=F64),
        "spread": torch.logspace(-8, 8, k, dtype=F64),
        "equal": torch.ones(k, dtype=F64),
    }
    for case, losses in cases.items():
        for dtype in (F64, torch.float32):
            w = weights(GLS(k), losses.to(dtype))
            assert w.dtype == dtype and bool(torch.isfinite(w).all()), (case, dtype)
            scaled = w.double() * losses  # w_k L_k = GM / K for every task
            torch.testing.assert_close(scaled, scaled.mean().expand(k), rtol=1e-6, atol=0, msg=case)


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_gls_rejects_a_loss_outside_the_log_domain(bad: float) -> None:
    with pytest.raises(NonFiniteError, match=r"^combiner 'gls' takes the log of the task losses: task 1 has loss "):
        weights(GLS(3), [1.0, bad, 2.0])


def test_gls_domain_check_is_deferred_on_request() -> None:
    comb = GLS(3)
    comb.defer_finite_checks = True
    comb(None, torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    comb.raise_deferred()  # nothing seen
    comb(None, torch.tensor([1.0, -2.0, 3.0], dtype=F64))  # no host sync, no error yet
    with pytest.raises(NonFiniteError, match=r"task 1 had a loss outside > 0 since the last check"):
        comb.raise_deferred()
    comb.raise_deferred()  # cleared
    comb(None, torch.tensor([1.0, float("nan"), 3.0], dtype=F64))  # the finiteness check comes first
    with pytest.raises(NonFiniteError, match=r"got a non-finite loss for task 1"):
        comb.raise_deferred()


def part_message(part: str) -> str:
    return (
        f"combine_{part}: got true with combiner gls, which takes the log of the task losses (the geometric mean), "
        f"and the SAC {part} loss can be negative; add --combine_{part} false (critic only)"
    )


@pytest.mark.parametrize(
    ("parts", "offending"),
    [((), None), (("critic",), None), (("critic", "actor"), "actor"), (("alpha",), "alpha"), (PARTS, "actor")],
)
def test_gls_check_allows_the_critic_only(parts: tuple[str, ...], offending: str | None) -> None:
    if offending is None:
        GLSConfig().check(10, frozenset(parts))
        return
    with pytest.raises(ValueError) as info:
        GLSConfig().check(10, frozenset(parts))
    assert str(info.value) == part_message(offending)


def test_gls_matches_torchjd_geometric_mean() -> None:
    """torchjd's ``GeometricMean`` returns ``exp(mean log L)``; its gradient w.r.t. the losses is our weights (same
    scale). Losses from 1e-8 to 1e8: measured max relative error 2e-15."""
    scal = pytest.importorskip("torchjd.scalarization", reason="torchjd==0.18.0 (the test extra) is not installed")
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for k in (1, 2, 3, 10, 50):
        comb = GLS(k)
        for _ in range(5):
            losses = torch.exp(torch.empty(k, dtype=F64).uniform_(-8 * math.log(10), 8 * math.log(10), generator=g))
            values = losses.clone().requires_grad_(True)
            (ref,) = torch.autograd.grad(scal.GeometricMean()(values), values)
            ours = weights(comb, losses)
            torch.testing.assert_close(ours, ref, rtol=1e-13, atol=0)
            worst = max(worst, float(((ours - ref) / ref).abs().max()))
    assert worst < 1e-13
