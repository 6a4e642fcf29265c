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
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mtrl.agents.build import build_combiners, make_agent
from mtrl.buffers import MultiTaskReplay
from mtrl.config import ConfigError, TrainConfig, combiner_name, dump_yaml, from_flat, to_flat
from mtrl.envs import benchmark_kind, benchmark_label, benchmark_num_tasks, eval_seed, make_env
from mtrl.envs.base import custom_tasks
from mtrl.envs.gl import ensure_gl_backend
from mtrl.evaluate import AsyncEvaluator, EvalResult, evaluate
from mtrl.runs import checkpoint
from mtrl.runs import tensorboard as tb
from mtrl.runs.checkpoint import CheckpointError
from mtrl.runs.restore import first_line
from mtrl.runs.resume import plan_resume
from mtrl.runs.rundir import (
    Interrupted,
    check_output_dir,
    prepare_run_dir,
    record_final_success,
    stop_on_signals,
    update_meta,
)
from mtrl.runs.tensorboard import EpisodeLog, add_gif
from mtrl.utils import keep_freed_memory, pick_device, set_matmul_precision
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


# ------------------------------------------------------------------------------------------------ resuming


# ------------------------------------------------------------------------------------------------ the loop


def train(cfg: TrainConfig, *, run: Path | None = None, command: str = "", progress: bool = True) -> Path:
    """Train as configured; ``run`` given: resume that run from its newest checkpoint. Returns the run directory.

    ``agent.kind: single_task`` trains one stable-baselines3 SAC per task instead (:mod:`mtrl.single_task`, on the
    envs built here). Evaluation runs in the loop or, with ``eval_mode`` async, in a worker process
    (:class:`~mtrl.evaluate.AsyncEvaluator`) whose failure raises :class:`~mtrl.evaluate.EvalWorkerError`. SIGINT and
    SIGTERM end the current step, write a checkpoint and raise :class:`Interrupted`.
    """
    k = check_config(cfg)
    if run is not None and cfg.agent.kind == "single_task":
        raise ConfigError("agent.kind: resume is not supported for single_task runs; start a new run")
    ensure_gl_backend()  # before anything imports mujoco: egl with a GPU, osmesa without
    keep_freed_memory()
    device = pick_device(cfg.device)
    set_matmul_precision(cfg.agent.precision)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if progress and cfg.env.benchmark != "toy":  # building Meta-World envs takes seconds: say so before the bar
        print(f"mtrl train: building the {k} {benchmark_label(cfg.env.benchmark)} envs and the agent", file=sys.stderr)
    env = make_env(cfg.env, cfg.seed)
    asynchronous = eval_mode(cfg) == "async" and cfg.agent.kind == "mtsac"
    # evaluation envs: the run's goals (cfg.env.eval_goals), their own simulator seed eval_seed(cfg.seed)
    eval_env = None if asynchronous else make_env(cfg.env, cfg.seed, evaluation=True)
    if cfg.agent.kind == "single_task":
        from mtrl.single_task import train_single_task

        assert eval_env is not None
        prefix = f"{benchmark_label(cfg.env.benchmark)}__single_task"
        return train_single_task(
            cfg, env, eval_env, eval_seed(cfg.seed), name_prefix=prefix, command=command, progress=progress
        )
    video_env = make_env(cfg.env, cfg.seed, evaluation=True, render=True) if cfg.video_interval else None
    agent = make_agent(cfg, env.obs_dim, env.act_dim, k, device)
    buffer = MultiTaskReplay(
        k, env.obs_dim, env.act_dim, cfg.buffer.capacity, cfg.buffer.batch_size,
        kind=cfg.buffer.kind, reward_norm=cfg.buffer.reward_norm, device=device, seed=cfg.seed,
    )  # fmt: skip
    rng = np.random.default_rng(cfg.seed)
    start, wall_before = 0, 0.0
    resuming = run is not None
    if run is None:
        cfg, run = prepare_run_dir(cfg, _name_prefix(cfg, k), command)
    else:  # everything is read and checked before anything in the run directory changes
        plan = plan_resume(run, cfg)
        if plan.state is not None:
            state = plan.state  # CPU tensors: load_state_dict moves them to the device
            try:
                agent.load_state_dict(state["agent"])
                buffer.load_state_dict(plan.buffer or {})
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(
                    f"checkpoint: '{plan.unit}' does not fit the run's config ({first_line(exc)})"
                ) from None
            rng.bit_generator.state = state["numpy_rng"]
            torch.set_rng_state(state["torch_rng"])
            if device.type == "cuda" and "cuda_rng" in state:  # dropout on the GPU draws from it
                torch.cuda.set_rng_state(state["cuda_rng"], device)
            start, wall_before = state["step"], state["wall_clock_s"]
        for note in plan.apply(run, cfg):  # recoveries, each said in one line
            print(f"mtrl train: {note}", file=sys.stderr)
        saved = run / "config.yaml"
        if not saved.is_file() or from_flat(yaml.safe_load(saved.read_text())) != cfg:  # total_steps extended
            checkpoint.write_text_atomic(saved, dump_yaml(cfg))
    # purge_step: TensorBoard (and mtrl compare) drop what an interrupted segment logged after its checkpoint; what
    # it logged at the checkpoint's step stays (logs and evaluations of a step are written before its checkpoint)
    writer = SummaryWriter(str(run), purge_step=start + 1 if resuming else None)
    if start == 0:
        writer.add_text("config", "```\n" + dump_yaml(cfg) + "```")
    saved_at = start

    def save(step: int) -> None:
        """Checkpoint ``step``; never a non-finite state (on a GPU the finite checks are deferred to here and to log
        steps, so a signal's save checks too)."""
        nonlocal saved_at
        agent.check_finite()
        wall = wall_before + time.perf_counter() - t0
        state = {
            "wall_clock_s": wall,
            "config": to_flat(cfg),
            "agent": agent.state_dict(),
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            "task_names": env.task_names,
            "obs_dim": env.obs_dim,
            "act_dim": env.act_dim,
        }
        checkpoint.save(run, step, state, buffer.state_dict())
        update_meta(run, wall_clock_s=round(wall, 2), final_step=step)
        saved_at = step

    obs = env.reset(cfg.seed + start)
    episodes = EpisodeLog(k)
    t0, t_log, step_log = time.perf_counter(), time.perf_counter(), start
    logs: dict[str, torch.Tensor] = {}
    evals_done = 0
    evaluator = (
        AsyncEvaluator(cfg.env, cfg.agent, cfg.seed, cfg.eval_episodes, eval_seed(cfg.seed)) if asynchronous else None
    )
    bar = tqdm(
        total=cfg.total_steps, initial=start, desc=run.name, unit="step", disable=not progress, dynamic_ncols=True
    )

    def greedy(obs: np.ndarray) -> np.ndarray:
        return agent.act(obs, deterministic=True)

    def log_eval(step: int, result: EvalResult) -> None:
        writer.add_scalar(tb.SUCCESS, result.mean, step)
        for name, rate, rets in zip(env.task_names, result.per_task, result.returns):
            writer.add_scalar(f"{tb.SUCCESS}/{name}", float(rate), step)
            writer.add_scalar(f"{tb.RETURN}/{name}", float(rets.mean()), step)
        bar.set_postfix(success=f"{result.mean:.2f}")

    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(stop_on_signals())
        stack.callback(_close_all, evaluator, bar, writer, (env, eval_env, video_env))
        if start < cfg.warmup_steps:
            bar.set_postfix_str(f"warm-up: random actions until step {cfg.warmup_steps}")
        for step in range(start, cfg.total_steps):
            if step == cfg.warmup_steps and step > start:
                bar.set_postfix_str("training")
            action = rng.uniform(-1.0, 1.0, (k, env.act_dim)) if step < cfg.warmup_steps else agent.act(obs)
            res = env.step(action)
            buffer.add(obs, action, res.reward, res.next_obs, res.terminated)
            episodes.add(res, writer, step + 1)
            obs = res.obs
            if step >= cfg.warmup_steps:
                for _ in range(cfg.updates_per_step):
                    logs = agent.update(buffer.sample())
            bar.update(1)

            done = step + 1
            log_due = done % cfg.log_interval == 0 and bool(logs)
            checkpoint_due = done % cfg.checkpoint_interval == 0 or done == cfg.total_steps
            if log_due or checkpoint_due:
                agent.check_finite()  # deferred on a GPU: the one host sync of these steps
            if log_due:
                now = time.perf_counter()
                _write_logs(writer, logs, env.task_names, (done - step_log) / (now - t_log), done)
                t_log, step_log = now, done
            if (cfg.eval_interval and done % cfg.eval_interval == 0) or done == cfg.total_steps:
                if evaluator is not None:  # evaluated in the worker, logged at `done` when it returns
                    evaluator.submit(done, agent.actor_state())
                else:
                    assert eval_env is not None  # built for sync evaluation
                    log_eval(done, evaluate(greedy, eval_env, cfg.eval_episodes, seed=eval_seed(cfg.seed)))
                evals_done += 1
                if video_env is not None and evals_done % cfg.video_interval == 0:  # always in-process
                    add_gif(writer, tb.VIDEO, frames_for_tensorboard(greedy, video_env), done)
            if evaluator is not None:
                for at, result in evaluator.poll():
                    log_eval(at, result)
            if checkpoint_due:
                save(done)
            if stop:  # SIGINT / SIGTERM: this step is done; checkpoint it and stop
                if saved_at != done:
                    save(done)
                raise Interrupted(stop[0], done, run)
        if evaluator is not None and evaluator.pending:
            bar.set_postfix_str(f"waiting for {evaluator.pending} evaluation(s)")
            for at, result in evaluator.wait():
                log_eval(at, result)
    record_final_success(run, cfg)
    return run


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


def _close_all(evaluator: AsyncEvaluator | None, bar: tqdm, writer: SummaryWriter, envs: tuple[Any, ...]) -> None:
    """End the evaluation worker, the progress bar, the event file and the envs (with their worker processes)."""
    if evaluator is not None:
        evaluator.close()
    bar.close()
    writer.close()
    for e in envs:
        if e is not None:
            e.close()


__all__ = [
    "Interrupted",
    "check_config",
    "eval_mode",
    "train",
]
