"""alignedmtl: aligned gradients orthogonal with equal norms."""

from __future__ import annotations

import torch
from combiner_helpers import F64, build, normal, run


def test_alignedmtl_aligned_rows_orthogonal_equal_norm() -> None:
    from mtrl.mto.alignedmtl import aligned_weights

    for k, n in [(3, 10), (6, 20)]:
        jac = normal(k, n, seed=k)
        gram = jac @ jac.T
        lam, vec = torch.linalg.eigh(gram)
        balance = lam.min().sqrt() * (vec * lam.rsqrt()) @ vec.T
        aligned = balance @ jac
        torch.testing.assert_close(aligned @ aligned.T, lam.min() * torch.eye(k, dtype=F64), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(
            aligned_weights(gram, "min", torch.finfo(F64).eps), balance @ torch.full((k,), 1 / k, dtype=F64)
        )
        torch.testing.assert_close(run(build("alignedmtl", k), jac), aligned.mean(0))


def test_alignedmtl_orthonormal_rows_give_mean() -> None:
    jac = torch.eye(4, 6, dtype=F64) * 2.5
    torch.testing.assert_close(run(build("alignedmtl", 4), jac), jac.mean(0))
