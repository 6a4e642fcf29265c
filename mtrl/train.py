"""THE training loop: collect -> add -> sample -> update -> log -> evaluate -> checkpoint.

:func:`check_config` is the one place a config is checked as a whole (it knows K) before anything is built, written
or started; :func:`train` runs it first.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mtrl.agents.build import build_combiners, make_group_agent
from mtrl.buffers import MultiTaskReplay, replay_bytes
from mtrl.config import ConfigError, TrainConfig, combiner_name, dump_yaml, from_flat, to_flat
from mtrl.envs import benchmark_kind, benchmark_label, benchmark_num_tasks, eval_seed, make_env
from mtrl.envs.base import StepResult, benchmark_dims, custom_tasks
from mtrl.envs.gl import ensure_gl_backend
from mtrl.evaluate import AsyncEvaluator, EvalResult, evaluate_seeds
from mtrl.nets import mlp_params
from mtrl.runs import checkpoint
from mtrl.runs import tensorboard as tb
from mtrl.runs.checkpoint import CheckpointError
from mtrl.runs.restore import first_line
from mtrl.runs.resume import plan_group_resume
from mtrl.runs.rundir import (
    Interrupted,
    check_output_dir,
    check_run_free,
    prepare_run_dir,
    record_final_success,
    stop_on_signals,
    update_meta,
)
from mtrl.runs.tensorboard import EpisodeLog, add_gif
from mtrl.utils import free_memory, keep_freed_memory, pick_device, set_matmul_precision
from mtrl.video import frames_for_tensorboard

# ------------------------------------------------------------------------------------------------ config checks

_POSITIVE_INT = (
    "total_steps", "updates_per_step", "log_interval", "checkpoint_interval", "eval_episodes", "env.toy_tasks",
    "agent.group_size", "agent.actor.hidden_dim", "agent.actor.num_layers", "agent.critic.hidden_dim",
    "agent.critic.num_layers", "buffer.capacity", "buffer.batch_size",
)  # fmt: skip
_NON_NEGATIVE_INT = ("seed", "warmup_steps", "eval_interval", "video_interval", "threads", "env.max_episode_steps")
_POSITIVE = ("agent.actor.lr", "agent.critic.lr", "agent.alpha_lr", "agent.init_temperature", "agent.adam_eps")
_NON_NEGATIVE = (
    "agent.actor.weight_decay", "agent.critic.weight_decay", "agent.actor.max_grad_norm", "agent.critic.max_grad_norm",
    "agent.q_value_max",
)  # fmt: skip


def _bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}: got {value!r}, expected {allowed}")


def check_config(cfg: TrainConfig) -> int:
    """Check a config as a whole before anything is built, written or started; return K (its number of tasks).

    Ranges of every number (NaN and inf never pass the parser), the benchmark (Meta-World task names included),
    batch size and replay capacity against K, the combiner's options against K and where it may be applied, the
    update schedule, the device, and the run directory (a writable directory, a run name that is one path part).

    :raises ConfigError: one line naming the field, the value given and what is allowed.
    """
    flat = to_flat(cfg)
    for key in _POSITIVE_INT:
        if flat[key] <= 0:
            raise _bad(key, flat[key], "a positive integer")
    for key in _NON_NEGATIVE_INT:
        if flat[key] < 0:
            raise _bad(key, flat[key], "an integer >= 0")
    for key in _POSITIVE:
        if not flat[key] > 0:
            raise _bad(key, flat[key], "a number > 0")
    for key in _NON_NEGATIVE:
        if not flat[key] >= 0:
            raise _bad(key, flat[key], "a number >= 0 (0 = off)")
    for net in ("agent.actor", "agent.critic"):
        if not 0.0 <= flat[f"{net}.dropout"] < 1.0:
            raise _bad(f"{net}.dropout", flat[f"{net}.dropout"], "a probability in [0, 1)")
    if not 0.0 <= cfg.agent.gamma < 1.0:
        raise _bad("agent.gamma", cfg.agent.gamma, "a number in [0, 1)")
    if not 0.0 < cfg.agent.tau <= 1.0:
        raise _bad("agent.tau", cfg.agent.tau, "a number in (0, 1]")
    if not math.isfinite(cfg.agent.init_temperature) or not math.log(cfg.agent.init_temperature) > -100:
        raise _bad("agent.init_temperature", cfg.agent.init_temperature, "a number > 1e-40")

    k = _check_benchmark(cfg)
    if cfg.buffer.kind == "stratified" and cfg.buffer.batch_size % k:
        nearest = k * max(1, round(cfg.buffer.batch_size / k))
        allowed = f"a multiple of the number of tasks ({k}) for stratified replay, e.g. {nearest}"
        raise _bad("buffer.batch_size", cfg.buffer.batch_size, allowed)
    if cfg.buffer.capacity < k:
        raise _bad("buffer.capacity", cfg.buffer.capacity, f"at least one transition per task ({k})")

    if cfg.agent.optimizer_per_group and cfg.agent.regroup:
        raise ConfigError(
            "agent.optimizer_per_group: got true with agent.regroup true; one optimizer per group needs fixed groups"
        )
    if cfg.eval_mode == "async" and cfg.agent.kind == "single_task":
        raise ConfigError(
            "eval_mode: got 'async' with agent.kind single_task, which evaluates in its loop; use auto or sync"
        )
    build_combiners(cfg, k)  # options against K, and where the combiner may be applied
    name = combiner_name(cfg.combiner)
    if cfg.agent.compile and cfg.combiner.kind == "gradient" and (cfg.combine_critic or cfg.combine_actor):
        raise ConfigError(
            f"agent.compile: got true with combiner {name}; torch.compile only works with loss-space combiners "
            "(gradient-space ones take per-task gradients under torch.func.vmap, which it does not trace)"
        )
    if pick_device(cfg.device).type != "cuda" and cfg.agent.precision == "tf32":
        raise ConfigError(
            f"agent.precision: got 'tf32' on device {cfg.device!r}; tf32 needs CUDA, expected fp32 or bf16"
        )
    check_output_dir(cfg.run_dir, "run_dir")
    if cfg.run_name and (Path(cfg.run_name).name != cfg.run_name or cfg.run_name in (".", "..")):
        raise _bad("run_name", cfg.run_name, "a plain name without '/' (the folder is run_dir)")
    return k


def _check_benchmark(cfg: TrainConfig) -> int:
    """K of ``env.benchmark``, its Meta-World task names checked (without building an env)."""
    bench = cfg.env.benchmark
    kind = benchmark_kind(bench)
    if kind is None:
        raise _bad(
            "env.benchmark", bench,
            "toy, MT10, MT50, MT1-<task> (e.g. MT1-reach-v3) or a comma-separated list of Meta-World v3 tasks",
        )  # fmt: skip
    if kind == "custom":
        names = custom_tasks(bench)
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise ConfigError(f"env.benchmark: task {dup!r} is listed twice in {bench!r}; list each task once")
    if kind in ("MT1", "custom"):
        from mtrl.envs.metaworld import task_names  # imports Meta-World (~1 s), builds nothing

        try:
            task_names(bench)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return benchmark_num_tasks(bench, cfg.env.toy_tasks)


def eval_mode(cfg: TrainConfig) -> Literal["sync", "async"]:
    """``cfg.eval_mode`` with ``auto`` resolved: async on Meta-World benchmarks with at least 4 CPU cores, else sync."""
    if cfg.eval_mode != "auto":
        return cfg.eval_mode
    return "async" if cfg.env.benchmark != "toy" and (os.cpu_count() or 1) >= 4 else "sync"


# ------------------------------------------------------------------------------------------------ seed groups


def check_seeds(cfg: TrainConfig) -> None:
    """Check ``cfg.seeds`` (a seed group): distinct seeds >= 0, an MT-SAC agent with the joint schedule.

    :raises ConfigError: one line.
    """
    seeds = list(cfg.seeds)
    if not seeds:
        return
    shown = " ".join(map(str, seeds))
    dup = next((x for i, x in enumerate(seeds) if x in seeds[:i]), None)
    if dup is not None:
        raise ConfigError(f"seeds: got {shown}, seed {dup} is listed twice; list each seed once")
    if min(seeds) < 0:
        raise _bad("seeds", shown, "integers >= 0")
    if cfg.agent.kind == "single_task":
        raise ConfigError(
            f"seeds: got {shown} with agent.kind single_task, which trains one seed per process; use --seed"
        )
    if len(seeds) > 1 and cfg.agent.schedule != "joint":
        raise ConfigError(
            f"seeds: got {shown} with agent.schedule {cfg.agent.schedule}, which a seed group does not support "
            "(its task groups are drawn per update); train one seed per process with --seed"
        )


def member_configs(cfg: TrainConfig, num_tasks: int) -> list[TrainConfig]:
    """The solo configs of the runs a config trains: itself (no ``seeds``), or one per seed of ``seeds``, each with
    its seed, ``seeds`` empty and its run name: ``{benchmark}__{combiner}__s{seed}__{timestamp}`` with one timestamp
    for the group, or ``{run_name}__s{seed}`` where a run name is given."""
    if not cfg.seeds:
        return [cfg]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    prefix = _name_prefix(cfg, num_tasks)
    names = [f"{cfg.run_name}__s{s}" if cfg.run_name else f"{prefix}__s{s}__{stamp}" for s in cfg.seeds]
    return [replace(cfg, seed=s, seeds=(), run_name=n) for s, n in zip(cfg.seeds, names)]


def check_memory(cfgs: list[TrainConfig], num_tasks: int, device: torch.device) -> None:
    """Refuse a run (or seed group) whose replay and networks do not fit in the device's free memory.

    :raises ConfigError: one line with what it needs and what the device has free.
    """
    cfg, seeds = cfgs[0], len(cfgs)
    obs_dim, act_dim = benchmark_dims(cfg.env.benchmark)
    replay = replay_bytes(seeds, num_tasks, cfg.buffer.capacity, obs_dim, act_dim)
    heads = num_tasks if cfg.agent.conditioning == "multi_head" else 1
    extra = num_tasks if cfg.agent.conditioning == "one_hot" else 0
    actor = mlp_params(obs_dim + extra, cfg.agent.actor, 2 * act_dim * heads)
    critic = 2 * mlp_params(obs_dim + act_dim + extra, cfg.agent.critic, heads)
    per_task = num_tasks if cfg.combiner.kind == "gradient" else 1  # the per-task gradients of one part at a time
    networks = 4 * seeds * (4 * actor + 5 * critic + per_task * max(actor, critic))  # params, grads, 2 Adam moments
    need = replay + networks
    free = free_memory(device)
    if free is not None and need > free:
        what = "seeds" if seeds > 1 else "buffer.capacity"
        given = " ".join(str(c.seed) for c in cfgs) if seeds > 1 else cfg.buffer.capacity
        raise ConfigError(
            f"{what}: got {given}; the {'group' if seeds > 1 else 'run'} needs about {need / 2**30:.1f} GiB of "
            f"{device.type} memory (replay {replay / 2**30:.1f} GiB, networks and optimizers "
            f"{networks / 2**30:.1f} GiB) and {free / 2**30:.1f} GiB are free; use fewer seeds per process or a "
            "smaller buffer.capacity"
        )


# ------------------------------------------------------------------------------------------------ the loop


class _Member:
    """One run of a (seed group's) training process: its solo config, run directory, warm-up action generator and
    training-episode log."""

    def __init__(self, cfg: TrainConfig, run: Path, num_tasks: int) -> None:
        self.cfg, self.run = cfg, run
        self.rng = np.random.default_rng(cfg.seed)
        # torch's global generator as the run's solo process holds it (training draws nothing from it: every random
        # stream of an update has its own generator); saved for checkpoints of earlier versions' layout
        self.torch_rng = torch.Generator().manual_seed(cfg.seed).get_state()
        self.episodes = EpisodeLog(num_tasks)


def train(cfg: TrainConfig, *, run: Path | None = None, command: str = "", progress: bool = True) -> Path:
    """Train one run as configured (``cfg.seeds`` empty); ``run`` given: resume that run from its newest checkpoint.
    Returns the run directory. See :func:`train_group`."""
    if cfg.seeds:
        raise ConfigError("seeds: train a seed group with train_group")
    return train_group(cfg, runs=None if run is None else [run], command=command, progress=progress)[0]


def train_group(
    cfg: TrainConfig | list[TrainConfig],
    *,
    runs: list[Path] | None = None,
    command: str = "",
    progress: bool = True,
) -> list[Path]:
    """Train the runs of a config (one, or one per seed of ``cfg.seeds``: a seed group) in this process; ``runs``
    given (with their solo configs): resume those runs from their newest common checkpoint step. Returns the run
    directories.

    A seed group is N independent runs that share the process and nothing else: stacked networks with one forward
    and backward for all (:class:`~mtrl.agents.mtsac.MTSAC`), a replay with a seed axis, the N x K envs stepped
    together; each run writes exactly the run directory its solo run writes (its meta.yaml names the group).

    ``agent.kind: single_task`` trains one stable-baselines3 SAC per task instead (:mod:`mtrl.single_task`, on the
    envs built here). Evaluation runs in the loop or, with ``eval_mode`` async, in a worker process
    (:class:`~mtrl.evaluate.AsyncEvaluator`) whose failure raises :class:`~mtrl.evaluate.EvalWorkerError`. SIGINT and
    SIGTERM end the current step, write a checkpoint of every run and raise :class:`Interrupted`.
    """
    if isinstance(cfg, list):
        cfgs = cfg
        k = check_config(cfgs[0])
    else:
        k = check_config(cfg)
        check_seeds(cfg)
        cfgs = member_configs(cfg, k)
    for c in cfgs[1:]:
        check_config(c)
    first = cfgs[0]
    if runs is not None and first.agent.kind == "single_task":
        raise ConfigError("agent.kind: resume is not supported for single_task runs; start a new run")
    resuming = runs is not None
    if not resuming:
        for c in cfgs:  # every run directory is free before any is created
            if c.run_name:
                check_run_free(Path(c.run_dir) / c.run_name)
    device = pick_device(first.device)
    if first.agent.kind == "mtsac":  # single_task: stable-baselines3 keeps its own replay
        check_memory(cfgs, k, device)
    ensure_gl_backend()  # before anything imports mujoco: egl with a GPU, osmesa without
    keep_freed_memory()
    set_matmul_precision(first.agent.precision)
    if first.threads:
        torch.set_num_threads(first.threads)
    torch.manual_seed(first.seed)
    seeds = [c.seed for c in cfgs]
    if progress:  # building Meta-World envs takes seconds: say so before the bar
        what = "envs and the agent" if len(cfgs) == 1 else f"envs of {len(cfgs)} seeds and their agents"
        if first.env.benchmark != "toy" or len(cfgs) > 1:
            print(f"mtrl train: building the {k} {benchmark_label(first.env.benchmark)} {what}", file=sys.stderr)
    if first.agent.kind == "single_task":
        from mtrl.single_task import train_single_task

        prefix = f"{benchmark_label(first.env.benchmark)}__single_task"
        envs = (make_env(first.env, first.seed), make_env(first.env, first.seed, evaluation=True))
        return [
            train_single_task(
                first, *envs, eval_seed(first.seed), name_prefix=prefix, command=command, progress=progress
            )
        ]
    env = make_env(first.env, seeds)
    asynchronous = eval_mode(first) == "async"
    # evaluation envs: each run's goals (env.eval_goals), their own simulator seeds eval_seed(seed)
    eval_env = None if asynchronous else make_env(first.env, seeds, evaluation=True)
    video_envs = [make_env(c.env, c.seed, evaluation=True, render=True) for c in cfgs] if first.video_interval else []
    agent = make_group_agent(cfgs, env.obs_dim, env.act_dim, k, device)
    if agent.graph_note:
        print(f"mtrl train: {agent.graph_note}", file=sys.stderr)
    buffer = MultiTaskReplay(
        k, env.obs_dim, env.act_dim, first.buffer.capacity, first.buffer.batch_size,
        kind=first.buffer.kind, reward_norm=first.buffer.reward_norm, device=device, seed=seeds,
    )  # fmt: skip
    start, walls = 0, [0.0] * len(cfgs)
    if runs is None:
        group = {"seeds": seeds, "runs": [c.run_name for c in cfgs]} if len(cfgs) > 1 else None
        members = []
        for c in cfgs:
            c, path = prepare_run_dir(c, _name_prefix(c, k), command, group=group)
            members.append(_Member(c, path, k))
    else:  # everything is read and checked before anything in the run directories changes
        members = [_Member(c, r, k) for c, r in zip(cfgs, runs)]
        plans = plan_group_resume(runs, cfgs)
        if plans[0].state is not None:
            states = [p.state for p in plans if p.state is not None]  # all or none: one common step
            try:
                agent.load_state_dicts([st["agent"] for st in states])  # CPU tensors, moved to the device
                buffer.load_state_dicts([p.buffer or {} for p in plans])
            except (RuntimeError, ValueError, KeyError) as exc:
                units = ", ".join(f"'{p.unit}'" for p in plans)
                raise CheckpointError(f"checkpoint: {units} do not fit the run's config ({first_line(exc)})") from None
            for m, st in zip(members, states):
                m.rng.bit_generator.state = st["numpy_rng"]
                m.torch_rng = st["torch_rng"]
            torch.set_rng_state(states[0]["torch_rng"])
            if device.type == "cuda" and "cuda_rng" in states[0]:
                torch.cuda.set_rng_state(states[0]["cuda_rng"], device)
            start, walls = states[0]["step"], [st["wall_clock_s"] for st in states]
        for m, plan in zip(members, plans):
            for note in plan.apply(m.run, m.cfg):  # recoveries, each said in one line
                prefix = f"{m.run.name}: " if len(members) > 1 else ""
                print(f"mtrl train: {prefix}{note}", file=sys.stderr)
            saved = m.run / "config.yaml"
            if not saved.is_file() or from_flat(yaml.safe_load(saved.read_text())) != m.cfg:  # total_steps extended
                checkpoint.write_text_atomic(saved, dump_yaml(m.cfg))
    # purge_step: TensorBoard (and mtrl compare) drop what an interrupted segment logged after its checkpoint; what
    # it logged at the checkpoint's step stays (logs and evaluations of a step are written before its checkpoint)
    writers = [SummaryWriter(str(m.run), purge_step=start + 1 if resuming else None) for m in members]
    if start == 0:
        for m, writer in zip(members, writers):
            writer.add_text("config", "```\n" + dump_yaml(m.cfg) + "```")
    saved_at = start
    total = first.total_steps

    def save(step: int) -> None:
        """Checkpoint ``step`` for every run; never a non-finite state (on a GPU the finite checks are deferred to
        here and to log steps, so a signal's save checks too)."""
        nonlocal saved_at
        agent.check_finite()
        elapsed = time.perf_counter() - t0
        common = {
            **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            "task_names": env.task_names,
            "obs_dim": env.obs_dim,
            "act_dim": env.act_dim,
        }
        for m, wall_before, state, replay in zip(members, walls, agent.state_dicts(), buffer.state_dicts()):
            wall = wall_before + elapsed
            unit = {
                "wall_clock_s": wall,
                "config": to_flat(m.cfg),
                "agent": state,
                "numpy_rng": m.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state() if len(members) == 1 else m.torch_rng,
            }
            checkpoint.save(m.run, step, {**unit, **common}, replay)
            update_meta(m.run, wall_clock_s=round(wall, 2), final_step=step)
        saved_at = step

    obs = env.reset(seeds[0] + start if len(seeds) == 1 else [s + start for s in seeds])
    n_seeds, act_dim = len(members), env.act_dim
    t0, t_log, step_log = time.perf_counter(), time.perf_counter(), start
    logs: dict[str, torch.Tensor] = {}
    evals_done = 0
    evaluator = (
        AsyncEvaluator(first.env, first.agent, seeds, first.eval_episodes, [eval_seed(s) for s in seeds])
        if asynchronous
        else None
    )
    label = members[0].run.name if n_seeds == 1 else f"{members[0].run.name} (+{n_seeds - 1} seeds)"
    bar = tqdm(total=total, initial=start, desc=label, unit="step", disable=not progress, dynamic_ncols=True)

    def greedy(obs: np.ndarray) -> np.ndarray:
        return agent.act(obs, deterministic=True)

    def log_evals(step: int, results: list[EvalResult]) -> None:
        for writer, result in zip(writers, results):
            writer.add_scalar(tb.SUCCESS, result.mean, step)
            for name, rate, rets in zip(env.task_names, result.per_task, result.returns):
                writer.add_scalar(f"{tb.SUCCESS}/{name}", float(rate), step)
                writer.add_scalar(f"{tb.RETURN}/{name}", float(rets.mean()), step)
        bar.set_postfix(success=" ".join(f"{r.mean:.2f}" for r in results))

    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(stop_on_signals())
        stack.callback(_close_all, evaluator, bar, writers, (env, eval_env, *video_envs))
        if start < first.warmup_steps:
            bar.set_postfix_str(f"warm-up: random actions until step {first.warmup_steps}")
        for step in range(start, total):
            if step == first.warmup_steps and step > start:
                bar.set_postfix_str("training")
            if step < first.warmup_steps:
                action = np.concatenate([m.rng.uniform(-1.0, 1.0, (k, act_dim)) for m in members])
            else:
                action = agent.act(obs)
            res = env.step(action)
            shape = (n_seeds, k)
            buffer.add(
                obs.reshape(*shape, -1), action.reshape(*shape, -1), res.reward.reshape(shape),
                res.next_obs.reshape(*shape, -1), res.terminated.reshape(shape),
            )  # fmt: skip
            for s, (m, writer) in enumerate(zip(members, writers)):
                m.episodes.add(StepResult(*(x[s * k : (s + 1) * k] for x in res)), writer, step + 1)
            obs = res.obs
            if step >= first.warmup_steps:
                for _ in range(first.updates_per_step):
                    logs = agent.update(buffer.sample())
            bar.update(1)

            done = step + 1
            log_due = done % first.log_interval == 0 and bool(logs)
            checkpoint_due = done % first.checkpoint_interval == 0 or done == total
            if log_due or checkpoint_due:
                agent.check_finite()  # deferred on a GPU: the one host sync of these steps
            if log_due:
                now = time.perf_counter()
                sps = (done - step_log) / (now - t_log)
                for s, writer in enumerate(writers):
                    _write_logs(writer, {key: v[s] for key, v in logs.items()}, env.task_names, sps, done)
                t_log, step_log = now, done
            if (first.eval_interval and done % first.eval_interval == 0) or done == total:
                if evaluator is not None:  # evaluated in the worker, logged at `done` when it returns
                    evaluator.submit(done, agent.actor.state_dict())
                else:
                    assert eval_env is not None  # built for sync evaluation
                    log_evals(
                        done, evaluate_seeds(greedy, eval_env, first.eval_episodes, [eval_seed(s) for s in seeds])
                    )
                evals_done += 1
                if video_envs and evals_done % first.video_interval == 0:  # always in-process
                    for s, (writer, video_env) in enumerate(zip(writers, video_envs)):
                        policy = partial(agent.act_seed, seed_index=s)
                        add_gif(writer, tb.VIDEO, frames_for_tensorboard(policy, video_env), done)
            if evaluator is not None:
                for at, results in evaluator.poll():
                    log_evals(at, results)
            if checkpoint_due:
                save(done)
            if stop:  # SIGINT / SIGTERM: this step is done; checkpoint it and stop
                if saved_at != done:
                    save(done)
                raise Interrupted(stop[0], done, members[0].run, group=n_seeds)
        if evaluator is not None and evaluator.pending:
            bar.set_postfix_str(f"waiting for {evaluator.pending} evaluation(s)")
            for at, results in evaluator.wait():
                log_evals(at, results)
    for m in members:
        record_final_success(m.run, m.cfg)
    return [m.run for m in members]


def _name_prefix(cfg: TrainConfig, num_tasks: int) -> str:
    """``{benchmark}__{combiner}`` of the run name (the combiner as ``str()`` shows it, e.g. ``cagrad-c0.4``)."""
    return f"{benchmark_label(cfg.env.benchmark)}__{cfg.combiner.build(num_tasks)}"


def _write_logs(writer: SummaryWriter, logs: dict[str, torch.Tensor], names: list[str], sps: float, step: int) -> None:
    """The training scalars of one log step: steps/s, losses, temperatures and combiner stats (per task where a value
    has one entry per task)."""
    writer.add_scalar(tb.SPS, sps, step)
    for key, value in logs.items():
        if value.numel() == 1 and key != "alpha":
            writer.add_scalar(key, float(value), step)
        else:  # one value per task (per-task alpha, combiner task weights)
            tag = tb.ALPHA if key == "alpha" else key
            for name, v in zip(names if value.numel() == len(names) else ["shared"], value.tolist()):
                writer.add_scalar(f"{tag}/{name}", v, step)


def _close_all(
    evaluator: AsyncEvaluator | None, bar: tqdm, writers: list[SummaryWriter], envs: tuple[Any, ...]
) -> None:
    """End the evaluation worker, the progress bar, the event files and the envs (with their worker processes)."""
    if evaluator is not None:
        evaluator.close()
    bar.close()
    for writer in writers:
        writer.close()
    for e in envs:
        if e is not None:
            e.close()


__all__ = [
    "Interrupted",
    "check_config",
    "check_seeds",
    "eval_mode",
    "member_configs",
    "train",
    "train_group",
]
