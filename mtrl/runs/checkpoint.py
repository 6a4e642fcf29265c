"""Checkpoints: one consistent unit per save, written so that a reader sees the old unit or the new one, never a mix.

Layout in a run directory::

    checkpoints/
        step_0000002000/        one unit: checkpoint.pt (agent, optimizers, combiner states, RNGs, step, config)
            checkpoint.pt                 + buffer.pt (replay, with the same step)
            buffer.pt
        step_0000004000/
        latest                  the name of the newest complete unit (one line)

A save writes the unit's files into ``checkpoints/.tmp-step_.../`` (each file flushed and fsynced), renames that
folder to ``step_...`` (atomic), fsyncs the folder, then replaces ``latest`` atomically (temp file + ``os.replace``),
and only then prunes older units (the newest :data:`KEEP` stay). A kill at any moment leaves the previous unit
valid and pointed to; a leftover ``.tmp-*`` folder is removed by the next save or resume and never read. A failing
write (disk full, permission lost, ...) raises :class:`CheckpointWriteError` with one line naming the path and the
cause, after removing its partial folder; the previous unit stays.

Loading maps every tensor to the CPU (random-generator states must stay CPU byte tensors on any device) and checks
that the unit's pieces agree (:func:`load_buffer`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

CHECKPOINTS = "checkpoints"
"""Folder of the checkpoint units in a run directory."""
STATE = "checkpoint.pt"
"""The agent state file of a unit."""
BUFFER = "buffer.pt"
"""The replay file of a unit."""
LATEST = "latest"
"""The pointer file: the folder name of the newest complete unit."""
KEEP = 2
"""Complete units kept after a save (the newest ones)."""
_PREFIX = "step_"
TMP = ".tmp-"
DAMAGED = ".damaged"
"""Suffix of a unit (or pointer) set aside because it could not be used (``step_0000000300.damaged``, ``-2``...)."""

#: test hook for the crash harness (scripts/crash_harness.py): ``MTRL_CRASH_POINT=<phase>`` kills the process with
#: SIGKILL at that phase of the next save: ``state`` (state file written), ``buffer`` (both written), ``rename`` (unit
#: in place, pointer not yet moved), ``pointer`` (pointer moved, old units not yet pruned)
CRASH_POINT_ENV = "MTRL_CRASH_POINT"


class CheckpointError(RuntimeError):
    """A missing, unreadable or inconsistent checkpoint; the message is one line."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, permissions, ...); the previous one stays valid."""


def unit_name(step: int) -> str:
    return f"{_PREFIX}{step:010d}"


def step_of(unit: Path) -> int | None:
    """The step in a unit's name (``step_0000004000`` -> 4000); None for any other name (``.damaged`` included)."""
    digits = unit.name[len(_PREFIX) :]
    return int(digits) if unit.name.startswith(_PREFIX) and digits.isdigit() else None


def newest_first(paths: list[Path]) -> list[Path]:
    """Unit-named paths sorted by their step, newest first."""
    return sorted(paths, key=lambda u: step_of(u) or 0, reverse=True)


def _complete(unit: Path) -> bool:
    return unit.is_dir() and (unit / STATE).is_file() and (unit / BUFFER).is_file() and step_of(unit) is not None


def units(run: Path) -> list[Path]:
    """Every entry of a run's ``checkpoints/`` named like a unit (complete or not, folder or not)."""
    folder = run / CHECKPOINTS
    return [u for u in folder.iterdir() if step_of(u) is not None] if folder.is_dir() else []


