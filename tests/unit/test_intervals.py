"""``mtrl compare``'s intervals have the right level and method.

Pinned: :func:`mtrl.compare.bootstrap_ci` with ``size=0.95`` (its default, what ``compare`` uses) is the 95%
percentile interval of the bootstrap distribution of the statistic, checked against independent resampling (numpy,
``scipy.stats.bootstrap``) and by coverage; it is rliable's stratified bootstrap (each method's seeds resampled on
their own, with their own number of seeds), written out here because ``rliable.library`` does not import with this
environment's ``arch``; :func:`iqm` and :func:`probability_of_improvement` take rliable's values for every n from 1 to
12, ties included; and ``compare`` reports for each method the independent interval of its per-seed finals.

Tolerances. A percentile-q endpoint computed from R bootstrap replicates is an order statistic whose rank is
binomial: within ``3 sqrt(q (1 - q) / R)`` of q with probability above 99.7%. :func:`_assert_endpoint` accepts the
package's endpoint when it lies between the reference replicates' quantiles at q minus and plus that margin (the
package's R and the reference's added), read off a reference of 50,000 replicates. Where the bootstrap
distribution is nearly continuous, the checks also assert that this band leaves out the endpoint of the 90% interval
(of the interval 10 points narrower at other sizes), so the tolerance cannot hide a wrong level.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats
import yaml
from rliable import metrics as rly_metrics
from torch.utils.tensorboard import SummaryWriter

from mtrl.compare import bootstrap_ci, compare, iqm, probability_of_improvement

REF_REPS = 50_000
"""Replicates of every reference bootstrap (vectorized, so cheap)."""
REPS = 5_000
"""Replicates of the package's bootstraps here: its endpoints' rank error (3 sd) is a quarter of the 2.5% between
the 95% and the 90% endpoints."""


def _margin(q: float, reps: int) -> float:
    """Three binomial standard deviations of the rank (as a fraction) of a q-quantile of ``reps`` replicates."""
    return 3.0 * float(np.sqrt(q * (1.0 - q) / reps))


def _band(ref: np.ndarray, q: float, reps: int) -> tuple[float, float]:
    """Where the q-percentile of ``reps`` replicates of the distribution that ``ref`` samples falls."""
    d = _margin(q, reps) + _margin(q, ref.size)
    lo, hi = np.quantile(ref, [max(q - d, 0.0), min(q + d, 1.0)])
    return float(lo), float(hi)


def _assert_endpoint(
    value: float, ref: np.ndarray, q: float, reps: int = REPS, apart_from: float | None = None
) -> None:
    """``value`` is the q-percentile of ``reps`` bootstrap replicates; ``apart_from``: a level the band excludes."""
    lo, hi = _band(ref, q, reps)
    assert lo <= value <= hi, f"{value} outside [{lo}, {hi}] (percentile {100 * q})"
    if apart_from is not None:
        assert not lo <= float(np.quantile(ref, apart_from)) <= hi  # the tolerance tells the levels apart


def _assert_interval(
    ci: tuple[float, float], ref: np.ndarray, size: float, reps: int = REPS, strict: bool = True
) -> None:
    """``ci`` is the ``size`` percentile interval of ``reps`` replicates of the bootstrap distribution ``ref``
    samples; ``strict`` (a near-continuous distribution): and the band excludes a narrower interval's endpoints (the
    90% interval's for 95%, else the interval 10 points narrower)."""
    tail = (1.0 - size) / 2
    other = (0.05 if size == 0.95 else tail + 0.05) if strict else None
    _assert_endpoint(ci[0], ref, tail, reps, other)
    _assert_endpoint(ci[1], ref, 1.0 - tail, reps, None if other is None else 1.0 - other)


def _resample(samples: list[np.ndarray], reps: int, seed: int) -> list[np.ndarray]:
    """rliable's stratified independent bootstrap with one task: each sample (a method's per-seed scores, as a
    ``[runs, 1]`` score matrix) has its runs drawn with replacement on its own, as many as it has. ``[reps, n_i, 1]``
    each."""
    rng = np.random.default_rng(seed)
    out = []
    for s in samples:
        scores = s.reshape(-1, 1)  # [runs, tasks=1]
        idx = rng.integers(0, scores.shape[0], (reps, *scores.shape))
        out.append(scores[idx, np.arange(scores.shape[1])])
    return out


def _iqm_rows(b: np.ndarray) -> np.ndarray:
    """rliable's aggregate_iqm (scipy's 25% trim_mean of the whole score matrix) of each replicate."""
    return scipy.stats.trim_mean(b.reshape(b.shape[0], -1), 0.25, axis=1)


def _poi_rows(bx: np.ndarray, by: np.ndarray) -> np.ndarray:
    """rliable's probability_of_improvement (Mann-Whitney U over n m, averaged over tasks) of each replicate."""
    n, m = bx.shape[1], by.shape[1]
    u = [
        scipy.stats.mannwhitneyu(bx[:, :, t], by[:, :, t], axis=1, alternative="greater", method="asymptotic").statistic
        for t in range(bx.shape[2])
    ]
    return np.mean(u, axis=0) / (n * m)


