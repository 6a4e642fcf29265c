"""Multi-task optimization: combiners that turn per-task losses/gradients into one update.

The contract is in :mod:`mtrl.mto.base`. :data:`COMBINERS` is the registry: the command-line name (``--combiner
NAME``) of every combiner, mapped to its config, a frozen dataclass of its options (``--combiner.OPTION``) with

* ``name``: its key here; ``kind``: ``"loss"`` (one backward of the weighted task losses) or ``"gradient"``
  (per-task gradients ``[K, P]`` over the shared parameters);
* ``check(num_tasks, parts)``: a one-line ``ValueError`` for an option out of range or not finite, an option that does
  not fit K, or a part of the SAC update (``parts`` of ``{"critic", "actor", "alpha"}``) it may not be applied to;
* ``build(num_tasks, seed)``: the :class:`~mtrl.mto.base.Combiner`, called as ``combiner(grads, losses)``.

A new combiner is one module with its :class:`~mtrl.mto.base.Combiner` and its config, and one entry in
:data:`_CONFIGS`. Shared pieces that are not the contract: :mod:`~mtrl.mto.gramian` (the Gramian, blocks,
:class:`~mtrl.mto.gramian.GramianCombiner`), :mod:`~mtrl.mto.qp` (exact small solvers: dual-cone projections, the
simplex projection), :mod:`~mtrl.mto.memory` (per-task ``[K, P]`` state, the double-sampled Gramian),
:mod:`~mtrl.mto.logloss` (methods that take logs of the losses: critic only, domain check), :mod:`~mtrl.mto.adam`
(Adam on a small learned vector).
"""

from __future__ import annotations

from mtrl.mto.alignedmtl import AlignedMTLConfig
from mtrl.mto.base import Combiner, CombinerConfigBase, NonFiniteError, Weighting
from mtrl.mto.cagrad import CAGradConfig
from mtrl.mto.cagrad_fast import CAGradFastConfig
from mtrl.mto.con_fig import ConFIGConfig
from mtrl.mto.crmogm import CRMOGMConfig
from mtrl.mto.dbmtl import DBMTLConfig
from mtrl.mto.dualproj import DualProjConfig
from mtrl.mto.dwa import DWAConfig
from mtrl.mto.excessmtl import ExcessMTLConfig
from mtrl.mto.fairgrad import FairGradConfig
from mtrl.mto.famo import FAMOConfig
from mtrl.mto.fixed import FixedConfig
from mtrl.mto.gls import GLSConfig
from mtrl.mto.graddrop import GradDropConfig
from mtrl.mto.gradnorm import GradNormConfig
from mtrl.mto.gradvac import GradVacConfig
from mtrl.mto.imtlg import IMTLGConfig
from mtrl.mto.imtll import IMTLLConfig
from mtrl.mto.mean import MeanConfig
from mtrl.mto.mgda import MGDAConfig
from mtrl.mto.moco import MoCoConfig
from mtrl.mto.modo import MoDoConfig
from mtrl.mto.nashmtl import NashMTLConfig
from mtrl.mto.pcgrad import PCGradConfig
from mtrl.mto.rlw import RLWConfig
from mtrl.mto.sdmgrad import SDMGradConfig
from mtrl.mto.stch import STCHConfig
from mtrl.mto.sum import SumConfig
from mtrl.mto.upgrad import UPGradConfig
from mtrl.mto.uw import UWConfig

#: every combiner config, in command-line order (loss space first)
_CONFIGS: tuple[type[CombinerConfigBase], ...] = (
    MeanConfig,
    SumConfig,
    FixedConfig,
    RLWConfig,
    UWConfig,
    DWAConfig,
    FAMOConfig,
    IMTLLConfig,
    STCHConfig,
    GLSConfig,
    GradNormConfig,
    PCGradConfig,
    CAGradConfig,
    CAGradFastConfig,
    MGDAConfig,
    IMTLGConfig,
    GradDropConfig,
    NashMTLConfig,
    AlignedMTLConfig,
    UPGradConfig,
    DualProjConfig,
    ConFIGConfig,
    GradVacConfig,
    FairGradConfig,
    SDMGradConfig,
    MoDoConfig,
    ExcessMTLConfig,
    CRMOGMConfig,
    MoCoConfig,
    DBMTLConfig,
)

#: command-line name -> combiner config class (a frozen dataclass; see the module docstring)
COMBINERS: dict[str, type[CombinerConfigBase]] = {cls.name: cls for cls in _CONFIGS}

__all__ = ["COMBINERS", "Combiner", "CombinerConfigBase", "NonFiniteError", "Weighting"]
