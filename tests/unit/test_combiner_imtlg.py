"""imtlg: equal projections on the unit gradients, against the paper's closed form."""

from __future__ import annotations

import pytest
import torch
from combiner_helpers import F64, build, normal, run


def test_imtlg_equal_projections_and_closed_form() -> None:
    for k, seed in [(2, 0), (3, 1), (6, 2)]:
        jac = normal(k, 12, seed=seed)
        comb = build("imtlg", k)
        d = run(comb, jac)
        unit = jac / jac.norm(dim=1, keepdim=True)
        proj = unit @ d
        torch.testing.assert_close(proj, proj[0].expand(k), rtol=1e-10, atol=0)
        weights = torch.tensor([comb.stats[f"weight/{i}"] for i in range(k)], dtype=F64)
        assert float(weights.sum()) == pytest.approx(1.0)
        # paper closed form: alpha_{2:K} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum
        dmat = jac[0] - jac[1:]
        umat = unit[0] - unit[1:]
        rest = jac[0] @ umat.T @ torch.linalg.inv(dmat @ umat.T)
        torch.testing.assert_close(weights, torch.cat([(1 - rest.sum()).reshape(1), rest]), rtol=1e-8, atol=1e-12)