def _reference(rows: Callable[..., np.ndarray], *samples: np.ndarray, seed: int = 12345) -> np.ndarray:
    """Bootstrap distribution of a statistic (``rows`` maps replicates to one value each), ``REF_REPS`` draws."""
    boots = _resample([np.asarray(s, dtype=float) for s in samples], REF_REPS, seed)
    one = rly_metrics.aggregate_iqm if rows is _iqm_rows else rly_metrics.probability_of_improvement
    for i in range(3):  # the vectorized statistic is rliable's, replicate by replicate
        assert rows(*(b[i : i + 1] for b in boots))[0] == pytest.approx(one(*(b[i] for b in boots)), abs=1e-12)
    return rows(*boots)


def test_bootstrap_ci_is_the_95_percent_percentile_interval() -> None:
    """Default size: the 2.5 and 97.5 percentiles of the IQM's bootstrap distribution (not 90%, not 50%)."""
    x = np.random.default_rng(0).normal(size=12)
    ref = _reference(_iqm_rows, x)
    point, low, high = bootstrap_ci(iqm, x, reps=REPS, seed=1)
    assert point == pytest.approx(scipy.stats.trim_mean(x, 0.25))
    _assert_interval((low, high), ref, 0.95)
    assert bootstrap_ci(iqm, x, reps=REPS, seed=1, size=0.95) == (point, low, high)


@pytest.mark.parametrize("size", [0.5, 0.9])
def test_size_sets_the_level(size: float) -> None:
    """Other sizes give the matching percentiles of the same bootstrap distribution."""
    x = np.random.default_rng(1).normal(size=12)
    ref = _reference(_iqm_rows, x)
    _, low, high = bootstrap_ci(iqm, x, reps=REPS, seed=2, size=size)
    _assert_interval((low, high), ref, size)


def test_agrees_with_scipy_percentile_bootstrap() -> None:
    """The mean's interval against ``scipy.stats.bootstrap(method="percentile")``."""
    x = np.random.default_rng(2).exponential(size=15)
    res = scipy.stats.bootstrap(
        (x,), np.mean, n_resamples=REF_REPS, method="percentile", confidence_level=0.95, rng=np.random.default_rng(3)
    )
    ref = np.asarray(res.bootstrap_distribution)
    _, low, high = bootstrap_ci(np.mean, x, reps=REPS, seed=4)
    _assert_interval((low, high), ref, 0.95)
    lo_s, hi_s = res.confidence_interval
    _assert_endpoint(float(lo_s), ref, 0.025, REF_REPS)  # scipy's interval is read off the same distribution
    _assert_endpoint(float(hi_s), ref, 0.975, REF_REPS)


@pytest.mark.parametrize(("size", "n_sets", "lowest", "highest"), [(0.95, 150, 0.87, 0.99), (0.5, 100, 0.33, 0.67)])
def test_coverage_of_the_mean_of_normal_samples(size: float, n_sets: int, lowest: float, highest: float) -> None:
    """The interval of the mean of 25 normal samples covers the true mean about ``size`` of the time.

    The percentile bootstrap undercovers a little at n = 25: about 93% at 95% and 47% at 50% (measured on 1,500 data
    sets). The bounds are 3 sd of the coverage estimate (0.021 with 150 data sets, 0.05 with 100) around those, so a
    50% interval cannot pass for a 95% one nor the reverse."""
    rng = np.random.default_rng(5)
    covered = 0
    for i in range(n_sets):
        _, low, high = bootstrap_ci(np.mean, rng.normal(size=25), reps=200, seed=i, size=size)
        covered += low <= 0.0 <= high
    assert lowest <= covered / n_sets <= highest


def test_matches_rliable_stratified_bootstrap_of_iqm_and_poi() -> None:
    """IQM and P(improvement) intervals as rliable's stratified independent bootstrap gives them (ties, n != m)."""
    x = np.array([0.1, 0.3, 0.3, 0.45, 0.6, 0.6, 0.8, 0.95, 1.0])  # one method's per-seed finals
    y = np.array([0.2, 0.5, 0.55, 0.6, 0.9])
    for s in (x, y):
        _, low, high = bootstrap_ci(iqm, s, reps=REPS, seed=6)
        _assert_interval((low, high), _reference(_iqm_rows, s), 0.95, strict=False)
    for a, b in ((x, y), (y, x)):
        point, low, high = bootstrap_ci(probability_of_improvement, a, b, reps=REPS, seed=7)
        assert point == pytest.approx(rly_metrics.probability_of_improvement(a[:, None], b[:, None]))
        _assert_interval((low, high), _reference(_poi_rows, a, b), 0.95, strict=False)


