"""Cost of one MT-SAC update per combiner, relative to unitary scalarization (``mean``), measured side by side.

Every combiner gets the same networks, batch and noise; updates are interleaved round by round (mean, pcgrad,
cagrad, ..., mean, pcgrad, ...) so that load on a shared machine hits all of them alike, and the table reports the
median over rounds. Sizes follow the MT10 / MT50 literature: 3x400 MLPs, one-hot task id, obs 39, action 4,
K=10 with batch 1280 and K=50 with batch 1250.

    python scripts/bench_combiners.py                      # both sizes, every combiner
    python scripts/bench_combiners.py --sizes mt10 --combiners mean pcgrad cagrad --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mtrl.agents.mtsac import MTSAC
from mtrl.buffers import ReplayBatch
from mtrl.config import from_flat
from mtrl.mto import COMBINERS

SIZES = {"mt10": (10, 1280), "mt50": (50, 1250)}
OBS, ACT = 39, 4


def make_agent(combiner: str, k: int, batch: int, device: torch.device) -> MTSAC:
    flat = {
        "env.toy_tasks": k,
        "agent.actor.hidden_dim": 400,
        "agent.actor.num_layers": 3,
        "agent.critic.hidden_dim": 400,
        "agent.critic.num_layers": 3,
        "buffer.batch_size": batch,
        "combiner": combiner,
    }
    if combiner == "fixed":
        flat["combiner.weights"] = [1.0 / k] * k
    if combiner == "famo":  # critic only: the SAC actor loss is unbounded below
        flat["combine_actor"] = False
    torch.manual_seed(0)
    return MTSAC(OBS, ACT, k, from_flat(flat), device)


def make_batch(k: int, batch: int, device: torch.device) -> tuple[ReplayBatch, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    rows = batch // k * k
    tensors = ReplayBatch(
        obs=torch.randn(rows, OBS, generator=g),
        act=torch.rand(rows, ACT, generator=g) * 2 - 1,
        rew=torch.randn(rows, generator=g),
        next_obs=torch.randn(rows, OBS, generator=g),
        done=torch.zeros(rows),
        task=torch.arange(k).repeat_interleave(rows // k),
        rew_absmax=torch.ones(rows),
    )
    noise = torch.randn(2, rows, ACT, generator=g)
    return ReplayBatch(*(t.to(device) for t in tensors)), (noise[0].to(device), noise[1].to(device))


def bench(size: str, names: list[str], rounds: int, warmup: int, device: torch.device) -> dict[str, dict[str, float]]:
    k, batch = SIZES[size]
    data, noise = make_batch(k, batch, device)
    agents = {name: make_agent(name, k, batch, device) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for r in range(warmup + rounds):
        for name, agent in agents.items():
            sync()
            t0 = time.perf_counter()
            agent.update(data, noise=noise)
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["mean"])
    return {
        name: {"ms": 1000 * statistics.median(t), "ratio": statistics.median(t) / base, "kind": _kind(name, k)}
        for name, t in times.items()
    }


def _kind(name: str, k: int) -> str:
    config = COMBINERS[name]() if name != "fixed" else COMBINERS[name](weights=tuple([1.0 / k] * k))
    return "gradient" if config.build(k).requires_grads else "loss"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--combiners", nargs="+", default=list(COMBINERS), help="default: all (mean is always run)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [c for c in args.combiners if c not in COMBINERS]
    if unknown:
        parser.error(f"unknown combiner {unknown[0]!r}; expected some of {', '.join(COMBINERS)}")
    names = ["mean"] + [c for c in args.combiners if c != "mean"]
    device = torch.device(args.device)
    results = {}
    for size in args.sizes:
        k, batch = SIZES[size]
        results[size] = bench(size, names, args.rounds, args.warmup, device)
        print(f"\n{size.upper()}: K={k}, batch {batch}, 3x400, device {device}, {torch.get_num_threads()} threads")
        print(f"{'combiner':<14}{'kind':<10}{'ms/update':>10}{'x mean':>8}")
        for name, row in results[size].items():
            print(f"{name:<14}{row['kind']:<10}{row['ms']:>10.1f}{row['ratio']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
