"""Aggregation: runs grouped by setting and method, each method's seeds summarised with IQM, CIs and the
probability of improvement over a baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtrl.compare.methods import (
    NOT_METHOD_KEYS,
    SETTING_KEYS,
    describe_setting,
    differing_keys,
    method_labels,
    regularizers_on,
)
from mtrl.compare.reading import Run, SetApart
from mtrl.compare.stats import bootstrap_ci, iqm, probability_of_improvement


@dataclass
class MethodResult:
    """Aggregate of one method's seeds within one setting."""

    label: str
    runs: list[Run]
    """Runs ordered by seed."""
    finals: np.ndarray
    """Final success per seed (same order as ``runs``). [S]"""
    iqm: float
    iqm_ci: tuple[float, float]
    mean: float
    poi: float | None
    """P(a run of this method beats a run of the baseline); None for the baseline itself."""
    poi_ci: tuple[float, float] | None
    sps: float | None
    wall_clock_s: float | None
    task_final: dict[str, float]
    """Mean over seeds of each task's final success."""
    config: dict[str, Any]
    """Values of the method-defining keys (those that differ between methods of the setting)."""

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]


@dataclass
class SettingResult:
    """One setting (benchmark, protocol, budget, ...) and its methods."""

    description: str
    config: dict[str, Any]
    """Values of the setting keys."""
    methods: list[MethodResult]
    """Baseline first, then by label."""
    baseline: str
    method_keys: list[str]
    """Config keys that differ between the runs of this setting (they define the methods)."""
    out_dir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def n_runs(self) -> int:
        return sum(len(m.runs) for m in self.methods)


@dataclass
class Comparison:
    settings: list[SettingResult]
    """Main setting (most runs) first."""
    set_apart: list[SetApart]
    final_window: float
    reps: int
    seed: int
    summary: str = ""
    """Markdown written to ``summary.md``."""
    files: list[Path] = field(default_factory=list)
    studies: list[Any] = field(default_factory=list)
    """The study view of each setting that is a study (:class:`mtrl.compare.study.Study`)."""


def _seed_sort_key(run: Run) -> tuple[int, Any]:
    s = run.seed
    return (0, s) if isinstance(s, (int, float)) else (1, str(s))


def aggregate_setting(
    runs: list[Run], baseline: str | None, reps: int, seed: int, out_dir: Path
) -> tuple[SettingResult, list[SetApart]]:
    configs = [r.config for r in runs]
    labels = method_labels(configs)
    method_keys = differing_keys(configs, exclude=set(SETTING_KEYS) | NOT_METHOD_KEYS)
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(repr(run.config.get(k)) for k in method_keys), []).append(run)
    label_by_run = {id(run): label for run, label in zip(runs, labels, strict=True)}
    label_of: dict[tuple[str, ...], str] = {}
    for sig, members in groups.items():
        label = label_by_run[id(members[0])]
        while label in label_of.values():  # two configs that format alike: keep them apart anyway
            label += "'"
        label_of[sig] = label

    set_apart: list[SetApart] = []
    notes: list[str] = []
    by_label: dict[str, list[Run]] = {}
    for sig, members in groups.items():
        kept: dict[str, Run] = {}
        for run in sorted(members, key=lambda r: (str(r.meta.get("start_time", "")), r.path.stat().st_mtime)):
            key = repr(run.seed)
            if key in kept:
                set_apart.append(
                    SetApart(kept[key].path, f"duplicate of seed {run.seed} of method {label_of[sig]}: kept {run.path}")
                )
            kept[key] = run
        by_label[label_of[sig]] = sorted(kept.values(), key=_seed_sort_key)

    plain = {lab: n for lab, rs in by_label.items() if (n := regularizers_on(rs[0].config)) is not None}
    if baseline is None or baseline not in by_label:
        if baseline is not None:
            notes.append(f"baseline '{baseline}' is not a method of this setting; using the default instead")
        baseline = min(plain, key=lambda s: (plain[s], len(s), s)) if plain else sorted(by_label)[0]
    order = [baseline, *sorted(lab for lab in by_label if lab != baseline)]

    base_finals = np.array([r.final for r in by_label[baseline]])
    methods = []
    for i, label in enumerate(order):
        members = by_label[label]
        finals = np.array([r.final for r in members])
        point, low, high = bootstrap_ci(iqm, finals, reps=reps, seed=seed + i)
        poi = poi_ci = None
        if label != baseline:
            p, plo, phi = bootstrap_ci(probability_of_improvement, finals, base_finals, reps=reps, seed=seed + 1000 + i)
            poi, poi_ci = p, (plo, phi)
        sps = [r.sps for r in members if r.sps is not None]
        wall = [r.wall_clock_s for r in members if r.wall_clock_s is not None]
        tasks = sorted({t for r in members for t in r.task_final})
        task_final = {t: float(np.mean([r.task_final[t] for r in members if t in r.task_final])) for t in tasks}
        methods.append(
            MethodResult(
                label=label,
                runs=members,
                finals=finals,
                iqm=point,
                iqm_ci=(low, high),
                mean=float(finals.mean()),
                poi=poi,
                poi_ci=poi_ci,
                sps=float(np.mean(sps)) if sps else None,
                wall_clock_s=float(np.mean(wall)) if wall else None,
                task_final=task_final,
                config={k: members[0].config.get(k) for k in method_keys},
            )
        )
    setting_cfg = {k: runs[0].config.get(k) for k in SETTING_KEYS}
    result = SettingResult(
        description=describe_setting(runs[0].config),
        config=setting_cfg,
        methods=methods,
        baseline=baseline,
        method_keys=method_keys,
        out_dir=out_dir,
        notes=notes,
    )
    return result, set_apart
