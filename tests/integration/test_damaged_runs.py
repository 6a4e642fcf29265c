"""A damaged, emptied or hand-edited run directory gets one of two answers, from every command that reads a run:

- a recovery the user is told about in one line, after which the run can finish;
- a one-line refusal (exit 2) that changes nothing in the run directory.

The damage is done to copies of one finished toy run (300 steps, checkpoints every 100: units 200 and 300 kept).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from toyruns import TINY

from mtrl.cli import main
from mtrl.config import from_flat
from mtrl.runs import checkpoint
from mtrl.train import train

NEWEST, OLDER = checkpoint.unit_name(300), checkpoint.unit_name(200)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two finished toy runs: ``done`` (seed 1) and ``other`` (seed 2, to take a foreign unit from)."""
    root = tmp_path_factory.mktemp("finished")
    return {
        name: train(from_flat({**TINY, "seed": seed, "run_dir": str(root), "run_name": name}), progress=False)
        for name, seed in (("done", 1), ("other", 2))
    }


def _copy(finished: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished["done"], tmp_path / "done"))


def _snapshot(run: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(run)): p.read_bytes() if p.is_file() else None for p in sorted(run.rglob("*"))}


def _units(run: Path) -> Path:
    return run / "checkpoints"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_config(run: Path, **changes: object) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, **changes}, sort_keys=False))


Damage = Callable[[Path, dict[str, Path]], None]

RECOVERED: dict[str, tuple[Damage, str]] = {
    "checkpoint.pt replaced by a folder": (
        lambda run, _: (
            (_units(run) / NEWEST / "checkpoint.pt").unlink(),
            (_units(run) / NEWEST / "checkpoint.pt").mkdir(),
        ),
        f"checkpoint {NEWEST} is unusable",
    ),
    "buffer.pt deleted": (
        lambda run, _: (_units(run) / NEWEST / "buffer.pt").unlink(),
        f"checkpoint {NEWEST} is unusable",
    ),
    "checkpoint.pt truncated": (
        lambda run, _: _truncate(_units(run) / NEWEST / "checkpoint.pt"),
        f"checkpoint {NEWEST} is unusable",
    ),
    "buffer.pt of another step": (
        lambda run, _: shutil.copy(_units(run) / OLDER / "buffer.pt", _units(run) / NEWEST / "buffer.pt"),
        "from step 200 but its agent state from step 300",
    ),
    "the newest unit is another run's": (
        lambda run, f: (
            shutil.rmtree(_units(run) / NEWEST),
            shutil.copytree(f["other"] / "checkpoints" / NEWEST, _units(run) / NEWEST),
        ),
        "it is not of this run's config (seed: 1 in config.yaml, 2 in the checkpoint)",
    ),
    "latest names a missing unit": (
        lambda run, _: shutil.rmtree(_units(run) / NEWEST),
        f"checkpoints/latest named '{NEWEST}', which is not a usable unit",
    ),
    "latest is a folder": (
        lambda run, _: ((_units(run) / "latest").unlink(), (_units(run) / "latest").mkdir()),
        "is not a file; set aside as latest.damaged",
    ),
    "an empty unit of a later step": (
        lambda run, _: (_units(run) / checkpoint.unit_name(350)).mkdir(),
        f"checkpoint {checkpoint.unit_name(350)} is unusable",
    ),
    "leftover temporary folders": (
        lambda run, _: (
            (_units(run) / ".tmp-step_0000000400").mkdir(),
            (_units(run) / ".tmp-step_0000000400" / "checkpoint.pt").write_bytes(b"partial"),
        ),
        "removed the leftovers of an interrupted checkpoint write: .tmp-step_0000000400",
    ),
    "meta.yaml deleted": (lambda run, _: (run / "meta.yaml").unlink(), "meta.yaml was missing; written again"),
    "config.yaml deleted": (
        lambda run, _: (run / "config.yaml").unlink(),
        f"was missing; using the config of checkpoint {NEWEST}",
    ),
}

