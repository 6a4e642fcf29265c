"""Throughput benchmark (``mtrl bench``): how fast MT-SAC updates and trains, measured side by side in one process.

Three parts, each printed as a table and written together as JSON:

- **update**: one MT-SAC update on a fixed replay batch, per combiner, at MT10 size (K=10, batch 1280) and MT50 size
  (K=50, batch 1250), 3x400 networks, one-hot task id, obs 39, action 4. Combiners are interleaved round by round
  (mean, pcgrad, cagrad, ..., mean, pcgrad, ...) so that load on a shared machine hits all of them alike; the median
  over rounds is reported with its ratio to ``mean`` (unitary scalarization). Updates/s equal vector steps/s of
  training at one update per step when the environment costs nothing.
- **sb3**: K=1, our sample + update against stable-baselines3's ``SAC.train(gradient_steps=1)`` (which samples from
  its own buffer), same 3x400 networks, batch and device, interleaved.

Every part runs in each ``--precisions`` (``agent.precision``: fp32, bf16, tf32 on CUDA) side by side, and the
machine's matmul kernels (AVX2, AVX-512, AVX512-BF16, AMX; CUDA capability) are printed with the results.
- **train** (``--train``): the real loop (:func:`mtrl.train.train`: collect, add, sample, update, log) on Meta-World
  for a few hundred steps after warm-up, median of its logged ``train/sps``.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from mtrl.agents.build import make_agent as build_agent
from mtrl.agents.mtsac import MTSAC
from mtrl.buffers import MultiTaskReplay, ReplayBatch
from mtrl.config import ConfigError, from_flat, load_yaml, parse
from mtrl.mto import COMBINERS
from mtrl.runs.rundir import check_output_file
from mtrl.utils import keep_freed_memory

DESCRIPTION = """Throughput of MT-SAC, measured side by side in one process; tables on stdout, all of it as JSON.

update  one MT-SAC update on a fixed batch per combiner and precision, at MT10 size (K=10, batch 1280) and MT50
        size (K=50, batch 1250), 3x400 networks, one-hot task id; interleaved round by round, median over rounds,
        ratio to mean (unitary scalarization) and the targets (<= 1.5x at K=10, <= 3x at K=50), speed-up over
        fp32 (target for bf16 on CPUs with AVX512-BF16: >= 1.7x).

sb3     K=1: our replay sample + update against stable-baselines3's SAC.train(gradient_steps=1), same networks,
        batch and device (target >= 1.5x).

train   (--train) the real training loop on Meta-World with the configs/<benchmark>_unitary.yaml preset (MT50: batch
        6400) for --train-steps steps after 200 warm-up steps: median vector steps/s.

examples:
  mtrl bench                                        # every gradient-space combiner, both sizes, SB3 at 256 and 1280
  mtrl bench --sizes MT10 --combiners pcgrad cagrad --rounds 5
  mtrl bench --train --train-combiners mean pcgrad  # also real training steps/s on MT10
  mtrl bench --precisions fp32 --sb3-batch          # float32 only, no SB3 comparison
  mtrl bench --sizes MT50 --batch 6400 --alternating 10  # at the MT50 preset's batch, with alternating steps
  mtrl bench --seeds 1 2 4 8                        # seed groups against one-seed updates (add --train: training)"""

SIZES = {"MT10": (10, 1280), "MT50": (50, 1250)}  # K, batch
OBS, ACT = 39, 4
TARGETS = {"MT10": 1.5, "MT50": 3.0}  # max update cost of a gradient-space combiner relative to mean
SB3_TARGET = 1.5  # min K=1 speed-up over stable-baselines3
BF16_TARGET = 1.7  # min bf16 over fp32 speed-up of the MT10 mean update on CPUs with AVX512-BF16
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _combiner_flat(name: str, k: int) -> dict[str, Any]:
    flat: dict[str, Any] = {"combiner": name}
    if name == "fixed":
        flat["combiner.weights"] = [1.0 / k] * k
    try:  # combiners restricted to the critic (FAMO: losses bounded below) run there only
        COMBINERS[name]().check(k, frozenset({"critic", "actor"}))
    except ValueError:
        flat["combine_actor"] = False
    return flat


