"""Networks: MLP builder, task conditioning, tanh-Gaussian actor, twin-Q critic, for one seed or a group of seeds.

Every parameter has a leading **seed axis** ``S``: a network holds the independent networks of ``S`` runs (a seed
group, :mod:`mtrl.train`), and one forward of inputs ``[S, N, d]`` (task ids ``[S, N]``) computes all of them with
batched matrix multiplies. A network is built for one seed (``S = 1``, initialised exactly as a plain ``nn.Linear``
network of the same layers); :func:`stack_seeds` joins the networks of several seeds. With ``S = 1`` the networks
also take flat inputs ``[N, d]`` (task ``[N]``). Row-chunked, everything runs under ``torch.func.vmap`` for per-task
gradients. Task conditioning:

- ``none``: the task is ignored;
- ``one_hot``: the one-hot task id is concatenated to the input;
- ``multi_head``: shared trunk, one output head per task. All heads are one ``Linear(hidden, K * out)`` (a single
  matmul for the whole batch); each row keeps its own task's slice. A head's parameters only receive gradient
  from its own task's rows: :meth:`TaskConditionedMLP.task_specific_params` names them for the combiners.

Precision (``AgentConfig.precision``): with ``bf16`` every network runs its forward (and so its backward) under
``torch.autocast`` with bfloat16 on its device; the output is cast back to float32 at once, so parameters, gradients,
log-probabilities, losses and everything downstream stay float32. ``fp32`` and ``tf32`` run plain float32 (tf32 is a
matmul setting of CUDA, see :func:`mtrl.utils.set_matmul_precision`).

Dropout multiplies by masks the caller passes (one ``[S, N, hidden]`` per dropout layer, drawn from each seed's own
generator by the agent, so a seed of a group draws the same masks as its solo run); without masks a network in train
mode draws them from torch's global generator, as ``nn.Dropout`` does.

Initialisation (``NetConfig.init``): ``torch`` keeps ``nn.Linear``'s default; ``he_uniform`` is metaworld-algorithms'
(hidden weights ``U(+-sqrt(6 / fan_in))``, zero biases, the output layer's weights and biases ``U(+-head_scale)``:
1e-3 for the actor, 3e-3 for the critic); ``xavier`` is facebookresearch/mtrl's (Xavier-uniform weights, zero
biases, every layer).
"""

from __future__ import annotations

import copy
import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtrl.config import NetConfig

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
M = TypeVar("M", bound=nn.Module)


class SeedLinear(nn.Linear):
    """``nn.Linear`` with a leading seed axis: weight ``[S, out, in]``, bias ``[S, out]``; built for one seed with
    ``nn.Linear``'s own initialisation."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.weight = nn.Parameter(self.weight.detach()[None].clone())
        self.bias = nn.Parameter(self.bias.detach()[None].clone())

    def forward(self, x: Tensor) -> Tensor:
        # one batched matmul for all seeds; one seed's flat rows take the same kernel (bmm's slices do not depend on
        # the batch count, F.linear's backward can differ from them in the last bits), so a seed of a group computes
        # bit for bit what its solo run computes
        if x.dim() == 2:
            return self.forward(x[None])[0]
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))  # [S, N, out]


class SeedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis with a leading seed axis on its affine: weight and bias ``[S, hidden]``."""

    def __init__(self, hidden: int) -> None:
        super().__init__(hidden)
        self.weight = nn.Parameter(self.weight.detach()[None].clone())
        self.bias = nn.Parameter(self.bias.detach()[None].clone())

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return self.forward(x[None])[0]
        normed = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        return normed * self.weight.unsqueeze(1) + self.bias.unsqueeze(1)


class SeedDropout(nn.Dropout):
    """``nn.Dropout`` that multiplies by a given mask (already scaled by ``1 / (1 - p)``) where one is passed."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self.training or self.p == 0:
            return x
        return super().forward(x) if mask is None else x * mask


def dropout_mask(p: float, shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device) -> Tensor:
    """A dropout mask ``[S, *shape]`` (zeros with probability ``p``, else ``1 / (1 - p)``), seed ``s``'s slice drawn
    from ``generators[s]``."""
    keep = torch.stack([torch.rand(shape, generator=g, device=device) for g in generators]) >= p
    return keep.float() / (1.0 - p)


def seed_clip_coefficients(grads: list[Tensor], max_norm: float) -> tuple[Tensor, Tensor]:
    """Each seed's factor ``[S]`` that scales its slice of ``grads`` (leading seed axis) to a global norm of at most
    ``max_norm``, as ``torch.nn.utils.clip_grad_norm_`` scales one network's (never above 1), and each seed's norm
    before clipping ``[S]``."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # [P, S]
    total = torch.linalg.vector_norm(norms, dim=0)  # [S]
    return (max_norm / (total + 1e-6)).clamp(max=1.0), total


