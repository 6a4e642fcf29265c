"""End-to-end on the toy env: each test trains for a few hundred steps (seconds)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from tbparse import SummaryReader
from toyruns import TINY

from mtrl.cli import main
from mtrl.config import from_flat
from mtrl.runs import checkpoint
from mtrl.runs.restore import restore
from mtrl.train import train


def tiny(tmp_path: Path, **extra) -> object:
    return from_flat({**TINY, "run_dir": str(tmp_path / "runs"), **extra})


def scalars(run: Path):
    return SummaryReader(str(run)).scalars


def test_train_writes_events_config_checkpoint_and_meta(tmp_path):
    run = train(tiny(tmp_path, run_name="a"), progress=False)
    assert run == tmp_path / "runs" / "a"
    for name in ("config.yaml", "command.txt", "meta.yaml", "checkpoints/latest"):
        assert (run / name).is_file(), name
    unit = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert unit.name == "step_0000000300" and {p.name for p in unit.iterdir()} == {"checkpoint.pt", "buffer.pt"}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000000200", "step_0000000300"]
    tags = set(scalars(run).tag)
    assert {"eval/success_rate", "train/sps", "losses/critic", "losses/actor", "losses/alpha"} <= tags
    assert {"eval/success_rate/reach-0", "eval_return/reach-3", "train/alpha/reach-0"} <= tags
    meta = yaml.safe_load((run / "meta.yaml").read_text())
    assert meta["final_step"] == 300 and "torch" in meta["versions"] and "git_dirty" in meta
    assert from_flat(yaml.safe_load((run / "config.yaml").read_text())).total_steps == 300


def test_same_seed_gives_identical_losses(tmp_path):
    runs = [train(tiny(tmp_path, run_name=n), progress=False) for n in ("x", "y")]
    a, b = (scalars(r) for r in runs)
    for tag in ("losses/critic", "losses/actor", "eval/success_rate"):
        va, vb = a[a.tag == tag].value.to_numpy(), b[b.tag == tag].value.to_numpy()
        assert len(va) > 0 and np.array_equal(va, vb), tag
    c = scalars(train(tiny(tmp_path, run_name="z", seed=2), progress=False))
    assert not np.array_equal(
        c[c.tag == "losses/critic"].value.to_numpy(), a[a.tag == "losses/critic"].value.to_numpy()
    )


def test_save_then_load_gives_identical_actions(tmp_path):
    cfg = tiny(tmp_path, run_name="s")
    run = train(cfg, progress=False)
    _, agent, state = restore(run)
    _, again, _ = restore(run / "checkpoints" / "step_0000000300" / "checkpoint.pt")
    obs = np.random.default_rng(0).uniform(-1, 1, (4, 2)).astype(np.float32)
    assert np.array_equal(agent.act(obs, deterministic=True), again.act(obs, deterministic=True))
    assert np.array_equal(agent.act(obs), again.act(obs))  # the exploration generator is restored too
    assert state["step"] == 300


def test_resume_continues_the_step_count(tmp_path, capsys):
    run = train(tiny(tmp_path, run_name="r"), progress=False)
    code = main(["train", "--resume", str(run), "--total_steps", "500", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    meta = yaml.safe_load((run / "meta.yaml").read_text())
    evals = scalars(run)
    last = float(evals[(evals.tag == "eval/success_rate") & (evals.step == 500)].value.iloc[0])
    assert meta["final_success"] == pytest.approx(last, abs=1e-6)  # evaluations in the last 10%: only step 500
    assert out.startswith(f"final success: {last:.3f} (mean of the evaluations in the last 10%")
    steps = scalars(run)
    crit = steps[steps.tag == "losses/critic"].step.to_numpy()
    assert crit.max() == 500 and np.all(np.diff(np.sort(crit)) > 0)  # continuous, no restart from 0
    assert checkpoint.load(run)["step"] == 500


def _fail(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    rd = str(tmp_path / "runs")
    assert "unknown option --agent.nope" in _fail(capsys, ["train", "--agent.nope", "1", "--run_dir", rd])
    assert "total_steps: got 'ten'" in _fail(capsys, ["train", "--total_steps", "ten", "--run_dir", rd])
    assert "total_steps: got -3" in _fail(capsys, ["train", "--total_steps", "-3", "--run_dir", rd])
    assert "env.benchmark: got 'MT7'" in _fail(capsys, ["train", "--env.benchmark", "MT7", "--run_dir", rd])
    assert "unknown Meta-World task 'foo-v3'" in _fail(
        capsys, ["train", "--env.benchmark", "MT1-foo-v3", "--run_dir", rd]
    )
    assert "does not exist" in _fail(capsys, ["train", "--config", str(tmp_path / "missing.yaml")])
    assert "does not exist" in _fail(capsys, ["evaluate", str(tmp_path / "nothing")])
    assert "not a run directory" in _fail(capsys, ["train", "--resume", str(tmp_path)])
    assert not (tmp_path / "runs").exists()  # nothing was created by failed commands


def test_existing_run_is_never_overwritten_and_resume_rejects_a_different_config(tmp_path, capsys):
    cfg = tiny(tmp_path, run_name="keep", total_steps=100)
    run = train(cfg, progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    args = [f"--{k}={v}" for k, v in TINY.items()] + ["--run_dir", str(tmp_path / "runs"), "--run_name", "keep"]
    assert "exists already" in _fail(capsys, ["train", *args])
    err = _fail(capsys, ["train", "--resume", str(run), "--agent.actor.hidden_dim", "64"])
    assert "agent.actor.hidden_dim differs" in err
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert before == after


def _printed_returns(out: str) -> dict[str, float]:
    return {line.split()[0]: float(line.split()[2]) for line in out.splitlines() if line.startswith("reach-")}


def test_evaluate_command_scores_the_training_goals_as_the_training_loop_does(tmp_path, capsys):
    run = train(tiny(tmp_path, run_name="e"), progress=False)
    df = scalars(run)
    logged = {
        tag.split("/")[-1]: float(df[(df.tag == tag) & (df.step == 300)].value.iloc[0])
        for tag in df.tag.unique()
        if tag.startswith("eval_return/")
    }
    assert main(["evaluate", str(run)]) == 0  # same goals, simulator seed and episodes as the loop's evaluation
    out = capsys.readouterr().out
    assert "reach-0" in out and "mean" in out
    printed = _printed_returns(out)
    assert printed.keys() == logged.keys() and len(printed) == 4
    assert all(abs(printed[t] - logged[t]) < 0.006 for t in printed), (printed, logged)
    assert main(["evaluate", str(run), "--eval-goals", "fresh"]) == 0
    fresh = _printed_returns(capsys.readouterr().out)
    assert all(abs(fresh[t] - logged[t]) > 0.01 for t in fresh), (fresh, logged)


def test_python_dash_m_reports_errors_without_traceback(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "mtrl", "train", "--buffer.kind", "ring"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2
    assert res.stderr.strip() == "mtrl train: error: buffer.kind: got 'ring', expected one of stratified, uniform"


@pytest.mark.parametrize("conditioning", ["none", "one_hot", "multi_head"])
@pytest.mark.parametrize("buffer_kind", ["stratified", "uniform"])
def test_conditioning_and_buffer_variants_train(tmp_path, conditioning, buffer_kind):
    cfg = tiny(
        tmp_path,
        run_name="v",
        total_steps=150,
        **{
            "agent.conditioning": conditioning,
            "buffer.kind": buffer_kind,
            "agent.temperature": "shared",
            "agent.actor.layer_norm": True,
            "agent.critic.dropout": 0.1,
            "agent.actor.weight_decay": 0.01,
            "agent.critic.max_grad_norm": 1.0,
            "buffer.reward_norm": True,
            "agent.q_target_clip": True,
        },
    )
    df = scalars(train(cfg, progress=False))
    values = df[df.tag == "losses/critic"].value.to_numpy()
    assert len(values) >= 1 and np.isfinite(values).all()  # logged at all (an empty array is all-finite)


def test_non_finite_combiner_input_stops_training_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    from mtrl.agents.mtsac import MTSAC
    from mtrl.mto.base import NonFiniteError

    original = MTSAC.update
    calls = {"n": 0}

    def update(self, batch, noise=None):
        calls["n"] += 1
        if calls["n"] == 150:  # the update of step 250 (warm-up is 100 steps)
            raise NonFiniteError("combiner 'mean' got a non-finite loss for task 2")
        return original(self, batch, noise)

    monkeypatch.setattr(MTSAC, "update", update)
    args = [f"--{k}={v}" for k, v in TINY.items()] + ["--run_dir", str(tmp_path / "runs"), "--run_name", "nan"]
    code = main(["train", *args, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "non-finite loss for task 2" in err and "last good checkpoint is kept" in err
    state = checkpoint.load(tmp_path / "runs" / "nan")
    assert state["step"] == 200  # written at step 200, nothing after the failure


def test_video_during_training_lands_in_tensorboard(tmp_path):
    run = train(tiny(tmp_path, run_name="vid", total_steps=150, video_interval=1), progress=False)
    import imageio.v2 as imageio
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("eval/video")  # one evaluation, at step 150
    frames = imageio.mimread(image.encoded_image_string, format="GIF")
    assert image.step == 150 and len(frames) == 10  # one toy episode of 20 steps at stride 2, 4 tasks in a row
    assert frames[0].shape[1] == 4 * frames[0].shape[0]


def test_record_command_writes_videos_for_the_chosen_tasks(tmp_path, capsys):
    import imageio.v3 as iio

    run = train(tiny(tmp_path, run_name="rec", total_steps=150), progress=False)
    out = tmp_path / "videos"
    assert main(["record", str(run), "--out", str(out), "--tasks", "reach-1", "reach-3", "--episodes", "2"]) == 0
    files = sorted(p.name for p in (out / "rec").iterdir())
    assert files == ["reach-1__ep0.mp4", "reach-1__ep1.mp4", "reach-3__ep0.mp4", "reach-3__ep1.mp4"]
    assert iio.imread(out / "rec" / "reach-1__ep0.mp4").shape[0] == 20  # one frame per step of a 20-step episode
    capsys.readouterr()
    assert "unknown task 'reach-9'" in _fail(capsys, ["record", str(run), "--out", str(out), "--tasks", "reach-9"])
