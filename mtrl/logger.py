"""TensorBoard helpers beyond plain scalars."""

from __future__ import annotations

from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


def write_hparams(writer: SummaryWriter, config: dict[str, Any], metrics: dict[str, float]) -> None:
    """Write the run's hyperparameters (flat config) and final metrics for TensorBoard's HParams plugin.

    Written into the run's own event file (``SummaryWriter.add_hparams`` would start a new sub-run). The metric
    keys must be scalar tags the run already logs (e.g. ``eval/success_rate``). Non-scalar values (tuples of
    weights) are written as strings.
    """
    clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}
    for summary in hparams(clean, metrics):
        writer.file_writer.add_summary(summary)
