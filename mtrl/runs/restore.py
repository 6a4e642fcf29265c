"""Rebuild the agent of a checkpoint, for evaluation, recording and anything else that reads a trained policy."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from mtrl.agents.build import make_agent
from mtrl.agents.mtsac import MTSAC
from mtrl.config import TrainConfig, flatten, from_flat
from mtrl.runs import checkpoint
from mtrl.runs.checkpoint import CheckpointError


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, whitespace collapsed, at most 300 characters."""
    return " ".join(str(exc).split("\n")[0].split())[:300]


def restore(path: str | Path, device: torch.device | str = "cpu") -> tuple[TrainConfig, MTSAC, dict[str, Any]]:
    """Rebuild the agent of a checkpoint (a run directory, a checkpoint folder or its checkpoint.pt):
    ``(config, agent, raw state)``.

    A run directory gives its newest unit whose agent state can be read and fits its own config; units newer than
    that one are unusable (damaged, incomplete) and each is named in one line on stderr. A unit or file given
    directly is used as it is, or refused (:class:`CheckpointError`).
    """
    p = Path(path)
    if not (p.is_dir() and (p / checkpoint.CHECKPOINTS).is_dir()):
        return _build(checkpoint.load(p), p, device)
    skipped: list[str] = []
    for unit in checkpoint.newest_first(checkpoint.units(p)):
        try:
            restored = _build(checkpoint.load(unit), unit, device)
        except CheckpointError as exc:
            skipped.append(f"{unit.name} ({str(exc).removeprefix('checkpoint: ')})")
            continue
        for what in skipped:
            print(f"mtrl: checkpoint {what} is unusable; using {unit.name}", file=sys.stderr)
        return restored
    if skipped:
        raise CheckpointError(f"checkpoint: run '{p}' has no usable checkpoint: {skipped[0]}")
    return _build(checkpoint.load(p), p, device)  # no unit at all: resolve's own one-line refusal


class Policy(NamedTuple):
    """A trained policy as evaluation and recording use it."""

    cfg: TrainConfig
    act: Callable[[np.ndarray], np.ndarray]
    """Deterministic actions ``[K, act]`` for observations ``[K, obs]`` (row k = task k)."""
    task_names: list[str]
    step: int


SINGLE_TASK = "single_task"
"""Folder of a single_task run's models: ``<run>/single_task/<task>.zip`` (stable-baselines3)."""


def load_policy(path: str | Path, device: str = "cpu") -> Policy:
    """The deterministic policy of an MT-SAC checkpoint (see :func:`restore`) or of a single_task run directory
    (one stable-baselines3 SAC per task, ``single_task/<task>.zip``, at the step meta.yaml records)."""
    p = Path(path)
    if not (p.is_dir() and (p / SINGLE_TASK).is_dir() and not (p / checkpoint.CHECKPOINTS).is_dir()):
        cfg, agent, state = restore(p, device)
        return Policy(cfg, lambda o: agent.act(o, deterministic=True), list(state["task_names"]), int(state["step"]))
    from stable_baselines3 import SAC

    from mtrl.config import read_mapping

    try:
        cfg = from_flat(flatten(read_mapping(p / "config.yaml", "checkpoint")))
        meta = read_mapping(p / "meta.yaml", "checkpoint", "a mapping")
    except ValueError as exc:
        raise CheckpointError(f"checkpoint: single_task run '{p}': {first_line(exc)}") from None
    names = [f.stem for f in sorted((p / SINGLE_TASK).glob("*.zip"))]
    models = {}
    for name in names:
        try:
            models[name] = SAC.load(p / SINGLE_TASK / f"{name}.zip", device=device)
        except Exception as exc:  # noqa: BLE001 - any failure to unpickle a model means the same to the user
            raise CheckpointError(
                f"checkpoint: cannot read '{p / SINGLE_TASK / name}.zip' ({first_line(exc)})"
            ) from None
    order = _task_order(cfg)
    if sorted(order) != sorted(names):
        raise CheckpointError(
            f"checkpoint: '{p / SINGLE_TASK}' holds models for {', '.join(names) or 'no task'}; the run has "
            f"{', '.join(order)}"
        )

    def act(obs: np.ndarray) -> np.ndarray:
        return np.stack([models[name].predict(o, deterministic=True)[0] for name, o in zip(order, obs)])

    return Policy(cfg, act, order, int(meta.get("final_step") or 0))


def _task_order(cfg: TrainConfig) -> list[str]:
    """The task names of a run's env, in env order, without building it."""
    if cfg.env.benchmark == "toy":
        return [f"reach-{k}" for k in range(cfg.env.toy_tasks)]
    from mtrl.envs.metaworld import task_names

    return task_names(cfg.env.benchmark)


def _build(state: dict[str, Any], where: Path, device: torch.device | str) -> tuple[TrainConfig, MTSAC, dict[str, Any]]:
    try:
        cfg = from_flat(state["config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint: '{where}' holds an unreadable config ({first_line(exc)})") from None
    agent = make_agent(cfg, state["obs_dim"], state["act_dim"], len(state["task_names"]), torch.device(device))
    try:
        agent.load_state_dict(state["agent"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint: '{where}' does not fit its own config ({first_line(exc)})") from None
    return cfg, agent, state