def _agent_flat(name: str, k: int, batch: int, hidden: int, extra: dict[str, Any]) -> dict[str, Any]:
    """The flat config of a benchmark agent: K toy tasks, 3 x ``hidden`` networks, combiner ``name``."""
    return {
        "env.toy_tasks": k, "agent.actor.hidden_dim": hidden, "agent.actor.num_layers": 3,
        "agent.critic.hidden_dim": hidden, "agent.critic.num_layers": 3, "buffer.batch_size": batch,
        **_combiner_flat(name, k), **extra,
    }  # fmt: skip


def make_agent(name: str, k: int, batch: int, device: torch.device, hidden: int = 400, **extra: Any) -> MTSAC:
    """An MT-SAC agent with 3 x ``hidden`` networks and combiner ``name``, seeded identically for every name."""
    torch.manual_seed(0)
    return build_agent(from_flat(_agent_flat(name, k, batch, hidden, extra)), OBS, ACT, k, device)


def make_batch(k: int, batch: int, device: torch.device) -> tuple[ReplayBatch, tuple[torch.Tensor, torch.Tensor]]:
    """A stratified batch (task-major rows) of ``batch // k * k`` rows and the two noise tensors of one update."""
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


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _interleaved(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int, device: torch.device, bar: tqdm) -> dict:
    """Median seconds per call of each function, calling them in turn ``warmup + rounds`` times."""
    sync = _sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
            bar.update(1)
    return {name: statistics.median(t) for name, t in times.items()}


def update_only(
    sizes: list[str],
    names: list[str],
    precisions: list[str],
    rounds: int,
    warmup: int,
    device: torch.device,
    hidden: int,
    bar: tqdm,
    compiled: bool = False,
    alternating: Sequence[int] = (),
    batches: dict[str, int] | None = None,
    graph: bool = False,
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Per size, precision and combiner: ms per update, updates/s, ratio to ``mean`` in the same precision, speed-up
    over fp32 (same combiner), kind. All agents of a size are timed interleaved, round by round.

    :param compiled: also time ``mean`` with ``agent.compile`` (row ``mean+compile``).
    :param alternating: also time Pascal et al.'s alternating schedule with groups of each of these many tasks (one
        shared Adam; row ``alternating_g<size>``, kind ``schedule``), where the size divides K.
    :param batches: a batch per size instead of the size's own (``SIZES``).
    :param graph: also time ``mean`` with its update captured (``agent.graph on``: one compiled graph on a CPU, CUDA
        graphs on a GPU; row ``mean+graph``, its compilation in the warm-up rounds).
    """
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for size in sizes:
        k, batch = SIZES[size][0], (batches or {}).get(size, SIZES[size][1])
        data, noise = make_batch(k, batch, device)
        fns: dict[str, Callable[[], Any]] = {}
        for precision in precisions:
            rows: dict[str, dict[str, Any]] = {name: {} for name in names}
            if compiled:
                rows["mean+compile"] = {"agent.compile": True}
            if graph:
                rows["mean+graph"] = {"agent.graph": "on"}
            for g in alternating:
                if k % g == 0:
                    rows[f"alternating_g{g}"] = {"agent.schedule": "alternating", "agent.group_size": g}
            for row, extra in rows.items():
                name = "mean" if row.startswith("alternating_g") else row.split("+")[0]
                agent = make_agent(name, k, batch, device, hidden, **extra, **{"agent.precision": precision})
                fns[f"{precision}/{row}"] = partial(agent.update, data, noise=noise)
                if row.endswith("+graph"):  # compile (and on a GPU record the graphs) before any timing
                    for _ in range(3):
                        fns[f"{precision}/{row}"]()
        med = _interleaved(fns, rounds, warmup, device, bar)
        out[size] = {}
        for precision in precisions:
            base = med[f"{precision}/mean"]
            out[size][precision] = {
                row: {
                    "ms": 1000 * med[key],
                    "updates_per_s": 1 / med[key],
                    "ratio": med[key] / base,
                    "speedup_over_fp32": med[f"fp32/{row}"] / med[key] if f"fp32/{row}" in med else None,
                    "kind": _kind(row),
                }
                for key in med
                if key.startswith(f"{precision}/") and (row := key.split("/", 1)[1])
            }
    return out


def _kind(row: str) -> str:
    """The kind of an update-table row: the combiner's, or ``schedule`` for the alternating rows."""
    return "schedule" if row.startswith("alternating_g") else COMBINERS[row.split("+")[0]].kind


