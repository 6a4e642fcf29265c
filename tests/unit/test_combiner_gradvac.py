"""gradvac: Gradient Vaccine's corrections and EMA targets, torchjd as oracle (same random orders), the paper's
properties (no change at or above the targets, the corrected cosine equals the target, beta = 0 is PCGrad), owned
state (state_dict round trip, instances independent), pinned values.

Scale: the paper, torchjd 0.18.0 ``GradVac`` and LibMTL sum the corrected gradients, we average them:
``torchjd = K * ours``. torchjd draws one ``randperm(K - 1)`` per task from the global RNG, we the same from the
combiner's generator, so equal seeds give equal orders. torchjd adds ``eps`` (default 1e-8) to the cosine and
correction denominators; with ``eps=0`` the two agree to rounding (rtol 1e-10, measured <= 4e-16), with the default
the difference is ``O(eps / (||g_i|| ||g_j||))``: rtol 1e-6 (measured <= 2e-9 on these unit-scale matrices).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from combiner_helpers import F64, normal, reloaded
from torch import Tensor

from mtrl.mto.gradvac import GradVac, GradVacConfig, gradvac_coefficients, random_orders
from mtrl.mto.pcgrad import pcgrad_weights

J_A = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
L_A = [[1.0, 2.0], [0.8, 1.9], [0.7, 1.7]]


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one intra-op thread (tests/unit/conftest.py)


def call(comb: GradVac, jac: Tensor) -> Tensor:
    d = comb(jac, torch.ones(jac.shape[0], dtype=jac.dtype))
    assert isinstance(d, Tensor)
    return d


def sequence(k: int, calls: int, seed: int) -> list[Tensor]:
    return [normal(k, 20, seed=1000 * seed + i) for i in range(calls)]


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("beta", [0.5, 0.01, 1.0])
def test_gradvac_matches_torchjd(k: int, beta: float) -> None:
    torchjd = pytest.importorskip("torchjd", reason="torchjd==0.18.0 (the test extra) is not installed")
    for eps, rtol in ((0.0, 1e-10), (1e-8, 1e-6)):
        seed = 31 * k + int(100 * beta)
        ours = GradVacConfig(beta=beta).build(k, seed=seed)
        torch.manual_seed(seed)
        ref = torchjd.aggregation.GradVac(beta=beta, eps=eps)
        for jac in sequence(k, 5, seed):
            expected = ref(jac)
            assert float((k * call(ours, jac) - expected).norm()) <= rtol * float(expected.norm())
            phi_t = ref.gramian_weighting._phi_t
            torch.testing.assert_close(ours.phi_hat, phi_t, rtol=0, atol=10 * rtol)


def test_gradvac_unchanged_at_or_above_the_targets() -> None:
    """Cosines at or above their targets: no correction, ``d`` is the mean (the targets still move)."""
    jac = normal(5, 12, seed=3, shift=0.0)
    comb = GradVacConfig().build(5)
    comb.phi_hat.fill_(-1.0)
    torch.testing.assert_close(call(comb, jac), jac.mean(0), rtol=1e-14, atol=0)
    unit = jac / jac.norm(dim=1, keepdim=True)
    cos = (unit @ unit.T).fill_diagonal_(0.0)
    torch.testing.assert_close(comb.phi_hat, (0.5 * (cos - 1.0)).fill_diagonal_(-1.0))
    positive = normal(4, 12, seed=4, shift=0.0).abs()  # all cosines > 0 = the initial targets
    torch.testing.assert_close(call(GradVacConfig().build(4), positive), positive.mean(0), rtol=1e-14, atol=0)


def test_gradvac_correction_reaches_the_target() -> None:
    """After the correction ``cos(g_i', g_j)`` is the target, whatever the sign of the cosine before."""
    for target in (0.3, 0.9, -0.2):
        jac = normal(2, 6, seed=5, shift=0.0)
        gram = jac @ jac.T
        targets = torch.full((2, 2), target, dtype=F64)
        before = float(gram[0, 1] / gram.diagonal().prod().sqrt())
        if before >= target:
            continue
        coef = gradvac_coefficients(gram, torch.tensor([[1], [0]]), targets, beta=0.25)
        corrected = coef[0] @ jac
        assert float(corrected @ jac[1] / (corrected.norm() * jac[1].norm())) == pytest.approx(target, rel=1e-12)
        assert float(targets[0, 1]) == pytest.approx(0.75 * target + 0.25 * before, rel=1e-12)


def test_gradvac_beta_zero_is_pcgrad() -> None:
    """Targets 0: the correction is PCGrad's projection (the mtrl variant with the same orders)."""
    for k in (2, 3, 6):
        jac = normal(k, 15, seed=k, shift=0.0)
        orders = random_orders(k, torch.Generator().manual_seed(k))
        targets = torch.zeros(k, k, dtype=F64)
        coef = gradvac_coefficients(jac @ jac.T, orders, targets, beta=0.0)
        torch.testing.assert_close(coef, pcgrad_weights(jac @ jac.T, orders), rtol=1e-12, atol=1e-14)
        assert float(targets.abs().max()) == 0.0


def test_gradvac_scale_invariant_weights() -> None:
    jac = normal(4, 9, seed=6, shift=0.0)
    for s in (1e-8, 1e8):
        torch.testing.assert_close(
            call(GradVacConfig().build(4, 1), s * jac), s * call(GradVacConfig().build(4, 1), jac)
        )


def test_gradvac_state_round_trip_and_instances_independent() -> None:
    comb = GradVacConfig(beta=0.3).build(4, seed=5)
    other = GradVacConfig(beta=0.3).build(4, seed=5)
    for jac in sequence(4, 5, seed=0):
        call(comb, jac)
    assert float(comb.phi_hat.abs().max()) > 0 and float(other.phi_hat.abs().max()) == 0.0
    restored = reloaded(comb, GradVacConfig(beta=0.3).build(4, seed=99))
    expected = [call(comb, jac) for jac in sequence(4, 4, seed=1)]
    for jac, exp in zip(sequence(4, 4, seed=1), expected, strict=True):
        torch.testing.assert_close(call(restored, jac), exp, rtol=0, atol=0)


def test_gradvac_pinned_values() -> None:
    """Three calls on torchjd's regression matrix: the first is PCGrad (targets 0), then the EMA targets act."""
    jac = torch.tensor(J_A, dtype=F64)
    comb = GradVacConfig().build(2)
    outs = [comb(jac, torch.tensor(losses, dtype=F64)).tolist() for losses in L_A]
    np.testing.assert_allclose(
        outs,
        [
            [0.2923976608187129, 1.9005847953216375, 1.9005847953216375],
            [0.5032702180261404, 1.6322015406940027, 1.6322015406940027],
            [0.6622673286093996, 1.4298415817698553, 1.4298415817698553],
        ],
        rtol=1e-10,
    )


def test_gradvac_config() -> None:
    assert str(GradVacConfig().build(3)) == "gradvac"
    assert str(GradVacConfig(beta=0.01).build(3)) == "gradvac-b0.01"
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"^combiner\.beta: got .*, expected a number in \[0, 1\]$"):
            GradVacConfig(beta=bad).build(3)
