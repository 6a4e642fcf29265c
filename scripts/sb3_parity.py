"""Learning parity of our MT-SAC with stable-baselines3's SAC on single Meta-World tasks (MT1).

For each task and seed this runs, one after the other, our agent (``agent.kind mtsac``, combiner ``mean``) and
SB3's ``SAC`` (``agent.kind single_task``, :mod:`mtrl.single_task`: SB3's update inside our training loop, on our
env, with our evaluator) on ``MT1-<task>`` with the same settings, then prints the evaluation curves side by side
and the final success of each agent (:func:`mtrl.compare.final_success`: the evaluations in the last 10% of the
steps). Each run is its own process (``mtrl.train.train`` with the process settings of ``mtrl train``), one at a
time; a run whose directory already holds its final evaluation under the same config is skipped, so the script can
be stopped and started again.

    python scripts/sb3_parity.py [--tasks T ...] [--seeds 1] [--steps 25000] [--eval-interval 2500]
        [--eval-episodes 10] [--warmup-steps 2000] [--out /tmp/sb3_parity] [--threads 1]

Settings of both agents: SB3's default ``MlpPolicy`` size (2x256 ReLU actor and twin critic, separate networks),
PyTorch's default ``nn.Linear`` initialisation, Adam (lr 3e-4, eps 1e-8, no weight decay, no gradient clipping)
for actor, critic and temperature, gamma 0.99, tau 0.005 (target update after every gradient step), learned
temperature starting at 1 with target entropy -|A| and the loss -log(alpha) (log pi + target), log-std clamped to
[-20, 2], replay of 1e6 transitions sampled uniformly with replacement, batch 256, time-limit ends bootstrapped,
``--warmup-steps`` uniform random actions (the same draws: both loops take them from the run's seed), then one
update per env step; the official protocol (a new goal of the 50 each training episode, 500-step episodes) and the
same evaluation (our evaluator, the run's goals in the same order, ``--eval-episodes`` episodes, sync). Our agent
runs with ``agent.conditioning none``: its default one-hot would add a constant input feature with one task. Before
training, the script builds both agents and prints these settings as each one is actually configured.

Differences that remain (not settable from the config):

- log-density of the tanh squashing: SB3 subtracts ``log(1 - tanh(u)^2 + 1e-6)``, ours the exact
  ``log(1 - tanh(u)^2)`` (:func:`mtrl.nets.squash_log_prob`); they differ only for nearly saturated actions, where
  SB3's log pi is bounded and ours is not;
- random streams: network initialisation, policy noise and replay sampling come from different generators (ours:
  ``torch.manual_seed(seed)`` and the agent's and buffer's own generators; SB3: its global RNGs seeded with
  ``seed * 1000``), so the same seed does not give the same networks or batches; the warm-up actions and the
  environments are the same;
- the actor's output layer is one ``Linear(256, 2|A|)`` split into mean and log-std in ours, two ``Linear(256, |A|)``
  in SB3: the same function class and initial distribution (both fan-in 256);
- ours steps fused ``AdamW`` with weight decay 0, SB3 ``Adam``: the same update up to float rounding.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mtrl  # noqa: F401  # before torch: sets OMP_WAIT_POLICY as `mtrl train` does

DEFAULT_TASKS = ("drawer-close-v3", "plate-slide-v3", "button-press-topdown-v3")
"""Easy Meta-World tasks (besides reach-v3). A quick check (SB3 SAC, these settings, 10k steps, seed 1): drawer-close
succeeded from 7.5k steps; plate-slide and button-press-topdown had rising returns but no success yet, window-open
a flat return. In the 25k-step parity runs plate-slide was not learned by either agent (SB3: 0.2 and 0.5 at two
single evaluations), so a more learnable third task would make a stronger check."""
AGENTS = {"mtsac": "mtsac", "sb3": "single_task"}
"""Column name -> ``agent.kind``."""
EQUIVALENT = {
    "actor layers": "one output layer split into mean and log-std = two output layers (same fan-in, same init)",
    "actor optimizer": "fused AdamW with weight decay 0 is Adam",
    "critic optimizer": "fused AdamW with weight decay 0 is Adam",
    "temperature optimizer": "fused AdamW with weight decay 0 is Adam",
}
"""Settings whose printed values differ but which compute the same thing (see the module docstring)."""
IGNORED_KEYS = ("threads",)
"""Config keys that may differ between a finished run and this invocation without rerunning it."""


NET = {
    "hidden_dim": 256,
    "num_layers": 2,
    "layer_norm": False,
    "dropout": 0.0,
    "lr": 3e-4,
    "weight_decay": 0.0,
    "max_grad_norm": 0.0,
    "init": "torch",
}
"""Actor and critic settings (``agent.actor.*``, ``agent.critic.*``): SB3's defaults."""


