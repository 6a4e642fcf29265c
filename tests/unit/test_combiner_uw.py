"""uw: uncertainty weighting, log-variances learned by the combiner's own Adam."""

from __future__ import annotations

import pytest
import torch
from combiner_helpers import F64, build


def test_uw_weights_and_update() -> None:
    comb = build("uw", 2, lr=0.1)
    out = comb(None, torch.tensor([4.0, 0.25], dtype=F64))
    assert out.weights.tolist() == [0.5, 0.5]
    # d/ds = 0.5 (1 - e^{-s} L): negative for L > 1 (s grows, weight shrinks), positive for L < 1
    assert float(comb.log_var[0]) == pytest.approx(0.1) and float(comb.log_var[1]) == pytest.approx(-0.1)
    out = comb(None, torch.tensor([4.0, 0.25], dtype=F64))
    assert out.weights[0] < 0.5 < out.weights[1]
