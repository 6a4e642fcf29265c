"""Crash harness: kill a toy training run with SIGKILL N times, resume it each time, and check it ends whole.

Each of the N cases starts ``mtrl train`` (or ``mtrl train --resume`` once the run directory exists) in a child
process and kills it with SIGKILL, either at a random moment (uniform over the first seconds of the process, so
during start-up, warm-up, updates, evaluation or a checkpoint write) or, every third case, at a chosen phase inside
a checkpoint write (``MTRL_CRASH_POINT``: after the state file, after the replay file, after the unit's rename,
after the pointer moved). After each kill the run directory must hold a consistent newest checkpoint (or none yet):
state and replay saved at the same step, the replay holding exactly ``min(step, capacity/K)`` transitions per task,
the unit named after its step, every unit loadable. At the end the run is resumed to completion and checked: it
finished, no partial write is left, and the logged step sequences (as TensorBoard merges the resumed segments, purge
marks applied) are continuous: every log and evaluation step exactly once.

    python scripts/crash_harness.py --n 20          # prints one line per case, then "N passed, M failed"

Exit code 0 when every case and the final check pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

CRASH_POINTS = ("state", "buffer", "rename", "pointer")
RUN = {
    "env.toy_tasks": 4,
    "env.max_episode_steps": 20,
    "warmup_steps": 100,
    "log_interval": 25,
    "eval_interval": 200,
    "eval_episodes": 2,
    "eval_mode": "sync",
    "checkpoint_interval": 100,
    "agent.actor.hidden_dim": 32,
    "agent.critic.hidden_dim": 32,
    "buffer.batch_size": 32,
    "buffer.capacity": 2000,
    "device": "cpu",
    "threads": 1,
}
TOTAL = 100_000  # large: the run is never finished by the killed processes; the last resume shortens it


def _command(run: Path, total: int) -> list[str]:
    base = [sys.executable, "-m", "mtrl", "train", "--no-progress"]
    if (run / "config.yaml").is_file():
        return [*base, "--resume", str(run), "--total_steps", str(total)]
    args = [f"--{k}={v}" for k, v in {**RUN, "total_steps": total}.items()]
    return [*base, *args, "--run_dir", str(run.parent), "--run_name", run.name]


def check_run(run: Path) -> list[str]:
    """Problems with the run directory's checkpoints (empty list: consistent)."""
    from mtrl.runs import checkpoint

    problems: list[str] = []
    folder = run / checkpoint.CHECKPOINTS
    if not folder.is_dir():
        return problems  # killed before its first checkpoint: nothing to be consistent yet
    latest = checkpoint.latest(run)
    units = [u for u in folder.iterdir() if u.is_dir() and u.name.startswith("step_")]
    if units and latest is None:
        problems.append(f"unit folders {sorted(u.name for u in units)} but no complete checkpoint")
    for unit in units:
        try:
            state = checkpoint.load(unit)
            replay = checkpoint.load_buffer(unit / checkpoint.STATE, state["step"])
        except checkpoint.CheckpointError as exc:
            problems.append(str(exc))
            continue
        step = state["step"]
        if unit.name != checkpoint.unit_name(step):
            problems.append(f"{unit.name} holds step {step}")
        per_task = RUN["buffer.capacity"] // RUN["env.toy_tasks"]
        if replay["size"] != min(step, per_task) or replay["pos"] != step % per_task:
            problems.append(f"{unit.name}: replay size {replay['size']} pos {replay['pos']} at step {step}")
    return problems


