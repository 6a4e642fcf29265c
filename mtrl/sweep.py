"""``mtrl sweep SPEC.yaml``: run methods x seeds (x static weight vectors) as ordinary ``mtrl train`` runs, resumably.

A sweep spec is a YAML mapping::

    # what this sweep compares
    base: configs/mt10_unitary.yaml        # optional preset: relative to the spec file, else to the cwd
    set: {total_steps: 200000}             # optional overrides for every run (flat dotted keys)
    methods:                               # name -> overrides; the name goes into the run name
      mean: {combiner: mean}
      pcgrad: {combiner: pcgrad}
    seeds: [1, 2, 3]                       # default [1]
    weight_grid: {steps: 5}                # optional static scalarization front (combiner fixed)
    run_dir: runs/sweeps/mt10              # optional, relative to the cwd; default runs/<spec file stem>

Each run is ``<run_dir>/{method}__s{seed}`` (weight vectors: ``fixed-w{i}__s{seed}``), its output goes to
``<run_dir>/<name>.log``. With ``--seeds-per-process N`` the seeds of one method train N at a time in one process (a
seed group, ``mtrl train --seeds``; default: all of them where the runs train on a GPU, one on a CPU; single_task
runs and the alternating schedule always one): the runs and their directories are the same, the group's output goes
to ``<run_dir>/{method}__s1+s2+....log``, and a run to resume resumes with the group it was trained in.

``--methods NAME ...`` keeps only those methods of the spec; ``--scale toy`` rehearses the spec at toy size (the
toy env with the spec's number of tasks, :data:`TOY_SCALE`, the first two seeds) in ``<run_dir>-toy``, so a study
(``configs/sweeps/mt10_study.yaml``) can be tried end to end in a minute before its GPU-weeks.

Every run's config is validated before anything starts. Rerunning the same spec skips
finished runs (checkpoint step >= total_steps), resumes unfinished ones (``mtrl train --resume``, which may also
extend total_steps) and moves run directories without a checkpoint (crashed before the first one) aside to
``<name>.failed-<timestamp>`` before starting them again; nothing is ever deleted. An existing run whose
config.yaml differs from the spec in anything but total_steps, threads, run_dir, run_name and agent.graph stops the
sweep before it starts (move that run away or restore the spec).

Weight grid (the static linear scalarization front of Xin et al. 2022, "Do current multi-task optimization
methods in deep learning even help?"): every vector sums to 1, so the uniform vector is the ``mean`` combiner.
For K = 2 tasks: ``steps`` evenly spaced vectors ``(1 - i/(steps-1), i/(steps-1))``, i = 0..steps-1. For K > 2:
the K corners (one task only), the uniform vector, then ``random`` vectors drawn from Dirichlet(1, ..., 1) (uniform
on the simplex) by ``numpy.random.default_rng(seed)``. Keys: ``steps`` (default 5), ``random`` (default:
``steps``), ``seed`` (default 0), ``corners`` and ``uniform`` (default true: false leaves them out). K comes from
the env config (toy: env.toy_tasks, MT10: 10, MT50: 50, MT1-*: 1, a task list: its length).
The runs get ``combiner: fixed`` and ``combiner.weights`` on top of ``set`` (the methods' overrides do not apply).

Backends: ``local`` runs at most ``--workers`` subprocesses at a time; ``ray`` (``pip install "mtrl[ray]"``)
submits every run as a Ray task with ``num_cpus=threads`` to the cluster at ``--address`` (default ``auto``);
workers run the same command in the same working directory, so they need a shared file system. Each run's torch
threads are the spec's ``threads`` or ``max(1, cpu_count // workers)``.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro
import yaml
from tqdm import tqdm

from mtrl.config import ConfigError, TrainConfig, flatten, from_flat, load_yaml, parse, read_mapping, to_flat
from mtrl.runs.resume import had_checkpoints

SPEC_KEYS = ("base", "set", "methods", "seeds", "weight_grid", "run_dir")
GRID_KEYS = ("steps", "random", "seed", "corners", "uniform")
TOY_SCALE: dict[str, Any] = {
    "env.benchmark": "toy", "total_steps": 800, "warmup_steps": 200, "eval_interval": 200, "eval_episodes": 5,
    "log_interval": 100, "checkpoint_interval": 400, "agent.actor.hidden_dim": 64, "agent.actor.num_layers": 2,
    "agent.critic.hidden_dim": 64, "agent.critic.num_layers": 2, "buffer.capacity": 20000, "env.max_episode_steps": 50,
}  # fmt: skip
"""``--scale toy``: the spec's runs at toy size (the toy env with the spec's number of tasks, 800 steps, 2x64
networks; batch 8 rows per task), two seeds, in ``<run_dir>-toy``: a rehearsal of the pipeline in minutes."""
SWEEP_OWNED = ("seed", "run_name", "run_dir")  # set by the sweep for each run
MAY_DIFFER = {"total_steps", "threads", "run_dir", "run_name", "agent.graph"}  # between an existing run and the spec
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


class SweepError(ValueError):
    """A bad sweep spec or command line; the message is one line."""


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its name, its method (the variant it belongs to), its ``--key=value`` overrides for
    ``mtrl train`` (run_dir and run_name included) and the config they give."""

    name: str
    overrides: dict[str, str]
    cfg: TrainConfig
    method: str = ""