@dataclass(frozen=True)
class RunSpec:
    """One training run of the comparison."""

    task: str
    agent: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.agent}__s{self.seed}"

    def path(self, out: Path) -> Path:
        return out / self.task / self.name


def overrides(spec: RunSpec, args: argparse.Namespace) -> dict[str, Any]:
    """The flat config of one run: everything that matters for parity is set explicitly, defaults included."""
    return {
        "env.benchmark": f"MT1-{spec.task}",
        "env.protocol": "official",
        "env.reward_version": "v2",
        "env.max_episode_steps": 0,
        "env.vector_strategy": "sync",
        "env.eval_goals": "train",
        "seed": spec.seed,
        "total_steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "updates_per_step": 1,
        "eval_interval": args.eval_interval,
        "eval_episodes": args.eval_episodes,
        "eval_mode": "sync",
        "log_interval": 500,
        "checkpoint_interval": args.steps,
        "run_dir": str(args.out / spec.task),
        "run_name": spec.name,
        "device": "cpu",
        "threads": args.threads,
        "agent.kind": AGENTS[spec.agent],
        "agent.conditioning": "none",
        **{f"agent.{net}.{key}": value for net in ("actor", "critic") for key, value in NET.items()},
        "agent.gamma": 0.99,
        "agent.tau": 0.005,
        "agent.temperature": "per_task",
        "agent.init_temperature": 1.0,
        "agent.alpha_lr": 3e-4,
        "agent.adam_eps": 1e-8,
        "agent.log_std": "clamp",
        "agent.alpha_loss": "log_alpha",
        "agent.q_value_max": 0.0,
        "agent.q_target_clip": False,
        "buffer.kind": "stratified",
        "buffer.capacity": 1_000_000,
        "buffer.batch_size": 256,
        "buffer.reward_norm": False,
        "combiner": "mean",
    }


# ----------------------------------------------------------------------------------------------- settings check


def _linears(module: Any) -> list[Any]:
    from torch import nn

    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def _shapes(module: Any) -> str:
    return " ".join(f"{m.in_features}->{m.out_features}" for m in _linears(module))


def _activations(module: Any) -> str:
    from torch import nn

    skip = (nn.Linear, nn.Sequential, nn.ModuleList, nn.Identity, nn.Flatten)
    names = {type(m).__name__ for m in module.modules() if not isinstance(m, skip) and not list(m.children())}
    return ",".join(sorted(names)) or "-"


def _default_init(*modules: Any) -> str:
    """Whether every weight and bias lies within nn.Linear's default bound 1/sqrt(fan_in) (orthogonal, He or Xavier
    initialisation would exceed it)."""
    ok = all(
        float(p.detach().abs().max()) <= 1.0 / math.sqrt(m.in_features) + 1e-7
        for module in modules
        for m in _linears(module)
        for p in (m.weight, m.bias)
    )
    return "within 1/sqrt(fan_in)" if ok else "exceeds 1/sqrt(fan_in)"


def _adam(optimizer: Any) -> str:
    group = optimizer.param_groups[0]
    return (
        f"{type(optimizer).__name__} lr={group['lr']:g} eps={group['eps']:g} betas={tuple(group['betas'])} "
        f"wd={group['weight_decay']:g} amsgrad={group['amsgrad']}"
    )


