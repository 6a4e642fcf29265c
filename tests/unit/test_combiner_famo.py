"""famo: loss-space balancing of the log decrease rates; critic only."""

from __future__ import annotations

import pytest
import torch
from combiner_helpers import F64, build

from mtrl.mto import COMBINERS, NonFiniteError


def test_famo_weights_and_update_direction() -> None:
    comb = build("famo", 3)
    losses = torch.tensor([1.0, 2.0, 4.0], dtype=F64)
    w = comb(None, losses).weights
    torch.testing.assert_close(w, (1 / losses) / (1 / losses).sum())  # z uniform: inverse-loss weighting
    comb.after_step(torch.tensor([0.5, 2.0, 4.0], dtype=F64))  # task 0 improved, the others did not
    z = torch.softmax(comb.logits, 0)
    assert z[0] < 1 / 3 < z[1]
    with pytest.raises(NonFiniteError, match="famo.*task 1 has loss"):
        comb(None, torch.tensor([1.0, -0.5, 2.0], dtype=F64))
    shifted = build("famo", 3, min_loss=-1.0)
    assert torch.isfinite(shifted(None, torch.tensor([1.0, -0.5, 2.0], dtype=F64)).weights).all()
    with pytest.raises(RuntimeError, match="before forward"):
        build("famo", 3).after_step(losses)


def part_message(part: str) -> str:
    """The one-line error of FAMO applied to ``part``."""
    return (
        f"combine_{part}: got true with combiner famo, which needs losses bounded below and the SAC {part} loss is "
        f"not; add --combine_{part} false (critic only, as in the FAMO paper's MT10 runs)"
    )


@pytest.mark.parametrize(
    ("parts", "offending"),
    [
        (("critic",), None),
        ((), None),
        (("critic", "actor"), "actor"),
        (("actor",), "actor"),
        (("critic", "alpha"), "alpha"),
        (("critic", "actor", "alpha"), "actor"),  # the first offending part, in the order critic, actor, alpha
    ],
)
def test_famo_check_allows_the_critic_only(parts: tuple[str, ...], offending: str | None) -> None:
    for options in ({}, {"min_loss": -100.0}):  # a lower bound does not make the SAC actor loss bounded below
        cfg = COMBINERS["famo"](**options)
        if offending is None:
            cfg.check(10, frozenset(parts))
            continue
        with pytest.raises(ValueError) as info:
            cfg.check(10, frozenset(parts))
        assert str(info.value) == part_message(offending)
