"""What ``mtrl train --resume`` continues from, whatever was done to the run directory in between.

Any damage gets one of two answers:

- a **recovery** the user is told about in one line, after which the run can finish: a newest unit that is damaged
  (a file missing, truncated or replaced, replay and agent from different steps, a unit of another run) is set aside
  as ``checkpoints/<unit>.damaged`` and the newest usable unit is resumed; a stale ``latest`` pointer is ignored;
  an entry of ``checkpoints/`` that would block the next save (``latest`` that is a folder, leftover temporary
  writes) is moved aside or removed; a missing ``meta.yaml`` or ``config.yaml`` is written again from the checkpoint;
- a **refusal** in one line that changes nothing: no usable unit left in a run that had checkpoints (its curve would
  be overwritten by training from step 0), a ``config.yaml`` or ``meta.yaml`` that cannot be read, a ``config.yaml``
  edited so that it no longer fits the run's checkpoints (the keys that differ are named, with both values), a
  ``checkpoints`` that is not a folder.

:func:`plan_resume` only reads; :func:`ResumePlan.apply` makes the recoveries once everything has been checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtrl.config import BOOKKEEPING_KEYS, ConfigError, TrainConfig, to_flat
from mtrl.runs import checkpoint
from mtrl.runs.checkpoint import DAMAGED, CheckpointError

MAY_DIFFER = BOOKKEEPING_KEYS | {"total_steps"}
"""Config keys in which a run's config.yaml may differ from its checkpoints (an extended budget, another device,
other intervals): they change neither the networks nor the update."""


@dataclass
class ResumePlan:
    """The outcome of :func:`plan_resume`: where to continue from, and what to repair first."""

    state: dict[str, Any] | None
    """The agent state of the unit to resume (CPU tensors), None to start from step 0 (never checkpointed)."""
    buffer: dict[str, Any] | None
    """Its replay state."""
    unit: Path | None
    set_aside: list[Path] = field(default_factory=list)
    """Units (or blocking entries of ``checkpoints/``) to move out of the way, newest first."""
    notes: list[str] = field(default_factory=list)
    """One line per recovery, said to the user."""
    missing_meta: bool = False
    """meta.yaml is missing: written again (:meth:`apply`)."""

    def apply(self, run: Path, cfg: TrainConfig) -> list[str]:
        """Make the recoveries (set aside damaged units, rewrite a missing meta.yaml); returns the notes."""
        for path in self.set_aside:
            checkpoint.set_aside(path)
        checkpoint.clean_partial(run)
        if self.missing_meta:
            from mtrl.runs.rundir import run_metadata

            meta = run_metadata(cfg)
            meta.update(started=None, recreated="meta.yaml was missing at a resume; provenance is of that process")
            if self.state is not None:
                meta.update(final_step=int(self.state["step"]), wall_clock_s=float(self.state["wall_clock_s"]))
            checkpoint.write_text_atomic(run / "meta.yaml", yaml.safe_dump(meta, sort_keys=False))
        return self.notes


def config_differences(saved: dict[str, Any], cfg: TrainConfig, where: str = "config.yaml") -> list[str]:
    """``key: X in config.yaml, Y in the checkpoint`` for every key outside :data:`MAY_DIFFER` that differs."""
    now = to_flat(cfg)
    keys = sorted((set(now) | set(saved)) - MAY_DIFFER)
    return [
        f"{k}: {now.get(k)!r} in {where}, {saved.get(k)!r} in the checkpoint"
        for k in keys
        if now.get(k) != saved.get(k)
    ]


def _read_unit(unit: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Agent and replay state of one unit, checked to be whole and of the unit's own step; CheckpointError (one
    line) when it is not."""
    step = checkpoint.step_of(unit) or 0
    if not unit.is_dir():
        raise CheckpointError(f"'{unit.name}' is not a folder")
    state = checkpoint.load(unit)
    if state["step"] != step:
        raise CheckpointError(f"its checkpoint.pt is from step {state['step']}, not {step}")
    return state, checkpoint.load_buffer(unit / checkpoint.STATE, step)


