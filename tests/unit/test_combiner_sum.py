"""sum: the gradient of the summed task losses (``mean`` is checked against it in ``test_combiner_mean.py``)."""

from __future__ import annotations

import torch
from combiner_helpers import build, normal, run


def test_sum_is_k_times_mean_with_unit_weights() -> None:
    jac = normal(4, 9, seed=0)
    comb = build("sum", 4)
    torch.testing.assert_close(run(comb, jac), 4 * run(build("mean", 4), jac))
    assert [comb.stats[f"weight/{k}"] for k in range(4)] == [1.0, 1.0, 1.0, 1.0]
