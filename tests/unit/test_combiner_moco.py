"""moco: not in torchjd, so the defining properties of the paper's update (Fernando et al. ICLR 2023, Alg. 1) are
checked instead: the tracked gradients and the weights follow their update rules (step-size decays included), with
``beta = 1`` the weights take MGDA's projected gradient steps and converge to MGDA's min-norm weights, constant
gradients give their mean, the l2 variant uses unit tracked gradients; pinned values on a small fixed matrix; state
round trips and finiteness of the options.
"""

from __future__ import annotations

import math

import pytest
import torch
from combiner_helpers import F64, degenerate, drive, reloaded
from torch import Tensor

from mtrl.mto.mgda import min_norm_weights
from mtrl.mto.moco import MoCo, MoCoConfig
from mtrl.mto.modo import MoDoConfig
from mtrl.mto.qp import project_simplex

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one intra-op thread (tests/unit/conftest.py)


def jacobians(k: int, steps: int, seed: int, n: int = 10) -> list[Tensor]:
    """Noisy samples around fixed task gradients, as consecutive batches would give."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(k, n, generator=g, dtype=F64)
    return [mean + 0.5 * torch.randn(k, n, generator=g, dtype=F64) for _ in range(steps)]


def weights_of(comb: MoCo) -> Tensor:
    return torch.tensor([comb.stats[f"weight/{i}"] for i in range(comb.num_tasks)], dtype=F64)


@pytest.mark.parametrize(
    ("beta", "beta_sigma", "gamma", "gamma_sigma", "rho"),
    [
        (0.1, 0.0, 0.1, 0.0, 0.1),  # the official code's defaults (constant steps)
        (0.5, 0.5, 0.1, 0.5, 0.0),  # LibMTL's defaults (decaying steps)
        (0.3, 0.2, 0.05, 0.7, 0.3),
    ],
)
def test_tracking_and_weight_rules(
    beta: float, beta_sigma: float, gamma: float, gamma_sigma: float, rho: float
) -> None:
    """``y_t = y_{t-1} - beta_t (y_{t-1} - g_t)`` (``y_1 = g_1``), ``lambda_t = Pi(lambda_{t-1} - gamma_t (Y Y^T +
    rho I) lambda_{t-1})``, ``d = Y^T lambda_t``, with ``beta_t = beta / t^beta_sigma``, ``gamma_t = gamma /
    t^gamma_sigma``."""
    k = 4
    comb = MoCoConfig(beta=beta, beta_sigma=beta_sigma, gamma=gamma, gamma_sigma=gamma_sigma, rho=rho).build(k)
    y: Tensor | None = None
    lam = torch.full((k,), 1 / k, dtype=F64)
    for t, jac in enumerate(jacobians(k, 7, seed=1), start=1):
        d = comb(jac, torch.ones(k, dtype=F64))
        y = jac.clone() if y is None else y - beta / t**beta_sigma * (y - jac)
        lam = project_simplex(lam - gamma / t**gamma_sigma * ((y @ y.T) @ lam + rho * lam))
        torch.testing.assert_close(comb.tracked.value, y, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(comb.lam, lam, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(d, lam @ y, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(weights_of(comb), lam, rtol=1e-12, atol=1e-14)
        assert comb.stats["grad_norm_after"] == pytest.approx(float(d.norm()), rel=1e-10)


def test_beta_one_is_projected_mgda_on_each_batch() -> None:
    """``beta = 1``: no tracking (``y_t = g_t``); one call is one projected gradient step on ``lambda^T G lambda``
    from ``1/K``; repeated on one Jacobian (``rho = 0``) the weights converge to MGDA's min-norm weights."""
    jac = jacobians(4, 1, seed=2)[0]
    comb = MoCoConfig(beta=1.0, gamma=0.05, rho=0.0).build(4)
    d = comb(jac, torch.ones(4, dtype=F64))
    lam1 = project_simplex(torch.full((4,), 0.25, dtype=F64) - 0.05 * (jac @ jac.T) @ torch.full((4,), 0.25, dtype=F64))
    torch.testing.assert_close(d, lam1 @ jac)
    other = jacobians(4, 2, seed=3)[1]
    comb(other, torch.ones(4, dtype=F64))
    torch.testing.assert_close(comb.tracked.value, other, rtol=0, atol=0)
    for _ in range(800):
        comb(jac, torch.ones(4, dtype=F64))
    torch.testing.assert_close(comb.lam, min_norm_weights(jac @ jac.T), rtol=0, atol=1e-7)


