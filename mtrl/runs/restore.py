"""Rebuild the agent of a checkpoint, for evaluation, recording and anything else that reads a trained policy."""

from __future__ import annotations

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
    ``(config, agent, raw state)``."""
    state = checkpoint.load(path)
    cfg = from_flat(state["config"])
    agent = make_agent(cfg, state["obs_dim"], state["act_dim"], len(state["task_names"]), torch.device(device))
    try:
        agent.load_state_dict(state["agent"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint: '{path}' does not fit its own config ({first_line(exc)})") from None
    return cfg, agent, state
