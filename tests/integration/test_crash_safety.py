"""Crash-proof runs: kills, signals, failing writes and refused resumes leave a valid, resumable run directory."""

import errno
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from toyruns import TINY

from mtrl.cli import main
from mtrl.config import from_flat
from mtrl.runs import checkpoint
from mtrl.train import train

ROOT = Path(__file__).parents[2]


def _harness():
    spec = importlib.util.spec_from_file_location("crash_harness", ROOT / "scripts" / "crash_harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_crash_harness_short(tmp_path, capsys):
    """Three SIGKILLs (two at random moments, one inside a checkpoint write), resumed each time, then completed."""
    passed, failed = _harness().run_harness(3, seed=1, workdir=tmp_path, max_delay=6.0)
    out = capsys.readouterr().out
    assert (passed, failed) == (4, 0), out
    assert "inside a checkpoint write (state)" in out and out.rstrip().endswith("4 passed, 0 failed")


def _launch(tmp_path: Path, name: str, **extra) -> tuple[subprocess.Popen, Path]:
    items = {**TINY, "total_steps": 1_000_000, "checkpoint_interval": 50, **extra}
    args = [f"--{k}={v}" for k, v in items.items()] + ["--run_dir", str(tmp_path), "--run_name", name]
    env = {**os.environ, "MUJOCO_GL": "osmesa"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtrl", "train", "--no-progress", *args], env=env, stderr=subprocess.PIPE, text=True
    )
    run = tmp_path / name
    deadline = time.monotonic() + 120
    while checkpoint.latest(run) is None if run.exists() else True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)
    return proc, run


def _children(pid: int) -> list[int]:
    kids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            kids.append(int(status.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_finishes_the_step_checkpoints_and_exits(tmp_path, sig, code):
    proc, run = _launch(tmp_path, "sig", eval_mode="async", eval_interval=100)  # with an evaluation worker
    kids = _children(proc.pid)
    assert kids, "the async evaluation worker is a child process"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"mtrl train: stopped by {signal.Signals(sig).name} at step ") and "Traceback" not in err
    step = int(line.split(" at step ")[1].split(":")[0])
    assert line.endswith(f"checkpoint written; resume with: mtrl train --resume {run}")
    assert checkpoint.load(run)["step"] == step  # the step it finished, checkpointed on the way out
    deadline = time.monotonic() + 10
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(k) for k in kids), "worker processes outlived the run"
    assert main(["train", "--resume", str(run), "--total_steps", str(step + 20), "--no-progress"]) == 0
    assert checkpoint.load(run)["step"] == step + 20


def _signal_at_update(monkeypatch, n: int, signals: list[int], before=None) -> None:
    """Make update ``n`` of an in-process run send ``signals`` to this process (after ``before(agent, batch)``)."""
    from mtrl.agents.mtsac import MTSAC

    original = MTSAC.update
    calls = {"n": 0}

    def update(self, batch, noise=None):
        calls["n"] += 1
        if calls["n"] == n:
            batch = before(self, batch) if before else batch
            logs = original(self, batch, noise)
            for sig in signals:
                os.kill(os.getpid(), sig)
            return logs
        return original(self, batch, noise)

    monkeypatch.setattr(MTSAC, "update", update)


def _tiny_args(tmp_path: Path, name: str) -> list[str]:
    return [f"--{k}={v}" for k, v in TINY.items()] + ["--run_dir", str(tmp_path), "--run_name", name, "--no-progress"]


def test_one_ctrl_c_checkpoints_the_step_it_stops_at(tmp_path, capsys, monkeypatch):
    """The contrast to the next test: update 30 (step 130, no periodic checkpoint) gets one SIGINT."""
    _signal_at_update(monkeypatch, 30, [signal.SIGINT])
    assert main(["train", *_tiny_args(tmp_path, "once")]) == 130
    assert "stopped by SIGINT at step 130: checkpoint written" in capsys.readouterr().err
    assert checkpoint.load(tmp_path / "once")["step"] == 130


def test_second_ctrl_c_aborts_at_once_without_a_new_checkpoint(tmp_path, capsys, monkeypatch):
    """Two SIGINTs inside update 30 (step 130): the first asks for a checkpoint at the end of the step, the second
    aborts there, so the step is never finished nor checkpointed; the checkpoint of step 100 stays the newest."""
    _signal_at_update(monkeypatch, 30, [signal.SIGINT, signal.SIGINT])
    assert main(["train", *_tiny_args(tmp_path, "abort")]) == 130
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == "mtrl train: interrupted" and "checkpoint written" not in err
    run = tmp_path / "abort"
    assert checkpoint.latest(run).name == checkpoint.unit_name(100)
    assert checkpoint.load(run)["step"] == 100
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_DFL  # the handlers of before the run are back


