"""TensorBoard helpers beyond plain scalars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

HPARAMS_SUFFIX = ".hparams"


def write_hparams(
    run_dir: str | Path, config_flat: dict[str, Any], final_metrics: dict[str, float], *, step: int | None = None
) -> Path:
    """Write a TensorBoard HParams summary into ``run_dir`` so runs can be filtered and compared by their config.

    The session is the run itself (no sub-folder, unlike ``SummaryWriter.add_hparams``). Hyperparameters are the
    flat config; values that are not bool/int/float/str (tuples of weights) become strings, ``None`` is dropped.
    Each metric is also written as a scalar under ``hparams/<name>``, the tag the HParams table shows. A summary
    written earlier by this function is replaced (files ``events.out.tfevents.*.hparams``).

    :returns: the event file written.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clean = {
        k: (float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
        if isinstance(v, (bool, int, float, str))
        else str(v)
        for k, v in config_flat.items()
        if v is not None
    }
    metrics = {(k if k.startswith("hparams/") else f"hparams/{k}"): float(v) for k, v in final_metrics.items()}
    for old in run_dir.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"):
        old.unlink()
    before = set(run_dir.glob("events.out.tfevents.*"))
    with SummaryWriter(log_dir=str(run_dir), filename_suffix=HPARAMS_SUFFIX) as writer:
        for summary in hparams(clean, metrics):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, global_step=step or 0)
    (written,) = set(run_dir.glob("events.out.tfevents.*")) - before
    return written
