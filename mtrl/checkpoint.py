"""Checkpoints: written atomically (temp file, then rename), loaded with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A missing or unreadable checkpoint; the message is one line."""


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` so that a crash mid-write never leaves a truncated file behind."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run directory holding ``checkpoint.pt``."""
    p = Path(path)
    if p.is_dir() and not (p / CHECKPOINT).exists() and (p / "single_task").is_dir():
        raise CheckpointError(
            f"checkpoint: '{path}' is a single_task run (one stable-baselines3 model per task in "
            f"{p / 'single_task'}/, load them with stable_baselines3.SAC.load); evaluate and record take MT-SAC runs"
        )
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise CheckpointError(f"checkpoint: '{path}' does not exist (give a run directory or a checkpoint.pt file)")
    return p


def load(path: str | Path) -> dict[str, Any]:
    """The saved state of a checkpoint (a run directory or checkpoint.pt), every tensor on the CPU.

    Always mapped to the CPU, whatever device the run uses: random-generator states must stay CPU byte tensors
    (``Generator.set_state`` and ``torch.set_rng_state`` reject CUDA tensors); ``load_state_dict`` moves the rest.
    """
    p = resolve(path)
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"checkpoint: cannot read '{p}' ({type(exc).__name__}: {exc})") from None
