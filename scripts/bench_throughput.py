"""Throughput: vector steps per second of training (collect + update) and of the update alone, and our K=1 update
against stable-baselines3's SAC update with the same networks and batch, measured side by side in one process.

    python scripts/bench_throughput.py                                  # update-only table + SB3 ratio, CPU
    python scripts/bench_throughput.py --train --benchmarks MT10        # also real training steps/s on MT10
    python scripts/bench_throughput.py --device cuda --json out.json   # on a GPU machine

Update-only numbers use MT10/MT50-sized networks (3x400, one-hot, obs 39, action 4; K=10 batch 1280, K=50 batch
1250, the combiner benchmark's sizes) and a fixed batch. Training numbers run the real loop (`mtrl.train.train`)
for a few hundred steps after warm-up and report the median of its logged `charts/sps`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.logger import Logger

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_combiners import ACT, OBS, SIZES, bench  # noqa: E402

from mtrl.agents.mtsac import MTSAC  # noqa: E402
from mtrl.buffers import ReplayBatch  # noqa: E402
from mtrl.compare import read_scalars  # noqa: E402
from mtrl.config import from_flat, load_yaml  # noqa: E402
from mtrl.train import train  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _time(fn, rounds: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def update_only(names: list[str], rounds: int, device: torch.device) -> dict:
    """Updates per second per combiner and size, interleaved round by round (see bench_combiners.py)."""
    return {
        size: {name: 1000.0 / row["ms"] for name, row in bench(size, names, rounds, 2, device).items()}
        for size in SIZES
    }


class _Spaces(gym.Env):
    observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)


def versus_sb3(batch: int, rounds: int, device: torch.device, sync) -> dict:
    """K=1: our update and SB3's ``SAC.train(gradient_steps=1)``, same 3x400 networks and batch, interleaved."""
    sb3 = SAC("MlpPolicy", _Spaces(), policy_kwargs={"net_arch": [400, 400, 400]}, batch_size=batch, device=device)
    sb3.set_logger(Logger(folder=None, output_formats=[]))
    rng = np.random.default_rng(0)
    for _ in range(batch * 4):
        obs = rng.normal(size=(1, OBS)).astype(np.float32)
        sb3.replay_buffer.add(obs, obs, rng.uniform(-1, 1, (1, ACT)), rng.normal(size=1), np.zeros(1), [{}])
    flat = {
        "env.toy_tasks": 1,
        "agent.conditioning": "none",
        "agent.actor.hidden_dim": 400,
        "agent.actor.num_layers": 3,
        "agent.critic.hidden_dim": 400,
        "agent.critic.num_layers": 3,
        "buffer.batch_size": batch,
    }
    ours = MTSAC(OBS, ACT, 1, from_flat(flat), device)
    g = torch.Generator().manual_seed(0)
    data = ReplayBatch(
        torch.randn(batch, OBS, generator=g), torch.rand(batch, ACT, generator=g) * 2 - 1,
        torch.randn(batch, generator=g), torch.randn(batch, OBS, generator=g), torch.zeros(batch),
        torch.zeros(batch, dtype=torch.long), torch.ones(batch),
    )  # fmt: skip
    data = ReplayBatch(*(t.to(device) for t in data))
    t_ours, t_sb3 = [], []
    for _ in range(rounds):
        t_ours.append(_time(lambda: ours.update(data), 1, 0, sync))
        t_sb3.append(_time(lambda: sb3.train(gradient_steps=1, batch_size=batch), 1, 0, sync))
    ours_s, sb3_s = statistics.median(t_ours[1:]), statistics.median(t_sb3[1:])
    return {"batch": batch, "ours_updates_per_s": 1 / ours_s, "sb3_updates_per_s": 1 / sb3_s, "ratio": sb3_s / ours_s}


def training(benchmarks: list[str], names: list[str], steps: int, device: str, threads: int) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bench in benchmarks:
            for name in names:
                items = load_yaml(CONFIGS / f"{bench.lower()}_unitary.yaml")
                warmup = 200
                items.update(
                    {
                        "combiner": name, "total_steps": warmup + steps, "warmup_steps": warmup,
                        "eval_interval": 0, "eval_episodes": 1, "log_interval": 50,
                        "checkpoint_interval": warmup + steps, "run_dir": tmp, "run_name": f"{bench}_{name}",
                        "device": device, "threads": threads,
                    }
                )  # fmt: skip
                if name == "famo":
                    items["combine_actor"] = False
                run = train(from_flat(items), progress=False)
                df = read_scalars(run)
                sps = df[(df.tag == "charts/sps") & (df.step > warmup + 50)].value
                out.setdefault(bench, {})[name] = float(np.median(sps))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--combiners", nargs="+", default=["mean", "pcgrad", "cagrad", "mgda", "nashmtl"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--train", action="store_true", help="also measure real training steps/s (builds envs)")
    parser.add_argument("--benchmarks", nargs="+", default=["MT10"], choices=["MT10", "MT50"])
    parser.add_argument("--train-steps", type=int, default=300, help="steps after warm-up per training measurement")
    parser.add_argument("--sb3-batch", type=int, default=1280)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    names = ["mean"] + [c for c in args.combiners if c != "mean"]
    result: dict = {"device": str(device), "threads": torch.get_num_threads()}

    result["update_only"] = update_only(names, args.rounds, device)
    print(f"update only (updates/s = vector steps/s at one update per step), device {device}")
    print(f"{'combiner':<12}" + "".join(f"{s:>10}" for s in SIZES) + "".join(f"{s + ' x':>10}" for s in SIZES))
    for name in names:
        cells = [result["update_only"][s][name] for s in SIZES]
        ratios = [result["update_only"][s]["mean"] / result["update_only"][s][name] for s in SIZES]
        print(f"{name:<12}" + "".join(f"{c:>10.2f}" for c in cells) + "".join(f"{r:>10.2f}" for r in ratios))

    result["versus_sb3"] = versus_sb3(args.sb3_batch, args.rounds, device, sync)
    v = result["versus_sb3"]
    print(
        f"\nK=1, batch {v['batch']}, 3x400: ours {v['ours_updates_per_s']:.2f} updates/s, "
        f"stable-baselines3 {v['sb3_updates_per_s']:.2f} updates/s, ratio {v['ratio']:.2f}x"
    )

    if args.train:
        result["training"] = training(args.benchmarks, names, args.train_steps, args.device, args.threads)
        print("\ntraining (collect + update), vector steps/s, median of charts/sps")
        for bench, row in result["training"].items():
            print(f"{bench}: " + ", ".join(f"{n} {s:.2f}" for n, s in row.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
