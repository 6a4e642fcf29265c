"""mtrl compare on synthetic runs with known values: finals, IQM, CIs, P(improvement), setting split, plots, CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rliable import metrics as rly_metrics
from torch.utils.tensorboard import SummaryWriter

from mtrl.compare import (
    bootstrap_ci,
    cli,
    compare,
    iqm,
    load_run,
    method_labels,
    probability_of_improvement,
)
from mtrl.runs.scalars import final_success, read_scalars
from mtrl.runs.tensorboard import write_hparams

TASKS = ("reach-v3", "push-v3")
BASE_CONFIG: dict[str, Any] = {
    "env.benchmark": "MT10",
    "env.protocol": "official",
    "env.reward_version": "v2",
    "env.max_episode_steps": 0,
    "total_steps": 500,
    "eval_interval": 100,
    "eval_episodes": 10,
    "seed": 1,
    "run_name": "x",
    "device": "cpu",
    "combiner": "mean",
    "agent.actor.weight_decay": 0.0,
    "agent.critic.weight_decay": 0.0,
    "agent.actor.layer_norm": False,
    "agent.critic.layer_norm": False,
    "agent.temperature": "per_task",
    "buffer.reward_norm": False,
}


def make_run(
    root: Path,
    name: str,
    curve: list[float] | None,
    wall_clock_s: float = 3600.0,
    sps: float = 100.0,
    **overrides: Any,
) -> Path:
    """A run dir as ``mtrl train`` writes it; evaluations every 100 steps with ``curve`` as eval/success_rate.

    Task ``reach-v3`` gets ``curve`` + 0.125 (clipped at 1) and ``push-v3`` gets ``curve`` - 0.125 (clipped at 0).
    """
    run = root / name
    run.mkdir(parents=True)
    config = {**BASE_CONFIG, "run_name": name, **overrides}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run / "meta.yaml").write_text(yaml.safe_dump({"git_commit": "abc", "wall_clock_s": wall_clock_s}))
    with SummaryWriter(log_dir=str(run)) as w:
        for step in range(0, 500, 50):
            w.add_scalar("train/sps", sps, step)
            w.add_scalar("losses/critic", 1.0, step)
        for i, value in enumerate(curve or []):
            step = 100 * (i + 1)
            w.add_scalar("eval/success_rate", value, step)
            w.add_scalar("eval/success_rate/reach-v3", min(value + 0.125, 1.0), step)
            w.add_scalar("eval/success_rate/push-v3", max(value - 0.125, 0.0), step)
    return run


def spike_then(final: float) -> list[float]:
    """A curve that peaks at 1.0 early and then settles at ``final`` for the last 3 evaluations."""
    return [0.0, 1.0, final, final, final]


MEAN_FINALS = [0.125, 0.25, 0.25, 0.375]  # exact in float32, so the table rounding is predictable
PCGRAD_FINALS = [0.5, 0.625, 0.75, 1.0]


@pytest.fixture
def two_methods(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, (a, b) in enumerate(zip(MEAN_FINALS, PCGRAD_FINALS, strict=True), start=1):
        make_run(root, f"mean_s{seed}", spike_then(a), seed=seed, wall_clock_s=3600.0, sps=100.0)
        make_run(root, f"pcgrad_s{seed}", spike_then(b), seed=seed, combiner="pcgrad", wall_clock_s=7200.0, sps=50.0)
    return root


def test_final_success_averages_the_last_part_of_the_run_not_the_max_nor_the_whole_curve(tmp_path: Path) -> None:
    steps = [100, 200, 300, 400, 500]
    assert final_success(steps, [0.0, 1.0, 0.2, 0.4, 0.6], 500, 0.5) == pytest.approx(0.4)  # steps >= 250
    assert final_success(steps, [0.0, 1.0, 0.2, 0.4, 0.6], 500) == pytest.approx(0.6)  # default: last 10%
    assert final_success([100], [0.5], 4000) == pytest.approx(0.5)  # at least the last evaluation
    # the toy demo's curve: 4 evaluations, the last at 1.0; the whole-curve mean would say 0.76
    assert final_success([1000, 2000, 3000, 4000], [0.45, 0.8, 0.8, 1.0], 4000) == pytest.approx(1.0)
    dense = list(range(1000, 100_001, 1000))  # 100 evaluations: the last 10% of steps holds 11 of them
    assert final_success(dense, [0.0] * 89 + [1.0] * 11, 100_000) == pytest.approx(1.0)
    assert final_success(dense, [0.0] * 90 + [1.0] * 10, 100_000) == pytest.approx(10 / 11)
    run = load_run(make_run(tmp_path, "r", [0.0, 1.0, 0.2, 0.4, 0.6]), final_window=0.5)
    assert run.final == pytest.approx(0.4)
    assert run.n_final == 3
    assert run.task_final["reach-v3"] == pytest.approx(0.525)
    assert run.task_final["push-v3"] == pytest.approx((0.075 + 0.275 + 0.475) / 3)
    assert run.sps == pytest.approx(100.0)
    assert run.wall_clock_s == pytest.approx(3600.0)
    assert list(run.steps) == [100, 200, 300, 400, 500]


def test_read_scalars_matches_tbparse(tmp_path: Path) -> None:
    from tbparse import SummaryReader

    run = make_run(tmp_path, "r", [0.0, 1.0, 0.2, 0.4, 0.6])
    ours = read_scalars(run)
    (event_file,) = run.glob("events.out.tfevents.*")
    theirs = SummaryReader(str(event_file)).scalars.sort_values(["tag", "step"], kind="stable")
    assert ours["tag"].tolist() == theirs["tag"].tolist()
    assert ours["step"].tolist() == theirs["step"].tolist()
    np.testing.assert_allclose(ours["value"].to_numpy(), theirs["value"].to_numpy(dtype=float))
    assert set(read_scalars(run, keep=lambda t: t == "train/sps")["tag"]) == {"train/sps"}


def test_read_scalars_resumed_and_truncated(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", [0.1, 0.2, 0.3])
    with SummaryWriter(log_dir=str(run)) as w:  # resumed from step 200: step 300 written again, then 400 and 500
        for step, value in [(300, 0.35), (400, 0.4), (500, 0.5)]:
            w.add_scalar("eval/success_rate", value, step)
    df = read_scalars(run, keep=lambda t: t == "eval/success_rate")
    np.testing.assert_allclose(df["value"], [0.1, 0.2, 0.35, 0.4, 0.5], rtol=1e-6)
    newest = max(run.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(newest.read_bytes()[:-10])  # a run still writing: last record incomplete
    df = read_scalars(run, keep=lambda t: t == "eval/success_rate")
    np.testing.assert_allclose(df["value"], [0.1, 0.2, 0.35, 0.4], rtol=1e-6)


def test_iqm_is_mean_of_middle_half() -> None:
    assert iqm([1.0, 2.0, 3.0, 10.0]) == pytest.approx(2.5)
    assert iqm([0.0, 100.0, 2.0, 3.0, 4.0, 5.0, 1.0, 6.0]) == pytest.approx((2 + 3 + 4 + 5) / 4)
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 7, 10, 13):
        x = rng.random((n, 1))
        assert iqm(x) == pytest.approx(rly_metrics.aggregate_iqm(x))


def test_bootstrap_ci_contains_point_and_is_ordered() -> None:
    x = np.array([0.1, 0.2, 0.25, 0.3, 0.5, 0.55, 0.6, 0.9])
    point, low, high = bootstrap_ci(iqm, x, reps=500, seed=0)
    assert point == pytest.approx(iqm(x))
    assert low <= point <= high
    assert low < high
    assert bootstrap_ci(iqm, x, reps=500, seed=0) == (point, low, high)  # seeded


def test_probability_of_improvement() -> None:
    low, high = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 0.6, 0.7, 0.8])
    assert probability_of_improvement(high, low) == 1.0
    assert probability_of_improvement(low, high) == 0.0
    assert probability_of_improvement(low, low) == 0.5
    assert bootstrap_ci(probability_of_improvement, high, low, reps=200) == (1.0, 1.0, 1.0)
    p, lo, hi = bootstrap_ci(probability_of_improvement, low, low.copy(), reps=500)
    assert p == 0.5 and lo < 0.5 < hi
    rng = np.random.default_rng(0)
    for n, m in [(5, 5), (3, 7), (10, 4)]:
        x, y = rng.integers(0, 5, n) / 4, rng.integers(0, 5, m) / 4  # with ties
        expected = rly_metrics.probability_of_improvement(x[:, None], y[:, None])
        assert probability_of_improvement(x, y) == pytest.approx(expected)


def test_method_labels_from_differing_keys() -> None:
    defaults = {"agent.actor.weight_decay": 0.0, "agent.critic.weight_decay": 0.0, "agent.temperature": "per_task"}
    configs = [
        {**BASE_CONFIG, "seed": 1},
        {**BASE_CONFIG, "seed": 2, "combiner": "pcgrad"},
        {**BASE_CONFIG, "combiner": "cagrad", "combiner.c": 0.4},
        {**BASE_CONFIG, "agent.actor.weight_decay": 3e-4, "agent.critic.weight_decay": 3e-4},
        {**BASE_CONFIG, "agent.actor.weight_decay": 3e-4},
        {**BASE_CONFIG, "agent.temperature": "shared", "agent.actor.layer_norm": True, "agent.critic.layer_norm": True},
        {**BASE_CONFIG, "agent": "single_task", "total_steps": 10**6, "run_name": "other"},
    ]
    assert method_labels(configs, defaults=defaults) == [
        "mean",
        "pcgrad",
        "cagrad-c0.4",
        "mean+wd3e-4",
        "mean+actor-wd3e-4",
        "mean+ln+alpha-shared",
        "single_task",
    ]
    assert method_labels(configs[:2], defaults={}) == ["mean", "pcgrad"]


def test_compare_two_methods(two_methods: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = compare([two_methods], out=out, final_window=0.5, reps=500, seed=0)
    assert len(result.settings) == 1 and not result.set_apart
    setting = result.settings[0]
    assert setting.baseline == "mean"
    assert setting.method_keys == ["combiner"]
    base, pcgrad = setting.methods
    assert (base.label, pcgrad.label) == ("mean", "pcgrad")
    np.testing.assert_allclose(base.finals, MEAN_FINALS)  # mean of last 3, not the 1.0 peak
    np.testing.assert_allclose(pcgrad.finals, PCGRAD_FINALS)
    assert base.seeds == [1, 2, 3, 4]
    assert base.iqm == pytest.approx((0.25 + 0.25) / 2)
    assert pcgrad.iqm == pytest.approx((0.625 + 0.75) / 2)
    for m in (base, pcgrad):
        assert m.iqm_ci[0] <= m.iqm <= m.iqm_ci[1]
    assert base.poi is None
    assert pcgrad.poi == 1.0 and pcgrad.poi_ci == (1.0, 1.0)
    assert pcgrad.mean == pytest.approx(np.mean(PCGRAD_FINALS))
    assert pcgrad.sps == pytest.approx(50.0) and pcgrad.wall_clock_s == pytest.approx(7200.0)
    assert pcgrad.task_final["reach-v3"] == pytest.approx(np.mean([min(v + 0.125, 1) for v in PCGRAD_FINALS]))

    md = (out / "summary.md").read_text()
    assert md == result.summary
    assert "mean of the evaluations in the last 50% of the run's steps" in md
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| `")}
    lo, hi = pcgrad.iqm_ci
    assert rows["`pcgrad`"] == (
        f"| `pcgrad` | 4 | 0.69 [{lo:.2f}, {hi:.2f}] | 0.72 | 0.50 0.62 0.75 1.00 | 1.00 [1.00, 1.00] | 50 | 2.0 h |"
    )
    assert rows["`mean`"].startswith("| `mean` | 4 | 0.25 [") and rows["`mean`"].endswith("| baseline | 100 | 1.0 h |")
    assert "| reach-v3 | 0.38 | 0.81 |" in md  # per-task: mean over seeds of (final + 0.125, clipped at 1)

    for name in ("success_curves.png", "iqm.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_identical_methods_have_poi_one_half(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed, v in enumerate([0.2, 0.4, 0.6, 0.8], start=1):
        make_run(root, f"a{seed}", spike_then(v), seed=seed)
        make_run(root, f"b{seed}", spike_then(v), seed=seed, combiner="famo")
    result = compare([root], out=tmp_path / "out", final_window=0.5, reps=300)
    (famo,) = [m for m in result.settings[0].methods if m.label == "famo"]
    assert famo.poi == 0.5
    assert famo.poi_ci is not None and famo.poi_ci[0] < 0.5 < famo.poi_ci[1]


def test_different_settings_are_set_apart(two_methods: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    long_run = make_run(other, "long", [0.1] * 10, total_steps=1000, seed=1)
    mt50 = make_run(other, "mt50", spike_then(0.5), seed=1, **{"env.benchmark": "MT50"})
    empty = make_run(other, "no_evals", None, seed=9)
    unfinished = make_run(other, "unfinished", [0.1, 0.2], seed=7)
    warnings: list[str] = []
    out = tmp_path / "out"
    result = compare([two_methods, other], out=out, final_window=0.5, reps=200, warn=warnings.append)

    assert [s.n_runs for s in result.settings] == [8, 1, 1]
    assert {m.label for m in result.settings[0].methods} == {"mean", "pcgrad"}
    reasons = {a.path: a.reason for a in result.set_apart}
    assert set(reasons) == {long_run, mt50, empty, unfinished}
    assert "total_steps=1000 (main: 500)" in reasons[long_run]
    assert "benchmark=MT50 (main: MT10)" in reasons[mt50]
    assert "no evaluations" in reasons[empty]
    assert "unfinished" in reasons[unfinished]
    assert any("no evaluations" in w for w in warnings)
    md = (out / "summary.md").read_text()
    section = md.split("## Runs set apart")[1]
    for path in (long_run, mt50, empty, unfinished):
        assert str(path) in section
    assert md.count("## MT10") == 2 and md.count("## MT50") == 1
    for s in result.settings[1:]:
        assert s.out_dir.parent == out and (s.out_dir / "iqm.png").is_file()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert cli([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no run directories" in err
    make_run(tmp_path / "only", "r", None)
    assert cli([str(tmp_path / "only"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("mtrl compare: error:")
    assert cli(["--help"]) == 0
    assert "--final-window" in capsys.readouterr().out


def test_cli_prints_table(two_methods: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    assert (
        cli([str(two_methods), "--out", str(out), "--final-window", "0.5", "--reps", "200", "--baseline", "pcgrad"])
        == 0
    )
    stdout = capsys.readouterr().out
    assert "| `pcgrad` | 4 |" in stdout and "P(improve over pcgrad)" in stdout
    assert "| `mean` | 4 | 0.25 [" in stdout and "0.00 [0.00, 0.00]" in stdout
    assert (out / "summary.md").is_file()


def test_write_hparams_is_read_back_by_tbparse(tmp_path: Path) -> None:
    from tbparse import SummaryReader

    config = {"combiner": "pcgrad", "combiner.c": 0.4, "seed": 3, "agent.actor.layer_norm": True, "x": None}
    path = write_hparams(tmp_path, config, {"final_success": 0.75}, step=500)
    assert path.parent == tmp_path and path.name.endswith(".hparams")
    reader = SummaryReader(str(tmp_path))
    hp = dict(zip(reader.hparams["tag"], reader.hparams["value"], strict=True))
    assert hp == {"combiner": "pcgrad", "combiner.c": 0.4, "seed": 3.0, "agent.actor.layer_norm": True}
    scalars = reader.scalars
    assert scalars[scalars["tag"] == "eval/final_success"][["step", "value"]].values.tolist() == [[500, 0.75]]
    write_hparams(tmp_path, config, {"final_success": 0.5})  # replaces, does not accumulate
    assert len(list(tmp_path.glob("*.hparams"))) == 1


def test_compare_writes_missing_hparams(two_methods: Path, tmp_path: Path) -> None:
    compare([two_methods], out=tmp_path / "out", final_window=0.5, reps=50, hparams=True)
    runs = sorted(p for p in two_methods.iterdir())
    assert all(len(list(r.glob("*.hparams"))) == 1 for r in runs)
    again = compare([two_methods], out=tmp_path / "out", final_window=0.5, reps=50)
    assert [m.finals.tolist() for m in again.settings[0].methods] == [MEAN_FINALS, PCGRAD_FINALS]


def test_steps_per_second_of_runs_written_by_earlier_versions_are_read(tmp_path: Path) -> None:
    """Runs logged ``charts/sps`` before the Time Series reordering (now ``train/sps``); both are read."""
    run = make_run(tmp_path, "old", [0.5], sps=0.0)
    with SummaryWriter(log_dir=str(run)) as w:
        for step in range(0, 500, 50):
            w.add_scalar("charts/sps", 40.0, step)
    assert load_run(make_run(tmp_path, "new", [0.5], sps=30.0)).sps == pytest.approx(30.0)
    assert load_run(run).sps == pytest.approx(20.0)  # ten 0.0 (train/sps) and ten 40.0 (charts/sps)


def test_default_baseline_is_the_plainest_mean_when_every_run_has_stabilizers(tmp_path: Path) -> None:
    """Runs that all clip gradients (a preset's shared stabilizer) have no plain ``mean``: the baseline is the mean
    method with the fewest regularizers on, not the first label (``famo``) or the alternating schedule."""
    root = tmp_path / "runs"
    shared = {"agent.actor.max_grad_norm": 1.0, "agent.critic.max_grad_norm": 1.0}
    methods = {
        "a_famo": {"combiner": "famo"},
        "alt": {"combiner": "mean", "agent.schedule": "alternating"},
        "mean_ln": {"combiner": "mean", "agent.actor.layer_norm": True},
        "mean": {"combiner": "mean"},
    }
    for name, over in methods.items():
        for seed in (1, 2):
            make_run(root, f"{name}__s{seed}", [0.1, 0.2, 0.3, 0.3, 0.3], seed=seed, **shared, **over)
    setting = compare([root], out=tmp_path / "out", final_window=0.5, reps=100, seed=0).settings[0]
    assert setting.baseline == "mean" and setting.methods[0].label == "mean"