def _reason(exc: CheckpointError) -> str:
    return str(exc).removeprefix("checkpoint: ")


def _meta_final_step(run: Path) -> tuple[int, bool]:
    """(the final step meta.yaml records, whether meta.yaml is missing); ConfigError when it cannot be read."""
    path = run / "meta.yaml"
    if not path.exists():
        return 0, True
    try:
        meta = yaml.safe_load(path.read_text())
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise ValueError("not a mapping")
        return int(meta.get("final_step") or 0), False
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, TypeError) as exc:
        first = " ".join(str(exc).split("\n")[0].split())[:120]
        raise ConfigError(
            f"--resume: '{path}' cannot be read ({first}); fix it, or delete it and --resume writes a new one"
        ) from None


def newest_step(run: Path) -> int | None:
    """The step of a run's newest unit that can be read whole (agent and replay of its step), None without one."""
    for unit in checkpoint.newest_first(checkpoint.units(run)):
        try:
            return int(_read_unit(unit)[0]["step"])
        except CheckpointError:
            continue
    return None


def had_checkpoints(run: Path) -> bool:
    """Whether a run ever wrote a checkpoint: a unit-named entry in ``checkpoints/``, or meta.yaml recording a saved
    step (a run killed before its first checkpoint has neither)."""
    if checkpoint.units(run):
        return True
    try:
        return _meta_final_step(run)[0] > 0
    except ConfigError:
        return True  # meta.yaml unreadable: --resume says so


def plan_resume(run: Path, cfg: TrainConfig, at_most: int | None = None) -> ResumePlan:
    """Decide what ``--resume`` continues from (see the module docstring); reads only.

    :param cfg: the run's config as ``--resume`` resolved it (its config.yaml with the command line's changes).
    :param at_most: a seed group's common step: units past it are set aside (the others of the group did not reach
        them), and with none left at or below it the run starts from step 0 with the group.
    :raises CheckpointError: nothing usable to resume in a run that had checkpoints; one line.
    :raises ConfigError: config.yaml or meta.yaml unusable, or ``total_steps`` below the checkpoint's step.
    """
    final_step, missing_meta = _meta_final_step(run)
    folder = run / checkpoint.CHECKPOINTS
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(
            f"checkpoint: '{folder}' is a file, expected the folder of the run's checkpoints; move it away"
        )
    units = checkpoint.newest_first(checkpoint.units(run))
    ahead = [u for u in units if at_most is not None and (checkpoint.step_of(u) or 0) > at_most]
    units = [u for u in units if u not in ahead]
    damaged: list[tuple[Path, str]] = []
    mismatched: tuple[Path, list[str]] | None = None
    chosen: tuple[Path, dict[str, Any], dict[str, Any]] | None = None
    for unit in units:
        try:
            state, buffer = _read_unit(unit)
        except CheckpointError as exc:
            damaged.append((unit, _reason(exc)))
            continue
        differences = config_differences(state["config"], cfg)
        if differences:  # a unit of another run, or config.yaml edited: decided below
            mismatched = mismatched or (unit, differences)
            damaged.append((unit, f"it is not of this run's config ({differences[0]})"))
            continue
        chosen = (unit, state, buffer)
        break
    group_notes = [
        f"checkpoint {u.name} is past step {at_most}, the newest step every run of its seed group saved; set aside "
        f"as {u.name}{DAMAGED}"
        for u in ahead
    ]
    if chosen is None and ahead and not damaged and mismatched is None:  # the group starts again from step 0
        return ResumePlan(None, None, None, ahead, group_notes, missing_meta)
    if chosen is None:
        if mismatched is not None:  # no unit fits config.yaml: config.yaml was edited
            unit, differences = mismatched
            raise ConfigError(
                f"--resume: '{run / 'config.yaml'}' does not fit the run's checkpoint {unit.name}: "
                + "; ".join(differences)
            )
        if damaged or final_step > 0:
            what = (
                f"its newest checkpoint {damaged[0][0].name} is unusable ({damaged[0][1]})"
                if damaged
                else f"meta.yaml records a checkpoint at step {final_step} but '{folder}' holds none"
            )
            raise CheckpointError(
                f"checkpoint: run '{run}' has no usable checkpoint left: {what}; training it again from step 0 "
                f"would overwrite its logged curve. To start over, delete '{run}' or train a new run from its config: "
                f"mtrl train --config {run / 'config.yaml'} --run_dir {run.parent} --run_name NEW_NAME"
            )
        notes = ["meta.yaml was missing; written again"] if missing_meta else []
        return ResumePlan(None, None, None, [], notes, missing_meta)
    unit, state, buffer = chosen
    if cfg.total_steps < state["step"]:
        raise ConfigError(
            f"total_steps: got {cfg.total_steps}, but the checkpoint of '{run}' is at step {state['step']}; "
            f"expected at least {state['step']}"
        )
    newer = [(u, why) for u, why in damaged if (checkpoint.step_of(u) or 0) > state["step"]]
    notes = [
        f"checkpoint {u.name} is unusable ({why}); set aside as {u.name}{DAMAGED}, resuming from step {state['step']}"
        for u, why in newer
    ]
    set_aside = ahead + [u for u, _ in newer]
    notes = group_notes + notes
    pointer = folder / checkpoint.LATEST
    if pointer.exists() and not pointer.is_file():
        set_aside.append(pointer)
        notes.append(f"'{pointer}' is not a file; set aside as {checkpoint.LATEST}{DAMAGED}")
    elif pointer.is_file():
        named = pointer.read_text(errors="replace").strip()
        if named != unit.name and not any(u.name == named for u in set_aside):
            notes.append(f"checkpoints/latest named {named[:60]!r}, which is not a usable unit; resuming {unit.name}")
    leftovers = sorted(p.name for p in folder.glob(f"{checkpoint.TMP}*"))
    if leftovers:
        notes.append(f"removed the leftovers of an interrupted checkpoint write: {', '.join(leftovers)}")
    if missing_meta:
        notes.append("meta.yaml was missing; written again from the checkpoint (its start time is unknown)")
    return ResumePlan(state, buffer, unit, set_aside, notes, missing_meta)