@dataclass(frozen=True)
class Sweep:
    """An expanded, validated sweep spec."""

    base: Path | None
    run_dir: Path
    runs: list[Run]


@dataclass(frozen=True)
class Job:
    """What one ``mtrl train`` process does: ``status`` is done, resume, start or restart (move the old directories
    aside) for its runs, one run or the seeds of one method trained together (a seed group)."""

    runs: tuple[Run, ...]
    status: str
    step: int  # the checkpoint's step (0 without one)
    command: list[str]
    log: Path

    @property
    def name(self) -> str:
        """The run's name, or ``{method}__s1+s2+s3`` for a seed group."""
        return _job_name(self.runs)


def _job_name(runs: Sequence[Run]) -> str:
    if len(runs) == 1:
        return runs[0].name
    return f"{runs[0].method}__" + "+".join(f"s{r.cfg.seed}" for r in runs)


def weight_vectors(
    k: int, steps: int = 5, random: int | None = None, seed: int = 0, corners: bool = True, uniform: bool = True
) -> list[tuple[float, ...]]:
    """The static scalarization weights of a weight grid (see the module docstring); each sums to 1.

    :param k: number of tasks, at least 2.
    :param steps: K = 2: number of evenly spaced vectors (at least 2).
    :param random: K > 2: number of Dirichlet(1) draws after the K corners and the uniform vector (default ``steps``).
    :param seed: seed of the Dirichlet draws.
    :param corners: K > 2: include the K corners (one task only).
    :param uniform: K > 2: include the uniform vector (the ``mean`` combiner).
    """
    if k < 2:
        raise SweepError(f"weight_grid: needs at least 2 tasks, the env config has {k}")
    if k == 2:
        if steps < 2:
            raise SweepError(f"weight_grid.steps: got {steps}, expected an integer >= 2")
        return [(1.0 - i / (steps - 1), i / (steps - 1)) for i in range(steps)]
    n = steps if random is None else random
    if n < 0:
        raise SweepError(f"weight_grid.random: got {n}, expected an integer >= 0")
    ends = [tuple(float(i == j) for j in range(k)) for i in range(k)] if corners else []
    draws = np.random.default_rng(seed).dirichlet(np.ones(k), size=n)
    middle = [(1.0 / k,) * k] if uniform else []
    return [*ends, *middle, *(tuple(float(w) for w in row) for row in draws)]


