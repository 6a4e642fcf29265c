"""stch: warm-up on the sum of log losses, nadir point, then smooth Tchebycheff of the normalised log losses;
critic only; torchjd's STCH as the oracle after the warm-up."""

from __future__ import annotations

import math

import pytest
import torch
from combiner_helpers import reloaded

from mtrl.mto.base import PARTS, NonFiniteError, Weighting
from mtrl.mto.stch import STCH, STCHConfig

F64 = torch.float64
EPS = 1e-20


def weights(comb: STCH, losses: torch.Tensor) -> torch.Tensor:
    out = comb(None, losses)
    assert isinstance(out, Weighting)
    return out.weights


def loss_sequence(k: int, steps: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(steps, k, generator=g, dtype=F64) * 2 + 0.1


def test_stch_warmup_weights_and_nadir() -> None:
    """Warm-up: ``w = 1 / (L + eps)`` (the gradient of ``sum log L``); the nadir is the mean loss of the last
    ``nadir_steps`` warm-up calls; then ``w_k = K softmax(x / mu)_k / (L_k + eps z_k)``."""
    seq = loss_sequence(3, 8, seed=0)
    comb = STCHConfig(mu=0.5, warmup_steps=5, nadir_steps=2).build(3)
    for losses in seq[:5]:
        torch.testing.assert_close(weights(comb, losses), 1.0 / (losses + EPS), rtol=1e-15, atol=0)
    torch.testing.assert_close(comb.nadir, seq[3:5].mean(0), rtol=1e-15, atol=0)
    for losses in seq[5:]:
        x = torch.log(losses / comb.nadir + EPS)
        expected = 3 * torch.softmax(x / 0.5, 0) / (losses + EPS * comb.nadir)
        torch.testing.assert_close(weights(comb, losses), expected, rtol=1e-14, atol=0)
    assert comb.calls == 8


def test_stch_phases_share_one_scale_and_mu_one_is_linear() -> None:
    """Equal normalised losses give ``1 / L`` after the warm-up too (the factor K); at ``mu = 1`` the rule is
    ``log sum_k L_k / z_k``: weights ``(1 / z_k) / sum_j (L_j / z_j)``, times K."""
    comb = STCHConfig(warmup_steps=1, nadir_steps=1).build(4)
    nadir = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=F64)
    weights(comb, nadir)
    torch.testing.assert_close(weights(comb, 3.0 * nadir), 1.0 / (3.0 * nadir), rtol=1e-14, atol=0)
    losses = torch.tensor([0.3, 2.0, 1.0, 9.0], dtype=F64)
    expected = 4 * (1 / nadir) / (losses / nadir).sum()
    torch.testing.assert_close(weights(comb, losses), expected, rtol=1e-14, atol=0)


