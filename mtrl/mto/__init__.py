"""Multi-task optimization: combiners that turn per-task losses/gradients into one update.

:data:`COMBINERS` maps the name used on the command line (``--combiner NAME``) to the combiner's frozen config
dataclass; ``config.build(num_tasks, seed)`` makes the combiner.

Loss space (``requires_grads = False``, one backward of the weighted loss): mean, sum, fixed, rlw, uw, dwa, famo.
Gradient space (``requires_grads = True``, per-task gradients ``[K, P]``): gradnorm, pcgrad, cagrad, cagrad_fast,
mgda, imtlg, graddrop, nashmtl, alignedmtl.
"""

from __future__ import annotations

from mtrl.mto.alignedmtl import AlignedMTL, AlignedMTLConfig
from mtrl.mto.base import Combiner, GramianCombiner, NonFiniteError, Weighting
from mtrl.mto.cagrad import CAGrad, CAGradConfig
from mtrl.mto.cagrad_fast import CAGradFast, CAGradFastConfig
from mtrl.mto.dwa import DWA, DWAConfig
from mtrl.mto.famo import FAMO, FAMOConfig
from mtrl.mto.fixed import Fixed, FixedConfig
from mtrl.mto.graddrop import GradDrop, GradDropConfig
from mtrl.mto.gradnorm import GradNorm, GradNormConfig
from mtrl.mto.imtlg import IMTLG, IMTLGConfig
from mtrl.mto.mean import Mean, MeanConfig
from mtrl.mto.mgda import MGDA, MGDAConfig
from mtrl.mto.nashmtl import NashMTL, NashMTLConfig
from mtrl.mto.pcgrad import PCGrad, PCGradConfig
from mtrl.mto.rlw import RLW, RLWConfig
from mtrl.mto.sum import Sum, SumConfig
from mtrl.mto.uw import UW, UWConfig

COMBINERS: dict[str, type] = {
    "mean": MeanConfig,
    "sum": SumConfig,
    "fixed": FixedConfig,
    "rlw": RLWConfig,
    "uw": UWConfig,
    "dwa": DWAConfig,
    "famo": FAMOConfig,
    "gradnorm": GradNormConfig,
    "pcgrad": PCGradConfig,
    "cagrad": CAGradConfig,
    "cagrad_fast": CAGradFastConfig,
    "mgda": MGDAConfig,
    "imtlg": IMTLGConfig,
    "graddrop": GradDropConfig,
    "nashmtl": NashMTLConfig,
    "alignedmtl": AlignedMTLConfig,
}

__all__ = [
    "COMBINERS",
    "DWA",
    "FAMO",
    "IMTLG",
    "MGDA",
    "RLW",
    "UW",
    "AlignedMTL",
    "AlignedMTLConfig",
    "CAGrad",
    "CAGradConfig",
    "CAGradFast",
    "CAGradFastConfig",
    "Combiner",
    "DWAConfig",
    "FAMOConfig",
    "Fixed",
    "FixedConfig",
    "GradDrop",
    "GradDropConfig",
    "GradNorm",
    "GradNormConfig",
    "GramianCombiner",
    "IMTLGConfig",
    "MGDAConfig",
    "Mean",
    "MeanConfig",
    "NashMTL",
    "NashMTLConfig",
    "NonFiniteError",
    "PCGrad",
    "PCGradConfig",
    "RLWConfig",
    "Sum",
    "SumConfig",
    "UWConfig",
    "Weighting",
]
