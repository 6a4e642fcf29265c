"""Reading runs for a comparison: find run directories, read each one's config, meta, evaluation curve and cost.

A run is read once into a :class:`Run`; its final success follows :func:`mtrl.runs.scalars.final_success`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mtrl.config import flatten
from mtrl.runs.scalars import FINAL_WINDOW, final_mask, final_success, read_scalars
from mtrl.runs.tensorboard import HPARAMS_SUFFIX, SPS, SPS_LEGACY, SUCCESS


class CompareError(Exception):
    """A user error; the message is one line."""


@dataclass
class Run:
    """One run directory, read once."""

    path: Path
    config: dict[str, Any]
    """Flat ``dotted.key: value`` config."""
    meta: dict[str, Any]
    steps: np.ndarray
    """Steps of the evaluations, ascending. [E]"""
    success: np.ndarray
    """``eval/success_rate`` at each evaluation (mean over tasks). [E]"""
    task_final: dict[str, float]
    """Final success of each task (:func:`final_success` of its curve)."""
    final: float
    """Final success: :func:`final_success` of ``eval/success_rate``."""
    n_final: int
    """Number of evaluations averaged into ``final``."""
    sps: float | None
    """Mean of ``train/sps`` (vector-env steps per second; ``charts/sps`` in runs of earlier versions), None when
    not logged."""
    wall_clock_s: float | None
    """Training seconds from meta.yaml, None when missing."""
    has_hparams: bool = False

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


@dataclass
class SetApart:
    """A run left out of a comparison, and why."""

    path: Path
    reason: str


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories (folders holding ``config.yaml``) given directly or found recursively under ``paths``.

    :raises CompareError: a path does not exist, or no run directory was found.
    """
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise CompareError(f"path '{p}' does not exist")
        if p.is_file():
            p = p.parent if p.name == "config.yaml" else p
            if not (p / "config.yaml").is_file():
                raise CompareError(f"'{p}' is a file, expected a run directory or a folder of runs")
        if (p / "config.yaml").is_file():
            found[p] = None
            continue
        for cfg in sorted(p.rglob("config.yaml")):
            found[cfg.parent] = None
    if not found:
        raise CompareError(
            f"no run directories (folders holding config.yaml) found under: {', '.join(map(str, paths))}"
        )
    return list(found)


def read_yaml(path: Path) -> dict[str, Any]:
    """A run's YAML file (config.yaml, meta.yaml) as flat keys; empty when the file is absent. Raises ``OSError``,
    ``UnicodeDecodeError``, ``yaml.YAMLError`` or ``ValueError`` (not a mapping) when it cannot be read."""
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a mapping")
    return flatten(data)


def load_run(run_dir: str | Path, final_window: float = FINAL_WINDOW) -> Run:
    """Read one run: config, meta, evaluation curve, per-task finals, steps/s and wall-clock.

    :raises ValueError: with a one-line reason when the run cannot be used (bad YAML, no evaluations).
    """
    path = Path(run_dir)
    files = {}
    for name in ("config.yaml", "meta.yaml"):
        try:
            files[name] = read_yaml(path / name)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as exc:
            raise ValueError(f"unreadable {name} ({' '.join(str(exc).split())[:120]})") from None
    config, meta = files["config.yaml"], files["meta.yaml"]
    df = read_scalars(path, keep=lambda tag: tag.startswith(SUCCESS) or tag in (SPS, SPS_LEGACY))
    succ = df[df["tag"] == SUCCESS]
    if succ.empty:
        raise ValueError(f"no evaluations (no '{SUCCESS}' scalars in its event files)")
    steps = succ["step"].to_numpy(dtype=np.int64)
    success = succ["value"].to_numpy(dtype=float)
    total = config.get("total_steps")
    total = total if isinstance(total, (int, float)) and not isinstance(total, bool) else None
    task_final = {
        tag[len(SUCCESS) + 1 :]: final_success(g["step"].to_numpy(), g["value"].to_numpy(), total, final_window)
        for tag, g in df[df["tag"].str.startswith(SUCCESS + "/")].groupby("tag", sort=True)
    }
    sps_values = df.loc[df["tag"].isin((SPS, SPS_LEGACY)), "value"]
    wall = meta.get("wall_clock_s")
    return Run(
        path=path,
        config=config,
        meta=meta,
        steps=steps,
        success=success,
        task_final=task_final,
        final=final_success(steps, success, total, final_window),
        n_final=int(final_mask(steps, total, final_window).sum()),
        sps=float(sps_values.mean()) if len(sps_values) else None,
        wall_clock_s=float(wall) if isinstance(wall, (int, float)) and not isinstance(wall, bool) else None,
        has_hparams=any(path.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}")),
    )