def test_a_signal_never_checkpoints_a_non_finite_state(tmp_path, capsys, monkeypatch):
    """As on a GPU, where finite checks are deferred to log and checkpoint steps: a NaN reward in update 30 (step
    130, no log or checkpoint step) and a SIGTERM in the same step. The save on the way out checks first: exit 1,
    nothing written after the checkpoint of step 100."""
    import torch

    from mtrl.agents.mtsac import MTSAC

    original_init = MTSAC.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        for part in self.parts.values():
            part.combiner.defer_finite_checks = True  # what the agent sets on CUDA

    def poison(agent, batch):
        return batch._replace(rew=torch.full_like(batch.rew, float("nan")))

    monkeypatch.setattr(MTSAC, "__init__", init)
    _signal_at_update(monkeypatch, 30, [signal.SIGTERM], before=poison)
    assert main(["train", *_tiny_args(tmp_path, "nan")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non-finite" in err and "last good checkpoint is kept" in err
    assert checkpoint.load(tmp_path / "nan")["step"] == 100


@pytest.mark.parametrize(
    "failure", [OSError(errno.ENOSPC, "No space left on device"), PermissionError(errno.EACCES, "Permission denied")]
)
def test_a_failing_checkpoint_write_keeps_the_previous_one(tmp_path, capsys, monkeypatch, failure):
    calls = {"n": 0}
    original = checkpoint._save_file

    def flaky(obj, path):
        calls["n"] += 1
        if calls["n"] == 4:  # the second unit's replay file
            raise failure
        original(obj, path)

    monkeypatch.setattr(checkpoint, "_save_file", flaky)
    args = [f"--{k}={v}" for k, v in TINY.items()] + ["--run_dir", str(tmp_path), "--run_name", "full"]
    code = main(["train", *args, "--no-progress"])
    err = capsys.readouterr().err.strip()
    run = tmp_path / "full"
    assert code == 1 and len(err.splitlines()) == 1, err
    assert f"cannot write '{run / 'checkpoints' / '.tmp-step_0000000200'}' ({failure.strerror})" in err
    assert "the checkpoint at step 100 is kept" in err
    assert checkpoint.load(run)["step"] == 100 and not list((run / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(checkpoint, "_save_file", original)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # and it resumes from there
    assert checkpoint.load(run)["step"] == 300


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return train(from_flat({**TINY, "run_dir": str(tmp_path_factory.mktemp("r")), "run_name": "done"}), progress=False)


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / run.name))


def _refused(capsys, run: Path, argv: list[str], message: str) -> None:
    before = _snapshot(run)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert _snapshot(run) == before  # nothing created or changed


def test_resume_refusals_change_nothing(finished, tmp_path, capsys):
    """Damaged units and hand-edited files: tests/integration/test_damaged_runs.py."""
    run = _copy(finished, tmp_path)
    resume = ["train", "--resume", str(run), "--no-progress"]
    _refused(capsys, run, [*resume, "--total_steps", "200"], "total_steps: got 200, but the checkpoint of")
    only = "only total_steps, device, threads, agent.graph may change when resuming"
    _refused(capsys, run, [*resume, "--agent.actor.lr", "0.1"], only)


def test_resume_may_move_a_run_to_another_device_and_thread_count(finished, tmp_path, capsys):
    """A run started elsewhere finishes here: --device and --threads may change at a resume (config.yaml follows)."""
    run = _copy(finished, tmp_path)
    argv = ["train", "--resume", str(run), "--total_steps", "350", "--device", "cpu", "--threads", "1"]
    assert main([*argv, "--no-progress"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["threads"], saved["device"], saved["total_steps"]) == (1, "cpu", 350)
    assert checkpoint.load(run)["step"] == 350


def test_resume_cleans_stale_partial_writes_and_purges_orphaned_steps(finished, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _copy(finished, tmp_path)
    stale = run / "checkpoints" / ".tmp-step_0000000400"
    stale.mkdir()
    (stale / "checkpoint.pt").write_bytes(b"half")
    os.replace(run / "checkpoints" / "latest", run / "checkpoints" / ".tmp-latest")  # pointer lost mid-replace
    assert checkpoint.latest(run).name == "step_0000000300"  # the newest complete unit still wins
    with open(run / "checkpoints" / "latest", "w") as f:
        f.write("step_0000000200\n")  # an interrupted segment logged 200..300 after this checkpoint
    train(from_flat({**yaml.safe_load((run / "config.yaml").read_text()), "total_steps": 400}), run=run)
    assert not list((run / "checkpoints").glob(".tmp-*")) and checkpoint.load(run)["step"] == 400
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("losses/critic")]
    assert steps == list(range(150, 401, 50))  # each step once, in order: the orphaned 250 and 300 purged
    evals = [e.step for e in events.Scalars("eval/success_rate")]
    assert evals == [150, 300, 400]  # the orphaned evaluation at 300 replaced, the one at 150 kept