class _Spaces(gym.Env):
    observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)


def versus_sb3(
    batch: int, precisions: list[str], rounds: int, warmup: int, device: torch.device, hidden: int, bar: tqdm
) -> dict[str, Any]:
    """K=1: our replay sample + update (in each precision) against SB3's ``SAC.train(gradient_steps=1)`` (float32),
    same networks, batch and device, interleaved."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    arch = [hidden] * 3
    sb3 = SAC("MlpPolicy", _Spaces(), policy_kwargs={"net_arch": arch}, batch_size=batch, device=device, seed=0)
    sb3.set_logger(Logger(folder=None, output_formats=[]))
    assert sb3.replay_buffer is not None
    buffer = MultiTaskReplay(1, OBS, ACT, 4 * batch, batch, device=device, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(4 * batch):
        obs, next_obs = rng.normal(size=(2, 1, OBS)).astype(np.float32)
        act, rew = rng.uniform(-1, 1, (1, ACT)).astype(np.float32), rng.normal(size=1)
        sb3.replay_buffer.add(obs, next_obs, act, rew, np.zeros(1), [{}])
        buffer.add(obs, act, rew, next_obs, np.zeros(1, dtype=bool))
    fns: dict[str, Callable[[], Any]] = {"sb3": lambda: sb3.train(gradient_steps=1, batch_size=batch)}
    for precision in precisions:
        ours = make_agent(
            "mean", 1, batch, device, hidden, **{"agent.conditioning": "none", "agent.precision": precision}
        )
        fns[precision] = partial(lambda agent: agent.update(buffer.sample()), ours)
    med = _interleaved(fns, rounds, warmup, device, bar)
    return {
        "batch": batch,
        "sb3_updates_per_s": 1 / med["sb3"],
        "ours": {p: {"updates_per_s": 1 / med[p], "ratio": med["sb3"] / med[p]} for p in precisions},
    }


def training(
    benchmarks: Sequence[str],
    names: list[str],
    precisions: list[str],
    vectors: Sequence[str],
    steps: int,
    device: str,
    threads: int,
    done: Callable[[dict[str, Any]], None] = lambda out: None,
    graph: bool = False,
) -> dict[str, Any]:
    """Vector steps/s of the real training loop (median of ``train/sps`` after warm-up) per benchmark, env vector
    strategy, precision and combiner: ``{bench: {"sync/fp32/mean": steps_per_s, ...}}``; ``done(out)`` after each.
    ``graph``: also ``mean`` with its update captured (``.../mean+graph``)."""
    from mtrl.runs.scalars import read_scalars
    from mtrl.runs.tensorboard import SPS
    from mtrl.train import train

    warmup = 200
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bench in benchmarks:
            for vector in vectors:
                for precision in precisions:
                    for name in [*names, *(["mean+graph"] if graph else [])]:
                        k = SIZES[bench][0]
                        key = f"{vector}/{precision}/{name}"
                        items = {
                            **load_yaml(CONFIGS / f"{bench.lower()}_unitary.yaml"),
                            **_combiner_flat(name.split("+")[0], k),
                            "agent.graph": "on" if name.endswith("+graph") else "off",
                            "total_steps": warmup + steps, "warmup_steps": warmup, "eval_interval": 0,
                            "eval_episodes": 1, "log_interval": 50, "checkpoint_interval": warmup + steps,
                            "run_dir": tmp, "run_name": f"{bench}_{key.replace('/', '_')}", "device": device,
                            "threads": threads, "env.vector_strategy": vector, "agent.precision": precision,
                        }  # fmt: skip
                        run = train(from_flat(items), progress=True)
                        df = read_scalars(run)
                        sps = df[(df.tag == SPS) & (df.step > warmup + 50)].value
                        out.setdefault(bench, {})[key] = float(np.median(sps))
                        done(out)
    return out


def make_group(name: str, seeds: int, k: int, batch: int, device: torch.device, hidden: int, **extra: Any) -> MTSAC:
    """A seed group of ``seeds`` MT-SAC agents (seeds 1..N) as :func:`make_agent` builds one."""
    from mtrl.agents.build import make_group_agent

    flat = _agent_flat(name, k, batch, hidden, extra)
    return make_group_agent([from_flat({**flat, "seed": s}) for s in range(1, seeds + 1)], OBS, ACT, k, device)


def seed_groups(
    ns: list[int], names: list[str], rounds: int, warmup: int, device: torch.device, hidden: int, bar: tqdm
) -> dict[str, dict[str, dict[str, float]]]:
    """The MT10-size update (K=10, batch 1280 per seed) of a seed group of N seeds against N one-seed updates, in the
    same process, interleaved round by round: ``{combiner: {N: {group_ms, solo_ms (one seed), ratio (group / N
    solo updates), per_seed (group / one solo update)}}}``."""
    k, batch = SIZES["MT10"]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        data, noise = make_batch(k, batch, device)
        fns: dict[str, Callable[[], Any]] = {}
        solo = make_group(name, 1, k, batch, device, hidden)
        fns["solo"] = partial(solo.update, data, noise=noise)
        for n in ns:
            group = make_group(name, n, k, batch, device, hidden)
            stacked = ReplayBatch(*(_stack(x, n) for x in data))
            group_noise = (_stack(noise[0], n), _stack(noise[1], n))
            fns[f"group{n}"] = partial(group.update, stacked, noise=group_noise)
        med = _interleaved(fns, rounds, warmup, device, bar)
        out[name] = {
            str(n): {
                "group_ms": 1000 * med[f"group{n}"],
                "solo_ms": 1000 * med["solo"],
                "ratio": med[f"group{n}"] / (n * med["solo"]),
                "per_seed": med[f"group{n}"] / med["solo"],
            }
            for n in ns
        }
    return out


def _stack(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` copies of ``x`` along a new leading seed axis."""
    return x.expand(n, *x.shape).contiguous()


