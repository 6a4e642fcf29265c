"""The single-task SAC baseline (one stable-baselines3 SAC per task) on the toy env: a few hundred steps each."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from stable_baselines3 import SAC
from tbparse import SummaryReader
from toyruns import TINY as TOY_RUN

from mtrl.config import ConfigError, from_flat
from mtrl.single_task import add_transition, make_model
from mtrl.train import train

TINY = {
    **TOY_RUN,
    "total_steps": 200,
    "warmup_steps": 50,
    "eval_interval": 100,
    "env.toy_tasks": 2,
    "threads": 1,
}
MTSAC_ONLY = {"losses/target_q", "losses/logp"}  # besides mto/*: MT-SAC diagnostics SB3 does not log


def tiny(root: Path, name: str, **extra):
    return from_flat({**TINY, "agent.kind": "single_task", "run_dir": str(root), "run_name": name, **extra})


def scalars(run: Path):
    return SummaryReader(str(run)).scalars


@pytest.fixture(scope="module")
def st_run(tmp_path_factory) -> Path:
    return train(tiny(tmp_path_factory.mktemp("runs"), "st"), progress=False)


def test_single_task_run_writes_the_mtsac_layout_and_keys(st_run, tmp_path):
    for name in ("config.yaml", "command.txt", "meta.yaml", "single_task/reach-0.zip", "single_task/reach-1.zip"):
        assert (st_run / name).is_file(), name
    assert not list((st_run / "single_task").glob("*.tmp"))
    assert yaml.safe_load((st_run / "config.yaml").read_text())["agent.kind"] == "single_task"
    meta = yaml.safe_load((st_run / "meta.yaml").read_text())
    assert meta["final_step"] == 200 and meta["wall_clock_s"] > 0

    mt_run = train(from_flat({**TINY, "run_dir": str(tmp_path), "run_name": "mt"}), progress=False)
    mt_tags = {t for t in scalars(mt_run).tag if not t.startswith("mto/")} - MTSAC_ONLY
    assert set(scalars(st_run).tag) == mt_tags
    assert {"losses/critic", "train/alpha/reach-1", "eval_return/reach-0", "eval/final_success"} <= mt_tags

    model = SAC.load(st_run / "single_task" / "reach-1.zip", device="cpu")
    action, _ = model.predict(np.zeros(2, dtype=np.float32), deterministic=True)
    assert action.shape == (2,) and np.all(np.abs(action) <= 1)


def test_same_seed_gives_identical_eval_success(st_run, tmp_path):
    again = train(tiny(tmp_path, "again"), progress=False)
    a, b = scalars(st_run), scalars(again)
    for tag in ("eval/success_rate", "eval_return/reach-0", "losses/critic"):
        va, vb = a[a.tag == tag].value.to_numpy(), b[b.tag == tag].value.to_numpy()
        assert len(va) > 0 and np.array_equal(va, vb), tag


def test_time_limit_truncation_bootstraps_and_termination_does_not():
    cfg = tiny(Path("unused"), "unused")
    obs, act = np.zeros(2, dtype=np.float32), np.zeros(2, dtype=np.float32)
    dones = {}
    for case, (terminated, truncated) in {"truncated": (False, True), "terminated": (True, False)}.items():
        model = make_model(cfg, 2, 2, 2, 0, torch.device("cpu"))
        add_transition(model.replay_buffer, obs, obs + 1, act, 1.0, terminated, truncated)
        dones[case] = float(model.replay_buffer.sample(4).dones.max())  # what SAC's TD target multiplies by
    assert dones == {"truncated": 0.0, "terminated": 1.0}


def test_resume_is_refused_with_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        train(tiny(tmp_path, "unused"), run=tmp_path / "unused")
    assert str(info.value) == "agent.kind: resume is not supported for single_task runs; start a new run"
    assert not (tmp_path / "unused").exists()


def test_evaluate_and_record_work_on_a_single_task_run(st_run, tmp_path, capsys):
    """The per-task models are evaluated and recorded like an MT-SAC checkpoint: the same success as the run's
    own last evaluation (same goals, same simulator seed), at the step meta.yaml records."""
    from mtrl.cli import main

    assert main(["evaluate", str(st_run)]) == 0
    out = capsys.readouterr().out
    df = scalars(st_run)
    last = df[df.tag == "eval/success_rate"].sort_values("step").value.iloc[-1]
    lines = out.strip().splitlines()
    assert lines[0].endswith("step 200)") and lines[-1].split() == ["mean", f"{last:.2f}"], out
    assert main(["record", str(st_run), "--tasks", "reach-1", "--out", str(tmp_path / "v")]) == 0
    assert (tmp_path / "v" / "st" / "reach-1__ep0.mp4").is_file()


def test_a_single_task_run_without_its_models_is_refused_in_one_line(tmp_path, capsys):
    from mtrl.cli import main

    run = tmp_path / "st"
    (run / "single_task").mkdir(parents=True)
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "single_task run" in err and "Traceback" not in err
