"""THE training loop: collect -> add -> sample -> update -> log -> evaluate -> checkpoint."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mtrl import checkpoint
from mtrl.agents.mtsac import MTSAC
from mtrl.buffers import MultiTaskReplay
from mtrl.checkpoint import CheckpointError
from mtrl.config import ConfigError, TrainConfig, dump_yaml, from_flat, to_flat
from mtrl.envs import StepResult, benchmark_label, eval_seed, make_env
from mtrl.envs.gl import ensure_gl_backend
from mtrl.evaluate import AsyncEvaluator, EvalResult, evaluate
from mtrl.logger import add_gif, write_hparams
from mtrl.utils import keep_freed_memory
from mtrl.video import frames_for_tensorboard


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists already, or is not a run); one-line message."""


class EpisodeLog:
    """Return and any-step success of each task's current training episode; logs the episodes that end."""

    def __init__(self, num_tasks: int) -> None:
        self.ret = np.zeros(num_tasks)
        self.success = np.zeros(num_tasks, dtype=bool)

    def add(self, res: StepResult, writer: SummaryWriter, step: int) -> None:
        """Account for one vector step; ``step`` is the global step after it."""
        self.ret += res.reward
        self.success |= res.success
        ended = res.terminated | res.truncated
        if ended.any():
            writer.add_scalar("charts/episodic_return", float(self.ret[ended].mean()), step)
            writer.add_scalar("charts/episodic_success", float(self.success[ended].mean()), step)
            self.ret[ended], self.success[ended] = 0.0, False


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: got 'cuda', but torch sees no CUDA device; expected cpu or auto here")
    return torch.device(name)


def eval_mode(cfg: TrainConfig) -> Literal["sync", "async"]:
    """``cfg.eval_mode`` with ``auto`` resolved: async on Meta-World benchmarks with at least 4 CPU cores, else sync."""
    if cfg.eval_mode != "auto":
        return cfg.eval_mode
    return "async" if cfg.env.benchmark != "toy" and (os.cpu_count() or 1) >= 4 else "sync"


def default_run_name(cfg: TrainConfig, num_tasks: int) -> str:
    combiner = str(cfg.combiner.build(num_tasks))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{benchmark_label(cfg.env.benchmark)}__{combiner}__s{cfg.seed}__{stamp}"


def _run_metadata(cfg: TrainConfig) -> dict[str, Any]:
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
            return out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            return ""

    versions: dict[str, str | None] = {}
    for pkg in ("mtrl", "torch", "numpy", "gymnasium", "metaworld", "mujoco", "stable-baselines3"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "git_commit": git("rev-parse", "HEAD") or None,
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "versions": versions,
        "python": platform.python_version(),
        "seed": cfg.seed,
        "started": datetime.now().isoformat(timespec="seconds"),
        "wall_clock_s": 0.0,
        "final_step": 0,
    }


def prepare_run_dir(cfg: TrainConfig, num_tasks: int, command: str) -> tuple[TrainConfig, Path]:
    """Create a fresh run directory (never reusing an existing one) with config.yaml, command.txt, meta.yaml."""
    if not cfg.run_name:
        cfg = replace(cfg, run_name=default_run_name(cfg, num_tasks))
    run = Path(cfg.run_dir) / cfg.run_name
    if run.exists():
        raise RunDirError(
            f"run_name: '{run}' exists already; choose another --run_name or continue it with --resume {run}"
        )
    run.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run.name}.tmp-", dir=run.parent))  # the run appears whole or not
    (staging / "config.yaml").write_text(dump_yaml(cfg))
    (staging / "command.txt").write_text(command + "\n")
    (staging / "meta.yaml").write_text(yaml.safe_dump(_run_metadata(cfg), sort_keys=False))
    try:
        os.rename(staging, run)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        raise RunDirError(f"run_name: '{run}' exists already; choose another --run_name") from None
    return cfg, run


