"""con_fig: ConFIG's equal cosines, the length rule, linearity under task scaling, torchjd as oracle, pinned values.

Scale: the paper, torchjd 0.18.0 ``ConFIG()`` (preference ones) and the official code sum the projections of the task
gradients on the direction; we average them, so ``torchjd = K * ours``. torchjd takes ``pinv`` of the ``[K, P]`` unit
rows, we the pseudo-inverse of their ``[K, K]`` Gramian: the same numbers up to rounding, rtol 1e-9 (measured
<= 2e-13). Where ``U^+ 1 = 0`` (rank one with as many positive as negative multiples) we return 0; torchjd's
``normalize(eps=1e-12)`` of the rounding noise leaves a direction of ~1e-8.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from combiner_helpers import F64, degenerate, normal
from torch import Tensor

from mtrl.mto.con_fig import ConFIGConfig, con_fig_weights

J_A = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
J_B = [[1.0, -2.0, 0.5, 3.0], [-1.5, 1.0, 2.0, -0.5], [0.25, 0.5, -1.0, 1.0]]


pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: one intra-op thread (tests/unit/conftest.py)


def direction(jac: Tensor) -> tuple[Tensor, Tensor]:
    """ConFIG's direction for ``jac`` and its weights (from the stats)."""
    k = jac.shape[0]
    comb = ConFIGConfig().build(k)
    d = comb(jac, torch.ones(k, dtype=jac.dtype))
    assert isinstance(d, Tensor)
    return d, torch.tensor([comb.stats[f"weight/{i}"] for i in range(k)], dtype=F64)


@pytest.mark.parametrize("k", [2, 3, 5, 10, 50])
def test_con_fig_equal_cosines_and_length(k: int) -> None:
    """Linearly independent gradients: the same positive cosine with every one of them; ``d = (mean . u) u``."""
    for seed in range(3):
        jac = normal(k, 2 * k + 3, seed=seed, shift=0.0) * torch.logspace(-2, 2, k, dtype=F64)[:, None]
        d, weights = direction(jac)
        torch.testing.assert_close(weights @ jac, d)
        cos = (jac @ d) / (jac.norm(dim=1) * d.norm())
        torch.testing.assert_close(cos, cos[0].expand(k), rtol=1e-9, atol=0)
        assert float(cos[0]) > 0
        assert float(jac.mean(0) @ d) == pytest.approx(float(d @ d), rel=1e-10)


def test_con_fig_identical_gradients_and_single_task_give_mean() -> None:
    g = normal(1, 7, seed=1)
    torch.testing.assert_close(direction(g.repeat(4, 1))[0], g[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(direction(g)[0], g[0], rtol=1e-12, atol=0)


def test_con_fig_linear_under_task_scaling() -> None:
    """The unit direction ignores positive task scales, the length is linear in them (torchjd's property)."""
    jac = normal(4, 9, seed=2, shift=0.0)
    c1 = torch.tensor([[1.0], [2.0], [0.5], [3.0]], dtype=F64)
    c2 = torch.tensor([[0.1], [4.0], [1.0], [2.0]], dtype=F64)
    combined = direction((0.3 * c1 + 2.0 * c2) * jac)[0]
    torch.testing.assert_close(
        combined, 0.3 * direction(c1 * jac)[0] + 2.0 * direction(c2 * jac)[0], rtol=1e-10, atol=0
    )


def test_con_fig_degenerate() -> None:
    """Finite everywhere; zero where ``U^+ 1 = 0`` (g and -g); a zero row is left out of ``U``."""
    for k in (2, 3, 10):
        for case, jac in degenerate(k).items():
            assert bool(torch.isfinite(direction(jac)[0]).all()), (k, case)
    g = normal(1, 5, seed=3)
    assert float(direction(torch.cat([g, -g]))[0].norm()) == 0.0
    jac = normal(3, 6, seed=4, shift=0.0)
    with_zero = torch.cat([jac, torch.zeros(1, 6, dtype=F64)])
    torch.testing.assert_close(direction(with_zero)[0], 3 / 4 * direction(jac)[0], rtol=1e-12, atol=0)


def test_con_fig_float32_close_to_float64() -> None:
    jac = normal(8, 60, seed=5, shift=0.0)
    d64 = direction(jac)[0]
    assert float((direction(jac.float())[0].double() - d64).norm() / d64.norm()) < 1e-4


def test_con_fig_pinned_values() -> None:
    np.testing.assert_allclose(
        direction(torch.tensor(J_A, dtype=F64))[0].tolist(),
        [0.07940448790396992, 1.035303379031312, 1.035303379031312],
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        direction(torch.tensor(J_B, dtype=F64))[0].tolist(),
        [-0.3338340258815074, 0.4090399135597029, 0.3379342395953142, 0.858892261320729],
        rtol=1e-10,
    )


def test_con_fig_weights_function_and_str() -> None:
    jac = normal(4, 9, seed=6)
    torch.testing.assert_close(con_fig_weights(jac @ jac.T, 4 * torch.finfo(F64).eps), direction(jac)[1])
    assert str(ConFIGConfig().build(3)) == "con_fig"


@pytest.mark.parametrize("k", [2, 3, 5, 7, 10])
def test_con_fig_matches_torchjd(k: int) -> None:
    torchjd = pytest.importorskip("torchjd", reason="torchjd==0.18.0 (the test extra) is not installed")
    cases = {f"n{n}_s{seed}": normal(k, n, seed=100 * k + seed) for n in (5, 9, 30) for seed in range(2)}
    cases["low_rank"] = normal(k, 12, rank=2, seed=k, shift=0.0)
    cases.update({name: jac for name, jac in degenerate(k).items() if name not in ("all_zero", "g_minus_g")})
    for case, jac in cases.items():
        ref = torchjd.aggregation.ConFIG()(jac)
        d = direction(jac)[0]
        if float(jac[:, 0].sign().sum()) == 0 and case == "rank1":  # U^+ 1 = 0: ours 0, torchjd's eps leaves ~1e-8
            assert float(d.norm()) == 0.0 and float(ref.norm()) < 1e-7 * float(jac.norm(dim=1).sum())
            continue
        assert float((k * d - ref).norm()) <= 1e-9 * float(ref.norm()), case
