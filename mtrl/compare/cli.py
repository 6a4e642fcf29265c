"""``mtrl compare``: read runs, aggregate them by setting and method, write the plots and ``summary.md``."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tyro

from mtrl.compare.aggregate import Comparison, SettingResult, aggregate_setting
from mtrl.compare.methods import SETTING_KEYS, describe_setting, setting_key
from mtrl.compare.plots import plot_iqm, plot_success_curves
from mtrl.compare.reading import CompareError, Run, SetApart, find_runs, load_run
from mtrl.compare.report import methods_table, plural, summary_markdown
from mtrl.compare.study import study, study_markdown, verdict_table
from mtrl.runs.scalars import FINAL_WINDOW, final_rule
from mtrl.runs.tensorboard import write_hparams


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "setting"


def compare(
    paths: Sequence[str | Path],
    out: str | Path = "compare",
    final_window: float = FINAL_WINDOW,
    baseline: str | None = None,
    reps: int = 2000,
    seed: int = 0,
    include_unfinished: bool = False,
    hparams: bool = False,
    warn: Callable[[str], None] | None = None,
    expected: Sequence[tuple[str, dict[str, Any]]] | None = None,
) -> Comparison:
    """Read runs, group them by setting and method, aggregate seeds, write plots and ``summary.md`` into ``out``.

    :param paths: run directories, or folders searched recursively for them.
    :param out: output folder; the main setting (most runs) writes there, other settings into sub-folders.
    :param final_window: final success = mean of the evaluations in this last fraction of each run's steps (at least
        its last evaluation; :func:`final_success`).
    :param baseline: method label that P(improvement) is measured against; None = plain ``mean`` if present.
    :param reps: bootstrap replications.
    :param seed: seed of the bootstrap.
    :param include_unfinished: keep runs whose last evaluation is before 95% of ``total_steps``.
    :param hparams: write an HParams summary (:func:`write_hparams`) into runs that lack one.
    :param warn: called with one-line warnings (default: print to stderr).
    :param expected: ``(run name, flat config)`` of every run of a study's sweep spec: the study report
        (``study.md``) then says which of them are missing.
    :raises CompareError: no runs found, a path is missing, or no run has evaluations.
    """
    warn = warn or (lambda msg: print(f"mtrl compare: warning: {msg}", file=sys.stderr))
    if not 0.0 < final_window <= 1.0:
        raise CompareError(f"--final-window: got {final_window}, expected a fraction in (0, 1]")
    if reps < 1:
        raise CompareError(f"--reps: got {reps}, expected a positive integer")
    out = Path(out)
    set_apart: list[SetApart] = []
    runs: list[Run] = []
    hints: dict[Path, str] = {}
    for run_dir in find_runs(paths):
        try:
            run = load_run(run_dir, final_window)
        except ValueError as exc:
            set_apart.append(SetApart(run_dir, str(exc)))
            continue
        total = run.config.get("total_steps")
        if not include_unfinished and isinstance(total, int) and run.steps[-1] < 0.95 * total:
            reason = f"unfinished: last evaluation at step {run.steps[-1]:,} of total_steps {total:,}"
            set_apart.append(SetApart(run_dir, reason))
            hints[run_dir] = " (--include-unfinished keeps it)"
            continue
        runs.append(run)
    if not runs:  # one line: the (first) reason, nothing else to say
        first = set_apart[0]
        more = f" (and {len(set_apart) - 1} more runs that cannot be compared)" if len(set_apart) > 1 else ""
        raise CompareError(f"'{first.path}': {first.reason}{hints.get(first.path, '')}; nothing to compare{more}")
    for apart in set_apart:
        warn(f"{apart.path}: {apart.reason}; set apart{hints.get(apart.path, '')}")

    by_setting: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        by_setting.setdefault(setting_key(run.config), []).append(run)
    ordered = sorted(by_setting.values(), key=lambda rs: (-len(rs), describe_setting(rs[0].config)))
    main_cfg = ordered[0][0].config

    settings: list[SettingResult] = []
    for i, group in enumerate(ordered):
        diff = [k for k in SETTING_KEYS if repr(group[0].config.get(k)) != repr(main_cfg.get(k))]
        sub = "" if i == 0 else slug("__".join(f"{k.split('.')[-1]}-{group[0].config.get(k)}" for k in diff))
        setting, dupes = aggregate_setting(group, baseline, reps, seed, out / sub if sub else out)
        settings.append(setting)
        set_apart.extend(dupes)
        if i > 0:
            what = ", ".join(f"{k}={group[0].config.get(k)} (main: {main_cfg.get(k)})" for k in diff)
            for run in group:
                set_apart.append(
                    SetApart(run.path, f"different setting: {what}; compared separately in {setting.out_dir}/")
                )
    if baseline is not None and all(s.baseline != baseline for s in settings):
        available = sorted({m.label for s in settings for m in s.methods})
        raise CompareError(f"--baseline '{baseline}' is not one of the methods: {', '.join(available)}")
    for setting in settings:
        for note in setting.notes:
            warn(f"{setting.description}: {note}")

    result = Comparison(settings=settings, set_apart=set_apart, final_window=final_window, reps=reps, seed=seed)
    for setting in settings:
        setting.out_dir.mkdir(parents=True, exist_ok=True)
        path = setting.out_dir / "success_curves.png"
        result.files.append(plot_success_curves(setting, path, final_window, reps, seed))
        result.files.append(plot_iqm(setting, setting.out_dir / "iqm.png", final_window))
    for i, setting in enumerate(settings):
        view = study(setting, set_apart, expected if i == 0 else None, reps, seed)
        if view is not None:
            path = setting.out_dir / "study.md"
            path.write_text(study_markdown(view))
            result.studies.append(view)
            result.files.append(path)
    result.summary = summary_markdown(result, out)
    summary_path = out / "summary.md"
    summary_path.write_text(result.summary)
    result.files.append(summary_path)
    if hparams:
        for setting in settings:
            for m in setting.methods:
                for run in m.runs:
                    if not run.has_hparams:
                        metrics = {
                            "final_success": run.final,
                            **{f"final_success/{t}": v for t, v in run.task_final.items()},
                        }
                        write_hparams(run.path, run.config, metrics, step=int(run.steps[-1]))
    return result


@dataclass(frozen=True)
class CompareArgs:
    """Compare training runs of mtrl.

    - per method: final success per seed, IQM over seeds with 95% bootstrap CIs, probability of improvement over
      a baseline, per-task success, steps/s and wall-clock
    - methods: runs grouped by the config keys that differ between them (seed excluded)
    - runs of different settings (benchmark, protocol, reward version, episode length, total_steps, evaluation
      schedule) are never pooled but compared separately
    - writes success_curves.png, iqm.png and summary.md into --out and prints the summary table
    - a study (unitary scalarization and other arms: static weights, combiners, alternating steps) also gets
      study.md: each method against the best and the plain unitary variant, and a verdict table
    - example: mtrl compare runs/ --final-window 0.1 --out compare/
    - a study of a sweep spec: mtrl compare --spec configs/sweeps/mt10_study.yaml (says what is missing)"""

    runs: tyro.conf.Positional[tuple[str, ...]] = ()
    """Run directories, or folders searched recursively for them (default with --spec: the spec's run_dir)."""
    spec: str = ""
    """The sweep spec of a study: its runs are the ones expected, and the report names those missing."""
    scale: Literal["full", "toy"] = "full"
    """With --spec: the scale the sweep ran at (toy: mtrl sweep --scale toy)."""
    final_window: float = FINAL_WINDOW
    """Final success = mean of the evaluations in this last fraction of each run's steps, at least its last
    evaluation (never the max over training)."""
    out: str = "compare"
    """Output folder."""
    baseline: str = ""
    """Method label for P(improvement); empty: the `mean` method with the fewest regularizers on if present, else
    the first."""
    reps: int = 2000
    """Bootstrap replications."""
    seed: int = 0
    """Seed of the bootstrap."""
    include_unfinished: bool = False
    """Also compare runs whose last evaluation is before 95% of total_steps (set apart by default)."""
    write_hparams: bool = False
    """Write a TensorBoard HParams summary (config + final success) into runs that lack one."""


def cli(argv: list[str]) -> int:
    """``mtrl compare``: returns the exit code (0 ok, 2 user error with a one-line message on stderr)."""
    from mtrl.config import ConfigError, parse
    from mtrl.runs.rundir import check_output_dir

    try:
        renamed = [a for a in argv if a.split("=")[0] in ("--last-n", "--last_n")]
        if renamed:
            raise ConfigError(
                f"{renamed[0].split('=')[0]}: renamed; use --final-window FRACTION (final success = mean of the "
                "evaluations in that last fraction of each run's steps, e.g. 0.1)"
            )
        try:
            args = parse(CompareArgs, argv, prog="mtrl compare", flags=True, hyphens=True)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        expected = None
        paths = list(args.runs)
        if args.spec:
            from mtrl.config import to_flat
            from mtrl.sweep import SweepError, load_spec

            try:
                sweep = load_spec(args.spec, threads=1, scale=args.scale)
            except SweepError as exc:
                raise ConfigError(f"--spec: {exc}") from None
            expected = [(r.name, to_flat(r.cfg)) for r in sweep.runs]
            paths = paths or [str(sweep.run_dir)]
        elif args.scale != "full":
            raise ConfigError("--scale: only used with --spec")
        if not paths:
            raise ConfigError("runs: give at least one run directory or folder of runs (or --spec)")
        if args.seed < 0:
            raise ConfigError(f"--seed: got {args.seed}, expected an integer >= 0")
        check_output_dir(args.out, "--out")
        result = compare(
            paths,
            out=args.out,
            final_window=args.final_window,
            baseline=args.baseline or None,
            reps=args.reps,
            seed=args.seed,
            include_unfinished=args.include_unfinished,
            hparams=args.write_hparams,
            expected=expected,
        )
    except (CompareError, ConfigError) as exc:
        print(f"mtrl compare: error: {exc}", file=sys.stderr)
        return 2
    for s in result.settings:
        print(f"\n## {s.description}\n")
        print(methods_table(s))
        print(f"\nplots: {s.out_dir / 'success_curves.png'}, {s.out_dir / 'iqm.png'}")
    for view in result.studies:
        print(f"\n## Study verdicts: {view.setting.description} (against the best unitary variant `{view.best}`)\n")
        print(verdict_table(view))
        print(f"\nstudy: {view.setting.out_dir / 'study.md'}")
    if result.set_apart:
        print(f"\n{plural(len(result.set_apart), 'run')} set apart:")
        for a in result.set_apart:
            print(f"  {a.path}: {a.reason}")
    print(f"\nfinal = {final_rule(result.final_window)}; summary: {Path(args.out) / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
