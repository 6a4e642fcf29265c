"""``mtrl compare`` on a study: arms, the best and the plain unitary variant, P(improvement) against each with its
CI, the verdicts, runs per arm and what is missing, on runs with known final successes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from test_compare import make_run

from mtrl.compare import compare
from mtrl.compare.study import arm_of, is_plain_unitary

SEEDS = range(1, 6)
FINALS = {  # method: (config overrides, final success of seeds 1..5)
    "mean": ({}, [0.20, 0.25, 0.30, 0.35, 0.40]),
    "mean_wd": ({"agent.actor.weight_decay": 0.01}, [0.45, 0.50, 0.55, 0.60, 0.65]),
    "mean_ln": ({"agent.actor.layer_norm": True}, [0.30, 0.35, 0.40, 0.45, 0.50]),
    "sum": ({"combiner": "sum"}, [0.05, 0.10, 0.10, 0.15, 0.20]),
    "pcgrad": ({"combiner": "pcgrad"}, [0.80, 0.85, 0.90, 0.95, 1.00]),
    "famo": ({"combiner": "famo"}, [0.40, 0.50, 0.55, 0.60, 0.70]),
    "alt": ({"agent.schedule": "alternating"}, [0.00, 0.05, 0.05, 0.10, 0.10]),
}


@pytest.fixture
def study_runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for name, (overrides, finals) in FINALS.items():
        for seed, final in zip(SEEDS, finals):
            make_run(root, f"{name}__s{seed}", [0.0, final, final, final, final], seed=seed, **overrides)
    return root


def test_arms_and_plain_unitary_follow_the_config() -> None:
    assert arm_of({"combiner": "mean"}) == "unitary" and arm_of({"combiner": "fixed"}) == "static"
    assert arm_of({"combiner": "sum"}) == "static" and arm_of({"combiner": "famo"}) == "combiner"
    assert arm_of({"combiner": "mean", "agent.schedule": "alternating"}) == "alternating"
    assert is_plain_unitary({"combiner": "mean", "agent.actor.max_grad_norm": 1.0, "buffer.reward_norm": True})
    assert not is_plain_unitary({"combiner": "mean", "agent.critic.dropout": 0.01})
    assert not is_plain_unitary({"combiner": "pcgrad"})


def test_each_method_against_the_best_and_the_plain_unitary_variant(study_runs: Path, tmp_path: Path) -> None:
    result = compare([study_runs], out=tmp_path / "cmp", reps=500, warn=lambda _: None)
    (view,) = result.studies
    assert (view.best, view.plain) == ("mean_wd", "mean")
    by_name = {r.method.runs[0].path.name.split("__")[0]: r for r in view.rows}
    assert [r.arm for r in view.rows] == ["unitary"] * 3 + ["static", "combiner", "combiner", "alternating"]
    for name, row in by_name.items():
        finals = np.array(FINALS[name][1])
        assert np.allclose(np.sort(row.method.finals), finals)
        for ref, versus in (("mean_wd", row.vs_best), ("mean", row.vs_plain)):
            if name == ref:
                assert versus is None
                continue
            reference = np.array(FINALS[ref][1])
            u = mannwhitneyu(finals, reference).statistic / (finals.size * reference.size)  # an independent P(X > Y)
            assert versus is not None and versus.poi == pytest.approx(u)
            assert versus.low <= versus.poi <= versus.high
    verdicts = {name: (row.vs_best.verdict if row.vs_best else "reference") for name, row in by_name.items()}
    assert verdicts == {
        "mean": "worse", "mean_wd": "reference", "mean_ln": "worse", "sum": "worse", "pcgrad": "better",
        "famo": "no different", "alt": "worse",
    }  # fmt: skip
    for row in view.rows:  # the verdict is where the CI of P(improvement) lies against 0.5
        if row.vs_best is not None:
            side = "better" if row.vs_best.low > 0.5 else "worse" if row.vs_best.high < 0.5 else "no different"
            assert row.vs_best.verdict == side
    counts = view.arms
    assert (counts["unitary"].methods, counts["unitary"].runs, counts["static"].runs) == (3, 15, 5)
    assert counts["combiner"].expected is None and view.missing == []
    text = (tmp_path / "cmp" / "study.md").read_text()
    assert "| combiner | `pcgrad` | 0.90 [" in text and "| better |" in text
    assert "6 verdicts at 95% each" in text and "[study.md](study.md)" in (tmp_path / "cmp" / "summary.md").read_text()


def test_a_partial_study_is_compared_on_what_finished_and_says_what_is_missing(study_runs: Path, tmp_path) -> None:
    import shutil

    shutil.rmtree(study_runs / "pcgrad__s5")
    make_run(study_runs, "famo__s9", [0.0, 0.5], seed=9, combiner="famo")  # unfinished: 2 of 5 evaluations
    expected = [(f"{n}__s{s}", {**FINALS[n][0], "combiner": FINALS[n][0].get("combiner", "mean")}) for n in FINALS
                for s in SEEDS] + [("famo__s9", {"combiner": "famo"}), ("mgda__s1", {"combiner": "mgda"})]  # fmt: skip
    result = compare([study_runs], out=tmp_path / "cmp", reps=200, warn=lambda _: None, expected=expected)
    (view,) = result.studies
    pcgrad = next(r for r in view.rows if r.method.runs[0].path.name.startswith("pcgrad"))
    assert len(pcgrad.method.runs) == 4
    combiner = view.arms["combiner"]
    assert (combiner.expected, combiner.runs, combiner.set_apart, combiner.missing) == (12, 9, 1, 2)
    assert sorted(line.split("`")[1] for line in view.missing) == ["famo__s9", "mgda__s1", "pcgrad__s5"]
    text = (tmp_path / "cmp" / "study.md").read_text()
    assert "`pcgrad__s5`: no run directory" in text and "`famo__s9`: unfinished" in text
    assert "better (4 seeds: unreliable)" in text


def test_runs_of_one_arm_only_get_no_study(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed in SEEDS:
        make_run(root, f"pcgrad__s{seed}", [0.0, 0.5, 0.5, 0.5, 0.5], seed=seed, combiner="pcgrad")
        make_run(root, f"cagrad__s{seed}", [0.0, 0.6, 0.6, 0.6, 0.6], seed=seed, combiner="cagrad")
    result = compare([root], out=tmp_path / "cmp", reps=100, warn=lambda _: None)
    assert result.studies == [] and not (tmp_path / "cmp" / "study.md").exists()


def test_study_cost_follows_its_formula(capsys) -> None:
    """scripts/study_cost.py: a mean run is its steps at mean's step time plus its evaluations at the env's step
    time; a gradient-space combiner adds (ratio - 1) x mean's update to each step."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "study_cost.py"
    spec = importlib.util.spec_from_file_location("study_cost", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    study = Path(__file__).resolve().parents[2] / "configs" / "sweeps" / "mt10_study.yaml"
    argv = [str(study), "--steps-per-s", "50", "--update-ms", "10", "--assume", "gradient=2", "schedule=3"]
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.startswith("  ") and len(ln.split()) == 5}
    t_env = 0.02 - 0.01  # 2M steps of 20 ms, 40 evaluations of 50 episodes x 500 steps of 10 ms
    mean = (2_000_000 * 0.02 + 40 * 50 * 500 * t_env) / 3600
    assert float(rows["mean"][3]) == pytest.approx(mean, abs=0.05)
    assert float(rows["pcgrad"][3]) == pytest.approx(mean + 2_000_000 * 0.01 / 3600, abs=0.05)
    assert float(rows["alternating_ius"][3]) == pytest.approx(mean + 2 * 2_000_000 * 0.01 / 3600, abs=0.05)
    assert "205 runs" in out
