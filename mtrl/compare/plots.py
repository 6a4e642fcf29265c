"""Plots of a setting: success curves during training (mean over seeds with a bootstrap band) and the IQM of final
success with the probability of improvement over the baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mtrl.compare.aggregate import SettingResult
from mtrl.compare.stats import mean_curve_ci
from mtrl.runs.scalars import FINAL_WINDOW, final_rule


def _steps_fmt(x: float, _pos: Any = None) -> str:
    if abs(x) >= 1e6:
        return f"{x / 1e6:g}M"
    if abs(x) >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def _wrap(text: str, width: int) -> str:
    """Wrap a `` · ``-separated description between its parts, lines at most ``width`` characters where possible."""
    lines: list[str] = []
    for part in text.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return "\n".join(lines)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _seeds_phrase(setting: SettingResult) -> str:
    counts = {len(m.runs) for m in setting.methods}
    if len(counts) != 1:
        return "seeds per method in the legend"
    n = counts.pop()
    return f"{n} seed{'' if n == 1 else 's'} per method"


def plot_success_curves(
    setting: SettingResult, path: Path, final_window: float = FINAL_WINDOW, reps: int = 2000, seed: int = 0
) -> Path:
    """Mean success rate over tasks against environment steps per task: one line per method, mean over seeds with
    a shaded 95% bootstrap band across seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(9.5, 5.8), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for m, color in zip(setting.methods, _colors(len(setting.methods)), strict=True):
        grid = np.unique(np.concatenate([r.steps for r in m.runs]))
        curves = np.stack([np.interp(grid, r.steps, r.success, left=np.nan, right=np.nan) for r in m.runs])
        mean, low, high = mean_curve_ci(curves, reps=reps, seed=seed)
        base = " (baseline)" if m.label == setting.baseline else ""
        ax.plot(grid, mean, color=color, lw=2, label=f"{m.label}{base}, n={len(m.runs)}")
        if len(m.runs) > 1:
            ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0)
    ax.set_xlabel("environment steps per task")
    ax.set_ylabel("success rate (mean over tasks)")
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_formatter(FuncFormatter(_steps_fmt))
    ax.grid(alpha=0.3)
    ax.legend(title="method, seeds", loc="best", fontsize=9)
    ax.set_title(
        f"{_wrap(setting.description, 100)}\nSuccess rate during training ({_seeds_phrase(setting)}): "
        "line = mean over seeds, band = 95% bootstrap CI over seeds",
        fontsize=10,
    )
    fig.supxlabel(
        "Each point: success rate at one evaluation (eval/success_rate = fraction of tasks solved, averaged over "
        f"tasks).\nIn iqm.png and summary.md, final success = {final_rule(final_window)}.",
        fontsize=8,
        color="0.35",
    )
    fig.savefig(path)
    return path


def plot_iqm(setting: SettingResult, path: Path, final_window: float = FINAL_WINDOW) -> Path:
    """Horizontal interval plot of the IQM of final success with 95% CI and the seeds as dots; next to it the
    probability of improvement over the baseline with 95% CI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = setting.methods
    with_poi = len(methods) > 1
    height = 2.2 + 0.55 * len(methods)
    fig = Figure(figsize=(12 if with_poi else 7.5, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True, width_ratios=[1.3, 1]) if with_poi else [fig.add_subplot()]
    colors = _colors(len(methods))
    ys = np.arange(len(methods))
    ax = axes[0]
    for y, m, color in zip(ys, methods, colors, strict=True):
        ax.hlines(y, *m.iqm_ci, color=color, lw=6, alpha=0.45)
        ax.plot([m.iqm], [y], "|", color=color, ms=22, mew=3)
        jitter = np.linspace(-0.12, 0.12, len(m.finals)) if len(m.finals) > 1 else np.zeros(1)
        ax.scatter(m.finals, y + 0.22 + jitter * 0.4, s=14, color="0.25", zorder=3)
    ax.set_yticks(ys, [f"{m.label} (n={len(m.runs)})" for m in methods])
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(f"final success rate (mean over tasks; evaluations in the last {final_window:.0%} of steps)")
    ax.set_title("IQM over seeds: bar = 95% bootstrap CI, tick = IQM, dots = seeds", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if with_poi:
        ax2 = axes[1]
        for y, m, color in zip(ys, methods, colors, strict=True):
            if m.poi is None or m.poi_ci is None:
                ax2.text(0.02, float(y), "baseline (the reference)", ha="left", va="center", fontsize=9, color="0.35")
                continue
            ax2.hlines(y, *m.poi_ci, color=color, lw=6, alpha=0.45)
            ax2.plot([m.poi], [y], "|", color=color, ms=22, mew=3)
        ax2.axvline(0.5, color="0.4", ls="--", lw=1)
        ax2.set_xlim(-0.02, 1.02)
        ax2.set_xlabel(f"P(final success of a run > that of a run of {setting.baseline})")
        ax2.set_title(f"Probability of improvement over {setting.baseline} (0.5 = no difference)", fontsize=10)
        ax2.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"{_wrap(setting.description, 120)}\nFinal success = {final_rule(final_window)} "
        "(not the max over training); IQM = mean of the middle 50% of seeds",
        fontsize=10,
    )
    fig.savefig(path)
    return path