def _crash_point(phase: str) -> None:
    if os.environ.get(CRASH_POINT_ENV) == phase:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_file(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    tmp = path.with_name(f"{TMP}{path.name}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def clean_partial(run: Path) -> None:
    """Remove the leftovers of interrupted saves (``checkpoints/.tmp-*``)."""
    folder = run / CHECKPOINTS
    if folder.is_dir():
        for stale in folder.glob(f"{TMP}*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _one_line(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(str(text).split())


def save(run: Path, step: int, state: dict[str, Any], buffer_state: dict[str, Any], keep: int = KEEP) -> Path:
    """Write one unit for ``step`` (``state`` and ``buffer_state`` each get ``step`` added) and point ``latest`` at
    it; returns the unit's folder.

    :raises CheckpointWriteError: the unit could not be written; nothing of it is left and ``latest`` still names
        the previous unit.
    """
    folder = run / CHECKPOINTS
    final = folder / unit_name(step)
    tmp = folder / f"{TMP}{final.name}"
    try:
        folder.mkdir(exist_ok=True)
        clean_partial(run)
        if _complete(final):  # this step is saved already (the loop never saves a step twice; be safe)
            write_text_atomic(folder / LATEST, final.name + "\n")
            return final
        if final.exists() or final.is_symlink():  # an incomplete or damaged unit of this step: never let it block
            aside = set_aside(final)
            print(f"mtrl: checkpoint {final.name} was incomplete; set aside as {aside.name}", file=sys.stderr)
        tmp.mkdir()
        _save_file({**state, "step": step}, tmp / STATE)
        _crash_point("state")
        _save_file({**buffer_state, "step": step}, tmp / BUFFER)
        _crash_point("buffer")
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(folder)
        _crash_point("rename")
        write_text_atomic(folder / LATEST, final.name + "\n")
        _fsync_dir(folder)
        _crash_point("pointer")
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest(run)
        kept = f"the checkpoint at step {step_of(previous)} is kept" if previous else "no earlier checkpoint exists"
        raise CheckpointWriteError(f"checkpoint: cannot write '{tmp}' ({_one_line(exc)}); {kept}") from None
    _prune(folder, final, keep)
    return final


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.damaged`` (``.damaged-2``, ... when taken); returns the new path."""
    target, i = path.with_name(path.name + DAMAGED), 2
    while target.exists() or target.is_symlink():
        target, i = path.with_name(f"{path.name}{DAMAGED}-{i}"), i + 1
    os.replace(path, target)
    return target


def _prune(folder: Path, current: Path, keep: int) -> None:
    units = sorted((u for u in folder.iterdir() if _complete(u)), key=lambda u: step_of(u) or 0, reverse=True)
    for old in units[keep:]:
        if old != current:
            shutil.rmtree(old, ignore_errors=True)


def latest(run: Path) -> Path | None:
    """The newest complete unit of a run directory: the one ``latest`` names, or (pointer missing or stale) the
    complete unit with the highest step; None when there is none."""
    folder = run / CHECKPOINTS
    pointer = folder / LATEST
    if pointer.is_file():
        unit = folder / pointer.read_text().strip()
        if unit.parent == folder and _complete(unit):
            return unit
    if not folder.is_dir():
        return None
    units = [u for u in folder.iterdir() if _complete(u)]
    return max(units, key=lambda u: step_of(u) or 0) if units else None


def resolve(path: str | Path) -> Path:
    """The state file of a checkpoint given as a run directory (its newest unit), a unit folder, or a unit's
    ``checkpoint.pt``."""
    p = Path(path)
    if p.is_dir() and (p / "single_task").is_dir() and not (p / CHECKPOINTS).is_dir():
        raise CheckpointError(
            f"checkpoint: '{path}' is a single_task run: one stable-baselines3 model per task in "
            f"{p / 'single_task'}/ (stable_baselines3.SAC.load), no MT-SAC checkpoint"
        )
    if p.is_dir() and (p / CHECKPOINTS).is_dir():
        unit = latest(p)
        if unit is None:
            raise CheckpointError(f"checkpoint: run '{path}' has no complete checkpoint yet")
        return unit / STATE
    if p.is_dir() and (p / STATE).is_file():
        return p / STATE
    if p.is_file():
        return p
    if p.is_dir():
        raise CheckpointError(
            f"checkpoint: '{path}' holds no checkpoint (give a run directory, a checkpoint folder or checkpoint.pt)"
        )
    raise CheckpointError(f"checkpoint: '{path}' does not exist (give a run directory, a checkpoint folder or file)")


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"checkpoint: cannot read '{path}' ({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(obj, dict) or "step" not in obj:
        raise CheckpointError(f"checkpoint: '{path}' is not an mtrl {what} file")
    return obj


def load(path: str | Path) -> dict[str, Any]:
    """The agent state of a checkpoint (run directory, unit folder or state file), every tensor on the CPU.

    Always mapped to the CPU, whatever device the run uses: random-generator states must stay CPU byte tensors
    (``Generator.set_state`` and ``torch.set_rng_state`` reject CUDA tensors); ``load_state_dict`` moves the rest.
    """
    p = resolve(path)
    state = _read(p, "checkpoint")
    for key in ("agent", "config", "task_names"):
        if key not in state:
            raise CheckpointError(f"checkpoint: '{p}' is not an mtrl checkpoint (no '{key}')")
    return state


def load_buffer(state_file: Path, step: int) -> dict[str, Any]:
    """The replay of the unit holding ``state_file``, checked to be saved at the same ``step`` as the agent."""
    path = state_file.parent / BUFFER
    if not path.is_file():
        raise CheckpointError(f"checkpoint: '{state_file.parent}' has no {BUFFER}; it is not a complete checkpoint")
    buffer = _read(path, "replay")
    if buffer["step"] != step:
        raise CheckpointError(
            f"checkpoint: '{path}' is from step {buffer['step']} but its agent state from step {step}; "
            "the checkpoint is inconsistent"
        )
    return buffer
