"""graddrop: per-coordinate sign dropping against the masked formula."""

from __future__ import annotations

import pytest
import torch
from combiner_helpers import F64, build, run

from mtrl.mto.base import gramian_stats
from mtrl.mto.gramian import GRAM_BLOCK, gramian


def test_graddrop_same_sign_columns_and_leak_one_give_mean() -> None:
    jac = torch.rand(4, 9, dtype=F64) * torch.tensor([1, -1, 1, 1, -1, 1, 1, 1, -1], dtype=F64)
    torch.testing.assert_close(run(build("graddrop", 4), jac), jac.mean(0))
    mixed = torch.randn(4, 9, dtype=F64)
    torch.testing.assert_close(run(build("graddrop", 4, leak=1.0), mixed), mixed.mean(0))


def test_graddrop_matches_masked_formula_and_is_seeded() -> None:
    jac = torch.randn(5, 50, dtype=F64)
    d = run(build("graddrop", 5, seed=3), jac)
    u = torch.rand(50, generator=torch.Generator().manual_seed(3), dtype=F64)
    purity = 0.5 * (1 + jac.sum(0) / jac.abs().sum(0))
    mask = ((purity > u) & (jac > 0)) | ((purity < u) & (jac < 0))
    torch.testing.assert_close(d, (mask * jac).sum(0) / 5)
    torch.testing.assert_close(run(build("graddrop", 5, seed=3), jac), d)
    assert not torch.allclose(run(build("graddrop", 5, seed=4), jac), d)


def column_sum_reference(jac: torch.Tensor, u: torch.Tensor, leak: float) -> torch.Tensor:
    """The straightforward column-sum form (the implementation before the single-pass one): ``S = G^T 1`` and
    ``A = |G|^T 1`` per 32768-column slice, ``d = ((A + S) [S/A > 2U-1] + (S - A) [S/A < 2U-1]) (1 - leak) / 2K +
    leak S / K``."""
    k = jac.shape[0]
    ones = jac.new_ones(k)
    total = torch.cat([torch.mv(part.T, ones) for part in jac.split(GRAM_BLOCK, dim=1)])
    absolute = torch.cat([torch.mv(part.abs().T, ones) for part in jac.split(GRAM_BLOCK, dim=1)])
    threshold = u.mul(2.0).sub_(1.0)
    ratio = total / absolute
    direction = (absolute + total).mul_(ratio > threshold).add_((total - absolute).mul_(ratio < threshold))
    direction.mul_((1.0 - leak) * 0.5 / k)
    return direction.add_(total * (leak / k)) if leak else direction


@pytest.mark.parametrize("leak", [0.0, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_graddrop_single_pass_is_bitwise_the_column_sum_form(leak: float, dtype: torch.dtype) -> None:
    """Blocks (one wider than GRAM_BLOCK), zero columns and same-sign columns: the direction is bitwise the
    column-sum form with the same draws, and the stats are those of :func:`mtrl.mto.gramian.gramian`."""
    sizes = [7, 1, 40000, 12, 70000]
    k = 10
    jac = torch.randn(k, sum(sizes), generator=torch.Generator().manual_seed(1)).to(dtype)
    jac[:, 5] = 0.0
    jac[:, 100:200] = jac[:, 100:200].abs()
    comb = build("graddrop", k, seed=2, leak=leak)
    parts = comb(list(jac.split(sizes, dim=1)), torch.ones(k, dtype=dtype))
    assert isinstance(parts, list) and [p.shape[0] for p in parts] == sizes
    u = torch.rand(sum(sizes), generator=torch.Generator().manual_seed(2), dtype=dtype)
    assert torch.equal(torch.cat(parts), column_sum_reference(jac, u, leak))
    blocks_gram = gramian(list(jac.split(sizes, dim=1)))
    for key, value in gramian_stats(blocks_gram).items():
        assert torch.equal(comb.stats_tensors[key], value), key
    whole = build("graddrop", k, seed=2, leak=leak)
    assert torch.equal(whole(jac, torch.ones(k, dtype=dtype)), column_sum_reference(jac, u, leak))