def mlp(
    in_dim: int, hidden_dim: int, num_layers: int, *, layer_norm: bool = False, dropout: float = 0.0
) -> nn.Sequential:
    """``num_layers`` x (Linear -> [LayerNorm] -> ReLU -> [Dropout]); the output has ``hidden_dim`` features."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers.append(SeedLinear(in_dim if i == 0 else hidden_dim, hidden_dim))
        if layer_norm:
            layers.append(SeedLayerNorm(hidden_dim))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(SeedDropout(dropout))
    return nn.Sequential(*layers)


def mlp_params(in_dim: int, cfg: NetConfig, out_dim: int) -> int:
    """Parameters of one seed's :class:`TaskConditionedMLP` trunk and head (without building it)."""
    h, n = cfg.hidden_dim, cfg.num_layers
    trunk = (in_dim + 1) * h + (n - 1) * (h + 1) * h + (2 * n * h if cfg.layer_norm else 0)
    return trunk + (h + 1) * out_dim


def stack_seeds(modules: list[M]) -> M:
    """One module holding the networks of several seeds: a copy of ``modules[0]`` whose every parameter is the
    concatenation of theirs along the seed axis (the modules must be built alike, each for one seed or more)."""
    out = copy.deepcopy(modules[0])
    for name, _ in list(out.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        stacked = torch.cat([m.get_parameter(name).detach() for m in modules])
        setattr(out.get_submodule(owner) if owner else out, leaf, nn.Parameter(stacked))
    return out


def init_linear(layers: list[nn.Linear], head: nn.Linear, scheme: str, head_scale: float) -> None:
    """Initialise hidden ``layers`` and the output layer ``head`` (each of one seed) in place by ``scheme`` (see the
    module docstring)."""
    if scheme == "torch":
        return
    for layer in [*layers, head]:
        weight, bias = layer.weight.data[0], layer.bias.data[0]  # [out, in], [out]: the fans of one seed's layer
        if scheme == "xavier" or layer is not head:
            if scheme == "xavier":
                nn.init.xavier_uniform_(weight)
            else:  # he_uniform: U(+-sqrt(6 / fan_in)) = kaiming_uniform_ with the ReLU gain
                nn.init.kaiming_uniform_(weight, nonlinearity="relu")
            nn.init.zeros_(bias)
        else:
            nn.init.uniform_(weight, -head_scale, head_scale)
            nn.init.uniform_(bias, -head_scale, head_scale)


def compute_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision setting: bfloat16 for ``bf16``, None (plain float32) otherwise."""
    return torch.bfloat16 if precision == "bf16" else None


class TaskConditionedMLP(nn.Module):
    """An MLP ``[S, N, in] -> [S, N, out]`` conditioned on the task ids ``[S, N]`` (one seed: also ``[N, in]``).

    :param head_scale: bound of the output layer's uniform initialisation with ``cfg.init == "he_uniform"``.
    :param precision: ``bf16``: forward under bfloat16 autocast, output float32 (see the module docstring).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_tasks: int,
        conditioning: str,
        cfg: NetConfig,
        head_scale: float = 3e-3,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.num_tasks, self.out_dim, self.conditioning = num_tasks, out_dim, conditioning
        self.hidden_dim = cfg.hidden_dim
        self.autocast_dtype = compute_dtype(precision)
        extra = num_tasks if conditioning == "one_hot" else 0
        self.trunk = mlp(in_dim + extra, cfg.hidden_dim, cfg.num_layers, layer_norm=cfg.layer_norm, dropout=cfg.dropout)
        heads = num_tasks if conditioning == "multi_head" else 1
        self.head = SeedLinear(cfg.hidden_dim, heads * out_dim)
        init_linear([m for m in self.trunk if isinstance(m, nn.Linear)], self.head, cfg.init, head_scale)
        self.eye: Tensor
        self.register_buffer("eye", torch.eye(num_tasks), persistent=False)

    @property
    def dropouts(self) -> int:
        """Number of dropout layers, each taking one mask in :meth:`forward`."""
        return sum(isinstance(m, SeedDropout) for m in self.trunk)

    @property
    def dropout_p(self) -> float:
        return next((m.p for m in self.trunk if isinstance(m, SeedDropout)), 0.0)

    def forward(self, x: Tensor, task: Tensor, masks: list[Tensor] | None = None) -> Tensor:
        """Outputs for ``x`` and ``task``; ``masks``: one dropout mask per dropout layer (see the module docstring)."""
        if self.conditioning == "one_hot":
            x = torch.cat([x, self.eye[task]], dim=-1)  # [S, N, in + K]
        if self.autocast_dtype is None:
            out = self.head(self._trunk(x, masks))  # [S, N, heads * out]
        else:
            with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                out = self.head(self._trunk(x, masks))
            out = out.float()
        if self.conditioning == "multi_head":
            out = out.view(*out.shape[:-1], self.num_tasks, self.out_dim)  # [S, N, K, out]
            out = torch.take_along_dim(out, task[..., None, None], dim=-2).squeeze(-2)  # [S, N, out]
        return out

    def _trunk(self, x: Tensor, masks: list[Tensor] | None) -> Tensor:
        if not masks:  # None or none given: nn.Dropout's own masks in train mode
            return self.trunk(x)
        drawn = iter(masks)
        for layer in self.trunk:
            x = layer(x, next(drawn)) if isinstance(layer, SeedDropout) else layer(x)
        return x

    def task_specific_params(self) -> set[str]:
        """Names (relative to this module) of parameters that belong to single tasks."""
        return {"head.weight", "head.bias"} if self.conditioning == "multi_head" else set()


def squash_log_prob(u: Tensor, mu: Tensor, log_std: Tensor) -> Tensor:
    """Log-density of ``a = tanh(u)``, ``u ~ N(mu, exp(log_std))``: Gaussian log-prob minus log|d tanh/du|.

    Uses ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``, exact and stable for large ``|u|``.
    """
    gauss = -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)  # [N, A]
    log_det = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))  # [N, A]
    return (gauss - log_det).sum(-1)  # [N]