def check_logs(run: Path, total: int) -> list[str]:
    """The merged TensorBoard view of the run: every logged step exactly once, none missing, none orphaned."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mtrl.runs.scalars import read_scalars

    problems: list[str] = []
    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # its note on each purge mark it applies
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    expected = {
        "losses/critic": list(range(RUN["warmup_steps"] + RUN["log_interval"], total + 1, RUN["log_interval"])),
        "eval/success_rate": list(range(RUN["eval_interval"], total + 1, RUN["eval_interval"])),
    }
    if total % RUN["eval_interval"]:
        expected["eval/success_rate"].append(total)
    df = read_scalars(run)
    for tag, steps in expected.items():
        merged = [e.step for e in events.Scalars(tag)]  # what TensorBoard shows
        if merged != steps:
            extra = sorted(set(merged) - set(steps))[:5]
            missing = sorted(set(steps) - set(merged))[:5]
            dupes = len(merged) - len(set(merged))
            problems.append(f"TensorBoard {tag}: {dupes} repeated, extra {extra}, missing {missing}")
        if list(df[df.tag == tag].step) != steps:
            problems.append(f"mtrl compare reads {tag} at other steps than logged")
    return problems


def run_harness(n: int, seed: int = 0, workdir: Path | None = None, max_delay: float = 12.0) -> tuple[int, int]:
    """Run ``n`` kill-and-resume cases and the final check; print one line each; return (passed, failed)."""
    rng = random.Random(seed)
    root = Path(workdir or tempfile.mkdtemp(prefix="mtrl-crash-"))
    root.mkdir(parents=True, exist_ok=True)
    run = root / "runs" / "crash"
    if run.exists():
        shutil.rmtree(run)
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "osmesa"), "PYTHONUNBUFFERED": "1"}
    passed = failed = 0
    log = root / "harness.log"
    for case in range(n):
        point = CRASH_POINTS[(case // 3) % len(CRASH_POINTS)] if case % 3 == 2 else None
        case_env = {**env, "MTRL_CRASH_POINT": point} if point else env
        with open(log, "a") as out:
            proc = subprocess.Popen(_command(run, TOTAL), env=case_env, stdout=out, stderr=out)
            delay = rng.uniform(0.3, max_delay)
            if point:
                how = f"inside a checkpoint write ({point})"
                try:
                    proc.wait(timeout=120)  # it kills itself at the next save
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                how = f"after {delay:.2f} s"
                try:
                    proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                proc.wait()
        from mtrl.runs import checkpoint

        unit = checkpoint.latest(run) if run.is_dir() else None
        at = f"newest checkpoint at step {checkpoint.load(unit)['step']}" if unit else "no checkpoint yet"
        problems = check_run(run)
        if proc.returncode not in (-signal.SIGKILL, 0):
            problems.append(f"exit code {proc.returncode} (see {log})")
        ok = not problems
        passed, failed = passed + ok, failed + (not ok)
        print(f"case {case + 1:2d}: SIGKILL {how}: {at}: " + ("ok" if ok else "FAILED: " + "; ".join(problems)))
    from mtrl.runs import checkpoint

    unit = checkpoint.latest(run) if run.is_dir() else None
    total = (checkpoint.load(unit)["step"] if unit else 0) + 300
    with open(log, "a") as out:
        code = subprocess.run(_command(run, total), env=env, stdout=out, stderr=out).returncode
    problems = [] if code == 0 else [f"the final resume exited with {code} (see {log})"]
    final = checkpoint.latest(run)
    if final is None or checkpoint.load(final)["step"] != total:
        problems.append(f"the run did not complete {total} steps")
    if any((run / checkpoint.CHECKPOINTS).glob(".tmp-*")):
        problems.append("a partial write is left in checkpoints/")
    problems += check_run(run) + check_logs(run, total)
    ok = not problems
    passed, failed = passed + ok, failed + (not ok)
    print(f"final: resumed to {total} steps: " + ("ok" if ok else "FAILED: " + "; ".join(problems)))
    print(f"{passed} passed, {failed} failed")
    return passed, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="number of kills (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the run (default: a new temp folder)")
    parser.add_argument(
        "--max-delay", type=float, default=12.0, help="latest random kill, seconds after the process starts (12)"
    )
    args = parser.parse_args()
    if args.n < 1:
        parser.error(f"--n: got {args.n}, expected a positive integer")
    _, failed = run_harness(args.n, args.seed, args.workdir, args.max_delay)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