def seed_training(
    bench: str, ns: list[int], steps: int, device: str, threads: int, vector: str, graph: str = "off"
) -> dict[str, dict[str, float]]:
    """Vector steps/s of the real training loop (``mean``, the benchmark's unitary preset) for a seed group of each
    N in ``ns``: ``{N: {steps_per_s (of each run), summed (N x that), ratio (summed over one run's)}}``."""
    from mtrl.runs.scalars import read_scalars
    from mtrl.runs.tensorboard import SPS
    from mtrl.train import train_group

    warmup = 200
    sps: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in dict.fromkeys([1, *ns]):
            items = {
                **load_yaml(CONFIGS / f"{bench.lower()}_unitary.yaml"),
                "total_steps": warmup + steps, "warmup_steps": warmup, "eval_interval": 0, "eval_episodes": 1,
                "log_interval": 50, "checkpoint_interval": warmup + steps, "run_dir": tmp, "run_name": f"{bench}_n{n}",
                "device": device, "threads": threads, "env.vector_strategy": vector, "seeds": list(range(1, n + 1)),
                "agent.graph": graph,
            }  # fmt: skip
            runs = train_group(from_flat(items), progress=True)
            df = read_scalars(runs[0])
            sps[n] = float(np.median(df[(df.tag == SPS) & (df.step > warmup + 50)].value))
    return {str(n): {"steps_per_s": sps[n], "summed": n * sps[n], "ratio": n * sps[n] / sps[1]} for n in ns}


