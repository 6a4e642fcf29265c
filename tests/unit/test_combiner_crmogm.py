"""crmogm: torchjd's CRMOGMWeighting (wrapping torchjd's IMTL-G, PCGrad, MGDA and CAGrad weightings) as the oracle
over sequences of calls, the base methods of the package at ``alpha = 0``, the average's rule, state round trips and
finiteness of every base.

Scale conversions (the average is linear, so each carries through): IMTL-G, MGDA: none. PCGrad: torchjd sums the
projected gradients, we average them (``torchjd = K ours``). CAGrad: torchjd does not divide by ``1 + c^2``
(``torchjd = (1 + c^2) ours``).

Tolerances: IMTL-G 1e-10 (pseudo-inverse in both); PCGrad 1e-12 (torchjd's orders drawn from the global RNG are fed
to ours by replacing the order source); MGDA at K=2 1e-9 (torchjd's Frank-Wolfe is exact at K=2: one line search);
CAGrad 1e-3 relative (torchjd solves with cvxpy/CLARABEL, measured <= 2e-4 in ``test_combiner_oracle.py``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from combiner_helpers import F64, build, degenerate, drive, reloaded
from torch import Tensor

import mtrl.mto.crmogm as crmogm_module
from mtrl.mto.crmogm import CRMOGM, CRMOGMConfig
from mtrl.mto.gramian import gramian


def torchjd_aggregation() -> Any:
    """torchjd's aggregation module, or skip (the oracle tests only)."""
    return pytest.importorskip("torchjd.aggregation", reason="torchjd==0.18.0 (the test extra) is not installed")


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one intra-op thread (tests/unit/conftest.py)


