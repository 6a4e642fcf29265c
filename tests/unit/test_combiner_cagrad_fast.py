"""cagrad_fast: CAGrad on random task groups."""

from __future__ import annotations

import pytest
import torch
from combiner_helpers import F64, build, normal, run

from mtrl.mto import COMBINERS
from mtrl.mto.cagrad import cagrad_dual_weights
from mtrl.mto.cagrad_fast import random_groups


def test_cagrad_fast_groups() -> None:
    gen = torch.Generator().manual_seed(0)
    avg = random_groups(10, 4, "even", gen)
    assert sorted((avg > 0).sum(1).tolist()) == [2, 2, 3, 3]
    torch.testing.assert_close(avg.sum(1), torch.ones(4, dtype=F64))
    assert ((avg > 0).sum(0) == 1).all()  # a partition
    single = random_groups(10, 4, "singletons", gen)
    assert sorted((single > 0).sum(1).tolist()) == [1, 1, 1, 7]
    assert random_groups(3, 8, "even", gen).shape == (3, 3)


def test_cagrad_fast_c0_is_mean_and_k_ge_K_is_cagrad() -> None:
    jac = normal(7, 15, seed=6)
    torch.testing.assert_close(run(build("cagrad_fast", 7, c=0.0, k=3), jac), jac.mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(run(build("cagrad_fast", 7, c=0.4, k=7), jac), run(build("cagrad", 7, c=0.4), jac))


def test_cagrad_fast_is_cagrad_on_group_means() -> None:
    jac = normal(8, 15, seed=8)
    comb = build("cagrad_fast", 8, c=0.6, k=3, seed=5)
    avg = random_groups(8, 3, "even", torch.Generator().manual_seed(5))
    d = run(comb, jac)
    group = avg @ jac
    base = (avg > 0).sum(1).to(F64) / 8
    alpha = cagrad_dual_weights(group @ group.T, 0.6, base) / 1.36
    torch.testing.assert_close(d, alpha @ group)


def test_cagrad_fast_check_k_against_K() -> None:
    """``k >= 1``; more groups than tasks is allowed (one task per group: CAGrad), at any K."""
    for k in (1, 4, 8):
        for num_tasks in (1, 3, 10):
            COMBINERS["cagrad_fast"](k=k).check(num_tasks, frozenset({"critic", "actor", "alpha"}))
    with pytest.raises(ValueError, match=r"^combiner.k: got 0, expected an integer >= 1$"):
        COMBINERS["cagrad_fast"](k=0).check(10, frozenset())
