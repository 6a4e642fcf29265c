"""The study the package exists for: do MTO combiners beat unitary scalarization with standard regularizers?

A setting's methods fall into arms by their config (:func:`arm_of`):

- **unitary**: the ``mean`` combiner (unitary scalarization), plain or with regularizers (weight decay, LayerNorm,
  dropout);
- **static**: fixed task weights (``fixed``, and ``sum``, which weights every task 1), Xin et al. 2022's sweep;
- **combiner**: every other combiner, loss space or gradient space;
- **alternating**: Pascal et al. 2021's alternating update schedule.

Each method is set against the **best unitary** variant (the unitary method with the highest IQM of final success)
and against **plain unitary** (``mean`` with weight decay, LayerNorm and dropout all off): the probability of
improvement with its 95% stratified-bootstrap CI, and its IQM with its CI. The **verdict** against the best unitary
variant is ``better`` when the CI of P(improvement) lies above 0.5, ``worse`` when it lies below, else
``no different``. The stabilizers (gradient and Q clipping, reward normalization, temperature) are not arms: a study
holds them fixed across its runs, so they are part of the setting.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtrl.compare.aggregate import MethodResult, SettingResult
from mtrl.compare.reading import SetApart, read_yaml
from mtrl.compare.stats import bootstrap_ci, probability_of_improvement

ARMS: dict[str, str] = {
    "unitary": "unitary scalarization (plain and regularized)",
    "static": "static task weights (Xin et al. 2022)",
    "combiner": "MTO combiners",
    "alternating": "alternating update steps (Pascal et al. 2021)",
}
"""The arms of a study, in report order, with their titles."""
STATIC = ("fixed", "sum")
REGULARIZERS = ("weight_decay", "layer_norm", "dropout")
"""The regularizers of the unitary arm (on the actor or the critic); plain unitary has all of them off."""


def arm_of(config: dict[str, Any]) -> str:
    """The arm of a run's flat config (see the module docstring)."""
    if config.get("agent.schedule") == "alternating":
        return "alternating"
    combiner = str(config.get("combiner", config.get("combiner.name", "mean")))
    if combiner == "mean":
        return "unitary"
    return "static" if combiner in STATIC else "combiner"


def is_plain_unitary(config: dict[str, Any]) -> bool:
    """``mean`` with none of the unitary arm's regularizers on."""
    if arm_of(config) != "unitary":
        return False
    return not any(config.get(f"agent.{net}.{reg}") for net in ("actor", "critic") for reg in REGULARIZERS)


@dataclass(frozen=True)
class Versus:
    """One method against a reference method: P(improvement) with its CI, and the verdict at the CI's level."""

    poi: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if self.low > 0.5:
            return "better"
        if self.high < 0.5:
            return "worse"
        return "no different"


@dataclass
class StudyRow:
    method: MethodResult
    arm: str
    vs_best: Versus | None
    """None for the best unitary variant itself."""
    vs_plain: Versus | None
    """None for plain unitary itself, or where the study has none."""


@dataclass
class ArmCount:
    methods: int = 0
    runs: int = 0
    """Runs compared (finished)."""
    set_apart: int = 0
    """Runs of the arm found but not compared (unfinished, unreadable)."""
    missing: int = 0
    """Runs of the arm the spec names that have no run directory."""
    expected: int | None = None
    """Runs of the arm the spec names (None without a spec)."""


@dataclass
class Study:
    setting: SettingResult
    rows: list[StudyRow]
    """By arm (in :data:`ARMS` order), then by IQM, highest first."""
    best: str
    """Name of the best unitary variant (:func:`method_name`)."""
    plain: str | None
    """Name of plain unitary, None when the study has none."""
    arms: dict[str, ArmCount]
    missing: list[str] = field(default_factory=list)
    """One line per run that is missing or was not compared, with the reason."""
    reps: int = 2000

    @property
    def comparisons(self) -> int:
        """The verdicts that can come out better or worse by chance (one per method but the best unitary)."""
        return sum(r.vs_best is not None for r in self.rows)


def _versus(m: MethodResult, ref: MethodResult, reps: int, seed: int) -> Versus:
    poi, low, high = bootstrap_ci(probability_of_improvement, m.finals, ref.finals, reps=reps, seed=seed)
    return Versus(poi, low, high)


