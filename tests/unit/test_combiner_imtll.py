"""imtll: learned loss scales e^s (own Adam), critic only; torchjd's IMTLL trained with Adam as the oracle."""

from __future__ import annotations

import math

import pytest
import torch
from combiner_helpers import reloaded

from mtrl.mto.base import PARTS, Weighting
from mtrl.mto.imtll import IMTLL, IMTLLConfig

F64 = torch.float64


def weights(comb: IMTLL, losses: torch.Tensor) -> torch.Tensor:
    out = comb(None, losses)
    assert isinstance(out, Weighting)
    return out.weights


def test_imtll_weights_and_update_direction() -> None:
    comb = IMTLLConfig(lr=0.1).build(2)
    assert weights(comb, torch.tensor([4.0, 0.25], dtype=F64)).tolist() == [1.0, 1.0]  # e^0: the sum of the losses
    # d/ds = e^s L - 1: positive for L > 1 (s falls, the weight shrinks), negative for L < 1; Adam's first step is lr
    assert comb.log_scale.tolist() == pytest.approx([-0.1, 0.1], rel=1e-7)  # up to Adam's eps
    w = weights(comb, torch.tensor([4.0, 0.25], dtype=F64))
    assert w[0] < 1.0 < w[1]
    assert comb.stats == {"weight/0": pytest.approx(float(w[0])), "weight/1": pytest.approx(float(w[1]))}


def test_imtll_scaled_losses_go_to_one() -> None:
    """The fixed point of the scales is ``s_k = -log L_k``: ``e^{s_k} L_k = 1``, the weights ``1 / L_k``."""
    losses = torch.tensor([1e-3, 0.5, 20.0], dtype=F64)
    comb = IMTLLConfig(lr=0.05).build(3)
    for _ in range(3000):
        comb(None, losses)
    torch.testing.assert_close(comb.log_scale, -losses.log(), rtol=0, atol=1e-3)
    torch.testing.assert_close(weights(comb, losses) * losses, torch.ones(3, dtype=F64), rtol=0, atol=2e-3)


@pytest.mark.parametrize("k", [1, 2, 10, 50])
def test_imtll_finite_on_tiny_huge_equal_and_zero_losses(k: int) -> None:
    for losses in (
        torch.full((k,), 1e-8),
        torch.full((k,), 1e8),
        torch.logspace(-8, 8, k),
        torch.ones(k),
        torch.zeros(k),
    ):
        comb = IMTLL(k)
        for _ in range(20):
            w = weights(comb, losses)
            assert w.dtype == torch.float32 and bool(torch.isfinite(w).all())


def test_imtll_state_dict_round_trip_continues_identically() -> None:
    g = torch.Generator().manual_seed(0)
    seq = torch.rand(12, 4, generator=g, dtype=F64) * 3 + 0.05
    comb = IMTLLConfig(lr=0.02).build(4)
    for losses in seq[:5]:
        comb(None, losses)
    restored = reloaded(comb, IMTLLConfig(lr=0.02).build(4, seed=9))
    expected = [weights(comb, losses) for losses in seq[5:]]
    assert restored.adam.steps == 5
    for losses, w in zip(seq[5:], expected, strict=True):
        torch.testing.assert_close(weights(restored, losses), w, rtol=0, atol=0)


def part_message(part: str) -> str:
    return (
        f"combine_{part}: got true with combiner imtll, which learns loss scales e^s -> 1/L (positive losses only), "
        f"and the SAC {part} loss can be negative; add --combine_{part} false (critic only)"
    )


@pytest.mark.parametrize(
    ("parts", "offending"), [((), None), (("critic",), None), (PARTS, "actor"), (("alpha",), "alpha")]
)
def test_imtll_check(parts: tuple[str, ...], offending: str | None) -> None:
    if offending is None:
        IMTLLConfig().check(10, frozenset(parts))
    else:
        with pytest.raises(ValueError) as info:
            IMTLLConfig().check(10, frozenset(parts))
        assert str(info.value) == part_message(offending)
    with pytest.raises(ValueError, match=r"^combiner\.lr: got 0\.0, expected a number > 0$"):
        IMTLLConfig(lr=0.0).check(3, frozenset())
    with pytest.raises(ValueError, match=r"^combiner\.init: got inf, expected a finite number$"):
        IMTLLConfig(init=math.inf).check(3, frozenset())


@pytest.mark.parametrize(("k", "lr"), [(1, 0.01), (3, 3e-4), (5, 0.05)])
def test_imtll_matches_torchjd_imtll_trained_with_adam(k: int, lr: float) -> None:
    """torchjd's ``IMTLL`` returns ``sum_k e^{s_k} L_k - s_k``; its gradient w.r.t. the losses is our weights (same
    scale), and ``torch.optim.Adam(lr)`` on its ``log_scale`` is our internal step. 30 steps, with the weights
    compared before each step and the scales after (measured: max relative error 2e-16 of the weights, max absolute
    error 1e-16 of the scales)."""
    scal = pytest.importorskip("torchjd.scalarization", reason="torchjd==0.18.0 (the test extra) is not installed")
    comb = IMTLLConfig(lr=lr).build(k)
    ref = scal.IMTLL(k).double()
    opt = torch.optim.Adam(ref.parameters(), lr=lr)
    g = torch.Generator().manual_seed(k)
    for _ in range(30):
        losses = torch.rand(k, generator=g, dtype=F64) * 2 + 0.1
        ours = weights(comb, losses)
        values = losses.clone().requires_grad_(True)
        opt.zero_grad()
        ref(values).backward()
        torch.testing.assert_close(ours, values.grad, rtol=1e-13, atol=1e-15)
        opt.step()
        torch.testing.assert_close(comb.log_scale, ref.log_scale.detach(), rtol=1e-12, atol=1e-14)
