"""fairgrad: the alpha-fair fixed point ``G w = w^(-1/alpha)`` (exact Newton solver), its limits (alpha = 0: mean,
alpha = 1: Nash-MTL), its scaling law, degenerate Jacobians, the official code's 20-step SGD solver, torchjd as oracle,
pinned values.

Scale: torchjd 0.18.0 ``FairGrad(alpha)`` returns ``J^T w`` as we do (no rescaling): compared as they are. It solves
the fixed point with scipy's ``least_squares`` from ``1/K`` at its default tolerances (``ftol = xtol = gtol = 1e-8``),
ours by Newton to machine precision: rtol 1e-6 (measured <= 4e-11).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from combiner_helpers import F64, degenerate, normal
from torch import Tensor

from mtrl.mto.fairgrad import FairGradConfig, fairgrad_exact_weights, fairgrad_sgd20_weights
from mtrl.mto.nashmtl import NashMTLConfig

J_A = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
J_B = [[1.0, -2.0, 0.5, 3.0], [-1.5, 1.0, 2.0, -0.5], [0.25, 0.5, -1.0, 1.0]]
ALPHAS = (0.5, 1.0, 2.0, 5.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one intra-op thread (tests/unit/conftest.py)


def direction(jac: Tensor, **options: object) -> tuple[Tensor, Tensor]:
    """FairGrad's direction for ``jac`` and its weights (from the stats)."""
    k = jac.shape[0]
    comb = FairGradConfig(**options).build(k)  # type: ignore[arg-type]
    d = comb(jac, torch.ones(k, dtype=jac.dtype))
    assert isinstance(d, Tensor)
    return d, torch.tensor([comb.stats[f"weight/{i}"] for i in range(k)], dtype=F64)


@pytest.mark.parametrize("k", [2, 3, 10, 50])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_fairgrad_fixed_point(k: int, alpha: float) -> None:
    """``w > 0`` and every task's first-order improvement ``g_i . d = w_i^(-1/alpha)``, for tasks of very
    different scales too."""
    for jac in (normal(k, 3 * k, seed=k), normal(k, 3 * k, seed=k + 1) * torch.logspace(-3, 3, k, dtype=F64)[:, None]):
        d, w = direction(jac, alpha=alpha)
        torch.testing.assert_close(w @ jac, d)
        assert float(w.min()) > 0
        torch.testing.assert_close(jac @ d, w.pow(-1.0 / alpha), rtol=1e-10, atol=0)