def settings_table(task: str, args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """Build both agents as the runs configure them and read their settings back: (setting, mtsac, sb3)."""
    import torch
    from stable_baselines3.common.buffers import ReplayBuffer
    from stable_baselines3.sac import policies as sb3_policies

    from mtrl import nets
    from mtrl.agents.build import make_agent
    from mtrl.config import from_flat
    from mtrl.envs import make_env
    from mtrl.single_task import make_model

    cfg = {a: from_flat(overrides(RunSpec(task, a, 1), args)) for a in AGENTS}
    env = make_env(cfg["mtsac"].env, 1)
    obs_dim, act_dim, k = env.obs_dim, env.act_dim, env.num_tasks
    env.close()
    cpu = torch.device("cpu")
    ours = make_agent(cfg["mtsac"], obs_dim, act_dim, k, cpu)
    sb3 = make_model(cfg["sb3"], obs_dim, act_dim, k, 0, cpu)
    actor, critic = sb3.actor, sb3.critic
    ours_cfg, sb3_cfg = cfg["mtsac"], cfg["sb3"]
    dist = actor.action_dist
    rows = [
        ("actor layers", _shapes(ours.actor), f"{_shapes(actor.latent_pi)} mu {_shapes(actor.mu)} "
         f"log_std {_shapes(actor.log_std)}"),
        ("actor parameters", str(sum(p.numel() for p in ours.actor.parameters())),
         str(sum(p.numel() for p in actor.parameters()))),
        ("critic Q networks", str(len([ours.critic.q1, ours.critic.q2])), str(len(critic.q_networks))),
        ("critic layers (each Q)", _shapes(ours.critic.q1), _shapes(critic.q_networks[0])),
        ("critic parameters", str(sum(p.numel() for p in ours.critic.parameters())),
         str(sum(p.numel() for p in critic.parameters()))),
        ("activations", _activations(ours.actor) + " / " + _activations(ours.critic),
         _activations(actor) + " / " + _activations(critic)),
        ("initial weights", _default_init(ours.actor, ours.critic), _default_init(actor, critic)),
        ("actor optimizer", _adam(ours.actor_part.optimizers[0]), _adam(actor.optimizer)),
        ("critic optimizer", _adam(ours.critic_part.optimizers[0]), _adam(critic.optimizer)),
        ("temperature optimizer", _adam(ours.alpha_part.optimizers[0]), _adam(sb3.ent_coef_optimizer)),
        ("gradient clipping", str(ours_cfg.agent.actor.max_grad_norm or ours_cfg.agent.critic.max_grad_norm or "off"),
         "off"),
        ("gamma", f"{ours.gamma:g}", f"{sb3.gamma:g}"),
        ("tau", f"{ours.tau:g}", f"{sb3.tau:g}"),
        ("target update every N updates", "1", str(sb3.target_update_interval)),
        ("initial temperature", f"{float(ours.alpha.log_alpha.detach().exp()[0]):g}",
         f"{float(sb3.log_ent_coef.detach().exp()):g}"),
        ("target entropy", f"{ours.target_entropy:g}", f"{sb3.target_entropy:g}"),
        ("temperature loss", f"-{ours_cfg.agent.alpha_loss} (logp + target)", "-log_alpha (logp + target)"),
        ("log-std bounds", f"[{nets.LOG_STD_MIN:g}, {nets.LOG_STD_MAX:g}] {ours_cfg.agent.log_std}",
         f"[{sb3_policies.LOG_STD_MIN:g}, {sb3_policies.LOG_STD_MAX:g}] "
         f"{'sde' if actor.use_sde else 'clamp'}"),
        ("tanh log-prob epsilon", "0 (exact)", f"{getattr(dist, 'epsilon', 0.0):g}"),
        ("batch size", str(ours_cfg.buffer.batch_size // k), str(sb3.batch_size)),
        ("replay capacity", str(ours_cfg.buffer.capacity // k), str(sb3.buffer_size)),
        ("replay sampling", "uniform with replacement" + (", reward-normalized" if ours_cfg.buffer.reward_norm else ""),
         "uniform with replacement" if type(sb3.replay_buffer) is ReplayBuffer else type(sb3.replay_buffer).__name__),
        ("n-step returns", "1", str(getattr(sb3, "n_steps", 1))),
        ("time-limit ends", "bootstrap", "bootstrap" if sb3.replay_buffer.handle_timeout_termination else "terminal"),
        ("warm-up steps (our loop)", str(ours_cfg.warmup_steps), str(sb3_cfg.warmup_steps)),
        ("updates per env step (our loop)", str(ours_cfg.updates_per_step), str(sb3_cfg.updates_per_step)),
        ("evaluation", f"{ours_cfg.eval_episodes} ep every {ours_cfg.eval_interval}, "
         f"{'in loop' if ours_cfg.eval_mode == 'sync' else ours_cfg.eval_mode}",
         f"{sb3_cfg.eval_episodes} ep every {sb3_cfg.eval_interval}, in loop"),
    ]  # fmt: skip
    return rows


def print_settings(task: str, args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    rows = settings_table(task, args)

    def same(setting: str, a: str, b: str) -> str:
        return "yes" if a == b else "equivalent" if setting in EQUIVALENT else "NO"

    print(f"Settings as the two agents are built (MT1-{task}; the same for every Meta-World task):")
    print_table(["setting", "mtsac", "sb3", "same"], [[s, a, b, same(s, a, b)] for s, a, b in rows])
    for setting, why in EQUIVALENT.items():
        print(f"  equivalent: {setting}: {why}")
    differing = [s for s, a, b in rows if same(s, a, b) == "NO"]
    print(f"settings that differ: {', '.join(differing) if differing else 'none'}\n", flush=True)


# ------------------------------------------------------------------------------------------------------ running


def is_complete(run: Path, items: dict[str, Any]) -> bool:
    """Whether ``run`` holds a finished run of exactly this config (its final evaluation logged)."""
    import yaml

    from mtrl.config import from_flat, to_flat
    from mtrl.runs.scalars import SUCCESS_TAG, read_scalars

    if not (run / "config.yaml").is_file():
        return False
    try:
        saved = to_flat(from_flat(yaml.safe_load((run / "config.yaml").read_text()) or {}))
    except (ValueError, yaml.YAMLError):
        return False
    wanted = to_flat(from_flat(items))
    if any(saved.get(key) != value for key, value in wanted.items() if key not in IGNORED_KEYS):
        return False
    curve = read_scalars(run, keep=lambda tag: tag == SUCCESS_TAG)
    return bool((curve["step"] == items["total_steps"]).any())


def run_one(spec: RunSpec, args: argparse.Namespace) -> float | None:
    """Train one run in a child process unless it is complete (a failure is printed, the next run goes on).

    :returns: the child process's seconds, None when skipped.
    """
    run, items = spec.path(args.out), overrides(spec, args)
    if is_complete(run, items):
        print(f"[skip] {run}: finished already", flush=True)
        return None
    if run.exists():  # unfinished or another config: keep it aside, start afresh
        aside = run.with_name(f"{run.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        run.rename(aside)
        print(f"[moved] unfinished {run} -> {aside}", flush=True)
    log = args.out / "logs" / f"{spec.task}__{spec.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    print(f"[run] {spec.task} {spec.agent} seed {spec.seed} -> {run} (log {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(items)], stdout=f, stderr=subprocess.STDOUT, env=env
        )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        print(f"[failed] {spec.task} {spec.agent} seed {spec.seed} (exit {proc.returncode}): {tail[0]}", flush=True)
        return seconds
    (run / "parity_wall.json").write_text(json.dumps({"process_s": round(seconds, 1)}))
    print(f"[done] {spec.task} {spec.agent} seed {spec.seed}: {seconds:.0f} s", flush=True)
    return seconds


def child(items_json: str) -> int:
    """Train one run in this process, as ``mtrl train --no-progress`` would, plus glibc's malloc setting that our
    loop applies to itself, so both agents run under the same process settings."""
    from mtrl.config import from_flat
    from mtrl.train import train
    from mtrl.utils import keep_freed_memory

    keep_freed_memory()
    items = json.loads(items_json)
    command = "python scripts/sb3_parity.py --child " + items_json
    print(f"run directory: {train(from_flat(items), command=command, progress=False)}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------------------ reporting


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = " | ".join(f"{h:<{w}}" for h, w in zip(header, widths))
    print(line)
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(f"{str(x):<{w}}" for x, w in zip(row, widths)))


def read_curve(run: Path) -> dict[int, float]:
    """``eval/success_rate`` of a run by step (empty when the run has none)."""
    from mtrl.runs.scalars import SUCCESS_TAG, read_scalars

    if not run.is_dir():
        return {}
    df = read_scalars(run, keep=lambda tag: tag == SUCCESS_TAG)
    return {int(s): float(v) for s, v in zip(df["step"], df["value"])}


def run_wall(run: Path) -> tuple[float | None, float | None, int | None]:
    """(training-loop seconds from meta.yaml, child-process seconds, last step reached) of a run."""
    import yaml

    meta = yaml.safe_load((run / "meta.yaml").read_text()) if (run / "meta.yaml").is_file() else {}
    extra = json.loads((run / "parity_wall.json").read_text()) if (run / "parity_wall.json").is_file() else {}
    return meta.get("wall_clock_s") or None, extra.get("process_s"), meta.get("final_step")


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def report(args: argparse.Namespace) -> None:
    """Per task the curves side by side, then final success per task and the wall-clock of every run."""
    import numpy as np

    from mtrl.runs.scalars import final_rule, final_success

    seeds = list(range(1, args.seeds + 1))
    summary: list[list[str]] = []
    walls: list[list[str]] = []
    for task in args.tasks:
        curves = {(a, s): read_curve(RunSpec(task, a, s).path(args.out)) for a in AGENTS for s in seeds}
        steps = sorted({step for c in curves.values() for step in c})
        header, rows = ["step"], []
        for s in seeds:
            header += [f"{a} s{s}" for a in AGENTS]
        if len(seeds) > 1:
            header += [f"{a} mean" for a in AGENTS]
        for step in steps:
            row = [str(step)] + [fmt(curves[a, s].get(step)) for s in seeds for a in AGENTS]
            if len(seeds) > 1:
                for a in AGENTS:
                    vals = [curves[a, s][step] for s in seeds if step in curves[a, s]]
                    row.append(fmt(float(np.mean(vals))) if len(vals) == len(seeds) else "-")
            rows.append(row)
        print(
            f"\n== MT1-{task}: eval/success_rate ({args.eval_episodes} episodes on the run's goals per evaluation) =="
        )
        if rows:
            print_table(header, rows)
        else:
            print("(no evaluations yet)")

        finals: dict[str, list[float]] = {}
        for a in AGENTS:
            finished = [curves[a, s] for s in seeds if args.steps in curves[a, s]]
            finals[a] = [final_success(list(c), list(c.values()), args.steps) for c in finished]
        mean = {a: float(np.mean(v)) if len(v) == len(seeds) else float("nan") for a, v in finals.items()}
        per_seed = {a: ", ".join(fmt(v) for v in finals[a]) for a in AGENTS}
        summary.append(
            [task]
            + [fmt(mean[a]) + (f" ({per_seed[a]})" if len(seeds) > 1 and finals[a] else "") for a in AGENTS]
            + [fmt(mean["mtsac"] - mean["sb3"])]
        )
        for s in seeds:
            for a in AGENTS:
                loop_s, process_s, last = run_wall(RunSpec(task, a, s).path(args.out))
                walls.append([task, a, str(s), str(last or "-"), fmt(loop_s, 0), fmt(process_s, 0)])

    label = "mean over seeds (per seed)" if len(seeds) > 1 else f"seed {seeds[0]}"
    print(f"\n== Final success: {final_rule()}; {label}; '-' = not finished ==")
    print_table(["task", "mtsac final", "sb3 final", "difference (mtsac - sb3)"], summary)
    print("\n== Wall-clock per run (training loop with its evaluations, from meta.yaml; whole child process) ==")
    print_table(["task", "agent", "seed", "last step", "loop s", "process s"], walls)


# ----------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="Meta-World v3 task names (MT1)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 1..N per task and agent")
    parser.add_argument("--steps", type=int, default=25_000, help="environment steps per run")
    parser.add_argument("--eval-interval", type=int, default=2500, help="evaluate every this many steps")
    parser.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation (official goals)")
    parser.add_argument("--warmup-steps", type=int, default=2000, help="uniform random actions before updates")
    parser.add_argument("--out", type=Path, default=Path("/tmp/sb3_parity"), help="folder of the run directories")
    parser.add_argument("--threads", type=int, default=1, help="torch (and BLAS/OpenMP) threads of each run")
    parser.add_argument("--report-only", action="store_true", help="print the tables of the runs there, train none")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child(args.child)
    if args.steps % args.eval_interval:
        print(f"note: --steps {args.steps} is not a multiple of --eval-interval {args.eval_interval}")
    args.out = args.out.resolve()
    t0 = time.perf_counter()
    if not args.report_only:
        print_settings(args.tasks[0], args)
        for seed in range(1, args.seeds + 1):
            for task in args.tasks:
                for agent in AGENTS:
                    run_one(RunSpec(task, agent, seed), args)
    report(args)
    print(f"\ntotal wall time of this invocation: {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