REFUSED: dict[str, tuple[Damage, str]] = {
    "every checkpoint deleted after the run finished": (
        lambda run, _: shutil.rmtree(_units(run)),
        "meta.yaml records a checkpoint at step 300 but",
    ),
    "every unit damaged": (
        lambda run, _: [_truncate(_units(run) / u / "checkpoint.pt") for u in (NEWEST, OLDER)],
        "has no usable checkpoint left: its newest checkpoint step_0000000300 is unusable",
    ),
    "config.yaml edited by hand": (
        lambda run, _: _edit_config(run, **{"agent.critic.hidden_dim": 64}),
        "agent.critic.hidden_dim: 64 in config.yaml, 32 in the checkpoint",
    ),
    "config.yaml malformed": (
        lambda run, _: (run / "config.yaml").write_text("agent: [unclosed\n"),
        "is not valid YAML",
    ),
    "meta.yaml malformed": (
        lambda run, _: (run / "meta.yaml").write_text("- a list, not a mapping\n"),
        "meta.yaml' cannot be read (not a mapping); fix it, or delete it",
    ),
    "checkpoints is a file": (
        lambda run, _: (shutil.rmtree(_units(run)), _units(run).write_text("oops")),
        "is a file, expected the folder of the run's checkpoints",
    ),
}


def _resume(run: Path, total: int = 400) -> int:
    return main(["train", "--resume", str(run), "--total_steps", str(total), "--no-progress"])


@pytest.mark.parametrize("damage", list(RECOVERED))
def test_resume_recovers_says_so_in_one_line_and_the_run_finishes(damage, finished, tmp_path, capsys) -> None:
    run = _copy(finished, tmp_path)
    apply, message = RECOVERED[damage]
    apply(run, finished)
    assert _resume(run) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    state = checkpoint.load(run)
    assert state["step"] == 400 and checkpoint.latest(run).name == checkpoint.unit_name(400)
    meta = yaml.safe_load((run / "meta.yaml").read_text())
    assert meta["final_step"] == 400 and "final_success" in meta
    assert from_flat(yaml.safe_load((run / "config.yaml").read_text())).total_steps == 400
    assert _resume(run, 450) == 0 and capsys.readouterr().err == ""  # healthy again: no more notes


