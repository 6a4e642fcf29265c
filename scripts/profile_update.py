"""Where one MT-SAC update spends its time: torch.profiler over a few updates per combiner, at MT10 or MT50 size.

Prints, per combiner: wall ms per update, device (kernel) ms per update, kernel launches per update, host-device
synchronisations per update (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, blocking copies ``aten::item`` /
``_local_scalar_dense``), and the ops with the most self CPU time. On a GPU, an update whose wall time is far above its
kernel time is bound by launches and syncs, not by arithmetic.

    python scripts/profile_update.py --device cuda --combiners mean pcgrad --size MT10
    python scripts/profile_update.py --device cpu --hidden 32 --updates 2      # a quick look on a CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtrl.bench import SIZES, make_agent, make_batch  # noqa: E402
from mtrl.mto import COMBINERS

SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")


def profile_one(name: str, size: str, device: torch.device, hidden: int, updates: int, precision: str) -> dict:
    k, batch = SIZES[size]
    data, noise = make_batch(k, batch, device)
    agent = make_agent(name, k, batch, device, hidden, **{"agent.precision": precision})
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):  # warm-up: lazy inits, autotuning, allocator
        agent.update(data, noise=noise)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(updates):
            agent.update(data, noise=noise)
        sync()
        wall = (time.perf_counter() - t0) / updates
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    syncs = {e.key: e.count / updates for e in events if e.key in SYNCS}
    device_us = sum(e.self_device_time_total for e in events) if device.type == "cuda" else 0.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    return {
        "combiner": name,
        "wall_ms": 1000 * wall,
        "device_ms": device_us / 1000 / updates,
        "launches": launches / updates,
        "syncs": syncs,
        "top_self_cpu": [(e.key, e.count // updates, e.self_cpu_time_total / 1000 / updates) for e in top],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--combiners", nargs="+", default=["mean", "pcgrad"])
    parser.add_argument("--size", choices=sorted(SIZES), default="MT10")
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16", "tf32"], default="fp32")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device: got {args.device!r}, expected cpu or cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device: got 'cuda', but torch sees no CUDA device here; expected cpu")
    unknown = [n for n in args.combiners if n not in COMBINERS]
    if unknown:
        parser.error(f"--combiners: got {unknown[0]!r}, expected some of {', '.join(COMBINERS)}")
    if args.hidden < 1 or args.updates < 1:
        parser.error(f"--hidden/--updates: got {args.hidden}/{args.updates}, expected positive integers")
    device = torch.device(args.device)
    rows = [profile_one(n, args.size, device, args.hidden, args.updates, args.precision) for n in args.combiners]
    for row in rows:
        syncs = ", ".join(f"{k} {v:g}" for k, v in row["syncs"].items()) or "none"
        head = f"{row['combiner']} ({args.size}, {args.precision}, {device}): {row['wall_ms']:.1f} ms wall"
        print(f"\n{head}, {row['device_ms']:.1f} ms in kernels, {row['launches']:.0f} launches, syncs: {syncs}")
        for key, count, ms in row["top_self_cpu"]:
            print(f"  {key:<50}{count:>6} calls {ms:>8.2f} ms self CPU")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