def study(
    setting: SettingResult,
    set_apart: Sequence[SetApart] = (),
    expected: Sequence[tuple[str, dict[str, Any]]] | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> Study | None:
    """The study view of one setting; None unless it has a unitary method and a method of another arm (or two
    unitary variants).

    :param set_apart: runs found but not compared, with their reasons (counted per arm where their config says).
    :param expected: ``(run name, flat config)`` of every run the study's sweep spec names, to count what is
        missing; None without a spec.
    """
    arms = {m.label: arm_of(m.runs[0].config) for m in setting.methods}
    unitary = [m for m in setting.methods if arms[m.label] == "unitary"]
    if not unitary or (len(set(arms.values())) < 2 and len(unitary) < 2):
        return None
    best = max(unitary, key=lambda m: (m.iqm, m.mean, -len(m.label)))  # ties: the simpler variant
    plains = [m for m in unitary if is_plain_unitary(m.runs[0].config)]
    plain = plains[0] if plains else None
    rows = []
    for i, m in enumerate(setting.methods):
        vs_best = None if m is best else _versus(m, best, reps, seed + 2000 + i)
        vs_plain = None if plain is None or m is plain else _versus(m, plain, reps, seed + 3000 + i)
        rows.append(StudyRow(m, arms[m.label], vs_best, vs_plain))
    order = list(ARMS)
    rows.sort(key=lambda r: (order.index(r.arm), -r.method.iqm, r.method.label))

    counts = {arm: ArmCount() for arm in ARMS}
    compared: set[str] = set()
    for m in setting.methods:
        counts[arms[m.label]].methods += 1
        counts[arms[m.label]].runs += len(m.runs)
        compared.update(r.path.name for r in m.runs)
    missing = []
    apart = {a.path.name: a for a in set_apart}
    for a in set_apart:
        config = _read_config(a.path)
        if config is not None:
            counts[arm_of(config)].set_apart += 1
    if expected is not None:
        for arm in counts.values():
            arm.expected = 0
        for name, config in expected:
            arm = counts[arm_of(config)]
            assert arm.expected is not None
            arm.expected += 1
            if name in compared:
                continue
            if name in apart:
                missing.append(f"`{name}`: {apart[name].reason}")
            else:
                arm.missing += 1
                missing.append(f"`{name}`: no run directory (not started, or elsewhere)")
    else:
        missing = [f"`{a.path.name}`: {a.reason}" for a in set_apart]
    plain_name = None if plain is None else method_name(plain)
    return Study(setting, rows, method_name(best), plain_name, counts, missing, reps)


def _read_config(run: Path) -> dict[str, Any] | None:
    """A set-apart run's flat config, None where it has none that can be read."""
    import yaml

    try:
        return read_yaml(run / "config.yaml") or None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError):
        return None


_RUN_SUFFIX = re.compile(r"__s\d+(__\d{8}-\d{6})?$")


def method_name(m: MethodResult) -> str:
    """The name a sweep gave the method (its runs' directory names without ``__s<seed>``, e.g. ``pcgrad`` or
    ``fixed-w3``), where all its runs share one; else the label ``mtrl compare`` derives from the config."""
    names = {_RUN_SUFFIX.sub("", r.path.name) for r in m.runs}
    return names.pop() if len(names) == 1 and all(_RUN_SUFFIX.search(r.path.name) for r in m.runs) else m.label


def _ci(v: Versus | None) -> str:
    return "—" if v is None else f"{v.poi:.2f} [{v.low:.2f}, {v.high:.2f}]"


def verdict_table(s: Study) -> str:
    """The short table: per method, better / no different / worse than the best unitary variant."""
    lines = ["| arm | method | IQM [95% CI] | verdict vs best unitary |", "|---|---|---|---|"]
    for r in s.rows:
        m = r.method
        verdict = "best unitary (reference)" if r.vs_best is None else r.vs_best.verdict
        if len(m.runs) < 5:
            verdict += f" ({len(m.runs)} seeds: unreliable)"
        ci = f"{m.iqm:.2f} [{m.iqm_ci[0]:.2f}, {m.iqm_ci[1]:.2f}]"
        lines.append(f"| {r.arm} | `{method_name(m)}` | {ci} | {verdict} |")
    return "\n".join(lines)


def study_markdown(s: Study) -> str:
    """``study.md``: the question, the runs per arm, the verdicts and the full table of comparisons."""
    plain = f"`{s.plain}`" if s.plain else "none in this study"
    tally = {v: sum(r.vs_best is not None and r.vs_best.verdict == v for r in s.rows) for v in ("better", "worse")}
    chance = 0.05 * s.comparisons
    lines = [
        f"# Study: {s.setting.description}",
        "",
        "Do MTO combiners beat unitary scalarization once it has standard regularizers? Each method against the best "
        f"unitary variant (`{s.best}`, the unitary method with the highest IQM) and against plain unitary ({plain}).",
        "",
        "- **P(improve)**: probability that a random run of the method ends with a higher final success than a random "
        f"run of the reference (ties 1/2), with a 95% stratified-bootstrap CI over seeds ({s.reps} resamples).",
        "- **verdict**: `better` / `worse` when that CI against the best unitary variant lies above / below 0.5, "
        "else `no different`. A method with fewer than 5 seeds is marked: its bootstrap interval is unreliable "
        "(with 2 seeds it can be a single point).",
        f"- {s.comparisons} verdicts at 95% each: with no real difference anywhere, about {chance:.1f} of them would "
        f"read `better` or `worse` by chance ({tally['better']} better and {tally['worse']} worse here). The best "
        "unitary variant is picked on the same runs, which favours it. See docs/study.md.",
        "",
        "## Runs per arm",
        "",
        "| arm | methods | runs compared | set apart | missing | expected (spec) |",
        "|---|---|---|---|---|---|",
    ]
    for arm, title in ARMS.items():
        c = s.arms[arm]
        expected = "—" if c.expected is None else str(c.expected)
        lines.append(f"| {title} | {c.methods} | {c.runs} | {c.set_apart} | {c.missing} | {expected} |")
    lines += ["", "## Verdicts", "", verdict_table(s), "", "## Comparisons", ""]
    lines += [
        "| arm | method | seeds | IQM [95% CI] | P(improve over best unitary) [95% CI] | "
        "P(improve over plain unitary) [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for r in s.rows:
        m = r.method
        lines.append(
            f"| {r.arm} | `{method_name(m)}` | {len(m.runs)} | {m.iqm:.2f} [{m.iqm_ci[0]:.2f}, {m.iqm_ci[1]:.2f}] | "
            f"{_ci(r.vs_best)} | {_ci(r.vs_plain)} |"
        )
    lines += ["", "## Missing or not compared", ""]
    lines += [f"- {line}" for line in s.missing] if s.missing else ["None: every run of the study finished."]
    lines.append("")
    return "\n".join(lines)