class Actor(nn.Module):
    """Tanh-Gaussian policy: ``a = tanh(mu + std * eps)``, log-std bounded to [-20, 2].

    :param log_std: ``clamp``: clipped to the bounds (SB3, metaworld-algorithms); ``tanh``: squashed into them,
        ``min + (max - min) (tanh(x) + 1) / 2`` (facebookresearch/mtrl, CleanRL).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        num_tasks: int,
        conditioning: str,
        cfg: NetConfig,
        log_std: str = "clamp",
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.act_dim = act_dim
        self.squash_log_std = log_std == "tanh"
        self.net = TaskConditionedMLP(
            obs_dim, 2 * act_dim, num_tasks, conditioning, cfg, head_scale=1e-3, precision=precision
        )

    def dist_params(self, obs: Tensor, task: Tensor, masks: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        mu, log_std = self.net(obs, task, masks).chunk(2, dim=-1)  # [S, N, A] each
        if self.squash_log_std:
            return mu, LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1.0)
        return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def forward(
        self, obs: Tensor, task: Tensor, eps: Tensor, masks: list[Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterized sample with the given standard-normal noise ``eps [S, N, A]``: ``(action, log_prob
        [S, N])``; ``masks``: dropout masks of :attr:`net`."""
        mu, log_std = self.dist_params(obs, task, masks)
        u = mu + log_std.exp() * eps
        return torch.tanh(u), squash_log_prob(u, mu, log_std)

    def mode(self, obs: Tensor, task: Tensor) -> Tensor:
        """Deterministic action ``tanh(mu)``."""
        return torch.tanh(self.dist_params(obs, task)[0])

    def task_specific_params(self) -> set[str]:
        return {f"net.{n}" for n in self.net.task_specific_params()}


class TwinQ(nn.Module):
    """Two independent Q networks ``Q(s, a)``; returns ``(q1, q2)``, each ``[S, N]``."""

    def __init__(
        self, obs_dim: int, act_dim: int, num_tasks: int, conditioning: str, cfg: NetConfig, precision: str = "fp32"
    ) -> None:
        super().__init__()
        self.q1 = TaskConditionedMLP(obs_dim + act_dim, 1, num_tasks, conditioning, cfg, precision=precision)
        self.q2 = TaskConditionedMLP(obs_dim + act_dim, 1, num_tasks, conditioning, cfg, precision=precision)

    def forward(
        self, obs: Tensor, act: Tensor, task: Tensor, masks: tuple[list[Tensor], list[Tensor]] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(q1, q2)`` at ``(obs, act)``; ``masks``: the dropout masks of ``q1`` and of ``q2``."""
        x = torch.cat([obs, act], dim=-1)
        m1, m2 = masks if masks is not None else (None, None)
        return self.q1(x, task, m1).squeeze(-1), self.q2(x, task, m2).squeeze(-1)

    def task_specific_params(self) -> set[str]:
        return {f"{q}.{n}" for q in ("q1", "q2") for n in self.q1.task_specific_params()}
