"""Single-task SAC baseline: one stable-baselines3 ``SAC`` per task, the "one agent per task" reference of the
MT10 literature, trained in lockstep on the same multi-task vector env as MT-SAC.

Each vector-env step every model acts on its own task's row, the env steps once, each transition goes into its
task's SB3 replay buffer, and after warm-up every model takes ``updates_per_step`` gradient steps on
``batch_size // K`` of its own transitions. The run directory, TensorBoard keys, evaluation and intervals are
those of :func:`mtrl.train.train`; the models are saved as ``<run>/single_task/<task>.zip`` (SB3 format,
``SAC.load``). Resuming is not supported (the replay buffers are not saved).

What comes from the config: ``agent.actor``/``agent.critic`` ``hidden_dim`` x ``num_layers`` (separate pi/qf
networks), ``agent.actor.lr`` (SB3 has one learning rate for actor, critic and temperature, so
``agent.critic.lr`` and ``agent.alpha_lr`` are not used when they differ), ``agent.gamma``, ``agent.tau``,
``agent.init_temperature`` (learned per task, target entropy ``-act_dim``), ``buffer.capacity // K`` and
``buffer.batch_size // K`` per task, seeds ``seed * 1000 + k``. Not used: the combiner, conditioning, temperature
sharing, LayerNorm, dropout, weight decay, gradient clipping, reward normalization, Q-target clipping, the update
schedule, the buffer kind and ``eval_mode`` (evaluation runs in the training loop).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.logger import Logger
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mtrl.config import TrainConfig, dump_yaml
from mtrl.evaluate import evaluate
from mtrl.runs import tensorboard as tb
from mtrl.runs.rundir import Interrupted, prepare_run_dir, record_final_success, stop_on_signals, update_meta
from mtrl.runs.tensorboard import EpisodeLog
from mtrl.utils import pick_device

if TYPE_CHECKING:
    from mtrl.envs.base import MultiTaskVecEnv

MODELS_DIR = "single_task"
# SB3 logger key -> our TensorBoard key (mean over tasks)
LOSS_KEYS = {
    "train/critic_loss": "losses/critic",
    "train/actor_loss": "losses/actor",
    "train/ent_coef_loss": "losses/alpha",
}


class _SpacesOnly(gym.Env):
    """A gymnasium env that only carries the Box spaces SB3 needs to build a model; it is never stepped."""

    def __init__(self, obs_dim: int, act_dim: int) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)


def make_model(cfg: TrainConfig, obs_dim: int, act_dim: int, num_tasks: int, task: int, device: torch.device) -> SAC:
    """One SB3 SAC for task ``task``, sized and seeded from ``cfg`` (see the module docstring).

    :param num_tasks: K; the replay capacity and batch size of the config are split evenly over the tasks.
    :param task: task index; the model's seed is ``cfg.seed * 1000 + task``.
    """
    actor, critic = cfg.agent.actor, cfg.agent.critic
    model = SAC(
        "MlpPolicy",
        _SpacesOnly(obs_dim, act_dim),
        learning_rate=actor.lr,
        buffer_size=max(1, cfg.buffer.capacity // num_tasks),
        batch_size=max(1, cfg.buffer.batch_size // num_tasks),
        tau=cfg.agent.tau,
        gamma=cfg.agent.gamma,
        ent_coef=f"auto_{cfg.agent.init_temperature}",
        replay_buffer_kwargs={"handle_timeout_termination": True},
        policy_kwargs={
            "net_arch": {"pi": [actor.hidden_dim] * actor.num_layers, "qf": [critic.hidden_dim] * critic.num_layers}
        },
        seed=cfg.seed * 1000 + task,
        device=device,
    )
    model.set_logger(Logger(folder=None, output_formats=[]))  # keeps name_to_value, writes nothing
    return model


def add_transition(
    buffer: ReplayBuffer,
    obs: np.ndarray,
    next_obs: np.ndarray,
    action: np.ndarray,
    reward: float,
    terminated: bool,
    truncated: bool,
) -> None:
    """Add one transition to an SB3 replay buffer (``n_envs == 1``) the way SB3's own collection does.

    ``done`` is "the episode ended"; a time-limit end is flagged with ``TimeLimit.truncated``, which the buffer
    (``handle_timeout_termination=True``) turns into ``done = 0`` when sampling, so the TD target bootstraps
    through truncation and stops only at a true terminal state.

    :param obs: ``[obs]``; ``next_obs`` is the true successor (the final observation where an episode ended).
    """
    buffer.add(
        obs[None],
        next_obs[None],
        action[None],
        np.array([reward], dtype=np.float32),
        np.array([terminated or truncated]),
        [{"TimeLimit.truncated": bool(truncated and not terminated)}],
    )


def save_models(models: list[SAC], names: list[str], folder: Path) -> None:
    """Write ``folder/<task>.zip`` for each model atomically (temp file, then rename)."""
    folder.mkdir(exist_ok=True)
    for model, name in zip(models, names):
        tmp = folder / f"{name}.zip.tmp"
        with open(tmp, "wb") as f:
            model.save(f)
        os.replace(tmp, folder / f"{name}.zip")


def _train_logs(models: list[SAC], names: list[str]) -> dict[str, float]:
    """The latest SB3 training scalars as our TensorBoard keys: losses averaged over tasks, alpha per task."""
    values = [m.logger.name_to_value for m in models]
    logs = {ours: float(np.mean([v[sb3] for v in values])) for sb3, ours in LOSS_KEYS.items()}
    logs.update({f"{tb.ALPHA}/{name}": float(v["train/ent_coef"]) for name, v in zip(names, values)})
    return logs


def train_single_task(
    cfg: TrainConfig,
    env: MultiTaskVecEnv,
    eval_env: MultiTaskVecEnv,
    eval_seed: int,
    *,
    name_prefix: str,
    command: str = "",
    progress: bool = True,
) -> Path:
    """Train one SB3 SAC per task in lockstep on ``env`` and write a run directory like :func:`mtrl.train.train`.

    :param cfg: the config, checked (``agent.kind`` single_task; see the module docstring for the fields used).
    :param env: the training env; ``eval_env`` the evaluation env (the run's goals), reset with ``eval_seed``. Both
        are closed here.
    :param name_prefix: ``{benchmark}__single_task``: an empty ``run_name`` becomes ``{name_prefix}__s{seed}__{time}``.
    :param command: the command line, written to ``command.txt``.
    :param progress: show a progress bar with steps/s.
    :returns: the run directory. SIGINT / SIGTERM save the models and raise :class:`~mtrl.runs.rundir.Interrupted`.
    """
    device = pick_device(cfg.device)
    k, names = env.num_tasks, env.task_names
    models = [make_model(cfg, env.obs_dim, env.act_dim, k, t, device) for t in range(k)]
    cfg, run = prepare_run_dir(cfg, name_prefix, command)
    writer = SummaryWriter(str(run))
    writer.add_text("config", "```\n" + dump_yaml(cfg) + "```")

    def act(obs: np.ndarray, deterministic: bool) -> np.ndarray:  # [K, obs] -> [K, act]
        return np.stack([m.predict(o, deterministic=deterministic)[0] for m, o in zip(models, obs)])

    def save(step: int) -> None:
        save_models(models, names, run / MODELS_DIR)
        update_meta(run, wall_clock_s=round(time.perf_counter() - t0, 2), final_step=step)

    buffers = [m.replay_buffer for m in models if m.replay_buffer is not None]  # [K]
    rng = np.random.default_rng(cfg.seed)
    obs = env.reset(cfg.seed)
    episodes = EpisodeLog(k)
    t0 = t_log = time.perf_counter()
    step_log, trained = 0, False
    bar = tqdm(total=cfg.total_steps, desc=run.name, unit="step", disable=not progress, dynamic_ncols=True)
    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(stop_on_signals())
        for closable in (eval_env, env, writer, bar):
            stack.callback(closable.close)
        for step in range(cfg.total_steps):
            action = rng.uniform(-1.0, 1.0, (k, env.act_dim)) if step < cfg.warmup_steps else act(obs, False)
            res = env.step(action)
            rows = zip(buffers, obs, res.next_obs, action, res.reward, res.terminated, res.truncated)
            for buffer, *transition in rows:
                add_transition(buffer, *transition)
            episodes.add(res, writer, step + 1)
            obs = res.obs
            if step >= cfg.warmup_steps:
                for model in models:
                    model.train(gradient_steps=cfg.updates_per_step, batch_size=model.batch_size)
                trained = True
            bar.update(1)

            done = step + 1
            if done % cfg.log_interval == 0 and trained:
                now = time.perf_counter()
                writer.add_scalar(tb.SPS, (done - step_log) / (now - t_log), done)
                t_log, step_log = now, done
                for key, value in _train_logs(models, names).items():
                    writer.add_scalar(key, value, done)
            if (cfg.eval_interval and done % cfg.eval_interval == 0) or done == cfg.total_steps:
                result = evaluate(lambda o: act(o, True), eval_env, cfg.eval_episodes, seed=eval_seed)
                writer.add_scalar(tb.SUCCESS, result.mean, done)
                for name, rate, rets in zip(names, result.per_task, result.returns):
                    writer.add_scalar(f"{tb.SUCCESS}/{name}", float(rate), done)
                    writer.add_scalar(f"{tb.RETURN}/{name}", float(rets.mean()), done)
                bar.set_postfix(success=f"{result.mean:.2f}")
            if done % cfg.checkpoint_interval == 0 or done == cfg.total_steps or stop:
                save(done)
            if stop:  # SIGINT / SIGTERM: this step is done and saved
                raise Interrupted(stop[0], done, run, resumable=False)
    record_final_success(run, cfg)
    return run


__all__ = ["add_transition", "make_model", "save_models", "train_single_task"]
