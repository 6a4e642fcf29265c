"""Run directories: creating one whole, its metadata, output-path checks, the final-success record, and stopping a
run cleanly on SIGINT / SIGTERM.

Shared by the MT-SAC loop (:mod:`mtrl.train`) and the single-task baseline (:mod:`mtrl.single_task`); imports
neither, nor any environment.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from mtrl.config import ConfigError, TrainConfig, dump_yaml, to_flat
from mtrl.runs import checkpoint
from mtrl.runs.tensorboard import SUCCESS, write_hparams


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint was written; the message is one line."""

    def __init__(self, signum: int, step: int, run: Path, resumable: bool = True, group: int = 1) -> None:
        self.signum, self.step, self.run = signum, step, run
        name = signal.Signals(signum).name
        saved = (
            f"checkpoint written; resume with: mtrl train --resume {run}"
            if resumable and group == 1
            else f"checkpoints of all {group} seeds written; resume the group with: mtrl train --resume {run}"
            if resumable
            else (f"models saved in {run / 'single_task'} (single_task runs cannot be resumed)")
        )
        super().__init__(f"{name} at step {step}: {saved}")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """While inside, SIGINT and SIGTERM only record their number in the yielded list (the loop finishes its step,
    checkpoints and raises :class:`Interrupted`); a second signal aborts at once (``KeyboardInterrupt``). Outside the
    main thread signals cannot be caught and the handlers are left alone."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:  # the second one: stop now
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise KeyboardInterrupt
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists already, or is not a run); one-line message."""


def check_output_dir(path: str | Path, label: str) -> None:
    """Raise a one-line :class:`ConfigError` unless ``path`` is, or can be created as, a writable directory.

    Checked before any work: an existing path must be a directory; otherwise its nearest existing ancestor must be a
    writable directory on a writable file system. Leaves nothing behind.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{label}: '{path}' is a file, expected a directory")
    ancestor = p
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{label}: '{path}' cannot be created: '{ancestor}' is a file, expected a directory")
    if not _writable(ancestor):
        raise ConfigError(f"{label}: '{path}' cannot be written: '{ancestor}' is not writable")


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder``: permissions, a read-only mount, and (for root, whom permissions
    do not stop, and for special file systems such as /proc) a probe file created and removed at once."""
    if not os.access(folder, os.W_OK | os.X_OK) or os.statvfs(folder).f_flag & os.ST_RDONLY:
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".mtrl-write-check-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def check_output_file(path: str | Path, label: str) -> None:
    """Raise a one-line :class:`ConfigError` unless ``path`` is, or can be created as, a writable file."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{label}: '{path}' is a directory, expected a file")
    try:
        check_output_dir(p.parent, label)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace(f"'{p.parent}' cannot", f"'{path}' cannot", 1)) from None
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{label}: '{path}' is not writable")


def run_metadata(cfg: TrainConfig) -> dict[str, Any]:
    """git commit and dirty flag, package versions, Python, seed and start time of a new run."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
            return out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            return ""

    versions: dict[str, str | None] = {}
    for pkg in ("mtrl", "torch", "numpy", "gymnasium", "metaworld", "mujoco", "stable-baselines3"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "git_commit": git("rev-parse", "HEAD") or None,
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "versions": versions,
        "python": platform.python_version(),
        "seed": cfg.seed,
        "started": datetime.now().isoformat(timespec="seconds"),
        "wall_clock_s": 0.0,
        "final_step": 0,
    }


def check_run_free(run: Path) -> None:
    """Raise :class:`RunDirError` (one line) when ``run`` exists already."""
    if run.exists() or run.is_symlink():
        raise RunDirError(
            f"run_name: '{run}' exists already; choose another --run_name or continue it with --resume {run}"
        )


def prepare_run_dir(
    cfg: TrainConfig, name_prefix: str, command: str, group: dict[str, Any] | None = None
) -> tuple[TrainConfig, Path]:
    """Create a fresh run directory (never reusing an existing one) with config.yaml, command.txt, meta.yaml.

    :param name_prefix: ``{benchmark}__{method}``; an empty ``cfg.run_name`` becomes
        ``{name_prefix}__s{seed}__{timestamp}``.
    :param group: the seed group the run is trained in (``{"seeds": [...], "runs": [names]}``, the runs in
        ``cfg.run_dir``), recorded in meta.yaml as ``group``.
    :returns: the config with its run name, and the directory. It appears whole or not at all (written in a
        temporary sibling folder, then renamed).
    """
    if not cfg.run_name:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg = replace(cfg, run_name=f"{name_prefix}__s{cfg.seed}__{stamp}")
    run = Path(cfg.run_dir) / cfg.run_name
    check_run_free(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run.name}.tmp-", dir=run.parent))
    (staging / "config.yaml").write_text(dump_yaml(cfg))
    (staging / "command.txt").write_text(command + "\n")
    meta = run_metadata(cfg)
    if group is not None:
        meta["group"] = group
    (staging / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    try:
        os.rename(staging, run)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        raise RunDirError(f"run_name: '{run}' exists already; choose another --run_name") from None
    return cfg, run


def update_meta(run: Path, **fields: Any) -> None:
    """Set ``fields`` in the run's meta.yaml (replaced atomically)."""
    meta = yaml.safe_load((run / "meta.yaml").read_text()) or {}
    meta.update(fields)
    checkpoint.write_text_atomic(run / "meta.yaml", yaml.safe_dump(meta, sort_keys=False))


def record_final_success(run: Path, cfg: TrainConfig) -> float | None:
    """The run's final success by the rule of ``mtrl compare`` (:func:`mtrl.compare.final_success`: the evaluations
    in the last 10% of the steps, never the max over training), from its event files (a resumed run's evaluations
    before the resume count too); written to ``meta.yaml`` and as the TensorBoard HParams metric. None without
    evaluations."""
    from mtrl.runs.scalars import final_success, read_scalars

    curve = read_scalars(run, keep=lambda tag: tag == SUCCESS)
    if curve.empty:
        return None
    value = final_success(curve["step"].to_numpy(), curve["value"].to_numpy(), cfg.total_steps)
    update_meta(run, final_success=round(value, 6))
    write_hparams(run, to_flat(cfg), {"final_success": value}, step=cfg.total_steps)
    return value


def main_message(run: Path) -> str:
    """What ``mtrl train`` prints at the end: the final success and where everything went."""
    from mtrl.runs.scalars import final_rule

    meta = yaml.safe_load((run / "meta.yaml").read_text()) or {}
    final = meta.get("final_success")
    head = f"final success: {final:.3f} ({final_rule()})\n" if isinstance(final, (int, float)) else ""
    saved = checkpoint.latest(run)
    mtsac = f"  checkpoint:   {saved}\n  evaluate:     mtrl evaluate {run}\n" if saved else ""
    return head + f"run directory: {run}\n  TensorBoard:  tensorboard --logdir {run.parent}\n" + mtsac.rstrip("\n")
