"""``mtrl`` command line: train | evaluate | record | compare | sweep | bench, each parsed by tyro.

Config values are given as ``--dotted.key value`` (or ``--dotted.key=value``; ``-`` and ``_`` alike); ``--combiner
NAME`` picks a combiner and ``--combiner.<option> value`` sets its options. Bad input ends with one line on stderr
and exit code 2, before anything is created or changed.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from mtrl.config import ConfigError, TrainConfig, flatten, from_flat, load_preset, parse, read_mapping, to_flat

TRAIN_DESCRIPTION = """Train multi-task SAC. No arguments: the embedded default (4-task toy env, 1.5 min on 2 cores).

The defaults shown below are those of --config (or of the run given to --resume) where given.

  mtrl train [--config PRESET.yaml] [--resume RUN_DIR] [--no-progress] [--KEY VALUE ...]
  mtrl train --seeds 1 2 3 4 5 [...]      five independent runs in one process (a seed group)

- values: the defaults below, then --config (a YAML preset from configs/, which may inherit another
  with base:), then --KEY VALUE
- --resume RUN_DIR continues a run from its newest checkpoint with its saved config.yaml (only
  total_steps, to extend it, and device and threads, to move it, may be changed); a run of a seed
  group resumes the whole group
- --combiner NAME picks a combiner; `mtrl train --combiner NAME --help` lists its options
- output: runs/<run_name>/ holds TensorBoard events, config.yaml, meta.yaml, checkpoints/
- Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and exits (130 / 143); a second
  Ctrl-C aborts"""


RESUME_MAY_CHANGE = ("total_steps", "device", "threads", "agent.graph")
"""What ``--resume`` may change: the budget (to extend a run), where it runs (to move it to another machine) and
whether its update is captured (checkpoints load in either mode)."""


def _take(argv: list[str], name: str, *, value: bool) -> tuple[str | bool | None, list[str]]:
    """Remove ``--name VALUE`` / ``--name=VALUE`` (or the flag ``--name``) from ``argv``; (value or None, rest)."""
    rest: list[str] = []
    found: str | bool | None = None
    i = 0
    spellings = {f"--{name}", f"--{name.replace('-', '_')}"}
    while i < len(argv):
        arg = argv[i]
        key, eq, given = arg.partition("=")
        if key in spellings:
            if not value:
                found = True
            elif eq:
                found = given
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                found = argv[i + 1]
                i += 1
            else:
                raise ConfigError(f"{key}: needs a value")
        else:
            rest.append(arg)
        i += 1
    return found, rest


def train_args(argv: list[str]) -> tuple[TrainConfig, Path | None, bool]:
    """The ``mtrl train`` command line as ``(config, run directory to resume or None, show progress)``: defaults,
    then ``--config``, then ``--KEY VALUE``; with ``--resume``, the run's own config.yaml (only
    :data:`RESUME_MAY_CHANGE` may change). Checks what the command line alone decides; :func:`mtrl.train.check_config`
    checks the config."""
    config, rest = _take(argv, "config", value=True)
    resume, rest = _take(rest, "resume", value=True)
    no_progress, rest = _take(rest, "no-progress", value=False)
    shorthands = {"agent": "agent.kind"}
    if resume is not None and config is not None:
        raise ConfigError("--resume: takes the run's own config.yaml; do not combine it with --config")
    run = None if resume is None else Path(str(resume))
    base = _run_config(run) if run is not None else load_preset(str(config)) if config is not None else None
    if "-h" in rest or "--help" in rest:  # the help shows the preset's (or the run's) values as defaults
        parse(TrainConfig, rest, prog="mtrl train", description=TRAIN_DESCRIPTION, shorthands=shorthands, default=base)
    cfg = parse(TrainConfig, rest, default=base, shorthands=shorthands)
    if run is None:
        _check_seed_and_seeds(cfg, rest, str(config) if config is not None else None)
        return cfg, None, not no_progress
    assert base is not None
    before, after = to_flat(base), to_flat(cfg)
    if after["seeds"] != before["seeds"]:
        raise ConfigError(
            f"--resume: takes no --seeds; a run trained in a seed group resumes with its whole group "
            f"(mtrl train --resume {run})"
        )
    changed = [k for k in after if after[k] != before.get(k) and k not in RESUME_MAY_CHANGE]
    if changed:
        k = changed[0]
        raise ConfigError(
            f"--resume: {k} differs from the run's config.yaml (run: {before.get(k)!r}, given: {after[k]!r}); "
            f"only {', '.join(RESUME_MAY_CHANGE)} may change when resuming"
        )
    return cfg, run, not no_progress


def _check_seed_and_seeds(cfg: TrainConfig, argv: list[str], preset: str | None) -> None:
    """``seeds`` (a seed group) given together with ``seed`` (one run), on the command line or in the preset, is
    ambiguous: refuse it in one line."""
    if not cfg.seeds:
        return
    keys = {a[2:].partition("=")[0].replace("-", "_") for a in argv if a.startswith("--")}
    if preset is not None:
        from mtrl.config import load_yaml

        keys |= set(load_yaml(preset))
    if "seed" in keys:
        raise ConfigError(
            f"seeds: got {' '.join(map(str, cfg.seeds))} together with seed {cfg.seed}; give --seeds N ... for a "
            "seed group or --seed N for one run, not both"
        )


def group_configs(cfg: TrainConfig, run: Path) -> tuple[list[TrainConfig], list[Path]]:
    """The configs and run directories of the seed group ``run`` was trained in (its meta.yaml), each member's own
    config.yaml with the changes ``--resume`` allows taken from ``cfg``; ``([cfg], [run])`` for a solo run."""
    from mtrl.runs.resume import group_members

    members = group_members(run)
    if members == [run]:
        return [cfg], [run]
    allowed = {k: v for k, v in to_flat(cfg).items() if k in RESUME_MAY_CHANGE}
    cfgs = [cfg if m == run else from_flat(allowed, _run_config(m)) for m in members]
    first = {k: v for k, v in to_flat(cfgs[0]).items() if k not in ("seed", "run_name")}
    for m, c in zip(members, cfgs):
        other = {k: v for k, v in to_flat(c).items() if k not in ("seed", "run_name")}
        differ = next((k for k in first if first[k] != other.get(k)), None)
        if differ is not None:
            raise ConfigError(
                f"--resume: the runs of the seed group of '{run}' differ in {differ} ({members[0].name}: "
                f"{first[differ]!r}, {m.name}: {other.get(differ)!r}); a group shares everything but its seeds"
            )
    return cfgs, members


def _run_config(run: Path) -> TrainConfig:
    """The config of a run to resume: its config.yaml; when that is missing, the config its newest readable
    checkpoint holds (said in one line; training writes config.yaml again)."""
    from mtrl.runs import checkpoint

    path = run / "config.yaml"
    if path.exists() or path.is_symlink():
        try:
            return from_flat(flatten(read_mapping(path, "--resume")), where=f"--resume '{path}': ")
        except ConfigError as exc:
            hint = (
                "; delete it and --resume takes the run's config from its checkpoint" if checkpoint.units(run) else ""
            )
            raise ConfigError(f"{exc}{hint}") from None
    for unit in checkpoint.newest_first(checkpoint.units(run)):
        try:
            cfg = from_flat(checkpoint.load(unit)["config"])
        except (checkpoint.CheckpointError, ConfigError):
            continue
        print(
            f"mtrl train: {path} was missing; using the config of checkpoint {unit.name} (written again)",
            file=sys.stderr,
        )
        return cfg
    raise ConfigError(f"--resume: '{run}' is not a run directory (no config.yaml)")


def cmd_train(argv: list[str]) -> int:
    from mtrl.runs.rundir import main_message
    from mtrl.train import train_group

    cfg, run, progress = train_args(argv)
    command = "mtrl train " + shlex.join(argv)
    if run is None:
        outs = train_group(cfg, command=command, progress=progress)
    else:
        cfgs, runs = group_configs(cfg, run)
        if len(runs) > 1:
            names = ", ".join(r.name for r in runs)
            print(f"mtrl train: resuming the seed group of {run.name}: {len(runs)} runs ({names})", file=sys.stderr)
        outs = train_group(cfgs if len(runs) > 1 else cfg, runs=runs, command=command, progress=progress)
    print("\n".join(main_message(out) for out in outs))
    return 0


@dataclass(frozen=True)
class EvaluateArgs:
    """Evaluate a checkpoint with the deterministic policy on its own benchmark, protocol and training goals.

    - prints the success rate per task and the mean
    - success: the task's success flag at any step of an episode"""

    checkpoint: tyro.conf.Positional[str]
    """A run directory (its newest checkpoint), or a checkpoint folder or file."""
    episodes: int = 0
    """Episodes per task (0: the run's eval_episodes)."""
    seed: int = -1
    """Simulator seed of the evaluation episodes (-1: the run's evaluation seed); the goals are the run's own."""
    eval_goals: Literal["run", "train", "fresh"] = "run"
    """train: the goals the run trained on; fresh: goals it never saw (Meta-World; the toy env's observation has no
    goal, so a toy policy scores 0 there); run: the run's env.eval_goals."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""


def _check_device(device: str) -> None:
    import torch

    if device == "cpu":
        return
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device: got '{device}', but torch sees no CUDA device here; expected cpu")
        if ":" in device and int(device[5:]) >= torch.cuda.device_count():
            raise ConfigError(f"--device: got '{device}', but there are {torch.cuda.device_count()} CUDA devices")
        return
    raise ConfigError(f"--device: got '{device}', expected cpu, cuda or cuda:N")


def cmd_evaluate(argv: list[str]) -> int:
    args = parse(EvaluateArgs, argv, prog="mtrl evaluate", hyphens=True)
    if args.episodes < 0:
        raise ConfigError(f"--episodes: got {args.episodes}, expected a positive integer (0: the run's)")
    if args.seed < -1:
        raise ConfigError(f"--seed: got {args.seed}, expected an integer >= 0 (-1: the run's evaluation seed)")
    _check_device(args.device)
    from mtrl.evaluate import evaluate_checkpoint

    goals = None if args.eval_goals == "run" else args.eval_goals
    seed = None if args.seed == -1 else args.seed
    report = evaluate_checkpoint(args.checkpoint, args.episodes or None, seed, goals, args.device)
    width = max(len(n) for n in report.task_names)
    print(f"{'task':<{width}}  success  return   ({report.episodes} episodes per task, step {report.step})")
    for name, rate, rets in zip(report.task_names, report.result.per_task, report.result.returns):
        print(f"{name:<{width}}  {rate:7.2f}  {rets.mean():8.2f}")
    print(f"{'mean':<{width}}  {report.result.mean:7.2f}")
    return 0


@dataclass(frozen=True)
class RecordArgs:
    """Render deterministic rollouts of a checkpoint on its training goals to <out>/<run_name>/<task>__ep<i>.mp4
    (headless: MUJOCO_GL=egl with a GPU, osmesa on CPU)."""

    checkpoint: tyro.conf.Positional[str]
    """A run directory (its newest checkpoint), or a checkpoint folder or file."""
    tasks: tuple[str, ...] = ()
    """Task names to record (default: all)."""
    episodes: int = 1
    """Episodes per task."""
    out: str = "videos"
    """Parent folder of the videos."""
    fps: int = 30
    """Frames per second (1 to 240)."""
    seed: int = -1
    """Simulator seed of the rollouts (-1: the run's evaluation seed); the goals are the run's own."""


def cmd_record(argv: list[str]) -> int:
    args = parse(RecordArgs, argv, prog="mtrl record", hyphens=True)
    if args.episodes < 1:
        raise ConfigError(f"--episodes: got {args.episodes}, expected a positive integer")
    if not 1 <= args.fps <= 240:
        raise ConfigError(f"--fps: got {args.fps}, expected an integer from 1 to 240")
    if args.seed < -1:
        raise ConfigError(f"--seed: got {args.seed}, expected an integer >= 0 (-1: the run's evaluation seed)")
    from mtrl.runs.rundir import check_output_dir
    from mtrl.video import record_checkpoint

    check_output_dir(args.out, "--out")
    seed = None if args.seed == -1 else args.seed
    out, paths = record_checkpoint(args.checkpoint, args.out, args.episodes, args.fps, list(args.tasks) or None, seed)
    print(f"wrote {len(paths)} videos to {out}/")
    return 0


def cmd_compare(argv: list[str]) -> int:
    from mtrl.compare import cli

    return cli(argv)


def cmd_bench(argv: list[str]) -> int:
    from mtrl.bench import cli

    return cli(argv)


def cmd_sweep(argv: list[str]) -> int:
    from mtrl.sweep import cli

    return cli(argv)


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "record": cmd_record,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "bench": cmd_bench,
}

MAIN_HELP = """usage: mtrl {train,evaluate,record,compare,sweep,bench} ...

Multi-task SAC with pluggable multi-task optimization (MTO) combiners on Meta-World MT10/MT50.

  train     train an agent (no arguments: a 1.5-minute demo on a toy env, 2 CPU cores); --help lists every config key
  evaluate  success rate per task of a checkpoint, on its training goals
  record    rollout videos of a checkpoint into videos/<run_name>/
  compare   success rates across methods and seeds: IQM with bootstrap CIs, plots, markdown table
  sweep     methods x seeds (x static weight grids) from a YAML spec; resumable; local processes or Ray
  bench     updates/s per combiner (MT10/MT50 sizes), K=1 against stable-baselines3, training steps/s; JSON

Run `mtrl COMMAND --help` for the options of a command."""


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # the reader went away (`mtrl train --help | head`): quiet, as other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 141  # 128 + SIGPIPE


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(MAIN_HELP)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mtrl: error: unknown command '{name}'; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from mtrl.evaluate import EvalWorkerError
    from mtrl.mto.base import NonFiniteError
    from mtrl.runs.checkpoint import CheckpointError, CheckpointWriteError
    from mtrl.runs.rundir import Interrupted, RunDirError
    from mtrl.video import VideoError

    try:
        return COMMANDS[name](rest)
    except SystemExit as exc:  # --help printed by tyro
        if exc.code in (0, None):
            return 0
        raise
    except Interrupted as exc:  # the conventional 128 + signal number (SIGINT 130, SIGTERM 143)
        print(f"mtrl {name}: stopped by {exc}", file=sys.stderr)
        return 128 + exc.signum
    except CheckpointWriteError as exc:
        print(f"mtrl {name}: error: {exc}; training stopped", file=sys.stderr)
        return 1
    except (ConfigError, CheckpointError, RunDirError, VideoError) as exc:
        print(f"mtrl {name}: error: {exc}", file=sys.stderr)
        return 2
    except (NonFiniteError, EvalWorkerError) as exc:
        print(f"mtrl {name}: error: {exc}; training stopped, the last good checkpoint is kept", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mtrl {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
