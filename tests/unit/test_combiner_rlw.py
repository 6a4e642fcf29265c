"""rlw: random loss weighting (softmax of normal logits from the owned generator)."""

from __future__ import annotations

import pytest
import torch
from combiner_helpers import build


def test_rlw_weights() -> None:
    comb = build("rlw", 6, seed=1)
    draws = torch.stack([comb(None, torch.ones(6)).weights for _ in range(400)])
    torch.testing.assert_close(draws.sum(1), torch.ones(400))
    assert float(draws.min()) > 0
    assert draws.mean(0).tolist() == pytest.approx([1 / 6] * 6, abs=0.02)
    again = build("rlw", 6, seed=1)
    torch.testing.assert_close(again(None, torch.ones(6)).weights, draws[0])
