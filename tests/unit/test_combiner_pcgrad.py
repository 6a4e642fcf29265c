"""pcgrad: projections in Gramian space against the sequential reference and closed forms."""

from __future__ import annotations

import torch
from combiner_helpers import F64, build, normal, run
from torch import Tensor

from mtrl.mto.pcgrad import pcgrad_weights, random_orders


def pcgrad_reference(jac: Tensor, orders: Tensor) -> Tensor:
    """Sequential PCGrad on vectors (paper Alg. 1 with given orders), mean reduction."""
    out = []
    for i in range(jac.shape[0]):
        gi = jac[i].clone()
        for j in orders[i].tolist():
            dot = gi @ jac[j]
            if dot < 0:
                gi = gi - dot / (jac[j] @ jac[j]) * jac[j]
        out.append(gi)
    return torch.stack(out).mean(0)


def test_pcgrad_matches_sequential_reference() -> None:
    for seed in range(5):
        jac = normal(6, 20, seed=seed, shift=0.0)
        orders = random_orders(6, torch.Generator().manual_seed(seed))
        coef = pcgrad_weights(jac @ jac.T, orders)
        torch.testing.assert_close(coef.mean(0) @ jac, pcgrad_reference(jac, orders), rtol=1e-10, atol=1e-12)


def test_pcgrad_random_orders_are_permutations_of_the_others() -> None:
    orders = random_orders(7, torch.Generator().manual_seed(0))
    for i, row in enumerate(orders.tolist()):
        assert sorted(row) == [j for j in range(7) if j != i]


def test_pcgrad_equals_mean_without_conflicts() -> None:
    jac = torch.rand(5, 8, dtype=F64)  # non-negative rows: no pair conflicts
    torch.testing.assert_close(run(build("pcgrad", 5), jac), jac.mean(0), rtol=0, atol=1e-15)


def test_pcgrad_two_tasks_closed_form() -> None:
    g1 = torch.tensor([-4.0, 1.0, 1.0], dtype=F64)
    g2 = torch.tensor([6.0, 1.0, 1.0], dtype=F64)
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g1 @ g2) / (g1 @ g1) * g1
    torch.testing.assert_close(run(build("pcgrad", 2), torch.stack([g1, g2])), (p1 + p2) / 2, rtol=1e-12, atol=0)


def test_pcgrad_seeded_reproducible() -> None:
    jac = normal(6, 10, seed=4, shift=0.0)
    a = [run(build("pcgrad", 6, seed=1), jac) for _ in range(2)]
    b = build("pcgrad", 6, seed=2)
    outs_b = [run(b, jac) for _ in range(5)]
    torch.testing.assert_close(a[0], a[1])
    assert any(not torch.allclose(o, a[0]) for o in outs_b)
