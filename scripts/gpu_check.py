"""The package on a GPU in one command (under 8 minutes on one GPU with 16 cores): ``bash scripts/gpu_check.sh``.

1. the tests that touch devices (``pytest -m device --device cuda`` on the files that hold them);
2. a short MT10 training run on CUDA (official protocol, the unitary preset), stopped half way, resumed to the end,
   then ``mtrl evaluate`` on the GPU and ``mtrl record`` of one task;
3. ``mtrl bench``: one update per combiner at MT10 and MT50 size, K=1 against stable-baselines3, fp32 / bf16 / tf32
   side by side, ``agent.compile`` on and off, and MT10 training vector steps/s with sync and async envs;
4. one table on stdout, and all of it as ``gpu_check.json`` in the output folder (with ``bench.json``, the run and
   the video beside it).

``--time-limit`` (default 480 s) bounds the whole: a step still running then is stopped and the table is written with
what finished. ``--tiny`` runs the same steps in seconds on a CPU (toy env, tiny networks, fp32 and bf16, no
compile): the test suite runs it, so the script is known to work before a GPU is at hand. Exit code 0 when every step
passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _run(name: str, cmd: list[str], out: Path, timeout: float, deadline: float) -> dict[str, Any]:
    """Run one step as a subprocess, stopped at ``timeout`` seconds or at ``deadline`` (``time.perf_counter``),
    whichever comes first; its output goes to ``out/<name>.log``; returns its row of the table (exit 124: stopped)."""
    log = out / f"{name}.log"
    start = time.perf_counter()
    limit = min(timeout, deadline - start)
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        try:
            if limit <= 0:
                raise subprocess.TimeoutExpired(cmd, 0)
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=limit, cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            code = 124
            f.write(f"\n[gpu_check] stopped: the step's limit of {max(limit, 0):.0f} s was reached\n")
    seconds = time.perf_counter() - start
    print(f"{name}: exit {code} in {seconds:.0f} s (log: {log})", flush=True)
    return {"step": name, "exit_code": code, "seconds": round(seconds, 1), "log": str(log)}


def _device_test_files() -> list[str]:
    """The test files that hold tests marked ``device`` (collecting only them keeps the test extra optional)."""
    files = sorted((ROOT / "tests").rglob("test_*.py"))
    return [str(f.relative_to(ROOT)) for f in files if "mark.device" in f.read_text()]


def _tail(path: str, lines: int = 1) -> str:
    text = Path(path).read_text().strip().splitlines()
    return " | ".join(text[-lines:]) if text else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="output folder (default gpu_check/)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long CPU version (toy env, tiny networks)")
    parser.add_argument("--device", default=None, help="cuda (default) or cpu (default with --tiny)")
    parser.add_argument(
        "--time-limit", type=float, default=480, help="seconds for all steps together (default 480); a step still "
        "running then is stopped (exit 124 in the table) and the others are skipped, and the table is written",
    )  # fmt: skip
    args = parser.parse_args()
    if not args.time_limit > 0:
        parser.error(f"--time-limit: got {args.time_limit}, expected a positive number of seconds")
    device = args.device or ("cpu" if args.tiny else "cuda")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = [sys.executable]
    mtrl = [*py, "-m", "mtrl"]
    precisions = ["fp32", "bf16"] + ([] if device == "cpu" else ["tf32"])
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    deadline = started + args.time_limit

    # 1. the tests that touch devices
    tests = [*py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "-m", "device", "--device", device]
    tests += ["tests/unit/test_devices.py", "-k", "replay_sampling"] if args.tiny else _device_test_files()
    rows.append(_run("device_tests", tests, out, 150, deadline))
    rows[-1]["result"] = _tail(rows[-1]["log"])

    # 2. a short training run on the device, stopped half way, resumed, evaluated, recorded
    runs = out / "runs"
    if args.tiny:
        preset = ["--env.toy_tasks", "4", "--agent.actor.hidden_dim", "16", "--agent.critic.hidden_dim", "16"]
        preset += ["--buffer.batch_size", "32", "--env.max_episode_steps", "20", "--warmup_steps", "50"]
        half, total, task = 100, 200, "reach-1"
    else:
        preset = ["--config", "configs/mt10_unitary.yaml", "--warmup_steps", "250", "--eval_episodes", "1"]
        half, total, task = 500, 1000, "reach-v3"
    common = ["--checkpoint_interval", str(half), "--eval_interval", str(half), "--log_interval", "50"]
    first = [*mtrl, "train", "--no-progress", *preset, *common, "--total_steps", str(half), "--device", device]
    rows.append(_run("train", [*first, "--run_dir", str(runs), "--run_name", "gpu"], out, 150, deadline))
    resume = [*mtrl, "train", "--no-progress", "--resume", str(runs / "gpu"), "--total_steps", str(total)]
    rows.append(_run("resume", resume, out, 150, deadline))
    evaluate = [*mtrl, "evaluate", str(runs / "gpu"), "--episodes", "1", "--device", device]
    rows.append(_run("evaluate", evaluate, out, 90, deadline))
    rows[-1]["result"] = _tail(rows[-1]["log"])
    record = [*mtrl, "record", str(runs / "gpu"), "--tasks", task, "--out", str(out / "videos")]
    rows.append(_run("record", record, out, 90, deadline))

    # 3. mtrl bench, last: its JSON is rewritten after each part, so a cut-short training part keeps the rest
    bench = [*mtrl, "bench", "--json", str(out / "bench.json"), "--precisions", *precisions, "--device", device]
    if args.tiny:
        bench += [
            "--sizes",
            "MT10",
            "--combiners",
            "pcgrad",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--hidden",
            "16",
            "--graph",
        ]
        bench += ["--sb3-batch", "64"]
    else:
        bench += ["--rounds", "5", "--warmup", "2", "--compile", "--graph", "--train", "--train-steps", "200"]
        bench += ["--train-vector", "sync", "async"]
    rows.append(_run("bench", bench, out, 1800, deadline))

    # 4. the table and the JSON
    result: dict[str, Any] = {"device": device, "tiny": args.tiny, "steps": rows}
    if (out / "bench.json").is_file():
        result["bench"] = json.loads((out / "bench.json").read_text())
    meta = runs / "gpu" / "meta.yaml"
    if meta.is_file():
        import yaml

        result["run"] = yaml.safe_load(meta.read_text())
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    print_table(result)
    print(f"wrote {out / 'gpu_check.json'}")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


def print_table(result: dict[str, Any]) -> None:
    """One table: the steps, then the bench figures (update per combiner and precision, K=1 vs SB3, training)."""
    print(f"\ngpu_check on {result['device']} ({result['total_seconds']:.0f} s)")
    print(f"  {'step':<14}{'exit':>5}{'seconds':>9}  result")
    for row in result["steps"]:
        print(f"  {row['step']:<14}{row['exit_code']:>5}{row['seconds']:>9.0f}  {row.get('result', '')}")
    bench = result.get("bench")
    if not bench:
        return
    print(f"\n  device: {bench['device_name']}, torch {bench['torch']}, kernels {bench.get('kernels')}")
    for size, by_precision in bench.get("update", {}).items():
        for precision, combiners in by_precision.items():
            cells = ", ".join(f"{n} {r['ms']:.1f} ms ({r['ratio']:.2f}x)" for n, r in combiners.items())
            print(f"  update {size} {precision}: {cells}")
    for row in bench.get("sb3", []):
        cells = ", ".join(f"{p} {o['ratio']:.2f}x" for p, o in row["ours"].items())
        print(f"  K=1 vs SB3, batch {row['batch']}: SB3 {row['sb3_updates_per_s']:.1f} updates/s; ours {cells}")
    for name, row in bench.get("training", {}).items():
        cells = ", ".join(f"{k} {v:.1f}" for k, v in row.items())
        print(f"  training {name} vector steps/s: {cells}")
    run = result.get("run")
    if run:
        steps, wall, final = run.get("final_step"), run.get("wall_clock_s"), run.get("final_success")
        print(f"  run: {steps} steps in {wall} s, final success {final}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
