"""The Markdown report of a comparison: ``summary.md`` and the tables ``mtrl compare`` prints."""

from __future__ import annotations

import math
from pathlib import Path

from mtrl.compare.aggregate import Comparison, SettingResult
from mtrl.compare.methods import fmt_value
from mtrl.runs.scalars import final_rule
from mtrl.runs.tensorboard import SPS, SUCCESS


def _f2(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def methods_table(setting: SettingResult) -> str:
    """The per-method markdown table of one setting."""
    header = [
        "method",
        "seeds",
        "IQM final [95% CI]",
        "mean final",
        "per-seed finals (by seed)",
        f"P(improve over {setting.baseline}) [95% CI]",
        "steps/s",
        "wall-clock",
    ]
    rows = []
    for m in setting.methods:
        poi = "baseline" if m.poi is None or m.poi_ci is None else f"{m.poi:.2f} [{m.poi_ci[0]:.2f}, {m.poi_ci[1]:.2f}]"
        rows.append(
            [
                f"`{m.label}`",
                str(len(m.runs)),
                f"{m.iqm:.2f} [{m.iqm_ci[0]:.2f}, {m.iqm_ci[1]:.2f}]",
                f"{m.mean:.2f}",
                " ".join(f"{v:.2f}" for v in m.finals),
                poi,
                "n/a" if m.sps is None else f"{m.sps:,.0f}",
                _duration(m.wall_clock_s),
            ]
        )
    return _table(header, rows)


def task_table(setting: SettingResult) -> str:
    """Per-task final success (mean over seeds), one column per method; empty string when no per-task scalars."""
    tasks = sorted({t for m in setting.methods for t in m.task_final})
    if not tasks:
        return ""
    rows = [[t] + [_f2(m.task_final.get(t)) for m in setting.methods] for t in tasks]
    return _table(["task"] + [f"`{m.label}`" for m in setting.methods], rows)


def _rel(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def summary_markdown(result: Comparison, out: Path) -> str:
    """The full ``summary.md``: explanation, one section per setting, the runs set apart."""
    lines = [
        "# Run comparison",
        "",
        f"- **final success** of a run = {final_rule(result.final_window)}, of `{SUCCESS}` (success rate "
        "averaged over tasks); never the max over training.",
        "- **IQM** = interquartile mean over seeds (mean of the middle 50% of per-seed finals), with a 95% "
        f"percentile bootstrap CI over seeds ({result.reps} resamples, seed {result.seed}).",
        "- **P(improve)** = probability that a random run of the method ends with a higher final success than a "
        "random run of the baseline (ties count 1/2), with a 95% bootstrap CI; 0.5 = no difference.",
        f"- **steps/s** = mean of `{SPS}` (vector-env steps per second); **wall-clock** = training time per run "
        "from meta.yaml, mean over seeds.",
        "- Runs of different settings (benchmark, protocol, reward version, episode length, step budget, evaluation "
        "schedule) are never pooled; each setting has its own section.",
        "",
    ]
    for s in result.settings:
        rel = _rel(s.out_dir, out)
        prefix = "" if rel in ("", ".") else rel + "/"
        lines += [
            f"## {s.description}",
            "",
            f"{plural(s.n_runs, 'run')}, {plural(len(s.methods), 'method')}. Baseline: `{s.baseline}`. "
            + (
                f"Methods differ in: {', '.join(f'`{k}`' for k in s.method_keys)}."
                if s.method_keys
                else "All runs share one configuration apart from the seed."
            ),
            "",
            *(
                [
                    f"Study report (each method against the best and the plain unitary variant, verdicts): "
                    f"[{prefix}study.md]({prefix}study.md)",
                    "",
                ]
                if any(view.setting is s for view in result.studies)
                else []
            ),
            f"![success rate during training]({prefix}success_curves.png)",
            "",
            f"![IQM of final success]({prefix}iqm.png)",
            "",
            methods_table(s),
            "",
        ]
        if s.method_keys:
            lines += ["Method labels:", ""]
            for m in s.methods:
                values = ", ".join(f"`{k}={fmt_value(v) if v is not None else 'unset'}`" for k, v in m.config.items())
                lines.append(f"- `{m.label}`: {values}; seeds {', '.join(map(str, m.seeds))}")
            lines.append("")
        small = [m.label for m in s.methods if len(m.runs) < 5]
        if small:
            lines += [f"Fewer than 5 seeds (wide, unreliable CIs): {', '.join(f'`{x}`' for x in small)}.", ""]
        tt = task_table(s)
        if tt:
            window = f"{result.final_window:.0%}"
            lines += [
                f"### Per-task final success (mean over seeds; evaluations in the last {window} of steps)",
                "",
                tt,
                "",
            ]
        lines += [f"Note: {note}." for note in s.notes]
    lines += ["## Runs set apart", ""]
    if result.set_apart:
        lines += [f"- `{a.path}`: {a.reason}" for a in result.set_apart]
    else:
        lines.append("None.")
    lines.append("")
    return "\n".join(lines)
