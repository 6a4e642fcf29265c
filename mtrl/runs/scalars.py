"""A run's logged scalars and its final success: read from its TensorBoard event files, by one rule for everyone.

:func:`read_scalars` reads the event files of a run directory (honouring a resumed run's purge marks);
:func:`final_success` is the rule every number of a finished run comes from (``mtrl train`` prints it and writes it
to ``meta.yaml``, ``mtrl compare`` aggregates it): the mean of the evaluations in the last 10% of the run's steps,
never the max over training. The tag names a run writes are in
:mod:`mtrl.runs.tensorboard`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _scalar_value(value: Any) -> float | None:
    """The number in a ``Summary.Value``: ``simple_value`` (torch's SummaryWriter) or a scalar tensor (TF2)."""
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor") and value.metadata.plugin_data.plugin_name in ("scalars", ""):
        from tensorboard.util import tensor_util

        arr = tensor_util.make_ndarray(value.tensor)
        return float(arr.item()) if arr.size == 1 and arr.dtype.kind in "fiu" else None
    return None


_SESSION_START = 1
"""``SessionLog.START``: the status of the purge mark a resumed ``SummaryWriter(purge_step=...)`` writes."""


def _iter_event_file(path: Path) -> Iterable[Any]:
    """Events of one TFRecord event file; a truncated last record (a run still writing) ends the file."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event

    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):  # record: uint64 length, uint32 crc, payload, uint32 crc
        (length,) = struct.unpack_from("<Q", data, pos)
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            return
        try:
            yield Event.FromString(data[start:end])
        except DecodeError:
            return
        pos = end + 4


def read_scalars(run_dir: str | Path, keep: Callable[[str], bool] | None = None) -> pd.DataFrame:
    """Scalars of the event files directly in ``run_dir`` as a long frame (``step``, ``tag``, ``value``), sorted by
    tag then step; the same rows as ``tbparse.SummaryReader(event_file).scalars`` (a test checks this).

    Only ``events.out.tfevents.*`` files in the folder itself are read (not checkpoints, videos or sub-folders).
    A resumed run starts its event file with a purge mark at its checkpoint's step (``SummaryWriter(purge_step=)``):
    as in TensorBoard, everything written before the mark at that step or later (the interrupted segment's steps
    after its checkpoint) is dropped. When a step of a tag was still logged twice, the later write wins. The records
    are parsed here
    without checksums because tbparse (via TensorBoard's pure-Python CRC32C) needs about 9 s for a 2M-step MT10 run,
    this about 0.4 s.

    :param keep: tags to keep (default: all).
    """
    rows: list[tuple[int, str, float, float]] = []
    purges: list[tuple[float, int]] = []  # (wall time, step) of each resume's purge mark
    for f in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        for event in _iter_event_file(f):
            if event.HasField("session_log") and event.session_log.status == _SESSION_START:
                purges.append((event.wall_time, event.step))
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if keep is not None and not keep(value.tag):
                    continue
                number = _scalar_value(value)
                if number is not None:
                    rows.append((event.step, value.tag, number, event.wall_time))
    df = pd.DataFrame(rows, columns=["step", "tag", "value", "wall_time"])
    for wall, step in purges:
        df = df[~((df["wall_time"] < wall) & (df["step"] >= step))]
    df = df.sort_values("wall_time", kind="stable").drop_duplicates(["tag", "step"], keep="last")
    return df.sort_values(["tag", "step"], kind="stable").reset_index(drop=True)[["step", "tag", "value"]]


FINAL_WINDOW = 0.1
"""Final success averages the evaluations in this last fraction of a run's steps."""


def final_rule(window: float = FINAL_WINDOW) -> str:
    """The final-success rule in words, for tables, plots and messages."""
    return f"mean of the evaluations in the last {window:.0%} of the run's steps (at least its last evaluation)"


def final_mask(
    steps: Sequence[int] | np.ndarray, total_steps: float | None, window: float = FINAL_WINDOW
) -> np.ndarray:
    """Which evaluations count into the final value: those at steps ``>= (1 - window) * total_steps`` (total: the
    run's ``total_steps``, or its last evaluation's step when unknown), and always the last one."""
    arr = np.asarray(steps, dtype=float)
    if arr.size == 0:
        raise ValueError("no evaluations")
    total = float(total_steps) if total_steps else float(arr[-1])
    mask = arr >= (1.0 - window) * total
    mask[-1] = True
    return mask


def final_success(
    steps: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    total_steps: float | None,
    window: float = FINAL_WINDOW,
) -> float:
    """Mean of the evaluations in the last ``window`` of the run's steps (:func:`final_mask`); never the max over
    training, and never the whole curve of a short run."""
    return float(np.asarray(values, dtype=float)[final_mask(steps, total_steps, window)].mean())