def print_seed_groups(rows: dict[str, dict[str, dict[str, float]]], training: dict[str, Any]) -> None:
    print("\nseed groups, MT10-size update (K=10, batch 1280 per seed), a group of N seeds against N one-seed updates:")
    print(f"  {'combiner':<12}{'N':>4}{'group ms':>11}{'1 seed ms':>11}{'group / N x 1':>15}{'group / 1':>11}  target")
    for name, by_n in rows.items():
        for n, row in by_n.items():
            target = "CPU: <= 1 (no regression); GPU: <= 2 at N=5"
            print(
                f"  {name:<12}{n:>4}{row['group_ms']:>11.1f}{row['solo_ms']:>11.1f}{row['ratio']:>15.2f}"
                f"{row['per_seed']:>11.2f}  {target}"
            )
    for bench, by_n in training.items():
        print(f"\nseed groups, training {bench} (mean): vector steps/s of each run, summed over the group, vs one run")
        for n, row in by_n.items():
            print(
                f"  N={n:<3}{row['steps_per_s']:>9.2f} per run{row['summed']:>10.2f} summed"
                f"{row['ratio']:>7.2f}x one run"
            )
        print("  target (GPU): summed >= 4x one run")


def checkpoints(sizes: list[str], device: torch.device, hidden: int, bar: tqdm) -> dict[str, dict[str, float]]:
    """Size (MB) and write and read seconds of one checkpoint unit (agent with its optimizers, and the replay) at
    each benchmark size with the presets' 1M-transition replay, empty (just after the first step) and full."""
    from mtrl.runs import checkpoint

    out: dict[str, dict[str, float]] = {}
    for size in sizes:
        k, batch = SIZES[size]
        agent = make_agent("mean", k, batch, device, hidden)
        replay = MultiTaskReplay(k, OBS, ACT, 1_000_000, batch, device=device)
        row = np.zeros((k, OBS), np.float32), np.zeros((k, ACT), np.float32), np.zeros(k, np.float32)
        replay.add(row[0], row[1], row[2], row[0], row[2])
        for fill in ("empty", "full"):
            if fill == "full":
                replay.size, replay.pos = replay.per_task, 0  # every row counts as written
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                unit = checkpoint.save(Path(tmp), 1, {"agent": agent.state_dict()}, replay.state_dict())
                wrote = time.perf_counter() - t0
                mb = sum(f.stat().st_size for f in unit.iterdir()) / 1e6
                t0 = time.perf_counter()
                checkpoint.load_buffer(unit / checkpoint.STATE, 1)
                read = time.perf_counter() - t0
            out[f"{size} {fill}"] = {"mb": round(mb, 2), "write_s": round(wrote, 3), "read_s": round(read, 3)}
            bar.update(1)
    return out


def print_checkpoints(rows: dict[str, dict[str, float]]) -> None:
    print("\ncheckpoint unit (agent + optimizers + 1M-transition replay): size, write, replay read")
    for key, row in rows.items():
        print(f"  {key:<12}{row['mb']:>10.1f} MB{row['write_s']:>9.2f} s write{row['read_s']:>8.2f} s read")


