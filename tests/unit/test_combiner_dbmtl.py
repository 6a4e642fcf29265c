"""dbmtl: gradients of the log losses, running average, every task scaled to the largest norm; critic only. Not in
torchjd: the official code's update as a reference, the paper's defining properties and pinned values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from combiner_helpers import reloaded
from torch import Tensor

from mtrl.mto.base import PARTS, NonFiniteError
from mtrl.mto.dbmtl import DBMTL, DBMTLConfig

F64 = torch.float64
EPS = 1e-8


def run(comb: DBMTL, jac: Tensor | list[Tensor], losses: Tensor) -> Tensor:
    out = comb(jac, losses)
    return torch.cat(out) if isinstance(out, list) else out


def reference(jacs: list[Tensor], losses: list[Tensor], beta: float, beta_sigma: float) -> list[Tensor]:
    """The official code (LibMTL ``DB_MTL.backward``) on whole matrices: its update formula and its norms."""
    buffer = torch.zeros_like(jacs[0])
    out = []
    for step, (jac, loss) in enumerate(zip(jacs, losses, strict=True), start=1):
        batch = jac / (loss + EPS)[:, None]  # the gradients of log(L + 1e-8)
        buffer = batch + (beta / step**beta_sigma) * (buffer - batch)
        norms = buffer.norm(dim=-1)
        alpha = norms.max() / (norms + EPS)
        out.append(sum(alpha[i] * buffer[i] for i in range(len(alpha))))
    return out


def sequence(k: int, n: int, steps: int, seed: int) -> tuple[list[Tensor], list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, generator=g, dtype=F64)
    jacs = [torch.randn(k, n, generator=g, dtype=F64) + 0.5 * common for _ in range(steps)]
    losses = [torch.rand(k, generator=g, dtype=F64) * 3 + 0.05 for _ in range(steps)]
    return jacs, losses


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize(("beta", "beta_sigma"), [(0.9, 0.0), (0.5, 0.5), (0.0, 0.0)])
def test_dbmtl_matches_the_official_update(k: int, beta: float, beta_sigma: float) -> None:
    jacs, losses = sequence(k, 30, 8, seed=k)
    comb = DBMTLConfig(beta=beta, beta_sigma=beta_sigma).build(k)
    for ours, ref in zip(
        (run(comb, jac, loss) for jac, loss in zip(jacs, losses, strict=True)),
        reference(jacs, losses, beta, beta_sigma),
        strict=True,
    ):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)


def test_dbmtl_balances_the_gradient_magnitudes() -> None:
    """Every balanced term ``alpha_k hat g_k`` has the largest norm ``max_j ||hat g_j||``: ``d`` is that norm times
    the sum of the unit running-average gradients, whatever their sizes."""
    jacs, losses = sequence(4, 20, 3, seed=0)
    jacs = [j * torch.tensor([[1e-3], [1.0], [30.0], [2.0]], dtype=F64) for j in jacs]
    comb = DBMTL(4)
    for jac, loss in zip(jacs, losses, strict=True):
        d = run(comb, jac, loss)
    avg = comb.average.value
    norms = avg.norm(dim=1)
    torch.testing.assert_close(d, norms.max() * (avg / (norms + EPS)[:, None]).sum(0), rtol=1e-13, atol=0)
    balanced = (norms.max() / (norms + EPS))[:, None] * avg
    bound = EPS / float(norms.min())  # the 1e-8 in alpha's denominator, relative to the smallest norm
    torch.testing.assert_close(balanced.norm(dim=1), norms.max().expand(4), rtol=2 * bound, atol=0)


def test_dbmtl_is_invariant_to_the_loss_scales() -> None:
    """Loss-scale balancing: scaling a task's loss by ``c`` (its loss and gradient alike) does not change ``d``
    (``grad log(c L) = grad log L``, up to the 1e-8 inside the log: relative ``1e-8 / min(c L) <= 2e-6`` here)."""
    jacs, losses = sequence(3, 12, 4, seed=1)
    c = torch.tensor([1e4, 1.0, 0.1], dtype=F64)
    a, b = DBMTL(3), DBMTL(3)
    for jac, loss in zip(jacs, losses, strict=True):
        torch.testing.assert_close(run(a, c[:, None] * jac, c * loss), run(b, jac, loss), rtol=1e-5, atol=0)


def test_dbmtl_blocks_and_stats() -> None:
    """Column blocks give the matrix result; ``weight/<k>`` is the coefficient of this call's ``g_k``
    (``alpha_k (1 - beta_t) / (L_k + eps)``), so ``weights @ G = d`` at the first call; ``grad_norm_after = ||d||``."""
    jacs, losses = sequence(3, 40, 3, seed=2)
    whole, split = DBMTL(3), DBMTL(3)
    for step, (jac, loss) in enumerate(zip(jacs, losses, strict=True)):
        d = run(whole, jac, loss)
        parts = split(list(jac.split([7, 1, 32], dim=1)), loss)
        assert isinstance(parts, list) and [p.shape[0] for p in parts] == [7, 1, 32]
        torch.testing.assert_close(torch.cat(parts), d, rtol=1e-13, atol=1e-15)
        stats = whole.stats
        w = torch.tensor([stats[f"weight/{i}"] for i in range(3)], dtype=F64)
        if step == 0:
            torch.testing.assert_close(w @ jac, d, rtol=1e-12, atol=0)
        assert stats["grad_norm_after"] == pytest.approx(float(d.norm()), rel=1e-12)
        assert stats["grad_norm_before"] == pytest.approx(float(jac.mean(0).norm()), rel=1e-12)
        torch.testing.assert_close(whole.stats_tensors["cos_sim_mean"].double(), split.stats_tensors["cos_sim_mean"])
    avg = whole.average.value
    norms = avg.norm(dim=1)
    alpha = norms.max() / (norms + EPS)
    torch.testing.assert_close(w, alpha * 0.1 / (losses[-1] + EPS), rtol=1e-12, atol=0)


def test_dbmtl_state_dict_round_trip_and_new_width() -> None:
    jacs, losses = sequence(4, 16, 9, seed=3)
    cfg = DBMTLConfig(beta=0.8, beta_sigma=0.3)
    comb = cfg.build(4)
    for jac, loss in zip(jacs[:4], losses[:4], strict=True):
        run(comb, jac, loss)
    restored = reloaded(comb, cfg.build(4, seed=11))
    expected = [run(comb, jac, loss) for jac, loss in zip(jacs[4:], losses[4:], strict=True)]
    assert restored.calls == 4 and restored.average.value.shape == (4, 16)
    for jac, loss, d in zip(jacs[4:], losses[4:], expected, strict=True):
        torch.testing.assert_close(run(restored, jac, loss), d, rtol=0, atol=0)
    fresh = run(restored, jacs[0][:, :10], losses[0])  # another width: the running average starts afresh
    torch.testing.assert_close(fresh, run(cfg.build(4), jacs[0][:, :10], losses[0]), rtol=0, atol=0)
    assert restored.calls == 1


@pytest.mark.parametrize("k", [1, 2, 10, 50])
def test_dbmtl_finite_on_degenerate_inputs(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    base = torch.randn(k, 12, generator=g, dtype=F64)
    zero_row, pm = base.clone(), base.clone()
    zero_row[0] = 0
    if k > 1:
        pm[1] = -pm[0]
    for jac in (base, zero_row, pm, torch.zeros(k, 12, dtype=F64)):
        for scale in (1e-8, 1.0, 1e8):
            for losses in (torch.full((k,), 1e-8), torch.full((k,), 1e8), torch.logspace(-8, 8, k), torch.zeros(k)):
                comb = DBMTL(k)
                for _ in range(3):
                    d = run(comb, (jac * scale).float(), losses)
                    assert bool(torch.isfinite(d).all())
                    assert all(np.isfinite(v) for v in comb.stats.values())


def test_dbmtl_rejects_negative_losses() -> None:
    comb = DBMTL(3)
    with pytest.raises(NonFiniteError, match=r"^combiner 'dbmtl' takes the log of the task losses: task 1 has loss "):
        comb(torch.ones(3, 4), torch.tensor([1.0, -0.1, 0.0]))
    assert comb.calls == 0 and comb.average.value.numel() == 0  # rejected before the state changed


def part_message(part: str) -> str:
    return (
        f"combine_{part}: got true with combiner dbmtl, which takes the log of the task losses, and the SAC {part} "
        f"loss can be negative; add --combine_{part} false (critic only)"
    )


@pytest.mark.parametrize(("parts", "offending"), [((), None), (("critic",), None), (PARTS, "actor")])
def test_dbmtl_check(parts: tuple[str, ...], offending: str | None) -> None:
    if offending is None:
        DBMTLConfig().check(10, frozenset(parts))
    else:
        with pytest.raises(ValueError) as info:
            DBMTLConfig().check(10, frozenset(parts))
        assert str(info.value) == part_message(offending)
    with pytest.raises(ValueError, match=r"^combiner\.beta: got 1\.0, expected a number in \[0, 1\)$"):
        DBMTLConfig(beta=1.0).check(3, frozenset())
    with pytest.raises(ValueError, match=r"^combiner\.beta_sigma: got -1\.0, expected a number >= 0$"):
        DBMTLConfig(beta_sigma=-1.0).check(3, frozenset())
    assert [str(DBMTLConfig(**o).build(2)) for o in ({}, {"beta": 0.5}, {"beta_sigma": 0.5})] == [
        "dbmtl",
        "dbmtl-b0.5",
        "dbmtl-s0.5",
    ]


#: three consecutive calls (default config) on the same J with changing losses; computed once from this
#: implementation after the reference and property tests passed: a change here means the math changed
J_B = [[1.0, -2.0, 0.5, 3.0], [-1.5, 1.0, 2.0, -0.5], [0.25, 0.5, -1.0, 1.0]]
L_B = [[1.0, 2.0, 0.5], [0.9, 1.5, 0.45], [0.85, 1.4, 0.5]]
PINNED = [
    [-0.04470146365015, 0.06195899160016735, 0.07744393387560039, 0.47931676746675167],
    [-0.08989962220278837, 0.124606426313113, 0.15574837125620283, 0.9639592869006982],
    [-0.13349962909257757, 0.18503872453926673, 0.2312840600805237, 1.4314654477874873],
]


def test_dbmtl_pinned_values() -> None:
    comb = DBMTL(3)
    jac = torch.tensor(J_B, dtype=F64)
    outs = [run(comb, jac, torch.tensor(row, dtype=F64)).tolist() for row in L_B]
    np.testing.assert_allclose(outs, PINNED, rtol=1e-12, atol=1e-15)