def group_members(run: Path) -> list[Path]:
    """The run directories of the seed group ``run`` was trained in (``group`` in its meta.yaml, the runs side by
    side in one folder), ``run`` among them; ``[run]`` for a solo run.

    :raises ConfigError: a run of the group is missing, or meta.yaml cannot be read; one line.
    """
    path = run / "meta.yaml"
    if not path.is_file():
        return [run]
    try:
        meta = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return [run]  # plan_resume says what is wrong with it
    group = meta.get("group") if isinstance(meta, dict) else None
    if not isinstance(group, dict) or not isinstance(group.get("runs"), list):
        return [run]
    members = [run.parent / str(name) for name in group["runs"]]
    if run.name not in group["runs"]:
        raise ConfigError(f"--resume: '{path}' names a seed group without this run; fix or delete its group entry")
    for member in members:
        if not (member / "config.yaml").is_file() and not checkpoint.units(member):
            raise ConfigError(
                f"--resume: '{run}' was trained in a seed group of {len(members)} runs, and its run '{member}' is "
                "missing; a group resumes together: put it back next to the others"
            )
    return members


def plan_group_resume(runs: list[Path], cfgs: list[TrainConfig]) -> list[ResumePlan]:
    """:func:`plan_resume` for every run of a seed group, at the newest step all of them saved (a crash between the
    saves of one step leaves some runs one unit ahead: those units are set aside, said in one line each); reads
    only. Raises as :func:`plan_resume` does for the first run that cannot be resumed."""
    plans = [plan_resume(r, c) for r, c in zip(runs, cfgs)]
    steps = [int(p.state["step"]) if p.state is not None else 0 for p in plans]
    common = min(steps)
    return [plan_resume(r, c, at_most=common) if s > common else p for r, c, p, s in zip(runs, cfgs, plans, steps)]
