"""The expected cost of a sweep (the studies in configs/sweeps/) in device-hours, from ``mtrl bench`` figures.

Each run's time is its training steps times the time of one vector step, plus its evaluations:

    step(method) = t_env + updates_per_step * t_update(mean) * ratio(method)
    t_env        = 1 / steps_per_s(mean) - updates_per_step * t_update(mean)
    eval         = evaluations * eval_episodes * max_episode_steps * t_env

with ``steps_per_s(mean)`` from ``mtrl bench --train`` (or ``--seeds 1 --train``) on the spec's benchmark and
``t_update(mean)`` and each method's ``ratio`` (its update over mean's, side by side in one run) from the update
table of ``mtrl bench`` at the spec's benchmark and batch (``--batch`` for MT50's 6400; ``--alternating G`` for the
alternating schedule's groups of G tasks). An evaluation step is costed as an env step (its one actor forward is
left out). A method whose ratio the figures lack is costed as mean and named in the output.

Without a GPU update table, ``--assume gradient=1.7:2.2`` costs every method of a kind (loss, gradient, schedule)
with a range of ratios instead, e.g. the ranges measured on a GPU and written in docs/benchmarks.md; ``--steps-per-s``
and ``--update-ms`` give mean's figures by hand for the same reason. Everything taken from where is printed.

    python scripts/study_cost.py configs/sweeps/mt10_study.yaml --bench bench_mt10.json
    python scripts/study_cost.py configs/sweeps/mt10_study.yaml --steps-per-s 59.2 --update-ms 11.1 \\
        --assume loss=1 gradient=1.7:2.2 schedule=10 --device "one H200 (docs/benchmarks.md)"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mtrl.config import TrainConfig
from mtrl.mto import COMBINERS
from mtrl.sweep import Run, load_spec


def bench_figures(paths: list[str], bench: str) -> dict[str, Any]:
    """mean's steps/s and update ms, the update ratios and the batch of ``bench`` from ``mtrl bench`` JSON files
    (a later file's figures replace an earlier one's)."""
    out: dict[str, Any] = {"ratios": {}, "sources": []}
    for path in paths:
        data = json.loads(Path(path).read_text())
        table = data.get("update", {}).get(bench, {}).get("fp32")
        if table:
            out["update_ms"] = table["mean"]["ms"]
            out["ratios"] = {name: row["ratio"] for name, row in table.items()}
            out["batch"] = data.get("batches", {}).get(bench)
            out["sources"].append(f"update: {path} ({data.get('command', '?')})")
        sps = data.get("training", {}).get(bench, {}).get("sync/fp32/mean")
        sps = sps or data.get("seed_training", {}).get(bench, {}).get("1", {}).get("steps_per_s")
        if sps:
            out["steps_per_s"] = sps
            out["sources"].append(f"training: {path} ({data.get('command', '?')})")
        out["device"] = f"{data.get('device_name', data.get('device', '?'))}, kernels {data.get('kernels', {})}"
    return out


def row_of(cfg: TrainConfig) -> tuple[str, str]:
    """A run's row in the bench update table and its kind."""
    if cfg.agent.schedule == "alternating":
        return f"alternating_g{cfg.agent.group_size}", "schedule"
    name = cfg.combiner.name
    return name, COMBINERS[name].kind


def run_hours(cfg: TrainConfig, t_env: float, t_update: float, ratio: float) -> float:
    steps = cfg.total_steps * (t_env + cfg.updates_per_step * t_update * ratio)
    evaluations = cfg.total_steps // cfg.eval_interval if cfg.eval_interval else 0
    episode = cfg.env.max_episode_steps or 500
    return (steps + evaluations * cfg.eval_episodes * episode * t_env) / 3600


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--bench", nargs="*", default=[], help="mtrl bench JSON files (update tables, training)")
    parser.add_argument("--steps-per-s", type=float, help="mean's training vector steps/s (instead of --bench)")
    parser.add_argument("--update-ms", type=float, help="mean's update in ms (instead of --bench)")
    parser.add_argument("--assume", nargs="*", default=[], help="KIND=LO[:HI] ratios for a kind (loss, gradient, "
                        "schedule) instead of the measured per-method ratios")  # fmt: skip
    parser.add_argument("--device", default="", help="what the figures were measured on (printed)")
    args = parser.parse_args(argv)
    assume: dict[str, tuple[float, float]] = {}
    for item in args.assume:
        kind, _, value = item.partition("=")
        lo, _, hi = value.partition(":")
        assume[kind] = (float(lo), float(hi or lo))
    for spec in args.specs:
        sweep = load_spec(spec, threads=1)
        first = sweep.runs[0].cfg
        bench = str(first.env.benchmark)
        figures = bench_figures(args.bench, bench)
        sps = args.steps_per_s or figures.get("steps_per_s")
        t_update = (args.update_ms or figures.get("update_ms") or 0) / 1000
        if not sps or not t_update:
            print(f"{spec}: no steps/s or update ms for {bench} (give --bench or --steps-per-s and --update-ms)")
            return 2
        t_env = max(1 / sps - first.updates_per_step * t_update, 0.0)
        print(f"\n{spec}: {len(sweep.runs)} runs, {bench}, {first.total_steps:,} steps each")
        print(f"  figures: {args.device or figures.get('device', 'given by hand')}")
        for source in figures["sources"]:
            print(f"    {source}")
        batch = figures.get("batch")
        if batch and batch != first.buffer.batch_size or not batch and args.bench and bench == "MT50":
            print(f"  note: the update table's batch ({batch or 'bench default'}) is not the spec's "
                  f"({first.buffer.batch_size})")  # fmt: skip
        print(f"  mean: {sps:.2f} vector steps/s, update {1000 * t_update:.1f} ms, env and the rest "
              f"{1000 * t_env:.1f} ms per step")  # fmt: skip
        methods: dict[str, list[Run]] = {}
        for run in sweep.runs:
            methods.setdefault(run.method, []).append(run)
        total = [0.0, 0.0]
        missing = []
        print(f"  {'method':<16}{'row':<18}{'ratio':>12}{'h per run':>14}{'runs':>6}")
        for method, runs in methods.items():
            row, kind = row_of(runs[0].cfg)
            if kind in assume:
                lo, hi = assume[kind]
            elif row == "mean":
                lo = hi = 1.0
            elif row in figures["ratios"]:
                lo = hi = figures["ratios"][row]
            else:
                lo = hi = 1.0
                missing.append(row)
            hours = [run_hours(runs[0].cfg, t_env, t_update, r) for r in (lo, hi)]
            total[0] += hours[0] * len(runs)
            total[1] += hours[1] * len(runs)
            ratio = f"{lo:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
            cost = f"{hours[0]:.1f}" if lo == hi else f"{hours[0]:.1f}-{hours[1]:.1f}"
            print(f"  {method:<16}{row:<18}{ratio:>12}{cost:>14}{len(runs):>6}")
        spread = f"{total[0]:,.0f}" if total[0] == total[1] else f"{total[0]:,.0f}-{total[1]:,.0f}"
        print(f"  total: {spread} device-hours, one run per device at a time")
        if missing:
            print(f"  costed as mean (no figure): {', '.join(dict.fromkeys(missing))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
