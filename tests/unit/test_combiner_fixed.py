"""fixed: static user weights; one weight per task, checked against K."""

from __future__ import annotations

import pytest
import torch

from mtrl.mto import COMBINERS, Weighting


def test_fixed_length_checked_at_build() -> None:
    with pytest.raises(ValueError, match=r"combiner.weights: got 2 weights, expected 3 \(one per task\)"):
        COMBINERS["fixed"](weights=(0.5, 0.5)).build(3)
    comb = COMBINERS["fixed"](weights=(1.0, 2.0, 3.0)).build(3)
    out = comb(None, torch.ones(3))
    assert isinstance(out, Weighting)
    assert out.weights.tolist() == [1.0, 2.0, 3.0]


def test_fixed_check_weights_against_k() -> None:
    """One weight per task, or none (the mean at any K); the length is checked with the parts too."""
    cfg = COMBINERS["fixed"](weights=(0.5, 0.5))
    cfg.check(2, frozenset({"critic", "actor", "alpha"}))
    with pytest.raises(ValueError, match=r"^combiner.weights: got 2 weights, expected 3 \(one per task\)$"):
        cfg.check(3, frozenset({"critic"}))
    for k in (1, 3, 50):
        COMBINERS["fixed"]().check(k, frozenset({"critic", "actor"}))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5])
def test_fixed_check_rejects_each_bad_weight(bad: float) -> None:
    with pytest.raises(ValueError, match=rf"^combiner.weights: got {bad}, expected numbers >= 0$"):
        COMBINERS["fixed"](weights=(0.5, bad, 0.5)).check(3, frozenset())
