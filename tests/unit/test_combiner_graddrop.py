"""graddrop: per-coordinate sign dropping against the masked formula."""

from __future__ import annotations

import torch
from combiner_helpers import F64, build, run


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
