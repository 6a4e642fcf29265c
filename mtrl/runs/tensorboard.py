"""What a run writes to TensorBoard: the tag names, the training-episode log, the HParams summary and GIF clips.

Tags are grouped by their first path part, and TensorBoard's Time Series tab shows the groups in alphabetical order,
so the names put what users compare first: ``eval/`` (the final success, then the success rate overall and per task,
then the evaluation clips), ``eval_return/``, ``hparams``-free losses (``losses/``), combiner diagnostics (``mto/``)
and last the training-side values (``train/``: steps/s, training episodes, temperatures).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imageio.v2 as imageio
import numpy as np
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from mtrl.config import BOOKKEEPING_KEYS

if TYPE_CHECKING:
    from mtrl.envs.base import StepResult

HPARAMS_SUFFIX = ".hparams"
"""File-name suffix of the event file that holds a run's HParams summary."""

FINAL_SUCCESS = "eval/final_success"
"""The run's final success (:func:`mtrl.runs.scalars.final_success`), one point at the last step; per task
``eval/final_success/<task>`` where written (``mtrl compare --write-hparams``). The HParams table's metrics."""
SUCCESS = "eval/success_rate"
"""Mean over tasks of the evaluation success rate; per task ``eval/success_rate/<task>``."""
RETURN = "eval_return"
"""``eval_return/<task>``: mean undiscounted evaluation return of a task (a group of its own, after the success)."""
VIDEO = "eval/video"
"""Evaluation clips (an animated GIF image)."""
SPS = "train/sps"
"""Vector-env steps per second."""
SPS_LEGACY = "charts/sps"
""":data:`SPS` as runs of earlier versions wrote it (read by ``mtrl compare``)."""
EPISODIC_RETURN = "train/episodic_return"
EPISODIC_SUCCESS = "train/episodic_success"
"""Training episodes (stochastic policy): mean over the tasks that just finished one."""
ALPHA = "train/alpha"
"""``train/alpha/<task>`` (``train/alpha/shared`` with a shared temperature): the entropy temperature."""


class EpisodeLog:
    """Return and any-step success of each task's current training episode; logs the episodes that end."""

    def __init__(self, num_tasks: int) -> None:
        self.ret = np.zeros(num_tasks)
        self.success = np.zeros(num_tasks, dtype=bool)

    def add(self, res: StepResult, writer: SummaryWriter, step: int) -> None:
        """Account for one vector step; ``step`` is the global step after it."""
        self.ret += res.reward
        self.success |= res.success
        ended = res.terminated | res.truncated
        if ended.any():
            writer.add_scalar(EPISODIC_RETURN, float(self.ret[ended].mean()), step)
            writer.add_scalar(EPISODIC_SUCCESS, float(self.success[ended].mean()), step)
            self.ret[ended], self.success[ended] = 0.0, False


def write_hparams(
    run_dir: str | Path, config_flat: dict[str, Any], final_metrics: dict[str, float], *, step: int | None = None
) -> Path:
    """Write a TensorBoard HParams session into ``run_dir`` so runs can be filtered and compared by their config.

    The session is the run itself (no sub-folder, unlike ``SummaryWriter.add_hparams``). Hyperparameters are the
    flat config without its bookkeeping keys (:data:`mtrl.config.BOOKKEEPING_KEYS`: run name, folders, device,
    intervals); values that are not bool/int/float/str (tuples of weights) become strings, ``None`` is dropped.
    Each metric is also written as a scalar under ``eval/<name>`` (``final_success`` -> :data:`FINAL_SUCCESS`),
    the tag the HParams table shows. A summary written earlier by this function is replaced (files
    ``events.out.tfevents.*.hparams``).

    No experiment summary is written: a run alone cannot know what differs between runs. TensorBoard then builds
    the experiment from all the sessions under its logdir, marks the hyperparameters whose values differ between
    them (combiner and its options, benchmark, seed, regularizers, ...) and lists those first, so its table opens on
    them, next to the final success.

    :returns: the event file written.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clean = {
        k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
        if isinstance(v, (bool, int, float, str))
        else str(v)
        for k, v in config_flat.items()
        if v is not None and k not in BOOKKEEPING_KEYS
    }
    metrics = {(k if k.startswith("eval/") else f"eval/{k}"): float(v) for k, v in final_metrics.items()}
    for old in run_dir.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"):
        old.unlink()
    before = set(run_dir.glob("events.out.tfevents.*"))
    with SummaryWriter(log_dir=str(run_dir), filename_suffix=HPARAMS_SUFFIX) as writer:
        _experiment, session_start, session_end = hparams(clean, metrics)
        for summary in (session_start, session_end):
            writer._get_file_writer().add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, global_step=step or 0)
    (written,) = set(run_dir.glob("events.out.tfevents.*")) - before
    return written


def add_gif(writer: SummaryWriter, tag: str, clips: np.ndarray, step: int, fps: int = 15, columns: int = 5) -> None:
    """Add rollout clips ``[N, T, 3, H, W]`` (uint8) as one animated GIF image, tiled ``columns`` per row.

    TensorBoard's images tab plays GIFs; unlike ``SummaryWriter.add_video`` this needs no moviepy.
    """
    n, t, _, h, w = clips.shape
    rows = -(-n // columns)
    cols = min(n, columns)
    grid = np.zeros((t, rows * h, cols * w, 3), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = clips[i].transpose(0, 2, 3, 1)
    buffer = io.BytesIO()
    imageio.mimwrite(buffer, list(grid), format="GIF", duration=1000 / fps, loop=0)
    image = Summary.Image(
        height=grid.shape[1], width=grid.shape[2], colorspace=3, encoded_image_string=buffer.getvalue()
    )
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