def test_fixed_jacobian_is_modo() -> None:
    """The same Jacobian at every call: the tracked gradients stay on it, and MoCo takes MoDo's steps (its double
    sampling then has nothing to correct) with the same ``gamma`` and ``rho``, call for call."""
    jac = jacobians(4, 1, seed=11)[0]
    moco, modo = MoCoConfig(beta=0.3, gamma=0.05, rho=0.2).build(4), MoDoConfig(gamma=0.05, rho=0.2).build(4)
    for _ in range(6):
        ones = torch.ones(4, dtype=F64)
        torch.testing.assert_close(moco(jac, ones), modo(jac, ones), rtol=1e-12, atol=1e-14)


def test_constant_identical_gradients_give_the_mean() -> None:
    g = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    comb = MoCoConfig().build(3)
    for _ in range(4):
        torch.testing.assert_close(comb(g.repeat(3, 1), torch.ones(3, dtype=F64)), g, rtol=1e-14, atol=1e-15)
    single = torch.tensor([[3.0, -4.0]], dtype=F64)
    torch.testing.assert_close(MoCoConfig().build(1)(single, torch.ones(1, dtype=F64)), single[0])


def test_tracking_averages_out_the_noise() -> None:
    """The tracked gradients are closer to the noise-free task gradients than the last sample (the point of the
    correction: MGDA's weights on ``y`` instead of on single noisy gradients)."""
    g = torch.Generator().manual_seed(4)
    mean = torch.randn(3, 50, generator=g, dtype=F64)
    comb = MoCoConfig(beta=0.1).build(3)
    for _ in range(60):
        jac = mean + torch.randn(3, 50, generator=g, dtype=F64)
        comb(jac, torch.ones(3, dtype=F64))
    assert float((comb.tracked.value - mean).norm()) < 0.3 * float((jac - mean).norm())


def test_l2_uses_unit_tracked_gradients() -> None:
    """``normalization="l2"``: the weights step on the Gramian of ``y_k / ||y_k||`` and the direction is
    ``sum_k lambda_k y_k / ||y_k||`` (norm <= 1); a zero ``y_k`` gets no weight in the direction."""
    jac = jacobians(3, 1, seed=5)[0] * torch.tensor([[1e-3], [1.0], [1e3]], dtype=F64)
    comb = MoCoConfig(normalization="l2").build(3)
    d = comb(jac, torch.ones(3, dtype=F64))
    unit = jac / jac.norm(dim=1, keepdim=True)
    lam = project_simplex(
        torch.full((3,), 1 / 3, dtype=F64)
        - 0.1 * (unit @ unit.T + 0.1 * torch.eye(3, dtype=F64)) @ torch.full((3,), 1 / 3, dtype=F64)
    )
    torch.testing.assert_close(d, lam @ unit, rtol=1e-12, atol=1e-14)
    assert float(d.norm()) <= 1.0
    zero = jac.clone()
    zero[0] = 0
    d0 = MoCoConfig(normalization="l2").build(3)(zero, torch.ones(3, dtype=F64))
    assert bool(torch.isfinite(d0).all())


#: J_B and L_B of ``test_combiner_contract.py`` (a 3 x 4 Jacobian), four calls with the default config; then a
#: second Jacobian for two calls (the tracking moves towards it). Computed once from this implementation after the
#: rule tests passed; a change here means the math changed.
J_B = [[1.0, -2.0, 0.5, 3.0], [-1.5, 1.0, 2.0, -0.5], [0.25, 0.5, -1.0, 1.0]]
J_C = [[0.5, 1.0, 0.0, -1.0], [1.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.5, 2.0]]
PINNED = [
    [-0.48229166666666673, 0.48541666666666666, 0.5281250000000001, 0.5052083333333334],
    [-0.2318828125000001, 0.297359375, 0.24085156250000006, 0.7890234374999999],
    [-0.3278704622395833, 0.4691806380208333, 0.22941892578125, 0.6210130533854168],
    [-0.2634933131998698, 0.4275654118815104, 0.14735961274414067, 0.6899813838704427],
    [-0.25989810390109946, 0.4224052461956934, 0.2155695946090776, 0.6354079995341342],
    [-0.22155568849635554, 0.3661153359888722, 0.26433201193341654, 0.6447110967461338],
]