def machine_kernels(device: torch.device) -> dict[str, Any]:
    """What the matmul kernels can use here: the CPU's vector extensions (AVX2, AVX-512, AVX512-BF16, AMX) as the
    kernel sees them, torch's dispatch level, and on CUDA the GPU's compute capability and bf16 support."""
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    info: dict[str, Any] = {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_bf16" in flags or "amx_tile" in flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.type == "cuda":
        info["cuda_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["cuda_bf16"] = torch.cuda.is_bf16_supported()
    return info


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    return f"{model}, {torch.get_num_threads()} threads"


def print_tables(result: dict[str, Any]) -> None:
    print(f"\ndevice: {result['device']} ({result['device_name']}), torch {result['torch']}")
    kernels = result.get("kernels", {})
    if kernels:
        cells = ", ".join(f"{k} {'yes' if v is True else 'no' if v is False else v}" for k, v in kernels.items())
        print(f"matmul kernels: {cells}")
    for size, by_precision in result.get("update", {}).items():
        k, batch = SIZES[size][0], result.get("batches", {}).get(size, SIZES[size][1])
        print(f"\nupdate only, {size} size (K={k}, batch {batch}, 3x{result['hidden']}):")
        head = f"  {'precision':<10}{'combiner':<18}{'kind':<10}{'ms':>9}{'updates/s':>11}{'x mean':>8}{'vs fp32':>9}"
        print(head + "  target")
        for precision, rows in by_precision.items():
            for name, row in rows.items():
                target = ""
                if row["kind"] == "gradient":
                    ok = row["ratio"] <= TARGETS[size]
                    target = f"<= {TARGETS[size]}x mean: {'met' if ok else 'NOT met'}"
                elif precision == "bf16" and name == "mean" and size == "MT10":
                    target = f">= {BF16_TARGET}x fp32 on CPUs with AVX512-BF16"
                speedup = f"{row['speedup_over_fp32']:.2f}x" if row["speedup_over_fp32"] is not None else "-"
                print(
                    f"  {precision:<10}{name:<18}{row['kind']:<10}{row['ms']:>9.1f}{row['updates_per_s']:>11.2f}"
                    f"{row['ratio']:>8.2f}{speedup:>9}  " + target
                )
    for row in result.get("sb3", []):
        sb3 = f"SB3 {row['sb3_updates_per_s']:.2f} updates/s"
        print(f"\nK=1 vs stable-baselines3 SAC (float32), batch {row['batch']}: {sb3}")
        for precision, ours in row["ours"].items():
            ok = "met" if ours["ratio"] >= SB3_TARGET else "NOT met"
            print(
                f"  ours {precision}: {ours['updates_per_s']:.2f} updates/s, ratio {ours['ratio']:.2f}x "
                f"(target >= {SB3_TARGET}x: {ok})"
            )
    print_training(result.get("training", {}))


def print_training(training: dict[str, dict[str, float]]) -> None:
    for bench, row in training.items():
        print(f"\ntraining {bench} (collect + update), vector steps/s (env vector strategy / precision / combiner):")
        for key, sps in row.items():
            print(f"  {key:<28}{sps:>8.2f}")
        if bench == "MT10":
            print("  targets for mean: >= 300 on one H100 with 16 cores, >= 21 on a 2-core CPU")


@dataclass(frozen=True)
class BenchArgs:
    """Throughput of MT-SAC, measured side by side in one process (see the module documentation of mtrl.bench)."""

    sizes: tuple[Literal["MT10", "MT50"], ...] = ("MT10", "MT50")
    """Update sizes."""
    combiners: tuple[str, ...] = tuple(n for n, c in COMBINERS.items() if c.kind == "gradient")
    """Combiners besides mean (default: every gradient-space one)."""
    rounds: int = 7
    """Timed rounds per measurement; the median is reported."""
    warmup: int = 2
    """Untimed rounds first."""
    sb3_batch: tuple[int, ...] = (256, 1280)
    """K=1 batches against stable-baselines3 (none given: skipped)."""
    train: bool = False
    """Also time the real training loop (builds Meta-World)."""
    checkpoint: bool = False
    """Also time writing and reading a checkpoint unit at each size, replay empty and full (writes up to ~0.4 GB in
    a temporary folder)."""
    train_benchmarks: tuple[Literal["MT10", "MT50"], ...] = ("MT10",)
    """Benchmarks of the training measurement."""
    train_combiners: tuple[str, ...] = ("mean",)
    """Combiners to train with."""
    train_steps: int = 300
    """Timed training steps, after 200 warm-up steps."""
    compile: bool = False
    """Also time mean with agent.compile (torch.compile)."""
    graph: bool = False
    """Also time mean with its whole update captured (agent.graph on; row mean+graph)."""
    precisions: tuple[Literal["fp32", "bf16", "tf32"], ...] = ("fp32", "bf16")
    """Network precisions timed side by side (agent.precision); tf32 on CUDA only."""
    train_vector: tuple[Literal["sync", "async"], ...] = ("sync",)
    """Env vector strategies of the training measurement (async: the sub-envs in worker processes)."""
    device: str = "auto"
    """auto (cuda if available), cpu or cuda."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    hidden: int = 400
    """Width of the 3 hidden layers (400: the MT10 literature's networks; small values for quick checks)."""
    seeds: tuple[int, ...] = ()
    """Seed groups: instead of the per-combiner tables, time the MT10-size update of a group of N seeds against N
    one-seed updates for each N given (e.g. --seeds 1 2 4 8), for mean and --seeds-combiners; with --train, the
    summed vector steps/s of a group against one run."""
    seeds_combiners: tuple[str, ...] = ("pcgrad",)
    """Combiners besides mean of the seed-group measurement."""
    alternating: tuple[int, ...] = ()
    """Also time Pascal et al.'s alternating schedule (agent.schedule alternating, one shared Adam) with groups of
    each of these many tasks, at the sizes whose K it divides (e.g. --alternating 1 10)."""
    batch: int = 0
    """Batch of the update tables at every size (0: each size's own, 1280 at MT10 and 1250 at MT50; the MT50 preset
    trains with 6400)."""
    json: str = "bench.json"
    """Write the results here."""


def _with_mean(names: list[str]) -> list[str]:
    """``mean`` (the baseline every ratio refers to) first, then the other names."""
    return ["mean"] + [n for n in names if n != "mean"]


def cli(argv: list[str]) -> int:
    args = parse(BenchArgs, argv, prog="mtrl bench", description=DESCRIPTION, flags=True, hyphens=True)
    for name in [*args.combiners, *args.train_combiners]:
        if name not in COMBINERS:
            raise ConfigError(f"--combiners: got '{name}', expected some of {', '.join(COMBINERS)}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device: got '{args.device}', expected auto, cpu or cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device: got 'cuda', but torch sees no CUDA device here; expected cpu or auto")
    for key in ("rounds", "train_steps", "hidden"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')}: got {getattr(args, key)}, expected a positive integer")
    for key in ("warmup", "threads"):
        if getattr(args, key) < 0:
            raise ConfigError(f"--{key}: got {getattr(args, key)}, expected an integer >= 0")
    if any(b < 2 for b in args.sb3_batch):
        raise ConfigError(f"--sb3-batch: got {list(args.sb3_batch)}, expected batch sizes >= 2")
    if "tf32" in args.precisions and not (args.device != "cpu" and torch.cuda.is_available()):
        raise ConfigError("--precisions: got tf32, which needs a CUDA device; expected fp32 or bf16 here")
    if "fp32" not in args.precisions:
        raise ConfigError(f"--precisions: got {' '.join(args.precisions)}, expected fp32 among them (the reference)")
    if any(g < 1 for g in args.alternating):
        raise ConfigError(f"--alternating: got {' '.join(map(str, args.alternating))}, expected group sizes >= 1")
    if args.batch < 0:
        raise ConfigError(f"--batch: got {args.batch}, expected 0 (each size's own) or a batch size")
    for size in args.sizes if args.batch else ():
        if args.batch < SIZES[size][0]:
            raise ConfigError(f"--batch: got {args.batch}, expected 0 or at least {SIZES[size][0]} (one row per task)")
    if any(n < 1 for n in args.seeds):
        raise ConfigError(f"--seeds: got {' '.join(map(str, args.seeds))}, expected group sizes >= 1")
    for name in args.seeds_combiners:
        if name not in COMBINERS:
            raise ConfigError(f"--seeds-combiners: got '{name}', expected some of {', '.join(COMBINERS)}")
    json_path = Path(args.json)
    check_output_file(json_path, "--json")
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    names = _with_mean(list(args.combiners))
    precisions: list[str] = list(dict.fromkeys(args.precisions))
    alternating = list(dict.fromkeys(args.alternating))
    rows = (len(names) + args.compile + args.graph + len(alternating)) * len(precisions)
    total = (args.rounds + args.warmup) * (rows * len(args.sizes) + (1 + len(precisions)) * len(args.sb3_batch))
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hidden": args.hidden,
        "kernels": machine_kernels(device),
        "command": "mtrl bench " + " ".join(argv),
    }
    if args.batch:
        result["batches"] = {size: args.batch for size in args.sizes}
    if args.seeds:
        ns = list(dict.fromkeys(args.seeds))
        seed_names = _with_mean(list(args.seeds_combiners))
        total = (args.rounds + args.warmup) * (len(ns) + 1) * len(seed_names)
        with tqdm(total=total, desc="bench", unit="update", dynamic_ncols=True, file=sys.stderr) as bar:
            result["seed_groups"] = seed_groups(ns, seed_names, args.rounds, args.warmup, device, args.hidden, bar)
        result["seed_training"] = {}
        if args.train:
            vector = args.train_vector[0]
            for bench in args.train_benchmarks:
                result["seed_training"][bench] = seed_training(
                    bench, ns, args.train_steps, str(device), args.threads, vector
                )
                if args.graph:
                    result["seed_training"][f"{bench}+graph"] = seed_training(
                        bench, ns, args.train_steps, str(device), args.threads, vector, "on"
                    )
        print(f"\ndevice: {result['device']} ({result['device_name']}), torch {result['torch']}")
        print_seed_groups(result["seed_groups"], result["seed_training"])
        _write(json_path, result)
        return 0
    with tqdm(total=total, desc="bench", unit="update", dynamic_ncols=True, file=sys.stderr) as bar:
        result["update"] = update_only(
            list(args.sizes), names, precisions, args.rounds, args.warmup, device, args.hidden, bar, args.compile,
            alternating, result.get("batches"), args.graph,
        )  # fmt: skip
        result["sb3"] = [
            versus_sb3(b, precisions, args.rounds, args.warmup, device, args.hidden, bar) for b in args.sb3_batch
        ]
    if args.checkpoint:
        with tqdm(total=2 * len(args.sizes), desc="checkpoint", unit="unit", file=sys.stderr) as bar:
            result["checkpoint"] = checkpoints(list(args.sizes), device, args.hidden, bar)
    print_tables(result)
    if args.checkpoint:
        print_checkpoints(result["checkpoint"])
    _write(json_path, result)  # the update and SB3 figures are kept even if the (long) training part is cut short
    if args.train:
        train_names = _with_mean(list(args.train_combiners))
        benchmarks = list(args.train_benchmarks)
        vectors = list(dict.fromkeys(args.train_vector))

        def keep(partial: dict[str, Any]) -> None:
            json_path.write_text(json.dumps({**result, "training": partial}, indent=2))

        result["training"] = training(
            benchmarks, train_names, precisions, vectors, args.train_steps, str(device), args.threads, keep, args.graph
        )
        print_training(result["training"])
        _write(json_path, result)
    return 0


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")