def test_poi_bootstrap_resamples_each_sample_on_its_own_with_its_own_size() -> None:
    """Every replicate: each sample drawn with replacement from itself, as many as it has, independently."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def record(a: np.ndarray, b: np.ndarray) -> float:
        seen.append((a.copy(), b.copy()))
        return probability_of_improvement(a, b)

    for n, m in ((3, 8), (8, 3), (6, 6)):
        seen.clear()
        bootstrap_ci(record, np.arange(n), 100.0 + np.arange(m), reps=2000, seed=8)
        is_point = [np.array_equal(a, np.arange(n)) and np.array_equal(b, 100.0 + np.arange(m)) for a, b in seen]
        assert len(seen) == 2001 and any(is_point)  # the point estimate, on the samples themselves, and 2000 draws
        draws = seen[:]
        del draws[is_point.index(True)]
        ia = np.array([a for a, _ in draws])
        ib = np.array([b - 100.0 for _, b in draws])
        assert ia.shape == (2000, n) and ib.shape == (2000, m)  # own sizes
        assert set(np.unique(ia)) == set(range(n)) and set(np.unique(ib)) == set(range(m))  # own values, all seen
        for idx, size in ((ia, n), (ib, m)):
            freq = np.bincount(idx.ravel().astype(int), minlength=size) / idx.size
            assert np.abs(freq - 1 / size).max() < 5 * np.sqrt(1 / size / idx.size)  # uniform draws
            assert np.mean([len(set(row)) < size for row in idx]) > 0.5  # with replacement
        r = np.corrcoef(ia.mean(axis=1), ib.mean(axis=1))[0, 1]
        assert abs(r) < 0.1  # independent: 5 sd of a correlation of 2000 independent pairs
        if n == m:
            assert np.mean((ia == ib).all(axis=1)) < 0.01  # not the same indices


@pytest.mark.parametrize("n", range(1, 13))
def test_iqm_and_poi_take_rliables_values_for_every_n(n: int) -> None:
    """n = 1..12 (n not divisible by 4 included), with ties, all equal, against samples of 1 to 12."""
    rng = np.random.default_rng(100 + n)
    cases = [rng.normal(size=n), rng.integers(0, 3, n) / 2, np.full(n, 0.5), np.sort(rng.integers(0, 5, n) / 4)]
    for x in cases:
        assert iqm(x) == pytest.approx(rly_metrics.aggregate_iqm(x[:, None]), abs=1e-12)
        for m in (1, 2, 3, 4, 7, 12):
            y = rng.integers(0, 5, m) / 4
            expected = rly_metrics.probability_of_improvement(x[:, None], y[:, None])
            assert probability_of_improvement(x, y) == pytest.approx(expected, abs=1e-12)
        assert probability_of_improvement(x, x) == 0.5
        assert probability_of_improvement(x, rng.permutation(x)) == pytest.approx(0.5)
    cut = n // 4  # int(0.25 n) from each end
    spread = np.arange(n, dtype=float) ** 2
    assert iqm(rng.permutation(spread)) == pytest.approx(spread[cut : n - cut].mean())


def _run(root: Path, name: str, final: float, seed: int, combiner: str) -> None:
    """A run dir as ``mtrl train`` writes it, evaluated every 100 of 500 steps, ``final`` at the last three."""
    run = root / name
    run.mkdir(parents=True)
    config: dict[str, Any] = {
        "env.benchmark": "MT10",
        "env.protocol": "official",
        "total_steps": 500,
        "eval_interval": 100,
        "seed": seed,
        "run_name": name,
        "combiner": combiner,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "meta.yaml").write_text(yaml.safe_dump({"wall_clock_s": 60.0}))
    with SummaryWriter(log_dir=str(run)) as w:
        for step, value in zip(range(100, 501, 100), [0.0, 1.0, final, final, final]):
            w.add_scalar("eval/success_rate", value, step)


def test_compare_reports_the_independent_interval_of_each_methods_finals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``compare``'s iqm_ci and poi_ci are the 95% stratified-bootstrap intervals of the per-seed finals."""
    cli_module = importlib.import_module("mtrl.compare.cli")  # the attribute mtrl.compare.cli is the function
    for plot in ("plot_success_curves", "plot_iqm"):  # figures (pinned in test_compare.py) cost seconds here
        monkeypatch.setattr(cli_module, plot, lambda setting, path, *args: path)
    finals = {"mean": [0.1, 0.3, 0.3, 0.45, 0.6, 0.8, 0.95], "pcgrad": [0.2, 0.5, 0.55, 0.7, 0.9]}
    for combiner, values in finals.items():
        for seed, value in enumerate(values, start=1):
            _run(tmp_path / "runs", f"{combiner}_s{seed}", value, seed, combiner)
    result = compare([tmp_path / "runs"], out=tmp_path / "out", final_window=0.5, reps=REPS, seed=9)
    (setting,) = result.settings
    methods = {m.label: m for m in setting.methods}
    assert setting.baseline == "mean" and set(methods) == set(finals)
    for label, m in methods.items():
        np.testing.assert_allclose(m.finals, finals[label], rtol=1e-6)
        assert m.iqm == pytest.approx(rly_metrics.aggregate_iqm(m.finals[:, None]))
        _assert_interval(m.iqm_ci, _reference(_iqm_rows, m.finals), 0.95, strict=False)
    pcgrad = methods["pcgrad"]
    assert pcgrad.poi_ci is not None
    _assert_interval(pcgrad.poi_ci, _reference(_poi_rows, pcgrad.finals, methods["mean"].finals), 0.95, strict=False)