@pytest.mark.parametrize("damage", list(REFUSED))
def test_resume_refuses_in_one_line_and_changes_nothing(damage, finished, tmp_path, capsys) -> None:
    run = _copy(finished, tmp_path)
    apply, message = REFUSED[damage]
    apply(run, finished)
    before = _snapshot(run)
    assert _resume(run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err
    assert _snapshot(run) == before


def test_a_finished_run_without_checkpoints_says_how_to_start_over(finished, tmp_path, capsys) -> None:
    run = _copy(finished, tmp_path)
    shutil.rmtree(_units(run))
    assert _resume(run) == 2
    err = capsys.readouterr().err
    again = f"mtrl train --config {run / 'config.yaml'} --run_dir {run.parent} --run_name NEW_NAME"
    assert again in err and "overwrite its logged curve" in err
    argv = again.replace("NEW_NAME", "again").split()[1:]
    assert main([*argv, "--no-progress"]) == 0
    assert checkpoint.load(run.parent / "again")["step"] == 300


def test_a_run_killed_before_its_first_checkpoint_starts_again_from_step_0(tmp_path, capsys) -> None:
    """The one case where no checkpoint is right: meta.yaml records none, checkpoints/ holds none."""
    run = train(from_flat({**TINY, "total_steps": 100, "run_dir": str(tmp_path), "run_name": "r"}), progress=False)
    shutil.rmtree(_units(run))
    meta = yaml.safe_load((run / "meta.yaml").read_text())
    (run / "meta.yaml").write_text(yaml.safe_dump({**meta, "final_step": 0}))
    assert _resume(run, 150) == 0 and capsys.readouterr().err == ""
    assert checkpoint.load(run)["step"] == 150


@pytest.mark.parametrize("damage", ["checkpoint.pt truncated", "buffer.pt deleted", "the newest unit is another run's"])
def test_evaluate_uses_the_newest_usable_unit_and_names_the_one_it_passed_over(damage, finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    RECOVERED[damage][0](run, finished)
    assert main(["evaluate", str(run), "--episodes", "1"]) == 0
    captured = capsys.readouterr()
    if damage == "buffer.pt deleted":  # the agent state is whole: evaluated as it is
        assert "step 300" in captured.out and captured.err == ""
    elif damage == "the newest unit is another run's":  # a whole unit with its own config: evaluated as it is
        assert "step 300" in captured.out
    else:
        assert "step 200" in captured.out
        (line,) = captured.err.strip().splitlines()
        assert line.startswith(f"mtrl: checkpoint {NEWEST} (") and line.endswith(f"is unusable; using {OLDER}")


@pytest.mark.parametrize("command", ["evaluate", "record"])
def test_evaluate_and_record_refuse_a_run_without_a_usable_checkpoint(command, finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    REFUSED["every unit damaged"][0](run, finished)
    before = _snapshot(run)
    extra = ["--out", str(tmp_path / "v")] if command == "record" else ["--episodes", "1"]
    assert main([command, str(run), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"run '{run}' has no usable checkpoint" in err[0], err
    assert _snapshot(run) == before and not (tmp_path / "v").exists()


def test_record_recovers_from_a_damaged_newest_unit(finished, tmp_path, capsys) -> None:
    run = _copy(finished, tmp_path)
    RECOVERED["checkpoint.pt truncated"][0](run, finished)
    assert main(["record", str(run), "--tasks", "reach-0", "--out", str(tmp_path / "videos")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mtrl")]  # not the bar
    assert len(notes) == 1 and notes[0].endswith(f"is unusable; using {OLDER}"), notes
    assert list((tmp_path / "videos").rglob("reach-0__ep0.mp4"))


def test_compare_over_one_malformed_run_says_so_in_one_line(finished, tmp_path, capsys) -> None:
    run = _copy(finished, tmp_path)
    REFUSED["config.yaml malformed"][0](run, finished)
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp"), "--reps", "20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unreadable config.yaml" in err[0] and "nothing to compare" in err[0], err
    assert not (tmp_path / "cmp").exists()


def test_compare_sets_a_malformed_run_apart_and_compares_the_rest(finished, tmp_path, capsys) -> None:
    broken = _copy(finished, tmp_path)
    REFUSED["meta.yaml malformed"][0](broken, finished)
    shutil.copytree(finished["other"], tmp_path / "other")
    assert main(["compare", str(tmp_path), "--out", str(tmp_path / "cmp"), "--reps", "20"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(broken) in err[0] and "set apart" in err[0], err


def test_sweep_resumes_a_damaged_run_and_leaves_a_refused_one_where_it_is(tmp_path, capsys) -> None:
    """A sweep over two finished runs: s1's newest unit truncated (resumed from step 200 and finished), s2's
    checkpoints deleted (``--resume`` refuses it: the sweep reports it failed, neither moves nor retrains it)."""
    from mtrl.sweep import cli, load_spec

    spec = tmp_path / "spec.yaml"
    methods = {"mean": {"combiner": "mean"}}
    spec.write_text(
        yaml.safe_dump({"set": TINY, "methods": methods, "seeds": [1, 2], "run_dir": str(tmp_path / "sweep")})
    )
    for run in load_spec(spec, threads=1).runs:
        train(run.cfg, progress=False)
    s1, s2 = tmp_path / "sweep" / "mean__s1", tmp_path / "sweep" / "mean__s2"
    _truncate(s1 / "checkpoints" / NEWEST / "checkpoint.pt")
    shutil.rmtree(s2 / "checkpoints")
    before = _snapshot(s2)
    capsys.readouterr()
    assert cli([str(spec), "--dry-run"]) == 0
    plan = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines() if "__s" in line}
    assert plan == {"mean__s1": "resume", "mean__s2": "resume"}
    assert cli([str(spec)]) == 1
    out = capsys.readouterr().out
    assert "mean__s1  resumed" in out and "mean__s2  failed" in out
    assert checkpoint.load(s1)["step"] == 300 and (s1 / "checkpoints" / f"{NEWEST}.damaged").is_dir()
    assert _snapshot(s2) == before and not list((tmp_path / "sweep").glob("mean__s2.failed-*"))
    log = (tmp_path / "sweep" / "mean__s2.log").read_text()
    assert "has no usable checkpoint left" in log


def test_a_damaged_unit_never_blocks_the_save_of_its_step(tmp_path, capsys) -> None:
    """Whatever stands at ``checkpoints/step_<step>`` when that step is saved (a folder with junk, a file), it is set
    aside in one line and the save goes through."""
    run = tmp_path / "r"
    (run / "checkpoints" / checkpoint.unit_name(300)).mkdir(parents=True)
    (run / "checkpoints" / checkpoint.unit_name(300) / "checkpoint.pt").mkdir()
    (run / "checkpoints" / checkpoint.unit_name(400)).write_text("junk")
    for step in (300, 400):
        unit = checkpoint.save(run, step, {"agent": {}, "config": {}, "task_names": []}, {})
        assert unit.name == checkpoint.unit_name(step) and checkpoint.load(run)["step"] == step
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == f"mtrl: checkpoint {unit.name} was incomplete; set aside as {unit.name}.damaged"
        assert (run / "checkpoints" / f"{unit.name}.damaged").exists()
