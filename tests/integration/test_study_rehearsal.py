"""The study specs (``configs/sweeps/mt10_study.yaml``, ``mt50_study.yaml``): their arms and run counts, methods that
match the combiner presets they cite, and a rehearsal of the whole pipeline at toy scale (sweep, seed groups,
compare, verdict table)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtrl.compare.study import arm_of
from mtrl.config import load_yaml, to_flat
from mtrl.mto import COMBINERS
from mtrl.sweep import cli as sweep_cli
from mtrl.sweep import load_spec

ROOT = Path(__file__).parents[2]
SPECS = {"MT10": ROOT / "configs/sweeps/mt10_study.yaml", "MT50": ROOT / "configs/sweeps/mt50_study.yaml"}


@pytest.mark.parametrize("bench", list(SPECS))
def test_the_study_spec_has_its_arms_with_five_seeds_each_and_the_reference_budget(bench: str, capsys) -> None:
    sweep = load_spec(SPECS[bench], threads=1)
    arms: dict[str, set[str]] = {}
    for run in sweep.runs:
        arms.setdefault(arm_of(to_flat(run.cfg)), set()).add(run.method)
    assert {arm: len(methods) for arm, methods in arms.items()} == {
        "unitary": 5, "static": 7, "combiner": 27, "alternating": 2,
    }  # fmt: skip
    assert len(sweep.runs) == 41 * 5 and {r.cfg.seed for r in sweep.runs} == {1, 2, 3, 4, 5}
    assert {r.cfg.total_steps for r in sweep.runs} == {2_000_000} and {r.cfg.env.benchmark for r in sweep.runs} == {
        bench
    }
    assert arms["combiner"] | {"mean", "fixed", "sum"} == set(COMBINERS)  # every combiner
    # the stabilizers are held fixed: every run has the base preset's, whatever its arm
    shared = {"agent.temperature", "agent.q_target_clip", "agent.actor.max_grad_norm", "buffer.reward_norm"}
    assert len({tuple(to_flat(r.cfg)[k] for k in sorted(shared)) for r in sweep.runs}) == 1
    assert sweep_cli([str(SPECS[bench]), "--dry-run"]) == 0
    assert f"dry run: 205 runs in runs/sweeps/{bench.lower()}_study" in capsys.readouterr().out


@pytest.mark.parametrize("bench", list(SPECS))
def test_each_combiner_method_takes_its_presets_options_and_parts(bench: str) -> None:
    sweep = load_spec(SPECS[bench], threads=1)
    for run in sweep.runs:
        name = to_flat(run.cfg)["combiner"]
        if arm_of(to_flat(run.cfg)) != "combiner":
            continue
        preset = to_flat(from_preset(ROOT / f"configs/{bench.lower()}_{name}.yaml"))
        ours = to_flat(run.cfg)
        keys = [k for k in preset if k.startswith(("combiner", "combine_"))]
        assert {k: ours[k] for k in keys} == {k: preset[k] for k in keys}, run.name


def from_preset(path: Path):
    from mtrl.config import from_flat

    return from_flat(load_yaml(path))


def test_the_toy_rehearsal_runs_the_study_pipeline_end_to_end(tmp_path: Path, monkeypatch, capsys) -> None:
    """The MT10 study spec at toy scale, five methods of four arms, two seeds each (the methods that can, as seed
    groups), then ``mtrl compare --spec``: the grouped report, the verdict table and what is missing."""
    from mtrl.compare import cli as compare_cli

    monkeypatch.chdir(tmp_path)
    methods = ["mean", "mean_all", "fixed-w0", "pcgrad", "alternating_ius"]
    argv = [str(SPECS["MT10"]), "--scale", "toy", "--methods", *methods, "--seeds-per-process", "2", "--workers", "2"]
    assert sweep_cli(argv) == 0
    out = capsys.readouterr().out
    assert "10 runs in runs/sweeps/mt10_study-toy: 0 failed" in out
    assert compare_cli(["--spec", str(SPECS["MT10"]), "--scale", "toy", "--out", "report"]) == 0
    printed = capsys.readouterr().out
    assert "## Study verdicts: toy" in printed and "against the best unitary variant" in printed
    text = (tmp_path / "report" / "study.md").read_text()
    for name, arm in [("mean", "unitary"), ("mean_all", "unitary"), ("fixed-w0", "static"), ("pcgrad", "combiner")]:
        assert f"| {arm} | `{name}` |" in text
    assert "| alternating | `alternating_ius` |" in text
    assert "| unitary scalarization (plain and regularized) | 2 | 4 | 0 | 6 | 10 |" in text  # 5 methods x 2 seeds
    assert "`mgda__s1`: no run directory" in text and "`mean_wd__s2`: no run directory" in text
    assert (tmp_path / "report" / "summary.md").is_file() and (tmp_path / "report" / "success_curves.png").is_file()
