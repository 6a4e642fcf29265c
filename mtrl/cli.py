"""``mtrl`` command line: train | evaluate | record | compare | sweep | bench.

Config values are given as ``--dotted.key value`` (or ``--dotted.key=value``); ``--combiner NAME`` picks a
combiner and ``--combiner.<option> value`` sets its options. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap
from pathlib import Path

from mtrl.config import ConfigError, from_flat, help_rows, load_yaml, to_flat

USAGE_TRAIN = """usage: mtrl train [--config PRESET.yaml] [--resume RUN_DIR] [--no-progress] [--KEY VALUE ...]

Train multi-task SAC. With no arguments: the embedded default (4-task toy env, a few minutes on a CPU).
Values come from the defaults below, then --config (a flat YAML preset from configs/), then --KEY VALUE pairs.
--resume RUN_DIR continues a run from its last checkpoint with its saved config.yaml (only total_steps may be
changed, to extend it). Output: runs/<run_name>/ holds TensorBoard events, config.yaml, meta.yaml, checkpoints/.
Ctrl-C or SIGTERM finishes the current step, writes a checkpoint and exits (130 / 143); a second Ctrl-C aborts.
"""


class UsageError(Exception):
    """Bad command-line input; one line."""


def _split_overrides(args: list[str]) -> dict[str, str]:
    """``["--a.b", "1", "--c=2", "--flag"]`` -> ``{"a.b": "1", "c": "2", "flag": "true"}``."""
    items: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise UsageError(f"unexpected argument '{arg}'; config values are given as --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = "true"
        items[key.replace("-", "_")] = value
        i += 1
    return items


def _train_help() -> str:
    lines = [USAGE_TRAIN, "config keys (default) description:"]
    for key, default, doc in help_rows():
        lines.append(f"  --{key} ({default})")
        lines.extend(textwrap.wrap(doc, 100, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)


def cmd_train(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(_train_help())
        return 0
    from mtrl.checkpoint import CheckpointError
    from mtrl.train import main_message, train

    command = "mtrl train " + shlex.join(argv)
    opts: dict[str, str | bool] = {"progress": True}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in ("--config", "--resume"):
            if i + 1 >= len(argv):
                raise UsageError(f"{argv[i]} needs a value")
            opts[argv[i][2:]] = argv[i + 1]
            i += 2
        elif argv[i] == "--no-progress":
            opts["progress"] = False
            i += 1
        else:
            rest.append(argv[i])
            i += 1
    overrides = _split_overrides(rest)
    run = None
    if "resume" in opts:
        if "config" in opts:
            raise UsageError("--resume takes the run's own config.yaml; do not combine it with --config")
        run = Path(str(opts["resume"]))
        if not (run / "config.yaml").is_file():
            raise CheckpointError(f"--resume: '{run}' is not a run directory (no config.yaml)")
        saved = from_flat(load_yaml(run / "config.yaml"))
        if saved.agent.kind == "single_task":
            from mtrl.single_task import check_resumable

            check_resumable(saved)
        cfg = from_flat(overrides, saved)
        before, after = to_flat(saved), to_flat(cfg)
        changed = [k for k in after if after[k] != before.get(k) and k != "total_steps"]
        if changed:
            k = changed[0]
            raise ConfigError(
                f"--resume: {k} differs from the run's config.yaml (run: {before.get(k)!r}, given: {after[k]!r}); "
                "only total_steps may change when resuming"
            )
    else:
        base = from_flat(load_yaml(str(opts["config"]))) if "config" in opts else None
        cfg = from_flat(overrides, base)
    out = train(cfg, run=run, command=command, progress=bool(opts["progress"]))
    print(main_message(out))
    return 0


def cmd_evaluate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mtrl evaluate",
        description="Evaluate a checkpoint with the deterministic policy on its own benchmark and protocol; prints "
        "the success rate per task and the mean (success = the task's success flag at any step of an episode).",
    )
    parser.add_argument(
        "checkpoint", help="a run directory (its newest checkpoint), a checkpoint folder or its checkpoint.pt"
    )
    parser.add_argument("--episodes", type=int, default=None, help="episodes per task (default: the run's)")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="simulator seed of the evaluation episodes (default: the run's evaluation seed); the goals are always "
        "the run's own (see --eval-goals)",
    )
    parser.add_argument(
        "--eval-goals",
        choices=("train", "fresh"),
        default=None,
        help="train: the goals the run trained on; fresh: goals it never saw (default: the run's env.eval_goals)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = parser.parse_args(argv)
    if args.episodes is not None and args.episodes <= 0:
        raise UsageError(f"--episodes: got {args.episodes}, expected a positive integer")
    from dataclasses import replace

    from mtrl.envs import eval_seed, make_env
    from mtrl.evaluate import evaluate
    from mtrl.train import restore

    cfg, agent, state = restore(args.checkpoint, args.device)
    env_cfg = cfg.env if args.eval_goals is None else replace(cfg.env, eval_goals=args.eval_goals)
    sim_seed = eval_seed(cfg.seed) if args.seed is None else args.seed
    env = make_env(env_cfg, cfg.seed, evaluation=True, sim_seed=sim_seed)
    episodes = args.episodes or cfg.eval_episodes
    result = evaluate(lambda o: agent.act(o, deterministic=True), env, episodes, seed=sim_seed)
    env.close()
    width = max(len(n) for n in state["task_names"])
    print(f"{'task':<{width}}  success  return   ({episodes} episodes per task, step {state['step']})")
    for name, rate, rets in zip(state["task_names"], result.per_task, result.returns):
        print(f"{name:<{width}}  {rate:7.2f}  {rets.mean():8.2f}")
    print(f"{'mean':<{width}}  {result.mean:7.2f}")
    return 0


def cmd_record(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mtrl record",
        description="Render deterministic rollouts of a checkpoint to videos/<run_name>/<task>__ep<i>.mp4 "
        "(headless: MUJOCO_GL=egl with a GPU, osmesa on CPU).",
    )
    parser.add_argument(
        "checkpoint", help="a run directory (its newest checkpoint), a checkpoint folder or its checkpoint.pt"
    )
    parser.add_argument("--tasks", nargs="+", default=None, help="task names to record (default: all)")
    parser.add_argument("--episodes", type=int, default=1, help="episodes per task (default: 1)")
    parser.add_argument("--out", default="videos", help="parent folder of the videos (default: videos)")
    parser.add_argument("--fps", type=int, default=30, help="frames per second (default: 30)")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="simulator seed of the rollouts (default: the run's evaluation seed); the goals are the run's own",
    )
    args = parser.parse_args(argv)
    if args.episodes <= 0:
        raise UsageError(f"--episodes: got {args.episodes}, expected a positive integer")
    from mtrl.envs.gl import ensure_gl_backend

    ensure_gl_backend()
    from mtrl.envs import eval_seed, make_env
    from mtrl.train import restore
    from mtrl.video import record

    cfg, agent, state = restore(args.checkpoint, "cpu")
    if args.tasks:
        unknown = [t for t in args.tasks if t not in state["task_names"]]
        if unknown:
            raise UsageError(f"--tasks: unknown task {unknown[0]!r}; this run has: {', '.join(state['task_names'])}")
    sim_seed = eval_seed(cfg.seed) if args.seed is None else args.seed
    env = make_env(cfg.env, cfg.seed, evaluation=True, render=True, sim_seed=sim_seed)
    out = Path(args.out) / cfg.run_name
    paths = record(lambda o: agent.act(o, deterministic=True), env, out, args.episodes, args.fps, tasks=args.tasks)
    env.close()
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

  train     train an agent (no arguments: a few-minute CPU demo on a toy env); --help lists every config key
  evaluate  success rate per task of a checkpoint
  record    rollout videos of a checkpoint into videos/<run_name>/
  compare   success rates across methods and seeds: IQM with bootstrap CIs, plots, markdown table
  sweep     methods x seeds (x static weight grids) from a YAML spec; resumable; local processes or Ray
  bench     updates/s per combiner (MT10/MT50 sizes), K=1 against stable-baselines3, training steps/s; JSON

Run `mtrl COMMAND --help` for the options of a command."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(MAIN_HELP)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mtrl: error: unknown command '{name}'; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from mtrl.checkpoint import CheckpointError, CheckpointWriteError
    from mtrl.evaluate import EvalWorkerError
    from mtrl.mto.base import NonFiniteError
    from mtrl.train import Interrupted, RunDirError
    from mtrl.video import VideoError

    try:
        return COMMANDS[name](rest)
    except Interrupted as exc:  # the conventional 128 + signal number (SIGINT 130, SIGTERM 143)
        print(f"mtrl {name}: stopped by {exc}", file=sys.stderr)
        return 128 + exc.signum
    except CheckpointWriteError as exc:
        print(f"mtrl {name}: error: {exc}; training stopped", file=sys.stderr)
        return 1
    except (UsageError, ConfigError, CheckpointError, RunDirError, VideoError) as exc:
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
