"""excessmtl: torchjd's ExcessMTLWeighting as the oracle over sequences of calls, the in-place squared-gradient
state, the warm-up, column blocks, state round trips and finiteness.

Scale conversion: none. torchjd's ``ExcessMTLWeighting(robust_step_size=eta, n_warmup_steps=n)`` returns the weights
(sum 1) we return; our ``warmup_steps = n >= 1`` (the official code's behaviour is ``n = 1``: the first call sets the
baseline, the weights stay uniform; torchjd's default ``n = 0`` instead updates the weights with the raw first
estimates, which we do not offer). We keep log-weights (``log_softmax``) where torchjd keeps weights
(``softmax(log w + eta r)``): equal up to rounding, 1e-13 relative over 12 calls.
"""

from __future__ import annotations

import math

import pytest
import torch
from combiner_helpers import F64, degenerate, drive, reloaded
from torch import Tensor

from mtrl.mto.excessmtl import ExcessMTL, ExcessMTLConfig, excess_risks
from mtrl.mto.memory import TaskMemory

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one intra-op thread (tests/unit/conftest.py)


def jacobians(k: int, steps: int, seed: int, n: int = 40) -> list[Tensor]:
    """Jacobians whose task scales drift apart over the calls (so the excess risks differ between tasks)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 1, k, dtype=F64)[:, None]
    return [scales ** (t / steps) * torch.randn(k, n, generator=g, dtype=F64) for t in range(steps)]


def weights_of(comb: ExcessMTL) -> Tensor:
    return torch.tensor([comb.stats[f"weight/{i}"] for i in range(comb.num_tasks)], dtype=F64)


@pytest.mark.parametrize("k", [1, 2, 3, 10])
@pytest.mark.parametrize(("step_size", "warmup"), [(1e-2, 1), (1.0, 1), (0.5, 3)])
def test_matches_torchjd_over_a_sequence(k: int, step_size: float, warmup: int) -> None:
    agg = pytest.importorskip("torchjd.aggregation", reason="torchjd (test extra) is not installed")
    ref = agg.ExcessMTLWeighting(robust_step_size=step_size, n_warmup_steps=warmup)
    comb = ExcessMTLConfig(step_size=step_size, warmup_steps=warmup).build(k)
    for jac in jacobians(k, 12, seed=k):
        d = comb(jac, torch.ones(k, dtype=F64))
        expected = ref(jac)
        torch.testing.assert_close(weights_of(comb), expected, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(d, expected @ jac, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(comb.sq_sums.value, ref._sq_grad_sum, rtol=1e-15, atol=0)
    if k > 1:
        assert float(weights_of(comb).max() - weights_of(comb).min()) > 1e-3 * step_size  # the weights moved


def test_warmup_keeps_uniform_weights_and_sets_the_mean_baseline() -> None:
    k, n = 3, 3
    comb = ExcessMTLConfig(warmup_steps=n).build(k)
    seq = jacobians(k, n, seed=1)
    sq = torch.zeros_like(seq[0])
    risks = []
    for jac in seq:
        d = comb(jac, torch.ones(k, dtype=F64))
        torch.testing.assert_close(d, jac.mean(0))
        sq += jac**2
        risks.append((jac**2 / (sq + 1e-7).sqrt()).sum(1))
    torch.testing.assert_close(comb.baseline, torch.stack(risks).mean(0), rtol=1e-14, atol=0)
    torch.testing.assert_close(comb.sq_sums.value, sq, rtol=1e-15, atol=0)


def test_excess_risks_in_chunks_and_in_place() -> None:
    """Blocks wider than a Gramian chunk, and views of one state: the sums and the risks of the whole matrix."""
    g = torch.Generator().manual_seed(2)
    jac = torch.randn(3, 70_000, generator=g, dtype=F64)
    memory = TaskMemory(3)
    blocks = [jac[:, :5], jac[:, 5:]]
    views, filled = memory.views(blocks)
    assert not filled
    risks = excess_risks(blocks, views)
    torch.testing.assert_close(memory.value, jac**2)
    torch.testing.assert_close(risks, (jac**2 / (jac**2 + 1e-7).sqrt()).sum(1), rtol=1e-12, atol=0)


def test_weights_follow_the_larger_excess_risk() -> None:
    """Exponentiated gradient: a task whose estimated risk stays high relative to its baseline gains weight."""
    k = 2
    comb = ExcessMTLConfig(step_size=1.0).build(k)
    g = torch.Generator().manual_seed(3)
    for t in range(6):
        jac = torch.randn(k, 30, generator=g, dtype=F64)
        jac[1] *= 3.0**t  # task 1's gradients grow: its excess risk estimate grows against its baseline
        comb(jac, torch.ones(k, dtype=F64))
    w = weights_of(comb)
    assert float(w[1]) > 0.9 and abs(float(w.sum()) - 1) < 1e-12


@pytest.mark.parametrize("warmup", [1, 4])
def test_state_dict_round_trip(warmup: int) -> None:
    """Saved mid-warm-up or after it and loaded into a fresh instance, the sequence continues identically."""
    seq = jacobians(4, 9, seed=4)
    comb = ExcessMTLConfig(step_size=0.5, warmup_steps=warmup).build(4, seed=1)
    drive(comb, seq[:3])
    restored = reloaded(comb, ExcessMTLConfig(step_size=0.5, warmup_steps=warmup).build(4, seed=7))
    expected = drive(comb, seq[3:])
    for a, b in zip(drive(restored, seq[3:]), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_float32_state_stays_float32_and_blocks_match_the_matrix() -> None:
    seq = [j.float() for j in jacobians(3, 4, seed=5)]
    whole, split = ExcessMTLConfig(step_size=1.0).build(3), ExcessMTLConfig(step_size=1.0).build(3)
    for jac in seq:
        a = whole(jac, torch.ones(3))
        b = split(list(jac.split([7, 33], dim=1)), torch.ones(3))
        assert isinstance(a, Tensor) and isinstance(b, list)
        torch.testing.assert_close(torch.cat(b), a, rtol=1e-6, atol=1e-7)
    assert whole.sq_sums.value.dtype == torch.float32


@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_finite_with_large_steps_and_warmup(k: int) -> None:
    """Large step sizes (saturated weights) and a longer warm-up on the degenerate Jacobians (zero rows: a baseline
    of 0), at scales 1e-8..1e8, float32 and float64."""
    for options in ({"step_size": 100.0}, {"warmup_steps": 3}):
        for dtype in (torch.float32, F64):
            comb = ExcessMTLConfig(**options).build(k)  # type: ignore[arg-type]
            for case, jac in degenerate(k).items():
                for scale in (1e-8, 1.0, 1e8):
                    d = comb((jac * scale).to(dtype), torch.ones(k, dtype=dtype))
                    assert bool(torch.isfinite(d).all()), (options, case, scale, dtype)
                    assert all(math.isfinite(v) for v in comb.stats.values()), (case, scale, comb.stats)
                    assert abs(float(comb.log_weights.exp().sum()) - 1) < 1e-9


def test_config_checks() -> None:
    for options, message in [
        ({"step_size": 0.0}, "combiner.step_size: got 0.0, expected a number > 0"),
        ({"warmup_steps": 0}, "combiner.warmup_steps: got 0, expected an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            ExcessMTLConfig(**options).check(3, frozenset())  # type: ignore[arg-type]
    assert str(ExcessMTLConfig().build(3)) == "excessmtl-e0.01"
    assert str(ExcessMTLConfig(step_size=1.0, warmup_steps=3).build(3)) == "excessmtl-e1-w3"
