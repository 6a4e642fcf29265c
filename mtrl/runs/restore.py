"""Rebuild the agent of a checkpoint, for evaluation, recording and anything else that reads a trained policy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from mtrl.agents.build import make_agent
from mtrl.agents.mtsac import MTSAC
from mtrl.config import TrainConfig, from_flat
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
    for unit in sorted(checkpoint.units(p), key=checkpoint.step_of, reverse=True):
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
