"""dwa: dynamic weight average over sliding iteration windows."""

from __future__ import annotations

import torch
from combiner_helpers import F64, build


def test_dwa_windows() -> None:
    comb = build("dwa", 3, window=2, temperature=2.0)
    seq = torch.tensor([[1.0, 1, 1], [2, 2, 2], [1, 2, 4], [1, 2, 4], [5, 5, 5]], dtype=F64)
    weights = [comb(None, row).weights for row in seq]
    for w in weights[:3]:
        torch.testing.assert_close(w, torch.full((3,), 1 / 3, dtype=F64))
    rate = seq[2:4].mean(0) / seq[0:2].mean(0)
    torch.testing.assert_close(weights[3], torch.softmax(rate / 2, 0))
    rate = seq[3:5].mean(0) / seq[1:3].mean(0)
    torch.testing.assert_close(weights[4], torch.softmax(rate / 2, 0))
