"""The two process-wide settings mtrl makes, measured: glibc's mmap threshold and OMP_WAIT_POLICY.

Each variant runs in its own process (both settings take effect at process start), alternating variant by variant
for ``--repeats`` rounds, each timing ``--updates`` MT10-size MT-SAC updates (K=10, batch 1280, 3x400):

- malloc: glibc defaults against :func:`mtrl.utils.keep_freed_memory`, with page faults per update;
- OpenMP: ``OMP_WAIT_POLICY=ACTIVE`` (spinning threads, torch's default) against ``PASSIVE`` (mtrl's default), on an
  idle machine and beside one busy process (a Python busy loop standing in for an env or evaluation worker).

    python scripts/bench_process_settings.py [--repeats 3] [--updates 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def measure(tune_malloc: bool, updates: int) -> dict[str, float]:
    """Median ms per update and page faults per update in this process."""
    import resource
    import time

    import torch

    from mtrl.bench import make_agent, make_batch
    from mtrl.utils import keep_freed_memory

    if tune_malloc:
        keep_freed_memory()
    agent = make_agent("mean", 10, 1280, torch.device("cpu"))
    batch, noise = make_batch(10, 1280, torch.device("cpu"))
    for _ in range(3):
        agent.update(batch, noise=noise)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(updates):
        t0 = time.perf_counter()
        agent.update(batch, noise=noise)
        times.append(time.perf_counter() - t0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"ms": 1000 * statistics.median(times), "faults": faults / updates}


def run(variant: dict[str, str], tune_malloc: bool, updates: int) -> dict[str, float]:
    env = {**os.environ, **variant}
    cmd = [sys.executable, __file__, "--child", str(int(tune_malloc)), "--updates", str(updates)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--updates", type=int, default=15, help="timed updates per process (15)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:  # mtrl is imported here, after the parent has set OMP_WAIT_POLICY
        print(json.dumps(measure(bool(args.child), args.updates)))
        return

    passive, active = {"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "ACTIVE"}
    malloc = {"glibc default": (passive, False), "keep_freed_memory": (passive, True)}
    omp = {"ACTIVE": (active, True), "PASSIVE": (passive, True)}
    results: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.repeats):
        for name, (variant, tune) in malloc.items():
            results.setdefault(f"malloc: {name}", []).append(run(variant, tune, args.updates))
        for name, (variant, tune) in omp.items():
            results.setdefault(f"idle, OMP {name}", []).append(run(variant, tune, args.updates))
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            for name, (variant, tune) in omp.items():
                results.setdefault(f"one busy process, OMP {name}", []).append(run(variant, tune, args.updates))
        finally:
            busy.kill()
            busy.wait()
    print(f"MT10-size update, medians over {args.repeats} alternating processes of {args.updates} updates each")
    for name, rows in results.items():
        ms = statistics.median(r["ms"] for r in rows)
        faults = statistics.median(r["faults"] for r in rows)
        runs = ", ".join(f"{r['ms']:.0f}" for r in rows)
        print(f"  {name:<32}{ms:8.1f} ms/update  ({runs})  {faults:7.0f} page faults/update")


if __name__ == "__main__":
    main()