def test_fairgrad_alpha_zero_is_mean_and_alpha_one_is_nashmtl() -> None:
    jac = normal(5, 14, seed=2)
    torch.testing.assert_close(direction(jac, alpha=0.0)[0], jac.mean(0), rtol=1e-14, atol=0)
    nash = NashMTLConfig(max_norm=0.0).build(5)(jac, torch.ones(5, dtype=F64))
    assert isinstance(nash, Tensor)
    torch.testing.assert_close(direction(jac, alpha=1.0)[0], nash, rtol=1e-9, atol=0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_fairgrad_scaling_law(alpha: float) -> None:
    """Scaling every gradient by ``s`` scales ``d`` by ``s^((1 - alpha) / (1 + alpha))``; K=1 is
    ``||g||^(-2 alpha / (1 + alpha)) g``."""
    jac = normal(4, 10, seed=3)
    d = direction(jac, alpha=alpha)[0]
    for s in (1e-6, 7.0, 1e6):
        torch.testing.assert_close(direction(s * jac, alpha=alpha)[0], s ** ((1 - alpha) / (1 + alpha)) * d)
    g = normal(1, 6, seed=4)
    expected = float(g.norm()) ** (-2 * alpha / (1 + alpha)) * g[0]
    torch.testing.assert_close(direction(g, alpha=alpha)[0], expected, rtol=1e-12, atol=0)


def test_fairgrad_degenerate() -> None:
    """A zero row gets weight 0 (the others are solved without it); no positive solution (g and -g, mixed-sign rank
    one): finite, and no task's first-order change is worse than a small fraction of its own scale."""
    jac = normal(4, 9, seed=5)
    with_zero = torch.cat([jac, torch.zeros(1, 9, dtype=F64)])
    d, w = direction(with_zero)
    assert float(w[-1]) == 0.0
    torch.testing.assert_close(d, direction(jac)[0], rtol=1e-12, atol=0)
    for k in (2, 3, 10, 50):
        for case, jac in degenerate(k).items():
            for dtype in (torch.float64, torch.float32):
                d, w = direction(jac.to(dtype))
                assert bool(torch.isfinite(d).all() & torch.isfinite(w).all()), (k, case, dtype)
                norms = jac.norm(dim=1)
                worst = (jac @ d.double()) / (norms * float(w.abs() @ norms) + 1e-300)
                assert float(worst.min()) >= -1e-3, (k, case, dtype)


def official_sgd20(gram: Tensor, alpha: float) -> Tensor:
    """The official solver as written (torch autograd, SGD, clip_grad_norm_), in float64."""
    k = gram.shape[0]
    w = (torch.ones(k, dtype=F64) / k).requires_grad_(True)
    optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.5)
    w_best, obj_best = None, math.inf
    for _ in range(20):
        optimizer.zero_grad()
        obj = torch.linalg.norm(torch.mv(gram, w) - torch.pow(1 / (w + 1e-8), 1 / alpha)) ** 2
        if obj.item() < obj_best:
            obj_best, w_best = obj.item(), w.detach().clone()
        obj.backward()
        torch.nn.utils.clip_grad_norm_(w, max_norm=1.0)
        optimizer.step()
        w.data.clamp_(min=1e-8)
    assert w_best is not None
    return w_best


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_fairgrad_sgd20_is_the_official_solver(alpha: float) -> None:
    for k, scale in ((3, 1.0), (10, 0.05), (10, 3.0)):
        jac = scale * normal(k, 30, seed=k)
        gram = jac @ jac.T
        torch.testing.assert_close(fairgrad_sgd20_weights(gram, alpha), official_sgd20(gram, alpha), rtol=1e-12, atol=0)
        torch.testing.assert_close(direction(jac, alpha=alpha, solver="sgd20")[1], official_sgd20(gram, alpha))


def test_fairgrad_pinned_values() -> None:
    np.testing.assert_allclose(
        direction(torch.tensor(J_A, dtype=F64))[0].tolist(),
        [0.03127367981882134, 0.7908171505090336, 0.7908171505090336],
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        direction(torch.tensor(J_B, dtype=F64))[0].tolist(),
        [-0.42396817207080484, 0.5999891299537414, 0.35057210531522587, 1.2186488587441082],
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        direction(torch.tensor(J_A, dtype=F64), solver="sgd20")[0].tolist(),
        [0.001927046262156118, 0.9232383528841114, 0.9232383528841114],
        rtol=1e-10,
    )


def test_fairgrad_weights_function_and_config() -> None:
    jac = normal(4, 9, seed=6)
    torch.testing.assert_close(fairgrad_exact_weights(jac @ jac.T, 2.0), direction(jac)[1])
    assert str(FairGradConfig().build(3)) == "fairgrad-a2"
    assert str(FairGradConfig(alpha=1.0, solver="sgd20").build(3)) == "fairgrad-a1-sgd20"
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^combiner\.alpha: got .*, expected a number >= 0$"):
            FairGradConfig(alpha=bad).build(3)


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize("alpha", (0.0, *ALPHAS))
def test_fairgrad_matches_torchjd(k: int, alpha: float) -> None:
    torchjd = pytest.importorskip("torchjd", reason="torchjd==0.18.0 (the test extra) is not installed")
    try:
        ref_agg = torchjd.aggregation.FairGrad(alpha)
    except ImportError as exc:
        pytest.skip(f"torchjd optional dependency missing ({exc})")
    for seed in range(2):
        for n in (2 * k, 30):
            jac = normal(k, n, seed=100 * k + 10 * seed + n)
            ref = ref_agg(jac)
            assert float((direction(jac, alpha=alpha)[0] - ref).norm()) <= 1e-6 * float(ref.norm()), (seed, n)