def _update_meta(run: Path, **fields: Any) -> None:
    meta = yaml.safe_load((run / "meta.yaml").read_text()) or {}
    meta.update(fields)
    checkpoint.write_text_atomic(run / "meta.yaml", yaml.safe_dump(meta, sort_keys=False))


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint was written; the message is one line."""

    def __init__(self, signum: int, step: int, run: Path) -> None:
        self.signum, self.step, self.run = signum, step, run
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint written; resume with: mtrl train --resume {run}")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """While inside, SIGINT and SIGTERM only record their number in the yielded list (the loop finishes its step,
    checkpoints and raises :class:`Interrupted`); a second signal aborts at once (``KeyboardInterrupt``). Outside the
    main thread signals cannot be caught and the handlers are left alone."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:  # the second one: stop now
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise KeyboardInterrupt
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _resume_state(run: Path, cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The validated (agent state, replay state) of a run's newest checkpoint, or None when it has none yet (killed
    before its first checkpoint: it starts again from step 0). Reads only; raises one-line errors."""
    if checkpoint.latest(run) is None:
        return None
    state_file = checkpoint.resolve(run)
    state = checkpoint.load(state_file)
    if cfg.total_steps < state["step"]:
        raise ConfigError(
            f"total_steps: got {cfg.total_steps}, but the checkpoint of '{run}' is at step {state['step']}; "
            f"expected at least {state['step']}"
        )
    return state, checkpoint.load_buffer(state_file, state["step"])


def train(cfg: TrainConfig, *, run: Path | None = None, command: str = "", progress: bool = True) -> Path:
    """Train MT-SAC as configured. ``run`` given: resume that run from its checkpoint. Returns the run directory.

    ``agent.kind: single_task`` trains one stable-baselines3 SAC per task instead (:mod:`mtrl.single_task`).
    Evaluation runs in the loop or, with ``eval_mode`` async, in a worker process
    (:class:`~mtrl.evaluate.AsyncEvaluator`) whose failure raises :class:`~mtrl.evaluate.EvalWorkerError`.
    """
    if cfg.agent.kind == "single_task":
        from mtrl.single_task import check_resumable, train_single_task

        if run is not None:
            check_resumable(cfg)
        return train_single_task(cfg, command=command, progress=progress)
    ensure_gl_backend()  # before anything imports mujoco: egl with a GPU, osmesa without
    keep_freed_memory()
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    env = make_env(cfg.env, cfg.seed)
    asynchronous = eval_mode(cfg) == "async"
    # evaluation envs: the run's goals (cfg.env.eval_goals), their own simulator seed eval_seed(cfg.seed)
    eval_env = None if asynchronous else make_env(cfg.env, cfg.seed, evaluation=True)
    video_env = make_env(cfg.env, cfg.seed, evaluation=True, render=True) if cfg.video_interval else None
    k = env.num_tasks
    agent = MTSAC(env.obs_dim, env.act_dim, k, cfg, device)
    buffer = MultiTaskReplay(
        k, env.obs_dim, env.act_dim, cfg.buffer.capacity, cfg.buffer.batch_size,
        kind=cfg.buffer.kind, reward_norm=cfg.buffer.reward_norm, device=device, seed=cfg.seed,
    )  # fmt: skip
    rng = np.random.default_rng(cfg.seed)
    start, wall_before = 0, 0.0
    resuming = run is not None
    if run is None:
        cfg, run = prepare_run_dir(cfg, k, command)
    else:  # everything is read and checked before anything in the run directory changes
        resumed = _resume_state(run, cfg)
        if resumed is not None:
            state, buffer_state = resumed  # CPU tensors: load_state_dict moves them to the device
            try:
                agent.load_state_dict(state["agent"])
                buffer.load_state_dict(buffer_state)
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(
                    f"checkpoint: '{checkpoint.latest(run)}' does not fit the run's config ({_first_line(exc)})"
                ) from None
            rng.bit_generator.state = state["numpy_rng"]
            torch.set_rng_state(state["torch_rng"])
            start, wall_before = state["step"], state["wall_clock_s"]
        checkpoint.clean_partial(run)
        if from_flat(yaml.safe_load((run / "config.yaml").read_text())) != cfg:  # total_steps extended
            checkpoint.write_text_atomic(run / "config.yaml", dump_yaml(cfg))
    # purge_step: TensorBoard (and mtrl compare) drop what an interrupted segment logged after its checkpoint; what
    # it logged at the checkpoint's step stays (logs and evaluations of a step are written before its checkpoint)
    writer = SummaryWriter(str(run), purge_step=start + 1 if resuming else None)
    if start == 0:
        writer.add_text("config", "```\n" + dump_yaml(cfg) + "```")
    saved_at = start

    def save(step: int) -> None:
        nonlocal saved_at
        wall = wall_before + time.perf_counter() - t0
        state = {
            "wall_clock_s": wall,
            "config": to_flat(cfg),
            "agent": agent.state_dict(),
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "task_names": env.task_names,
            "obs_dim": env.obs_dim,
            "act_dim": env.act_dim,
        }
        checkpoint.save(run, step, state, buffer.state_dict())
        _update_meta(run, wall_clock_s=round(wall, 2), final_step=step)
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
        writer.add_scalar("eval/success_rate", result.mean, step)
        for name, rate, rets in zip(env.task_names, result.per_task, result.returns):
            writer.add_scalar(f"eval/success_rate/{name}", float(rate), step)
            writer.add_scalar(f"eval/return/{name}", float(rets.mean()), step)
        bar.set_postfix(success=f"{result.mean:.2f}")

    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(stop_on_signals())
        stack.callback(_close_all, evaluator, bar, writer, (env, eval_env, video_env))
        for step in range(start, cfg.total_steps):
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
                sps = (done - step_log) / (now - t_log)
                t_log, step_log = now, done
                writer.add_scalar("charts/sps", sps, done)
                for key, value in logs.items():
                    if value.numel() == 1 and key != "alpha":
                        writer.add_scalar(key, float(value), done)
                    else:  # one value per task (per-task alpha, combiner task weights)
                        names = env.task_names if value.numel() == k else ["shared"]
                        for name, v in zip(names, value.tolist()):
                            writer.add_scalar(f"{key}/{name}", v, done)
            if (cfg.eval_interval and done % cfg.eval_interval == 0) or done == cfg.total_steps:
                if evaluator is not None:  # evaluated in the worker, logged at `done` when it returns
                    evaluator.submit(done, agent.actor.state_dict())
                else:
                    assert eval_env is not None  # built for sync evaluation
                    log_eval(done, evaluate(greedy, eval_env, cfg.eval_episodes, seed=eval_seed(cfg.seed)))
                evals_done += 1
                if video_env is not None and evals_done % cfg.video_interval == 0:  # always in-process
                    clips = frames_for_tensorboard(greedy, video_env)
                    add_gif(writer, "eval/video", clips, done)
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


def _close_all(evaluator: AsyncEvaluator | None, bar: tqdm, writer: SummaryWriter, envs: tuple[Any, ...]) -> None:
    """End the evaluation worker, the progress bar, the event file and the envs (with their worker processes)."""
    if evaluator is not None:
        evaluator.close()
    bar.close()
    writer.close()
    for e in envs:
        if e is not None:
            e.close()


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n")[0].split())[:300]


def record_final_success(run: Path, cfg: TrainConfig) -> float | None:
    """The run's final success by the rule of ``mtrl compare`` (:func:`mtrl.compare.final_success`: the evaluations
    in the last 10% of the steps, never the max over training), from its event files (a resumed run's evaluations
    before the resume count too); written to ``meta.yaml`` and as the TensorBoard HParams metric. None without
    evaluations."""
    from mtrl.compare import SUCCESS_TAG, final_success, read_scalars

    curve = read_scalars(run, keep=lambda tag: tag == SUCCESS_TAG)
    if curve.empty:
        return None
    value = final_success(curve["step"].to_numpy(), curve["value"].to_numpy(), cfg.total_steps)
    _update_meta(run, final_success=round(value, 6))
    write_hparams(run, to_flat(cfg), {"final_success": value}, step=cfg.total_steps)
    return value


def restore(path: str | Path, device: torch.device | str = "cpu") -> tuple[TrainConfig, MTSAC, dict[str, Any]]:
    """Rebuild the agent of a checkpoint (a run directory, a checkpoint folder or its checkpoint.pt):
    ``(config, agent, raw state)``."""
    state = checkpoint.load(path)
    cfg = from_flat(state["config"])
    agent = MTSAC(state["obs_dim"], state["act_dim"], len(state["task_names"]), cfg, torch.device(device))
    agent.load_state_dict(state["agent"])
    return cfg, agent, state


def main_message(run: Path) -> str:
    """What ``mtrl train`` prints at the end: the final success and where everything went."""
    from mtrl.compare import final_rule

    meta = yaml.safe_load((run / "meta.yaml").read_text()) or {}
    final = meta.get("final_success")
    head = f"final success: {final:.3f} ({final_rule()})\n" if isinstance(final, (int, float)) else ""
    return (
        head + f"run directory: {run}\n"
        f"  TensorBoard:  tensorboard --logdir {run.parent}\n"
        f"  checkpoint:   {checkpoint.latest(run) or run / checkpoint.CHECKPOINTS}\n"
        f"  evaluate:     mtrl evaluate {run}"
    )


__all__ = [
    "RunDirError",
    "eval_mode",
    "main_message",
    "pick_device",
    "prepare_run_dir",
    "restore",
    "train",
]