def pinned_run() -> list[list[float]]:
    comb = MoCoConfig().build(3)
    out = []
    for rows in [J_B] * 4 + [J_C] * 2:
        out.append(comb(torch.tensor(rows, dtype=F64), torch.ones(3, dtype=F64)).tolist())
    return out


def test_pinned_values() -> None:
    torch.testing.assert_close(
        torch.tensor(pinned_run(), dtype=F64), torch.tensor(PINNED, dtype=F64), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("options", [{}, {"beta_sigma": 0.5, "gamma_sigma": 0.5, "normalization": "l2"}])
def test_state_dict_round_trip(options: dict) -> None:
    """The tracked gradients, the weights and the call count (the decays) are saved; a fresh instance continues
    identically."""
    seq = jacobians(4, 9, seed=6)
    comb = MoCoConfig(**options).build(4, seed=1)
    drive(comb, seq[:5])
    restored = reloaded(comb, MoCoConfig(**options).build(4, seed=7))
    expected = drive(comb, seq[5:])
    for a, b in zip(drive(restored, seq[5:]), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_blocks_and_matrix_share_the_tracked_gradients() -> None:
    seq = jacobians(3, 5, seed=7)
    whole, mixed = MoCoConfig().build(3), MoCoConfig().build(3)
    expected = drive(whole, seq)
    got = [drive(mixed, [jac], split=4 if i % 2 == 0 else None)[0] for i, jac in enumerate(seq)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_new_width_restarts_the_tracking() -> None:
    comb = MoCoConfig().build(3)
    drive(comb, jacobians(3, 3, seed=8, n=6))
    jac = jacobians(3, 1, seed=9, n=9)[0]
    comb(jac, torch.ones(3, dtype=F64))
    torch.testing.assert_close(comb.tracked.value, jac, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 2, 3, 10, 50])
def test_finite_with_the_options(k: int) -> None:
    """l2 normalisation, decays and large steps on the degenerate Jacobians, at scales 1e-8..1e8, float32 and float64
    (one instance per option set and dtype sees them all, so the tracked state mixes scales)."""
    for options in ({"normalization": "l2"}, {"beta": 0.5, "beta_sigma": 0.5, "gamma": 100.0, "gamma_sigma": 0.5}):
        for dtype in (torch.float32, F64):
            comb = MoCoConfig(**options).build(k)  # type: ignore[arg-type]
            for case, jac in degenerate(k).items():
                for scale in (1e-8, 1.0, 1e8):
                    d = comb((jac * scale).to(dtype), torch.ones(k, dtype=dtype))
                    assert bool(torch.isfinite(d).all()), (options, case, scale, dtype)
                    assert all(math.isfinite(v) for v in comb.stats.values()), (case, scale, comb.stats)
                    assert abs(float(comb.lam.sum()) - 1) < 1e-9


def test_config_checks() -> None:
    for options, message in [
        ({"beta": 0.0}, r"combiner.beta: got 0.0, expected a number in \(0, 1\]"),
        ({"beta": 1.5}, r"combiner.beta: got 1.5, expected a number in \(0, 1\]"),
        ({"gamma": 0.0}, "combiner.gamma: got 0.0, expected a number > 0"),
        ({"beta_sigma": -1.0}, "combiner.beta_sigma: got -1.0, expected a number >= 0"),
        ({"rho": -1.0}, "combiner.rho: got -1.0, expected a number >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            MoCoConfig(**options).check(3, frozenset())  # type: ignore[arg-type]
    assert str(MoCoConfig().build(3)) == "moco-b0.1-g0.1"
    assert str(MoCoConfig(beta=0.5, beta_sigma=0.5, gamma_sigma=0.5, rho=0.0).build(3)) == "moco-b0.5-g0.1-s0.5-0.5-r0"
