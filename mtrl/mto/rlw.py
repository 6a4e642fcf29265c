"""RLW: random loss weighting."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtrl.mto.base import Combiner, CombinerConfigBase, Jacobian, Weighting


class RLW(Combiner):
    r"""Random loss weighting (Lin et al. 2021, https://arxiv.org/abs/2111.10603), normal-softmax variant.

    .. math:: w = \operatorname{softmax}(z), \quad z \sim \mathcal N(0, I_K), \qquad d = \sum_k w_k \nabla L_k

    ``z`` is drawn per call from the owned generator (on the CPU, in the losses' dtype, then moved). Same as torchjd's
    ``Random``, nash-mtl's and LibMTL's RLW.

    Scale: the weights sum to 1 (``mean`` in expectation over permutations); Kurin et al.'s RL runs normalise them
    to sum to K. K=1 gives weight 1.
    """

    requires_grads = False

    def forward(self, grads: Jacobian | None, losses: Tensor) -> Weighting:
        z = torch.randn(self.num_tasks, generator=self.generator, dtype=losses.dtype)
        weights = torch.softmax(z, dim=0).to(losses.device, non_blocking=True)
        self.record_stats(weights=weights)
        return Weighting(weights)


@dataclass(frozen=True)
class RLWConfig(CombinerConfigBase):
    """Random loss weighting: softmax of standard normal logits, redrawn every call."""

    name = "rlw"
    kind = "loss"

    def build(self, num_tasks: int, seed: int = 0) -> RLW:
        self.check(num_tasks, frozenset())
        return RLW(num_tasks, seed)