def jacobians(k: int, steps: int, seed: int, n: int = 12) -> list[Tensor]:
    """Related Jacobians (a common component plus noise), as consecutive batches would give."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(k, n, generator=g, dtype=F64) + 0.5 * torch.randn(1, n, generator=g, dtype=F64)
    return [mean + 0.8 * torch.randn(k, n, generator=g, dtype=F64) for _ in range(steps)]


def weights_of(comb: CRMOGM) -> Tensor:
    return torch.tensor([comb.stats[f"weight/{i}"] for i in range(comb.num_tasks)], dtype=F64)


def compare(comb: CRMOGM, ref: torch.nn.Module, seq: list[Tensor], factor: float, rtol: float, atol: float) -> None:
    for jac in seq:
        d = comb(jac, torch.ones(jac.shape[0], dtype=F64))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = ref(gramian(jac)) / factor
        torch.testing.assert_close(weights_of(comb), expected, rtol=rtol, atol=atol)
        torch.testing.assert_close(d, expected @ jac, rtol=rtol, atol=10 * atol)


@pytest.mark.parametrize("k", [2, 3, 6])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9])
def test_imtlg_base_matches_torchjd(k: int, alpha: float) -> None:
    agg = torchjd_aggregation()
    comb = CRMOGMConfig(base="imtlg", alpha=alpha).build(k)
    compare(comb, agg.CRMOGMWeighting(agg.IMTLGWeighting(), alpha=alpha), jacobians(k, 6, seed=k), 1.0, 1e-10, 1e-12)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_pcgrad_base_matches_torchjd(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchjd draws one ``randperm(K)`` per task from the global RNG; ours draws its orders from the owned generator.
    Both are fed the same orders: ours through the patched order source, which draws torchjd's way."""
    agg = torchjd_aggregation()

    def torchjd_orders(num_tasks: int, generator: torch.Generator) -> Tensor:
        perms = [torch.randperm(num_tasks) for _ in range(num_tasks)]
        return torch.stack([p[p != i] for i, p in enumerate(perms)])

    monkeypatch.setattr(crmogm_module, "random_orders", torchjd_orders)
    comb = CRMOGMConfig(base="pcgrad", alpha=0.8).build(k)
    ref = agg.CRMOGMWeighting(agg.PCGradWeighting(), alpha=0.8)
    for step, jac in enumerate(jacobians(k, 6, seed=10 + k)):
        torch.manual_seed(step)
        d = comb(jac, torch.ones(k, dtype=F64))
        torch.manual_seed(step)
        expected = ref(gramian(jac)) / k
        torch.testing.assert_close(weights_of(comb), expected, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(d, expected @ jac, rtol=1e-12, atol=1e-13)


def test_mgda_base_matches_torchjd_at_two_tasks() -> None:
    agg = torchjd_aggregation()
    comb = CRMOGMConfig(base="mgda", alpha=0.7).build(2)
    ref = agg.CRMOGMWeighting(agg.MGDAWeighting(epsilon=1e-9, max_iters=1000), alpha=0.7)
    compare(comb, ref, jacobians(2, 6, seed=20), 1.0, 1e-9, 1e-12)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cagrad_base_matches_torchjd() -> None:
    agg = torchjd_aggregation()
    c = 0.5
    try:
        weighting = agg.CAGradWeighting(c=c)
    except ImportError as exc:
        pytest.skip(f"torchjd optional dependency missing ({exc})")
    comb = CRMOGMConfig(base="cagrad", alpha=0.6, c=c).build(3)
    compare(comb, agg.CRMOGMWeighting(weighting, alpha=0.6), jacobians(3, 5, seed=30), 1 + c * c, 1e-3, 1e-4)


@pytest.mark.parametrize(
    ("base", "name", "options"),
    [
        ("mgda", "mgda", {}),
        ("pcgrad", "pcgrad", {}),
        ("imtlg", "imtlg", {}),
        ("cagrad", "cagrad", {"c": 0.4}),
    ],
)
def test_alpha_zero_is_the_base_combiner(base: str, name: str, options: dict) -> None:
    """``alpha = 0``: the package's own combiner, call for call (same seed: PCGrad draws the same orders)."""
    comb = CRMOGMConfig(base=base, alpha=0.0, **options).build(4, seed=3)  # type: ignore[arg-type]
    other = build(name, 4, seed=3, **options)
    for jac in jacobians(4, 5, seed=40):
        ones = torch.ones(4, dtype=F64)
        torch.testing.assert_close(comb(jac, ones), other(jac, ones), rtol=1e-10, atol=1e-12)


def test_average_rule_and_frozen_weights() -> None:
    """``lambda_t = alpha lambda_{t-1} + (1 - alpha) hat lambda_t`` from ``lambda_0 = hat lambda_1``; ``alpha = 1``
    keeps the first weights."""
    seq = jacobians(3, 5, seed=50)
    comb, base = CRMOGMConfig(alpha=0.75).build(3), CRMOGMConfig(alpha=0.0).build(3)
    frozen = CRMOGMConfig(alpha=1.0).build(3)
    lam = None
    for jac in seq:
        ones = torch.ones(3, dtype=F64)
        comb(jac, ones)
        base(jac, ones)
        frozen(jac, ones)
        hat = weights_of(base)  # type: ignore[arg-type]
        lam = hat if lam is None else 0.75 * lam + 0.25 * hat
        torch.testing.assert_close(weights_of(comb), lam, rtol=1e-13, atol=1e-15)
    first = CRMOGMConfig(alpha=0.0).build(3)
    first(seq[0], torch.ones(3, dtype=F64))
    torch.testing.assert_close(weights_of(frozen), weights_of(first), rtol=0, atol=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("base", ["mgda", "pcgrad", "cagrad", "imtlg"])
def test_state_dict_round_trip(base: str) -> None:
    """The average, whether it started, the warm-start support and the generator (PCGrad's orders) are saved."""
    seq = jacobians(4, 8, seed=60)
    comb = CRMOGMConfig(base=base).build(4, seed=1)  # type: ignore[arg-type]
    drive(comb, seq[:4])
    restored = reloaded(comb, CRMOGMConfig(base=base).build(4, seed=9))  # type: ignore[arg-type]
    expected = drive(comb, seq[4:])
    for a, b in zip(drive(restored, seq[4:]), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_finite_for_every_base(k: int) -> None:
    """Every base on the degenerate Jacobians, at scales 1e-8..1e8, float32 and float64."""
    for base in ("pcgrad", "cagrad", "imtlg"):
        comb = CRMOGMConfig(base=base).build(k)  # type: ignore[arg-type]
        for dtype in (torch.float32, F64):
            for case, jac in degenerate(k).items():
                for scale in (1e-8, 1.0, 1e8):
                    d = comb((jac * scale).to(dtype), torch.ones(k, dtype=dtype))
                    assert bool(torch.isfinite(d).all()), (base, case, scale, dtype)
                    assert all(math.isfinite(v) for v in comb.stats.values()), (base, case, scale, comb.stats)


def test_config_checks() -> None:
    for options, message in [
        ({"alpha": 1.5}, r"combiner.alpha: got 1.5, expected a number in \[0, 1\]"),
        ({"c": -1.0}, "combiner.c: got -1.0, expected a number >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            CRMOGMConfig(**options).check(3, frozenset())  # type: ignore[arg-type]
    assert str(CRMOGMConfig().build(3)) == "crmogm-mgda-a0.9"
    assert str(CRMOGMConfig(base="cagrad", alpha=0.5, c=0.9).build(3)) == "crmogm-cagrad-a0.5-c0.9"
