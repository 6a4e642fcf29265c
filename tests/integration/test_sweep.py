"""``mtrl sweep`` on the toy env: expansion and validation without training, one tiny 2 x 2 sweep end to end."""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tbparse import SummaryReader

from mtrl.config import dump_yaml
from mtrl.runs import checkpoint
from mtrl.sweep import cli, load_spec, weight_vectors
from mtrl.train import train

TINY = {
    "total_steps": 150,
    "warmup_steps": 50,
    "eval_interval": 0,
    "eval_episodes": 1,
    "log_interval": 50,
    "checkpoint_interval": 50,
    "agent.actor.hidden_dim": 32,
    "agent.critic.hidden_dim": 32,
    "buffer.batch_size": 32,
    "env.max_episode_steps": 20,
    "env.toy_tasks": 2,
    "device": "cpu",
}


def write_spec(tmp_path: Path, **spec) -> Path:
    data = {
        "set": TINY,
        "methods": {"mean": {"combiner": "mean"}, "wd": {"agent": {"actor": {"weight_decay": 0.01}}}},
        "seeds": [1, 2],
    }
    data.update(run_dir=str(tmp_path / "sweep"), **spec)
    path = tmp_path / "spec.yaml"
    path.write_text("# test sweep\n" + yaml.safe_dump(data))
    return path


def step_of(run: Path) -> int:
    return checkpoint.load(run)["step"]


def statuses(out: str) -> dict[str, str]:
    rows = [line.split() for line in out.splitlines()]
    return {r[0]: r[1] for r in rows if r and "__s" in r[0]}