def _cli_value(key: str, value: Any) -> str:
    """A YAML value as ``mtrl train`` reads it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_cli_value(key, v) for v in value)
    if value is None or isinstance(value, dict):
        raise SweepError(f"{key}: got {value!r}, expected a value")
    return str(value)


def _overrides(where: str, mapping: Any) -> dict[str, str]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise SweepError(f"{where}: expected a mapping of config keys to values, got {mapping!r}")
    flat = flatten(mapping)
    for key in flat:
        if key in SWEEP_OWNED:
            raise SweepError(f"{where}: '{key}' is set by the sweep for each run; remove it")
    return {key: _cli_value(f"{where}.{key}", value) for key, value in flat.items()}


def _int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SweepError(f"{where}: got {value!r}, expected an integer")
    return value


def _find_base(base: Any, spec: Path) -> Path:
    if not isinstance(base, str) or not base:
        raise SweepError(f"base: got {base!r}, expected the path of a preset")
    for candidate in (spec.parent / base, Path(base)):
        if candidate.is_file():
            return candidate
    raise SweepError(f"base: '{base}' is neither next to the spec ({spec.parent}) nor in the current directory")


def load_spec(
    path: str | Path, threads: int, scale: Literal["full", "toy"] = "full", only: Sequence[str] = ()
) -> Sweep:
    """Read, expand and validate a sweep spec; raise a one-line :class:`SweepError` on any problem.

    :param threads: torch threads per run unless the spec sets ``threads``.
    :param scale: ``toy``: every run at :data:`TOY_SCALE`, the first two seeds, in ``<run_dir>-toy``.
    :param only: the methods to keep (names of the spec's methods, ``fixed-w<i>`` for weight vectors); all if empty.
    """
    spec = Path(path)
    try:
        data = read_mapping(spec, "spec", f"a mapping with keys {', '.join(SPEC_KEYS)}")
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    unknown = [k for k in data if k not in SPEC_KEYS]
    if unknown:
        raise SweepError(f"spec: unknown key '{unknown[0]}'; expected some of {', '.join(SPEC_KEYS)}")
    base = _find_base(data["base"], spec) if data.get("base") is not None else None
    try:
        base_cfg = from_flat(load_yaml(base), where=f"base '{base}': ") if base else TrainConfig()
    except ValueError as exc:
        raise SweepError(f"base: {exc}") from None
    fixed = _overrides("set", data.get("set"))
    if "threads" not in fixed:
        fixed["threads"] = str(threads)
    if scale == "toy":
        k = _validated("set", fixed, base_cfg)[1]
        fixed.update({key: _cli_value(key, v) for key, v in TOY_SCALE.items()})
        fixed.update({"env.toy_tasks": str(k), "buffer.batch_size": str(8 * k)})
    methods = data.get("methods") or {}
    if not isinstance(methods, dict):
        raise SweepError("methods: expected a mapping of method names to overrides")
    seeds = data.get("seeds", [1])
    seeds = [_int("seeds", s) for s in (seeds if isinstance(seeds, list) else [seeds])]
    if not seeds or len(set(seeds)) != len(seeds):
        raise SweepError(f"seeds: got {data.get('seeds')!r}, expected a list of distinct integers")
    if scale == "toy":
        seeds = seeds[:2]
    variants = {str(name): _overrides(f"methods.{name}", over) for name, over in methods.items()}
    grid = data.get("weight_grid")
    if grid is not None:
        if not isinstance(grid, dict) or any(k not in GRID_KEYS for k in grid):
            raise SweepError(f"weight_grid: got {grid!r}, expected a mapping with keys {', '.join(GRID_KEYS)}")
        args: dict[str, Any] = {}
        for key, value in grid.items():
            if key in ("corners", "uniform"):
                if not isinstance(value, bool):
                    raise SweepError(f"weight_grid.{key}: got {value!r}, expected true or false")
                args[key] = value
            else:
                args[key] = _int(f"weight_grid.{key}", value)
        k = _validated("set", fixed, base_cfg)[1]
        vectors = weight_vectors(k, **args)
        if not vectors:
            raise SweepError("weight_grid: gives no weight vector (corners and uniform off, random 0)")
        for i, w in enumerate(vectors):
            variants[f"fixed-w{i}"] = {"combiner": "fixed", "combiner.weights": _cli_value("weights", w)}
    if not variants:
        raise SweepError("methods: the spec has no methods and no weight_grid; nothing to run")
    unknown_methods = [m for m in only if m not in variants]
    if unknown_methods:
        names = ", ".join(variants)
        raise SweepError(f"--methods: got '{unknown_methods[0]}', which is not a method of the spec ({names})")
    if only:
        variants = {name: over for name, over in variants.items() if name in only}
    run_dir = data.get("run_dir") or f"runs/{spec.stem}"
    if not isinstance(run_dir, str):
        raise SweepError(f"run_dir: got {run_dir!r}, expected a path")
    if scale == "toy":
        run_dir = run_dir.rstrip("/") + "-toy"
    runs = []
    for name, over in variants.items():
        if not _NAME.match(name) or "__" in name:
            raise SweepError(f"methods: '{name}' cannot go into a run name; use letters, digits and single _ . + = -")
        for seed in seeds:
            run_name = f"{name}__s{seed}"
            items = {**fixed, **over, "seed": str(seed), "run_dir": run_dir, "run_name": run_name}
            runs.append(Run(run_name, items, _validated(run_name, items, base_cfg)[0], name))
    return Sweep(base, Path(run_dir), runs)


def _validated(where: str, items: dict[str, str], base_cfg: TrainConfig) -> tuple[TrainConfig, int]:
    """The run's config, checked as ``mtrl train`` checks it (:func:`mtrl.train.check_config`), and its K."""
    from mtrl.train import check_config

    try:
        cfg = from_flat(items, base_cfg)
        return cfg, check_config(cfg)
    except ValueError as exc:
        raise SweepError(f"{where}: {exc}") from None


def checkpoint_step(run: Path) -> int | None:
    """The step of a run directory's newest checkpoint that can be read whole (a damaged newer one is passed over:
    ``mtrl train --resume`` sets it aside), or None without one (single_task runs: the ``final_step`` of meta.yaml,
    written with their model zips)."""
    from mtrl.runs.resume import newest_step

    step = newest_step(run)
    if step is not None:
        return step
    if (run / "single_task").is_dir() and (run / "meta.yaml").is_file():
        meta = yaml.safe_load((run / "meta.yaml").read_text()) or {}
        return int(meta.get("final_step") or 0) or None
    return None


def _check_same_config(run: Run, path: Path) -> None:
    try:
        saved = to_flat(from_flat(load_yaml(path / "config.yaml")))
    except ValueError as exc:
        raise SweepError(f"{run.name}: cannot read the existing {path / 'config.yaml'} ({exc})") from None
    wanted = to_flat(run.cfg)
    for key, value in wanted.items():
        if key not in MAY_DIFFER and saved.get(key) != value:
            raise SweepError(
                f"{run.name}: the existing run {path} has {key}={saved.get(key)!r}, the spec gives {value!r}; "
                "move that run away or change the spec back"
            )


def run_status(sweep: Sweep, run: Run) -> tuple[str, int]:
    """Whether a run is done, resumed, started, or restarted after moving its directory aside; its checkpoint
    step."""
    path = sweep.run_dir / run.name
    step = checkpoint_step(path) if path.is_dir() else None
    # a run that had checkpoints but has none usable is resumed all the same: `mtrl train --resume` refuses it in one
    # line (in its log) rather than the sweep training it again from step 0 over its logged curve
    resumable = step is not None or (path.is_dir() and had_checkpoints(path))
    if resumable:
        _check_same_config(run, path)
    if step is not None and step >= run.cfg.total_steps:
        return "done", step
    if resumable and run.cfg.agent.kind != "single_task":  # single_task runs cannot resume
        return "resume", step or 0
    return ("restart" if path.exists() else "start"), 0


def plan(sweep: Sweep, seeds_per_process: int = 1) -> list[Job]:
    """The processes to run: finished runs are skipped (a ``done`` job each); runs to resume go by the seed group
    they were trained in (``mtrl train --resume`` of one run resumes its group); runs to start (or restart) go in
    seed groups of up to ``seeds_per_process`` seeds of one method (``mtrl train --seeds ...``)."""
    from mtrl.runs.resume import group_members

    jobs: list[Job] = []
    by_name = {r.name: r for r in sweep.runs}
    status = {r.name: run_status(sweep, r) for r in sweep.runs}
    covered: set[str] = set()
    fresh: dict[str, list[Run]] = {}
    for run in sweep.runs:
        what, step = status[run.name]
        if what == "done":
            jobs.append(Job((run,), "done", step, [], sweep.run_dir / f"{run.name}.log"))
        elif what == "resume" and run.name not in covered:
            path = sweep.run_dir / run.name
            try:
                members = [m.name for m in group_members(path)]
            except ConfigError:  # a run of its group is missing: `mtrl train --resume` refuses it in its log
                members = [run.name]
            group = tuple(by_name[m] for m in members if m in by_name) or (run,)
            covered.update(r.name for r in group)
            total = max(r.cfg.total_steps for r in group)
            cmd = [sys.executable, "-m", "mtrl", "train", "--resume", str(path), f"--total_steps={total}"]
            jobs.append(_job(sweep, group, "resume", step, cmd))
        elif what in ("start", "restart"):
            fresh.setdefault(run.method, []).append(run)
    for runs in fresh.values():
        solo_only = runs[0].cfg.agent.kind == "single_task" or runs[0].cfg.agent.schedule != "joint"
        size = 1 if solo_only else max(1, seeds_per_process)  # what a seed group cannot train runs alone
        for i in range(0, len(runs), size):
            chunk = tuple(runs[i : i + size])
            cmd = [sys.executable, "-m", "mtrl", "train"]
            cmd += ["--config", str(sweep.base)] if sweep.base else []
            if len(chunk) == 1:
                cmd += [f"--{k}={v}" for k, v in chunk[0].overrides.items()]
            else:  # one process, one run directory per seed: {method}__s{seed}, as the solo runs are named
                shared = {k: v for k, v in chunk[0].overrides.items() if k not in ("seed", "run_name")}
                cmd += [f"--{k}={v}" for k, v in shared.items()] + [f"--run_name={chunk[0].method}"]
                cmd += ["--seeds", *(str(r.cfg.seed) for r in chunk)]
            restart = any(status[r.name][0] == "restart" for r in chunk)
            jobs.append(_job(sweep, chunk, "restart" if restart else "start", 0, cmd))
    order = {r.name: i for i, r in enumerate(sweep.runs)}
    return sorted(jobs, key=lambda j: order[j.runs[0].name])


def _job(sweep: Sweep, runs: tuple[Run, ...], status: str, step: int, cmd: list[str]) -> Job:
    return Job(runs, status, step, [*cmd, "--no-progress"], sweep.run_dir / f"{_job_name(runs)}.log")


def _move_aside(path: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.failed-{stamp}")
    i = 1
    while target.exists():
        target, i = path.with_name(f"{path.name}.failed-{stamp}-{i}"), i + 1
    os.replace(path, target)
    return target


def _open_log(job: Job) -> Any:
    log = open(job.log, "a")  # noqa: SIM115 - closed by the caller when the run ends
    log.write(f"# {datetime.now().isoformat(timespec='seconds')} {job.status}: {shlex.join(job.command)}\n")
    log.flush()
    return log


def run_local(jobs: list[Job], workers: int, finished: Callable[[Job, int], None]) -> None:
    """Run the jobs as subprocesses, at most ``workers`` at a time; ``finished(job, exit_code)`` after each."""
    pending = list(jobs)
    running: list[tuple[Job, subprocess.Popen[bytes], Any]] = []
    try:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.pop(0)
                log = _open_log(job)
                proc = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                running.append((job, proc, log))
            for item in list(running):
                job, proc, log = item
                if proc.poll() is not None:
                    log.close()
                    running.remove(item)
                    finished(job, proc.returncode)
            time.sleep(0.1)
    finally:  # interrupted: stop the children; their last checkpoints let the next sweep resume them
        for _, proc, log in running:
            proc.terminate()
            proc.wait()
            log.close()


def _execute(args: list[str], log: str, cwd: str) -> int:
    """Ray task body: ``python -m mtrl train ...`` with the worker's own interpreter, output appended to ``log``."""
    with open(log, "a") as out:
        return subprocess.call([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def import_ray() -> Any:
    """Import ray, or raise the one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise SweepError('--backend ray: ray is not installed; install it with: pip install "mtrl[ray]"') from None
    return ray


def connect_ray(address: str) -> Any:
    """Connect this process to the Ray cluster at ``address`` (``HOST:PORT`` of its head; empty: ``auto``, the
    cluster started on this machine or named by ``RAY_ADDRESS``) and return the ``ray`` module.

    An address that nothing answers on is refused at once (Ray itself would retry for minutes).

    :raises SweepError: ray is not installed, or no cluster answers; one line.
    """
    ray = import_ray()
    if address and address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise SweepError(f"--address: got {address!r}, expected HOST:PORT of the Ray head (e.g. 10.0.0.1:6379)")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise SweepError(
                f"--address: no Ray cluster answers at {address!r} ({_first_line(exc)}); start one with "
                "`ray start --head --port PORT` on the head machine"
            ) from None
    try:
        ray.init(address=address or "auto", logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SweepError(
            f"--address: cannot connect to a Ray cluster at {address or 'auto'!r} ({_first_line(exc)})"
        ) from None
    return ray


def run_ray(ray: Any, jobs: list[Job], finished: Callable[[Job, int], None]) -> None:
    """Submit every job as a Ray task (``num_cpus`` = its threads) to the cluster ``ray`` is connected to
    (:func:`connect_ray`); ``finished(job, exit_code)`` as they end.

    Interrupted (Ctrl-C), the tasks still queued or running on the cluster are cancelled (their runs stop at once;
    their last checkpoints let the next sweep resume them), and the driver disconnects.
    """
    task = ray.remote(_execute)
    refs = {}
    try:
        for job in jobs:
            _open_log(job).close()
            cfg = job.runs[0].cfg
            cpus, gpus = max(1, cfg.threads), 1 if cfg.device == "cuda" else 0
            refs[task.options(num_cpus=cpus, num_gpus=gpus).remote(job.command[1:], str(job.log), os.getcwd())] = job
        while refs:
            (ref,), _ = ray.wait(list(refs), num_returns=1)
            finished(refs.pop(ref), int(ray.get(ref)))
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        ray.shutdown()


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n")[0].split())[:200]


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


@dataclass(frozen=True)
class SweepArgs:
    """Run methods x seeds (x weight vectors) of a sweep spec as ordinary `mtrl train` runs.

    - rerunning skips finished runs and resumes unfinished ones
    - every run's config is checked before any run starts
    - the spec format: the module documentation of mtrl.sweep"""

    spec: tyro.conf.Positional[str]
    """The sweep spec (YAML), e.g. configs/sweeps/mt10_mean_vs_pcgrad.yaml."""
    workers: int = 1
    """local: runs at the same time."""
    backend: Literal["local", "ray"] = "local"
    """Where runs execute."""
    address: str = ""
    """ray: cluster address (empty: auto)."""
    dry_run: bool = False
    """Print each run's status and command; run nothing."""
    scale: Literal["full", "toy"] = "full"
    """toy: rehearse the sweep at toy size (the toy env with the spec's number of tasks, 800 steps, small networks,
    the first two seeds) in <run_dir>-toy; full: as the spec says."""
    methods: tuple[str, ...] = ()
    """Run only these methods of the spec (fixed-w<i> for weight vectors); empty: all."""
    seeds_per_process: int = 0
    """Seeds of one method trained together in one process (a seed group, `mtrl train --seeds`); 0 = all of a
    method's seeds where the runs' device is a GPU (device cuda, or auto on a machine with one), 1 on a CPU."""


def default_seeds_per_process(sweep: Sweep) -> int:
    """``--seeds-per-process 0``: every seed of a method in one process where the runs train on a GPU, else 1."""
    import torch

    device = sweep.runs[0].cfg.device
    gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return max(len([r for r in sweep.runs if r.method == sweep.runs[0].method]), 1) if gpu else 1


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cli(argv: list[str]) -> int:
    """``mtrl sweep``: 0 when every run finished, 1 when one failed, 2 on bad input (one line on stderr)."""
    try:
        try:
            args = parse(SweepArgs, argv, prog="mtrl sweep", flags=True, hyphens=True)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        if args.workers < 1:
            raise SweepError(f"--workers: got {args.workers}, expected a positive integer")
        if args.address and args.backend != "ray":
            raise SweepError("--address: only used with --backend ray")
        if args.seeds_per_process < 0:
            raise SweepError(f"--seeds-per-process: got {args.seeds_per_process}, expected an integer >= 0 (0: auto)")
        sweep = load_spec(args.spec, threads=max(1, _cpu_count() // args.workers), scale=args.scale, only=args.methods)
        jobs = plan(sweep, args.seeds_per_process or default_seeds_per_process(sweep))
        ray = connect_ray(args.address) if args.backend == "ray" and not args.dry_run else None
    except (SweepError, ConfigError) as exc:
        print(f"mtrl sweep: error: {exc}", file=sys.stderr)
        return 2
    runs = len(sweep.runs)
    if args.dry_run:
        plan_rows: list[tuple[str, ...]] = [("run", "status", "step", "command")]
        plan_rows += [(j.name, j.status, str(j.step), shlex.join(["mtrl", *j.command[3:]])) for j in jobs]
        print(_table(plan_rows))
        processes = sum(j.status != "done" for j in jobs)
        print(f"dry run: {runs} runs in {sweep.run_dir} ({processes} processes to run), nothing started")
        return 0

    todo = [j for j in jobs if j.status != "done"]
    sweep.run_dir.mkdir(parents=True, exist_ok=True)
    for job in todo:
        for run in job.runs if job.status == "restart" else ():
            path = sweep.run_dir / run.name
            if path.exists():
                moved = _move_aside(path)
                print(f"{run.name}: no checkpoint; moved the old directory to {moved}", file=sys.stderr)
    outcome = {r.name: ("skipped", "-") for j in jobs if j.status == "done" for r in j.runs}
    bar = tqdm(total=runs, initial=runs - sum(len(j.runs) for j in todo), desc="sweep", unit="run", dynamic_ncols=True)

    def finished(job: Job, code: int) -> None:
        status = "failed" if code else {"resume": "resumed"}.get(job.status, "started")
        for run in job.runs:
            outcome[run.name] = (status, str(code))
        bar.update(len(job.runs))
        if code:
            bar.write(f"{job.name}: failed with exit code {code}; see {job.log}", file=sys.stderr)

    try:
        if ray is not None:
            run_ray(ray, todo, finished)
        else:
            run_local(todo, args.workers, finished)
    except KeyboardInterrupt:
        bar.close()
        print("mtrl sweep: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    bar.close()
    rows: list[tuple[str, ...]] = [("run", "status", "exit code")]
    rows += [(r.name, *outcome[r.name]) for r in sweep.runs]
    print(_table(rows))
    failed = sum(status == "failed" for status, _ in outcome.values())
    print(f"{runs} runs in {sweep.run_dir}: {failed} failed" + (" (logs: <run_dir>/<run>.log)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
