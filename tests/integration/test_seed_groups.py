"""Seed groups (``mtrl train --seeds``): a group of N seeds is N independent runs, tested against the solo runs of the
same seeds, never against itself.

Tolerance. A seed's slice of the group computes what its solo run computes, with the same random draws, but the
batched matrix multiplies of the group may block and accumulate differently from those of one seed (the CPU's BLAS
picks its kernel by the batch count), so a weight gradient can differ in its last bits (about 1e-9 on the toy
networks). Adam carries such differences on, and a few dozen updates later parameters agree to about 1e-7. Floats are
therefore compared with ``rtol = atol = 1e-5``, two orders of magnitude above what rounding gave and far below any
real difference (a swapped seed, a shared generator or a group-wide gradient norm moves values by 1e-2 and more:
the planted bugs of ``scripts/mutants.py``). Everything discrete (generator states, step counts, episode counts,
evaluation success) must be equal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from toyruns import TINY

from mtrl.cli import main
from mtrl.config import from_flat
from mtrl.runs import checkpoint
from mtrl.runs.scalars import read_scalars
from mtrl.train import train, train_group

SEEDS = (1, 2, 3)
SHORT = {**TINY, "total_steps": 160, "eval_interval": 80, "checkpoint_interval": 80}  # 100 warm-up, 60 updates


def assert_close(a: Any, b: Any, where: str = "") -> None:
    """Nested states equal: floats to rtol = atol = 1e-5 (see the module docstring), everything else exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and (a.dtype, a.shape) == (b.dtype, b.shape), f"{where}: tensors differ"
        if a.dtype.is_floating_point:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=where)
        else:
            assert torch.equal(a, b), f"{where}: values differ"
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=where)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _unit(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    state = checkpoint.load(run)
    return state, checkpoint.load_buffer(checkpoint.resolve(run), state["step"])


def _evaluations(run: Path) -> dict[tuple[str, int], float]:
    df = read_scalars(run)
    df = df[df.tag.str.startswith(("eval/success_rate", "eval_return/"))]
    return {(tag, int(step)): float(v) for tag, step, v in zip(df.tag, df.step, df.value)}


CASES = {
    "mean one-hot": {},
    "pcgrad multi-head LayerNorm dropout": {
        "combiner": "pcgrad", "agent.conditioning": "multi_head", "agent.actor.layer_norm": True,
        "agent.critic.layer_norm": True, "agent.actor.dropout": 0.1, "agent.critic.dropout": 0.1,
    },
    "gradvac one-hot LayerNorm dropout clipping": {
        "combiner": "gradvac", "agent.actor.layer_norm": True, "agent.critic.layer_norm": True,
        "agent.actor.dropout": 0.1, "agent.critic.dropout": 0.1, "agent.actor.max_grad_norm": 0.05,
        "agent.critic.max_grad_norm": 0.5, "buffer.reward_norm": True,
    },
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_a_group_trains_each_seed_as_its_solo_run(tmp_path: Path, case: str) -> None:
    """Replay contents, every piece of agent state (networks, target critic, temperatures, optimizers, combiner
    states, generators), the warm-up generator and every logged evaluation of each seed of a group equal those of the
    solo run with that seed."""
    base = {**SHORT, **CASES[case], "run_dir": str(tmp_path)}
    for s in SEEDS:
        train(from_flat({**base, "seed": s, "run_name": f"solo{s}"}), progress=False)
    runs = train_group(from_flat({**base, "seeds": list(SEEDS), "run_name": "group"}), progress=False)
    assert [r.name for r in runs] == [f"group__s{s}" for s in SEEDS]
    for s, run in zip(SEEDS, runs):
        solo, grouped = _unit(tmp_path / f"solo{s}"), _unit(run)
        assert grouped[0]["config"] == {**solo[0]["config"], "run_name": run.name}
        for part in (solo, grouped):
            part[0].pop("config"), part[0].pop("wall_clock_s")
        assert_close(solo, grouped, f"seed {s}")
        a, b = _evaluations(tmp_path / f"solo{s}"), _evaluations(run)
        assert a.keys() == b.keys() and len(a) > 4
        for key in a:  # success rates exactly, returns to the tolerance
            assert b[key] == (a[key] if key[0].startswith("eval/") else pytest.approx(a[key], abs=1e-3)), key
    # the seeds did differ from one another (the comparison above is not between copies)
    first, second = _unit(runs[0])[0]["agent"]["actor"], _unit(runs[1])[0]["agent"]["actor"]
    assert not torch.allclose(first["net.head.weight"], second["net.head.weight"], atol=1e-3)


def test_each_run_of_a_group_writes_a_solo_run_directory_and_names_its_group(tmp_path: Path) -> None:
    cfg = from_flat({**SHORT, "run_dir": str(tmp_path), "seeds": [4, 7]})
    runs = train_group(cfg, progress=False)
    assert [r.name.split("__")[:3] for r in runs] == [["toy", "mean", "s4"], ["toy", "mean", "s7"]]
    assert runs[0].name.split("__")[3] == runs[1].name.split("__")[3]  # one timestamp for the group
    for seed, run in zip((4, 7), runs):
        assert sorted(p.name for p in run.iterdir() if not p.name.startswith("events.")) == [
            "checkpoints", "command.txt", "config.yaml", "meta.yaml",
        ]  # fmt: skip
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["seed"] == seed and saved["seeds"] == [] and saved["run_name"] == run.name
        meta = yaml.safe_load((run / "meta.yaml").read_text())
        assert meta["seed"] == seed and meta["final_step"] == 160 and "final_success" in meta
        assert meta["group"] == {"seeds": [4, 7], "runs": [r.name for r in runs]}
        assert len(list(run.glob("events.out.tfevents.*"))) == 2  # the curves and the HParams session
        assert checkpoint.step_of(checkpoint.latest(run)) == 160


def _cli(*args: str) -> int:
    return main(["train", *args, "--no-progress"])


def test_resuming_one_run_resumes_its_group_as_the_solo_runs_resume(tmp_path: Path, capsys) -> None:
    """A group trained to step 160 and resumed (through its second run) to 240 equals the solo runs of its seeds
    trained to 160 and resumed to 240 (a resume restarts the episodes in flight, so neither equals an uninterrupted
    run)."""
    flags = [f"--{k}={v}" for k, v in {**SHORT, "total_steps": 160}.items()] + ["--run_dir", str(tmp_path)]
    for s in (1, 2):
        assert _cli(*flags, "--run_name", f"solo{s}", "--seed", str(s)) == 0
        assert _cli("--resume", str(tmp_path / f"solo{s}"), "--total_steps", "240") == 0
    assert _cli(*flags, "--run_name", "part", "--seeds", "1", "2") == 0
    capsys.readouterr()
    assert _cli("--resume", str(tmp_path / "part__s2"), "--total_steps", "240") == 0
    assert "resuming the seed group of part__s2: 2 runs (part__s1, part__s2)" in capsys.readouterr().err
    for s in (1, 2):
        solo, part = _unit(tmp_path / f"solo{s}"), _unit(tmp_path / f"part__s{s}")
        assert solo[0]["step"] == part[0]["step"] == 240
        for unit in (solo, part):
            unit[0].pop("wall_clock_s"), unit[0]["config"].pop("run_name")
        assert_close(solo, part, f"seed {s}")


def test_a_crash_between_the_saves_of_one_step_resumes_the_group_at_the_step_all_saved(tmp_path: Path, capsys):
    """Seed 1 saved step 160, seed 2 only 80 (a kill between the two saves): the resume sets seed 1's newer unit
    aside, says so in one line, resumes both from 80 and finishes both."""
    flags = [f"--{k}={v}" for k, v in SHORT.items()] + ["--run_dir", str(tmp_path), "--run_name", "g"]
    assert _cli(*flags, "--seeds", "1", "2") == 0
    second = tmp_path / "g__s2" / "checkpoints"
    (second / checkpoint.unit_name(160)).rename(tmp_path / "gone")
    (second / checkpoint.LATEST).write_text(checkpoint.unit_name(80) + "\n")
    capsys.readouterr()
    assert _cli("--resume", str(tmp_path / "g__s1")) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "past step 80" in line]
    assert len(notes) == 1 and notes[0].startswith("mtrl train: g__s1: checkpoint step_0000000160 is past step 80")
    assert (tmp_path / "g__s1" / "checkpoints" / "step_0000000160.damaged").is_dir()
    for s in (1, 2):
        assert checkpoint.step_of(checkpoint.latest(tmp_path / f"g__s{s}")) == 160


def test_ctrl_c_checkpoints_every_seed_of_the_group_at_one_step(tmp_path: Path) -> None:
    items = {**TINY, "total_steps": 1_000_000, "checkpoint_interval": 50}
    args = [f"--{k}={v}" for k, v in items.items()] + ["--run_dir", str(tmp_path), "--run_name", "g"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtrl", "train", "--no-progress", *args, "--seeds", "1", "2", "3"],
        env={**os.environ, "MUJOCO_GL": "osmesa"}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    runs = [tmp_path / f"g__s{s}" for s in (1, 2, 3)]
    deadline = time.monotonic() + 120
    while not all(r.exists() and checkpoint.latest(r) is not None for r in runs):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    steps = {checkpoint.step_of(checkpoint.latest(r)) for r in runs}
    assert len(steps) == 1, steps
    line = err.strip().splitlines()[-1]
    assert line.endswith(f"checkpoints of all 3 seeds written; resume the group with: mtrl train --resume {runs[0]}")
    assert {yaml.safe_load((r / "meta.yaml").read_text())["final_step"] for r in runs} == steps


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "1", "2", "1"], "seeds: got 1 2 1, seed 1 is listed twice; list each seed once"),
        (["--seeds", "1", "2", "--seed", "3"], "seeds: got 1 2 together with seed 3; give --seeds N ... for a"),
        (["--seeds", "1", "2", "--agent", "single_task"], "seeds: got 1 2 with agent.kind single_task"),
        (["--seeds", "1", "2", "--agent.schedule", "alternating"], "seeds: got 1 2 with agent.schedule alternating"),
        (["--seeds", "1", "2", "--buffer.capacity", "8000000000"], "seeds: got 1 2; the group needs about 476.8 GiB"),
        (["--seeds", "1", "x"], "seeds: got 1, x, expected integers"),
    ],
)
def test_bad_group_input_exits_2_with_one_line_and_creates_nothing(tmp_path, capsys, args, message) -> None:
    assert main(["train", *args, "--run_dir", str(tmp_path / "runs"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mtrl train: error: {message}"), err
    assert not (tmp_path / "runs").exists()


def test_a_preset_with_seed_and_seeds_is_refused(tmp_path: Path, capsys) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("seed: 3\nseeds: [1, 2]\n")
    assert main(["train", "--config", str(preset), "--run_dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("mtrl train: error: seeds: got 1 2 together with seed 3")
    assert not (tmp_path / "r").exists()


def test_python_dash_m_refuses_a_bad_group_without_a_traceback(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mtrl", "train", "--seeds", "1", "1", "--run_dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        res.returncode == 2
        and res.stderr == "mtrl train: error: seeds: got 1 1, seed 1 is listed twice; list each seed once\n"
    )
    assert not (tmp_path / "runs").exists()


def test_a_group_whose_run_exists_already_creates_none_of_its_runs(tmp_path: Path, capsys) -> None:
    (tmp_path / "g__s2").mkdir()
    assert _cli("--seeds", "1", "2", "3", "--run_dir", str(tmp_path), "--run_name", "g") == 2
    assert "run_name: '" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g__s2"]


def test_resume_refuses_seeds_and_a_group_with_a_missing_run(tmp_path: Path, capsys) -> None:
    flags = [f"--{k}={v}" for k, v in SHORT.items()] + ["--run_dir", str(tmp_path), "--run_name", "g"]
    assert _cli(*flags, "--seeds", "1", "2", "--total_steps", "80") == 0
    before = {p: _tree(p) for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert _cli("--resume", str(tmp_path / "g__s1"), "--seeds", "1", "2") == 2
    assert "--resume: takes no --seeds; a run trained in a seed group resumes with its whole group" in (
        capsys.readouterr().err
    )
    (tmp_path / "g__s2").rename(tmp_path / "elsewhere")
    assert _cli("--resume", str(tmp_path / "g__s1"), "--total_steps", "160") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was trained in a seed group of 2 runs, and its run" in err
    assert _tree(tmp_path / "g__s1") == before[tmp_path / "g__s1"]


def test_evaluate_record_and_compare_read_group_runs_as_solo_runs(tmp_path: Path, capsys) -> None:
    base = {**SHORT, "run_dir": str(tmp_path / "runs")}
    for s in (1, 2):
        train(from_flat({**base, "seed": s, "run_name": f"solo__s{s}"}), progress=False)
    train_group(from_flat({**base, "seeds": [1, 2], "run_name": "group"}), progress=False)
    capsys.readouterr()
    printed = []
    for name in ("solo__s2", "group__s2"):
        assert main(["evaluate", str(tmp_path / "runs" / name), "--episodes", "2"]) == 0
        printed.append(capsys.readouterr().out.splitlines())
    assert printed[0] == printed[1] and len(printed[0]) == 6  # header, four tasks, mean
    assert (
        main(["record", str(tmp_path / "runs" / "group__s1"), "--tasks", "reach-0", "--out", str(tmp_path / "v")]) == 0
    )
    assert (tmp_path / "v" / "group__s1" / "reach-0__ep0.mp4").stat().st_size > 0
    tables = {}
    for which in ("solo", "group"):
        runs = [str(tmp_path / "runs" / f"{which}__s{s}") for s in (1, 2)]
        assert main(["compare", *runs, "--out", str(tmp_path / f"cmp-{which}")]) == 0
        tables[which] = (tmp_path / f"cmp-{which}" / "summary.md").read_text()
    row = {w: next(line for line in t.splitlines() if line.startswith("| `mean`")) for w, t in tables.items()}
    assert row["solo"].split("|")[:6] == row["group"].split("|")[:6]  # seeds, IQM with its CI, per-seed finals


@pytest.mark.parametrize("phase", ["state", "pointer"])
def test_a_kill_inside_the_groups_first_save_resumes_every_run_from_one_step(tmp_path: Path, phase: str) -> None:
    """SIGKILL inside the first checkpoint write of the group's first run (``state``: its unit half written;
    ``pointer``: its unit complete, the other runs not saved yet). The resume starts every run from step 0 (the
    step all of them have), setting a complete unit of the first run aside, and finishes all of them."""
    items = {**SHORT, "checkpoint_interval": 50}
    args = [f"--{k}={v}" for k, v in items.items()] + ["--run_dir", str(tmp_path), "--run_name", "g"]
    env = {**os.environ, "MUJOCO_GL": "osmesa", checkpoint.CRASH_POINT_ENV: phase}
    cmd = [sys.executable, "-m", "mtrl", "train", "--no-progress", *args, "--seeds", "1", "2"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL
    assert checkpoint.latest(tmp_path / "g__s2") is None
    assert (checkpoint.latest(tmp_path / "g__s1") is None) == (phase == "state")
    res = subprocess.run(
        [sys.executable, "-m", "mtrl", "train", "--resume", str(tmp_path / "g__s2"), "--no-progress"],
        env={**os.environ, "MUJOCO_GL": "osmesa"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    if phase == "pointer":
        assert "g__s1: checkpoint step_0000000050 is past step 0, the newest step every run of its seed group" in (
            res.stderr
        )
    for s in (1, 2):
        run = tmp_path / f"g__s{s}"
        assert checkpoint.step_of(checkpoint.latest(run)) == 160
        evals = read_scalars(run, keep=lambda tag: tag == "eval/success_rate")
        assert sorted(evals.step) == [80, 160]  # one curve: nothing logged twice
