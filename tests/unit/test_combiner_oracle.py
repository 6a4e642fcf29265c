"""torchjd 0.18.0 as an independent oracle for every combiner it implements.

Scale conventions (ours vs torchjd), applied in the asserts below:

* PCGrad, GradDrop: torchjd sums the K rows, we average (mtrl) -> ``torchjd = K * ours``.
* CAGrad: torchjd returns ``g_0 + lambda g_w`` (rescale 0), we divide by ``1 + c^2`` -> ``torchjd = (1 + c^2) ours``.
* MGDA, IMTL-G, Aligned-MTL (pref 1/K), NashMTL, Mean, Sum, Random: same scale.
* Scalarizers (FAMO, UW, DWA, Random): torchjd returns a scalar loss; its gradient w.r.t. the task losses is the weight
  vector we return. torchjd's DWA is epoch-based (weights from the two previous epochs, fixed within an epoch) and
  scaled to sum to K; ours slides a window over calls, includes the current call and sums to 1: they agree at the
  last call of each epoch, ``ours[n W - 1] = torchjd[n W] / K``.

Randomness: torchjd draws from the global torch RNG, we from an owned generator with the same algorithm, so seeding
both alike gives the same draws (PCGrad: one ``randperm(K)`` per task, in task order).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor

torchjd = pytest.importorskip("torchjd", reason="torchjd==0.18.0 (the test extra) is not installed")

from torchjd import aggregation as agg  # noqa: E402
from torchjd import scalarization as scal  # noqa: E402

from mtrl.mto import COMBINERS, Combiner, Weighting  # noqa: E402
from mtrl.mto.cagrad_fast import random_groups  # noqa: E402
from mtrl.mto.pcgrad import pcgrad_weights  # noqa: E402

F64 = torch.float64


def build(name: str, tasks: int, seed: int = 0, **options: object) -> Combiner:
    return COMBINERS[name](**options).build(tasks, seed)


def run(comb: Combiner, jac: Tensor, losses: Tensor | None = None) -> Tensor:
    if losses is None:
        losses = torch.ones(jac.shape[0], dtype=jac.dtype)
    out = comb(jac if comb.requires_grads else None, losses)
    return out.weights.to(jac) @ jac if isinstance(out, Weighting) else out


def optional(factory):  # type: ignore[no-untyped-def]
    """Instantiate a torchjd aggregator that needs optional dependencies, or skip with the reason."""
    try:
        return factory()
    except ImportError as exc:
        pytest.skip(f"torchjd optional dependency missing ({exc}); install torchjd[full]==0.18.0")


def matrix(k: int, n: int, seed: int, rank: int | None = None, shift: float = 0.3) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    rank = min(k, n) if rank is None else rank
    j = torch.randn(k, rank, generator=g, dtype=F64) @ torch.randn(rank, n, generator=g, dtype=F64)
    return j + shift * torch.randn(1, n, generator=g, dtype=F64)


def special(k: int, n: int = 9) -> dict[str, Tensor]:
    base = matrix(k, n, seed=100 + k, shift=0.0)
    zero, dup, pm = base.clone(), base.clone(), base.clone()
    zero[0] = 0
    dup[-1] = dup[0]
    pm[1] = -pm[0]
    return {"random": base, "zero_row": zero, "duplicate": dup, "g_minus_g": pm}


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# ----------------------------------------------------------------------------------------------------- aggregators


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_pcgrad(k: int) -> None:
    for case, jac in special(k).items():
        seed = 1234 + k
        torch.manual_seed(seed)
        orders = torch.stack(
            [torch.tensor([j for j in torch.randperm(k).tolist() if j != i], dtype=torch.long) for i in range(k)]
        )
        ours = pcgrad_weights(jac @ jac.T, orders).mean(0) @ jac
        torch.manual_seed(seed)
        ref = agg.PCGrad()(jac)
        torch.testing.assert_close(k * ours, ref, rtol=1e-10, atol=1e-12, msg=case)


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_mgda(k: int) -> None:
    """torchjd's Frank-Wolfe stops short of the optimum (measured up to 3% in norm): ours (exact) is never larger,
    and both agree exactly at K=2 (one exact line search)."""
    for seed in range(3):
        jac = matrix(k, 20, seed, shift=0.0)
        ours = run(build("mgda", k), jac)
        ref = agg.MGDA(epsilon=1e-6, max_iters=2000)(jac)
        assert float(ours.norm()) <= float(ref.norm()) * (1 + 1e-9)
        assert float(ours.norm()) >= float(ref.norm()) * (1 - 5e-2)
        if k == 2:
            torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("c", [0.0, 0.4, 0.5, 0.9, 2.0])
def test_cagrad(k: int, c: float) -> None:
    ref_agg = optional(lambda: agg.CAGrad(c=c))
    for seed in range(2):
        jac = matrix(k, 30, seed)
        ours = run(build("cagrad", k, c=c), jac)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = ref_agg(jac)
        assert rel((1 + c * c) * ours, ref) < 1e-3  # cvxpy/CLARABEL tolerance (measured <= 2e-4)


def test_cagrad_fast_even_groups_is_torchjd_cagrad_on_group_means() -> None:
    c, k, groups = 0.5, 6, 3
    ref_agg = optional(lambda: agg.CAGrad(c=c))
    jac = matrix(k, 30, seed=3)
    avg = random_groups(k, groups, "even", torch.Generator().manual_seed(4))  # sizes 2, 2, 2: g_0 = mean of groups
    ours = run(build("cagrad_fast", k, seed=4, c=c, k=groups), jac)
    assert rel((1 + c * c) * ours, ref_agg(avg @ jac)) < 1e-3


@pytest.mark.parametrize("k", [2, 3, 6])
def test_imtlg(k: int) -> None:
    cases = {**special(k), "normal": matrix(k, 12, seed=k), "low_rank": matrix(k, 12, seed=k, rank=2, shift=0.0)}
    for case, jac in cases.items():
        torch.testing.assert_close(run(build("imtlg", k), jac), agg.IMTLG()(jac), rtol=1e-8, atol=1e-10, msg=case)


@pytest.mark.parametrize("k", [2, 3, 6])
@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_alignedmtl(k: int, mode: str) -> None:
    for case, jac in {**special(k), "normal": matrix(k, 12, seed=k)}.items():
        ours = run(build("alignedmtl", k, scale_mode=mode), jac)
        ref = agg.AlignedMTL(scale_mode=mode)(jac)  # pref = 1/K (torchjd default) = official / K
        torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-10, msg=case)


@pytest.mark.filterwarnings("ignore::UserWarning")  # cvxpy: "not DPP"
@pytest.mark.parametrize("k", [2, 3, 10])
@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_nashmtl_first_call(k: int, max_norm: float) -> None:
    ref_agg = optional(lambda: agg.NashMTL(n_tasks=k, max_norm=max_norm))
    jac = matrix(k, 4 * k, seed=k)
    assert rel(run(build("nashmtl", k, max_norm=max_norm), jac), ref_agg(jac)) < 1e-5


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("every", [1, 3])
def test_nashmtl_sequence(every: int) -> None:
    k = 4
    ref_agg = optional(lambda: agg.NashMTL(n_tasks=k, max_norm=0.0, update_weights_every=every))
    ours = build("nashmtl", k, max_norm=0.0, update_every=every)
    for seed in range(6):
        jac = matrix(k, 12, seed=seed)
        assert rel(run(ours, jac), ref_agg(jac)) < 1e-5, seed


@pytest.mark.parametrize("k", [1, 3, 7])
def test_graddrop(k: int) -> None:
    for seed in range(3):
        jac = torch.randn(k, 40, dtype=F64, generator=torch.Generator().manual_seed(seed))
        jac[:, 0] = 0.0  # a zero column
        ours = run(build("graddrop", k, seed=seed), jac)
        torch.manual_seed(seed)
        ref = agg.GradDrop()(jac)
        torch.testing.assert_close(k * ours, ref, rtol=1e-12, atol=1e-12)


def test_mean_and_sum() -> None:
    jac = matrix(4, 7, seed=0)
    torch.testing.assert_close(run(build("mean", 4), jac), agg.Mean()(jac))
    torch.testing.assert_close(run(build("sum", 4), jac), agg.Sum()(jac))


def test_rlw_is_torchjd_random() -> None:
    comb = build("rlw", 5, seed=21)
    jac = matrix(5, 6, seed=1)
    torch.manual_seed(21)
    ref_agg = agg.Random()
    for _ in range(4):
        torch.testing.assert_close(run(comb, jac), ref_agg(jac))


# ----------------------------------------------------------------------------------------------------- scalarizers


def scalarizer_weights(scalarizer: torch.nn.Module, losses: Tensor) -> Tensor:
    values = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(scalarizer(values), values)
    return grad


def loss_sequence(k: int, steps: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(steps, k, generator=g, dtype=F64) * 2 + 0.1


def test_rlw_is_torchjd_random_scalarizer() -> None:
    comb = build("rlw", 4, seed=8)
    torch.manual_seed(8)
    ref = scal.Random()
    for losses in loss_sequence(4, 3, seed=0):
        weights = comb(None, losses).weights
        torch.testing.assert_close(weights, scalarizer_weights(ref, losses))


def test_famo() -> None:
    k = 4
    comb = build("famo", k, lr=0.025, weight_decay=1e-3)
    ref = scal.FAMO(k, lr=0.025, weight_decay=1e-3).double()
    seq = loss_sequence(k, 21, seed=1)
    for before, after in zip(seq[:-1], seq[1:], strict=True):
        weights = comb(None, before).weights
        torch.testing.assert_close(weights, scalarizer_weights(ref, before), rtol=1e-10, atol=1e-12)
        comb.after_step(after)
        ref.update(after)
        torch.testing.assert_close(comb.logits, ref._w.detach(), rtol=1e-9, atol=1e-12)


def test_uw() -> None:
    k = 3
    comb = build("uw", k, lr=0.01)
    ref = scal.UW(k).double()
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    for losses in loss_sequence(k, 20, seed=2):
        weights = comb(None, losses).weights
        values = losses.clone().requires_grad_(True)
        opt.zero_grad()
        total = ref(values)
        total.backward()
        torch.testing.assert_close(weights, values.grad, rtol=1e-12, atol=1e-14)
        opt.step()
        torch.testing.assert_close(comb.log_var, ref.log_var.detach(), rtol=1e-10, atol=1e-13)


def test_dwa() -> None:
    k, window = 3, 4
    comb = build("dwa", k, window=window, temperature=2.0)
    ref = scal.DWA(temperature=2.0)
    seq = loss_sequence(k, 6 * window, seed=3)
    ours, theirs = [], []
    for n, losses in enumerate(seq):
        if n > 0 and n % window == 0:
            ref.step()
        theirs.append(scalarizer_weights(ref, losses))
        ours.append(comb(None, losses).weights)
    for epoch in range(2, 6):
        m = epoch * window
        torch.testing.assert_close(ours[m - 1], theirs[m] / k, rtol=1e-12, atol=1e-14)
    assert math.isclose(float(ours[0].sum()), 1.0)