def test_sweep_starts_resumes_restarts_then_skips(tmp_path, capsys):
    spec = write_spec(tmp_path)
    sweep_dir = tmp_path / "sweep"
    # an interrupted run: mean__s1 stopped at step 100 of the spec's 150
    (mean_s1,) = [r for r in load_spec(spec, threads=1).runs if r.name == "mean__s1"]
    train(replace(mean_s1.cfg, total_steps=100), progress=False)
    # a run that crashed before its first checkpoint: a directory without checkpoints/
    (sweep_dir / "wd__s2").mkdir()
    (sweep_dir / "wd__s2" / "config.yaml").write_text("crashed\n")

    assert cli([str(spec), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert statuses(out) == {
        "mean__s1": "resumed",
        "mean__s2": "started",
        "wd__s1": "started",
        "wd__s2": "started",
    }
    for name in ("mean__s1", "mean__s2", "wd__s1", "wd__s2"):
        assert step_of(sweep_dir / name) == 150, name
        assert (sweep_dir / f"{name}.log").is_file()
    assert yaml.safe_load((sweep_dir / "wd__s2" / "config.yaml").read_text())["agent.actor.weight_decay"] == 0.01
    (moved,) = sweep_dir.glob("wd__s2.failed-*")
    assert (moved / "config.yaml").read_text() == "crashed\n"  # moved aside, never deleted
    evals = SummaryReader(str(sweep_dir / "mean__s1")).scalars.query("tag == 'eval/success_rate'").step.to_numpy()
    assert sorted(evals) == [100, 150]  # the resumed run continued its step count in the same directory
    saved = yaml.safe_load((sweep_dir / "mean__s2" / "config.yaml").read_text())
    assert saved["threads"] >= 1 and saved["seed"] == 2 and saved["agent.actor.hidden_dim"] == 32

    mtimes = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/checkpoints/latest")}
    assert cli([str(spec), "--workers", "2"]) == 0
    assert set(statuses(capsys.readouterr().out).values()) == {"skipped"}
    assert mtimes == {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/checkpoints/latest")}


def test_a_failing_run_is_reported_and_the_exit_code_is_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MTRL_CRASH_POINT", "state")  # each run kills itself (SIGKILL) in its first checkpoint write
    spec = write_spec(tmp_path, methods={"mean": {"combiner": "mean"}}, seeds=[1])
    assert cli([str(spec)]) == 1
    captured = capsys.readouterr()
    assert statuses(captured.out) == {"mean__s1": "failed"}
    assert "mean__s1: failed with exit code -9" in captured.err


def _fail(capsys, argv) -> str:
    code = cli(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("mtrl sweep: error: "), err
    return err


def test_bad_specs_give_one_line_errors_and_start_nothing(tmp_path, capsys):
    bad_key = write_spec(tmp_path, methods={"mean": {"combiner": "mean"}, "typo": {"agent.nope": 1}})
    assert "typo__s1: unknown option --agent.nope" in _fail(capsys, [str(bad_key), "--workers", "2"])
    gpu = write_spec(tmp_path, methods={"gpu": {"device": "cuda"}})
    if not torch.cuda.is_available():  # checked before any run starts
        assert "gpu__s1: device: got 'cuda', but torch sees no CUDA device" in _fail(capsys, [str(gpu)])
    bad_value = write_spec(tmp_path, set={**TINY, "total_steps": "ten"})
    assert "total_steps: got 'ten'" in _fail(capsys, [str(bad_value)])
    owned = write_spec(tmp_path, set={**TINY, "seed": 3})
    assert "'seed' is set by the sweep" in _fail(capsys, [str(owned)])
    weights = write_spec(tmp_path, methods={"w": {"combiner": "fixed", "combiner.weights": [0.5, 0.3, 0.2]}})
    assert "got 3 weights, expected 2" in _fail(capsys, [str(weights)])
    unknown = write_spec(tmp_path, seed=[1])
    assert "unknown key 'seed'" in _fail(capsys, [str(unknown)])
    assert "does not exist" in _fail(capsys, [str(tmp_path / "missing.yaml")])
    assert "--workers: got 0" in _fail(capsys, [str(bad_key), "--workers", "0"])
    assert not (tmp_path / "sweep").exists()


def test_missing_ray_gives_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is not installed
    err = _fail(capsys, [str(write_spec(tmp_path)), "--backend", "ray"])
    assert 'pip install "mtrl[ray]"' in err
    assert not (tmp_path / "sweep").exists()


def test_ray_address_that_nothing_answers_on_gives_one_line_error(tmp_path, capsys):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = str(write_spec(tmp_path))
    err = _fail(capsys, [spec, "--backend", "ray", "--address", f"127.0.0.1:{port}"])
    assert f"--address: no Ray cluster answers at '127.0.0.1:{port}'" in err
    assert "--address: got 'nonsense'" in _fail(capsys, [spec, "--backend", "ray", "--address", "nonsense"])
    assert not (tmp_path / "sweep").exists()


def test_weight_vectors_for_two_and_four_tasks():
    assert weight_vectors(2, steps=5) == [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    four = weight_vectors(4, steps=3)
    assert len(four) == 4 + 1 + 3
    assert four[:5] == [(1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0)] + [
        (0.25,) * 4
    ]
    w = np.array(four)
    assert np.allclose(w.sum(axis=1), 1.0) and (w >= 0).all()
    assert weight_vectors(4, steps=3) == four  # seeded
    assert weight_vectors(4, steps=3, seed=1)[5:] != four[5:]
    assert len(weight_vectors(4, steps=3, random=0)) == 5


def test_weight_grid_expands_into_fixed_combiner_runs_and_dry_run_starts_nothing(tmp_path, capsys):
    spec = write_spec(
        tmp_path, set={**TINY, "env.toy_tasks": 4}, methods={"mean": {}}, weight_grid={"steps": 2, "seed": 7}
    )
    runs = load_spec(spec, threads=1).runs
    vectors = weight_vectors(4, steps=2, seed=7)
    names = ["mean__s1", "mean__s2"] + [f"fixed-w{i}__s{s}" for i in range(len(vectors)) for s in (1, 2)]
    assert [r.name for r in runs] == names
    for run in runs[2:]:
        i = int(run.name.split("__")[0].removeprefix("fixed-w"))
        assert type(run.cfg.combiner).__name__ == "FixedConfig"
        assert np.allclose(run.cfg.combiner.weights, vectors[i])
    assert all(r.cfg.env.toy_tasks == 4 and r.cfg.total_steps == 150 for r in runs)

    assert cli([str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert set(statuses(out).values()) == {"start"} and len(statuses(out)) == len(runs)
    assert "--combiner=fixed --combiner.weights=1.0,0.0,0.0,0.0" in out
    assert not (tmp_path / "sweep").exists()

    two = write_spec(tmp_path, methods={}, weight_grid={"steps": 3}, seeds=[5])
    assert [r.cfg.combiner.weights for r in load_spec(two, threads=1).runs] == [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]


SPECS = sorted((Path(__file__).parents[2] / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_example_specs_expand_and_validate(spec, monkeypatch):
    monkeypatch.chdir(spec.parents[2])  # presets are named relative to the repository root
    assert spec.read_text().startswith("#")  # opens with a comment naming its purpose
    runs = load_spec(spec, threads=1).runs
    assert runs and len({r.name for r in runs}) == len(runs)


def test_seeds_per_process_trains_a_methods_seeds_together_in_the_same_run_directories(tmp_path, capsys):
    """With --seeds-per-process 2 each method's two seeds train in one process (a seed group): the same run
    directories, configs and checkpoint steps as one process per seed, the group named in meta.yaml; extending the
    budget resumes each group as one process."""
    spec = write_spec(tmp_path, methods={"wd": {"agent": {"actor": {"weight_decay": 0.01}}}}, seeds=[1, 2, 3])
    sweep_dir = tmp_path / "sweep"
    assert cli([str(spec), "--seeds-per-process", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "wd__s1+s2  start" in out and "wd__s3     start" in out and "(2 processes to run)" in out
    assert cli([str(spec), "--seeds-per-process", "2"]) == 0
    assert statuses(capsys.readouterr().out) == dict.fromkeys(["wd__s1", "wd__s2", "wd__s3"], "started")
    assert sorted(p.name for p in sweep_dir.glob("*.log")) == ["wd__s1+s2.log", "wd__s3.log"]
    solo = load_spec(spec, threads=1).runs
    for run in solo:
        path = sweep_dir / run.name
        assert step_of(path) == 150
        saved = yaml.safe_load((path / "config.yaml").read_text())
        assert {k: v for k, v in saved.items() if k != "threads"} == {
            k: v for k, v in yaml.safe_load(dump_yaml(run.cfg)).items() if k != "threads"
        }  # what a solo run of the sweep writes
        group = yaml.safe_load((path / "meta.yaml").read_text()).get("group")
        assert group == ({"seeds": [1, 2], "runs": ["wd__s1", "wd__s2"]} if run.cfg.seed < 3 else None)

    spec.write_text(spec.read_text().replace("total_steps: 150", "total_steps: 200"))
    assert cli([str(spec), "--seeds-per-process", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"wd__s1+s2  resume  150   mtrl train --resume {sweep_dir / 'wd__s1'} --total_steps=200" in out
    assert cli([str(spec), "--seeds-per-process", "2"]) == 0
    assert set(statuses(capsys.readouterr().out).values()) == {"resumed"}
    assert {step_of(sweep_dir / r.name) for r in solo} == {200}


def test_seeds_per_process_is_checked(tmp_path, capsys):
    message = "mtrl sweep: error: --seeds-per-process: got -1, expected an integer >= 0 (0: auto)"
    assert _fail(capsys, [str(write_spec(tmp_path)), "--seeds-per-process", "-1"]) == message
