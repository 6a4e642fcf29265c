"""gradnorm: task weights learned to balance the weighted gradient norms."""

from __future__ import annotations

import pytest
import torch
from combiner_helpers import F64, build, run


def test_gradnorm_initial_loss_and_renormalization() -> None:
    comb = build("gradnorm", 3, lr=0.1, alpha=1.5)
    jac = torch.diag(torch.tensor([1.0, 1.0, 1.0], dtype=F64))
    d = run(comb, jac, torch.tensor([1.0, 1.0, 1.0], dtype=F64))
    torch.testing.assert_close(d, jac.mean(0))  # w = 1 at the first call: mean
    torch.testing.assert_close(comb.initial_losses, torch.ones(3, dtype=F64))
    for _ in range(5):  # task 2 trains slowest (its ratio L/L0 stays 1)
        run(comb, jac, torch.tensor([0.5, 0.5, 1.0], dtype=F64))
        assert float(comb.task_weights.sum()) == pytest.approx(3.0)
    torch.testing.assert_close(comb.initial_losses, torch.ones(3, dtype=F64))  # kept, not overwritten
    assert comb.task_weights[2] > 1.0 > comb.task_weights[0]
