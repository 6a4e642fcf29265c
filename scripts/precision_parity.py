"""Does bf16 learn like fp32? The same runs at equal budget in both precisions, curves side by side.

For every benchmark and seed it trains MT-SAC twice, ``agent.precision: fp32`` and ``bf16``, with everything else
equal (config, seeds, budget, evaluation on the training goals), one run at a time in a child process, then prints
per benchmark the evaluation curve of each precision (mean over seeds) and a summary with the final success (the
evaluations in the last 10% of the steps, ``mtrl compare``'s rule) and the wall-clock of each run. Resumable: a run
whose directory already holds its final checkpoint is not run again.

    python scripts/precision_parity.py                                   # toy + MT1 reach and drawer-close
    python scripts/precision_parity.py --benchmarks toy --steps 4000 --seeds 1 2 3

The default budget (toy 4000 steps; MT1 10000 steps, 2x256 networks, batch 256) fits a CPU; on a CPU without
AVX512-BF16 bf16 is emulated and several times slower, which changes the wall-clock but not what is learned.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

TOY = {"total_steps": 4000, "eval_interval": 500, "eval_episodes": 10}
MT1 = {
    "env.protocol": "official", "warmup_steps": 1000, "eval_interval": 1000, "eval_episodes": 10,
    "agent.actor.hidden_dim": 256, "agent.actor.num_layers": 2, "agent.critic.hidden_dim": 256,
    "agent.critic.num_layers": 2, "buffer.capacity": 1_000_000, "buffer.batch_size": 256,
}  # fmt: skip
PRECISIONS = ("fp32", "bf16")


def _items(bench: str, seed: int, precision: str, steps: int | None, out: Path, threads: int) -> dict[str, Any]:
    base = dict(TOY) if bench == "toy" else {**MT1, "env.benchmark": f"MT1-{bench}", "total_steps": 10_000}
    if steps:
        base["total_steps"] = steps
    return {
        **base, "seed": seed, "agent.precision": precision, "device": "cpu", "threads": threads,
        "checkpoint_interval": base["total_steps"], "log_interval": 500, "run_dir": str(out),
        "run_name": f"{bench}__{precision}__s{seed}",
    }  # fmt: skip


def _child(items: dict[str, Any]) -> None:
    from mtrl.config import from_flat
    from mtrl.train import train

    train(from_flat(items), progress=False)


def _done(run: Path, total: int) -> bool:
    from mtrl.runs import checkpoint

    unit = checkpoint.latest(run) if run.is_dir() else None
    return unit is not None and checkpoint.load(unit)["step"] >= total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", nargs="+", default=["toy", "reach-v3", "drawer-close-v3"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--steps", type=int, default=0, help="total steps per run (0: toy 4000, MT1 10000)")
    parser.add_argument("--out", type=Path, default=Path("runs/precision_parity"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return 0
    from mtrl.runs.scalars import FINAL_WINDOW, final_success, read_scalars

    curves: dict[str, dict[str, list[tuple[np.ndarray, np.ndarray]]]] = {}
    walls: dict[str, float] = {}
    for bench in args.benchmarks:
        for seed in args.seeds:
            for precision in PRECISIONS:
                items = _items(bench, seed, precision, args.steps, args.out, args.threads)
                run = args.out / items["run_name"]
                if not _done(run, items["total_steps"]):
                    if run.exists():
                        import shutil

                        shutil.rmtree(run)  # an unfinished run starts again: equal budgets, no resumed segments
                    print(f"training {run.name} ...", flush=True)
                    subprocess.run([sys.executable, __file__, "--child", json.dumps(items)], check=True)
                df = read_scalars(run)
                ev = df[df.tag == "eval/success_rate"]
                curves.setdefault(bench, {}).setdefault(precision, []).append((ev.step.to_numpy(), ev.value.to_numpy()))
                import yaml

                walls[run.name] = float(yaml.safe_load((run / "meta.yaml").read_text())["wall_clock_s"])
    summary = []
    for bench, by_precision in curves.items():
        steps = by_precision["fp32"][0][0]
        means = {p: np.mean([c[1] for c in runs], axis=0) for p, runs in by_precision.items()}
        print(f"\n{bench}: eval/success_rate, mean over {len(args.seeds)} seed(s)")
        print(f"  {'step':>8}" + "".join(f"{p:>8}" for p in PRECISIONS))
        for i, step in enumerate(steps):
            print(f"  {step:>8}" + "".join(f"{means[p][i]:>8.2f}" for p in PRECISIONS))
        total = int(steps[-1])
        finals = {p: [final_success(s, v, total) for s, v in runs] for p, runs in by_precision.items()}
        summary.append((bench, finals))
    print(f"\nfinal success (evaluations in the last {FINAL_WINDOW:.0%} of the steps), per seed; wall-clock per run:")
    for bench, finals in summary:
        cells = "   ".join(f"{p} {np.mean(f):.2f} {[round(x, 2) for x in f]}" for p, f in finals.items())
        print(f"  {bench:<18}{cells}   bf16 - fp32 = {np.mean(finals['bf16']) - np.mean(finals['fp32']):+.2f}")
    for name, wall in walls.items():
        print(f"  {name:<32}{wall:>8.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