def test_stch_small_mu_approaches_the_maximum() -> None:
    """As ``mu -> 0`` all weight goes to the task with the largest normalised loss (Tchebycheff), without overflow."""
    comb = STCHConfig(mu=1e-4, warmup_steps=1, nadir_steps=1).build(3)
    weights(comb, torch.ones(3, dtype=F64))
    losses = torch.tensor([1.0, 1.5, 1e8], dtype=F64)
    w = weights(comb, losses)
    assert bool(torch.isfinite(w).all())
    torch.testing.assert_close(w, torch.tensor([0.0, 0.0, 3 / 1e8], dtype=F64), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("k", [1, 2, 10, 50])
def test_stch_finite_on_tiny_huge_equal_and_zero_losses(k: int) -> None:
    cases = [
        torch.full((k,), 1e-8),
        torch.full((k,), 1e8),
        torch.logspace(-8, 8, k),
        torch.ones(k),
        torch.zeros(k),  # allowed (log(L + 1e-20)): weight 1e20
    ]
    for losses in cases:
        for later in cases:  # a nadir from one case, then the other losses
            comb = STCHConfig(mu=0.1, warmup_steps=2, nadir_steps=1).build(k)
            for _ in range(2):
                assert bool(torch.isfinite(weights(comb, losses)).all())
            w = weights(comb, later)
            assert w.dtype == torch.float32 and bool(torch.isfinite(w).all()), (losses, later)


def test_stch_rejects_negative_losses() -> None:
    with pytest.raises(NonFiniteError, match=r"^combiner 'stch' takes the log of the task losses: task 2 has loss "):
        weights(STCH(3), torch.tensor([0.0, 1.0, -1e-3]))


def test_stch_state_dict_round_trip_continues_identically() -> None:
    """Saved in the middle of the nadir window: the call count, the nadir sum and then the nadir carry over."""
    seq = loss_sequence(4, 12, seed=1)
    cfg = STCHConfig(mu=0.2, warmup_steps=6, nadir_steps=3)
    comb = cfg.build(4)
    for losses in seq[:4]:
        comb(None, losses)
    restored = reloaded(comb, cfg.build(4, seed=7))
    expected = [weights(comb, losses) for losses in seq[4:]]
    for losses, w in zip(seq[4:], expected, strict=True):
        torch.testing.assert_close(weights(restored, losses), w, rtol=0, atol=0)
    torch.testing.assert_close(restored.nadir, seq[3:6].mean(0), rtol=1e-15, atol=0)


def part_message(part: str) -> str:
    return (
        f"combine_{part}: got true with combiner stch, which takes the log of the task losses, and the SAC {part} "
        f"loss can be negative; add --combine_{part} false (critic only)"
    )


@pytest.mark.parametrize(("parts", "offending"), [((), None), (("critic",), None), (PARTS, "actor")])
def test_stch_check(parts: tuple[str, ...], offending: str | None) -> None:
    if offending is None:
        STCHConfig().check(10, frozenset(parts))
    else:
        with pytest.raises(ValueError) as info:
            STCHConfig().check(10, frozenset(parts))
        assert str(info.value) == part_message(offending)
    with pytest.raises(ValueError, match=r"^combiner\.mu: got 0\.0, expected a number > 0$"):
        STCHConfig(mu=0.0).check(3, frozenset())
    with pytest.raises(ValueError, match=r"^combiner\.warmup_steps: got 0, expected an integer >= 1$"):
        STCHConfig(warmup_steps=0).check(3, frozenset())
    with pytest.raises(ValueError, match=r"^combiner\.nadir_steps: got 11, expected an integer in \[1, warmup_steps"):
        STCHConfig(warmup_steps=10, nadir_steps=11).check(3, frozenset())
    assert str(STCHConfig().build(2)) == "stch" and str(STCHConfig(mu=0.1).build(2)) == "stch-mu0.1"


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("mu", [0.01, 0.1, 0.5, 1.0])
def test_stch_matches_torchjd_stch_after_the_warmup(k: int, mu: float) -> None:
    """torchjd's ``STCH(mu, weights=ones)`` is ``mu logsumexp(x / mu)``; applied to ``x = log(L / z + 1e-20)`` (with
    our nadir ``z``) its gradient w.r.t. the losses is our weights divided by K (the official code multiplies the
    scalarization by K). 20 calls after a 5-call warm-up. Tolerance ``1e-14 / mu``: ``x / mu`` amplifies the
    rounding of ``x`` (measured max relative error 1.2e-15 at mu = 1, 7e-15 at 0.1, 8e-14 at 0.01)."""
    scal = pytest.importorskip("torchjd.scalarization", reason="torchjd==0.18.0 (the test extra) is not installed")
    seq = loss_sequence(k, 25, seed=k)
    comb = STCHConfig(mu=mu, warmup_steps=5, nadir_steps=3).build(k)
    ref = scal.STCH(mu, weights=torch.ones(k, dtype=F64))
    for n, losses in enumerate(seq):
        ours = weights(comb, losses)
        if n < 5:
            continue
        values = losses.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(ref(torch.log(values / comb.nadir + EPS)), values)
        torch.testing.assert_close(ours, k * grad, rtol=1e-14 / mu, atol=0)
    assert math.isclose(float(comb.nadir[0]), float(seq[2:5, 0].mean()), rel_tol=1e-15)
