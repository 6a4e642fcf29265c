"""Multi-task SAC: double Q with a target critic, per-task or shared temperature, target entropy -|A|, for one seed
or a group of independent seeds trained at once.

Every loss is computed per task (mean over the task's rows) and handed to a combiner (:mod:`mtrl.mto`); the
``mean`` combiner is unitary scalarization. Update order follows stable-baselines3's SAC: temperature, critic,
actor (with the freshly updated critic), then Polyak averaging of the target critic.

A **seed group** (``seed=[s1, s2, ...]``) holds the agents of several runs in one: every parameter has a leading
seed axis (:mod:`mtrl.nets`), one forward and one backward serve all seeds, and nothing is shared between them. Each
seed has its own initialisation (drawn as its solo run draws it), combiner instances with their state and
generators, temperature, optimizer state (one AdamW over stacked parameters is N AdamWs: it is elementwise),
gradient-norm clipping (each seed's own norm), exploration, reparameterization and dropout noise. Batches carry the
seed axis too: ``[S, N, ...]``. A solo agent is a group of one and also takes flat batches ``[N, ...]``.
Checkpoints hold each seed's state in the solo format (:meth:`MTSAC.state_dicts`), so a group member's checkpoint is
a solo run's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtrl.agents.graph import CapturedUpdate, why_not
from mtrl.buffers import ReplayBatch
from mtrl.config import AgentConfig, NetConfig
from mtrl.mto import Combiner
from mtrl.mto.base import NonFiniteError
from mtrl.mto.grads import LossRows, combine_backward, task_mean
from mtrl.nets import Actor, TaskConditionedMLP, TwinQ, dropout_mask, seed_clip_coefficients, stack_seeds
from mtrl.utils import set_generator_state


def clip_per_seed(params: Sequence[Tensor], max_norm: float) -> Tensor:
    """Scale each seed's slice of the gradients of ``params`` so that its global norm is at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` does for one network; returns each seed's norm before clipping ``[S]``."""
    grads = [p.grad for p in params if p.grad is not None]
    coef, total = seed_clip_coefficients(grads, max_norm)
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))
    return total


CPU_GRAPH_UPDATES = 50_000
"""``agent.graph: auto`` on a CPU: capture from this many updates on. Compiled, the MT10-size update took 0.93x
(fp32) and 0.79x (bf16) of eager on a 2-core AVX-512 EPYC, after about 50 s of compilation."""


class _Component:
    """One trained part (critic, actor or temperature): its stacked parameters, optimizer(s) and one combiner per
    seed."""

    def __init__(
        self,
        module: nn.Module,
        task_specific: set[str],
        cfg: NetConfig | None,
        lr: float,
        combiners: list[Combiner],
        num_optimizers: int = 1,
        eps: float = 1e-8,
    ):
        self.params: dict[str, Tensor] = dict(module.named_parameters())
        self.task_specific = task_specific
        wd = cfg.weight_decay if cfg else 0.0
        self.max_grad_norm = cfg.max_grad_norm if cfg else 0.0
        # fused: one kernel per step instead of a loop over tensors (2.9 -> 1.0 ms for the 3x400 twin critic on CPU);
        # elementwise, so one AdamW over the stacked parameters is one AdamW per seed
        self.optimizers = [
            torch.optim.AdamW(self.params.values(), lr=lr, eps=eps, weight_decay=wd, fused=True)
            for _ in range(num_optimizers)
        ]
        self.combiners = combiners

    @property
    def combiner(self) -> Combiner:
        """The first seed's combiner (the only one of a solo agent)."""
        return self.combiners[0]

    def step(
        self,
        loss_rows: LossRows,
        inputs: Any,
        task: Tensor,
        stratified: bool,
        group: int | None = None,
        rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Backward, clip, step. Returns the losses ``[S, K]`` (``[S, 1]`` for a group step) and the pre-clip grad
        norm of each seed ``[S]`` (if clipping).

        :param group: alternating schedule (one seed): the batch holds one task group; its plain mean loss is stepped
            with optimizer ``group`` (modulo the number of optimizers), bypassing the combiner.
        :param rows: ``loss_rows(self.params, inputs)`` if already computed (see :meth:`reuses_rows`).
        """
        if group is None:
            losses = combine_backward(
                loss_rows, self.params, inputs, task, self.combiners, self.task_specific, stratified, rows
            )
            optimizer = self.optimizers[0]
        else:
            loss = (loss_rows(self.params, inputs) if rows is None else rows).mean(dim=-1)  # [S]
            plist = list(self.params.values())
            for p, g in zip(plist, torch.autograd.grad(loss.sum(), plist, allow_unused=True)):
                p.grad = g if g is not None else torch.zeros_like(p)
            losses = loss.detach()[:, None]
            optimizer = self.optimizers[group % len(self.optimizers)]
        for p in self.params.values():  # fused AdamW misreads strided gradients (a batched matmul's weight gradient
            if p.grad is not None and not p.grad.is_contiguous():  # is the transpose of the weight's layout)
                p.grad = p.grad.contiguous()
        norm = clip_per_seed(list(self.params.values()), self.max_grad_norm) if self.max_grad_norm > 0 else None
        optimizer.step()
        if group is None and self.combiner.needs_losses_after_step:
            with torch.no_grad():
                after = task_mean(loss_rows(self.params, inputs), task, self.combiner.num_tasks)  # [S, K]
                for s, combiner in enumerate(self.combiners):
                    combiner.after_step(after[s])
        return losses, norm

    def reuses_rows(self, group: int | None) -> bool:
        """Whether :meth:`step` can take precomputed loss rows (it backpropagates through the live parameters)."""
        return group is not None or not self.combiner.requires_grads


class _LogAlpha(nn.Module):
    def __init__(self, seeds: int, n: int, init: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((seeds, n), float(np.log(init))))


class Combiners(NamedTuple):
    """One combiner instance per trained part (critic and actor never share state); see
    :func:`mtrl.agents.build.build_combiners` for how a config maps to them."""

    critic: Combiner
    actor: Combiner
    alpha: Combiner


class MTSAC:
    """The agent. ``act`` for rollouts, ``update`` for one gradient step on a replay batch.

    :param agent: networks, optimizers, temperature and update schedule.
    :param combiners: the built combiners of each part (``mean`` where a part is not combined): one
        :class:`Combiners` for one seed, or one per seed of a group.
    :param seed: the run's seed (or the group's seeds): each seed's networks are initialised from
        ``torch.manual_seed(seed)`` (the global generator is left as it was), and it seeds the agent's generators
        (exploration and reparameterization noise, task groups; dropout masks from ``seed * 1000 + 4``).
    :param stratified: batches are task-major with equal rows per task (the per-task gradients then take one vmapped
        pass); False for the uniform replay.
    :param updates: the updates the run will make; ``agent.graph: auto`` captures on a CPU from
        :data:`CPU_GRAPH_UPDATES` on (the compilation, about a minute, must pay for itself).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        num_tasks: int,
        agent: AgentConfig,
        combiners: Combiners | Sequence[Combiners],
        device: torch.device,
        *,
        seed: int | Sequence[int] = 0,
        stratified: bool = True,
        updates: int = 0,
    ) -> None:
        a = agent
        self.seeds = [seed] if isinstance(seed, int) else list(seed)
        per_seed = [combiners] if isinstance(combiners, Combiners) else list(combiners)
        if len(per_seed) != len(self.seeds):
            raise ValueError(f"combiners: got {len(per_seed)} sets for {len(self.seeds)} seeds")
        self.agent_cfg, self.device, self.num_tasks, self.act_dim = a, device, num_tasks, act_dim
        self.gamma, self.tau = a.gamma, a.tau
        self.target_entropy = -float(act_dim)
        self.q_value_max = a.q_value_max
        self.alpha_on_alpha = a.alpha_loss == "alpha"
        self.stratified = stratified
        actors, critics = [], []
        for s in self.seeds:  # each seed's networks as its solo run draws them
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                actors.append(Actor(obs_dim, act_dim, num_tasks, a.conditioning, a.actor, a.log_std, a.precision))
                critics.append(TwinQ(obs_dim, act_dim, num_tasks, a.conditioning, a.critic, a.precision))
        self.actor = stack_seeds(actors).to(device)
        self.critic = stack_seeds(critics).to(device)
        self.critic_target = stack_seeds(critics).to(device).requires_grad_(False)
        n_alpha = num_tasks if a.temperature == "per_task" else 1
        self.alpha = _LogAlpha(len(self.seeds), n_alpha, a.init_temperature).to(device)

        # alternating schedule (Pascal et al.): one optimizer per task group (IO) or one shared (IUS)
        alternating = a.schedule == "alternating"
        n_groups = -(-num_tasks // a.group_size) if alternating and a.optimizer_per_group else 1

        def part(module: nn.Module, specific: set[str], cfg: NetConfig | None, lr: float, i: int) -> _Component:
            return _Component(module, specific, cfg, lr, [c[i].to(device) for c in per_seed], n_groups, a.adam_eps)

        self.critic_part = part(self.critic, self.critic.task_specific_params(), a.critic, a.critic.lr, 0)
        self.actor_part = part(self.actor, self.actor.task_specific_params(), a.actor, a.actor.lr, 1)
        alpha_specific = {"log_alpha"} if a.temperature == "per_task" else set()
        self.alpha_part = part(self.alpha, alpha_specific, None, a.alpha_lr, 2)
        self.parts = {"critic": self.critic_part, "actor": self.actor_part, "alpha": self.alpha_part}
        if a.compile:  # loss-space combiners only (mtrl.train.check_config): vmap is not traced by torch.compile
            for net in (self.actor.net, self.critic.q1, self.critic.q2, self.critic_target.q1, self.critic_target.q2):
                net.compile()
        for p in self.parts.values():  # no host sync per update on a GPU: see check_finite()
            for combiner in p.combiners:
                combiner.defer_finite_checks = device.type == "cuda"
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]
        self.dropout_generators = [torch.Generator(device=device).manual_seed(s * 1000 + 4) for s in self.seeds]
        self.groups: list[Tensor] = self._draw_groups() if alternating else []
        self._task_ids = torch.arange(num_tasks, device=device)
        # agent.graph: the captured update (mtrl.agents.graph), built at the first update after any state load
        self.captured: CapturedUpdate | None = None
        self.graph_mode = ""  # compile (CPU), cudagraph (CUDA), or "" (eager)
        self.graph_note = ""  # why the update runs eagerly though agent.graph asked for capture (one line)
        if a.graph == "on" or (a.graph == "auto" and (device.type == "cuda" or updates >= CPU_GRAPH_UPDATES)):
            reason = why_not(self)
            if reason is None:
                self.graph_mode = "cudagraph" if device.type == "cuda" else "compile"
            else:
                self.graph_note = f"agent.graph: the update runs eagerly: {reason}"

    @property
    def num_seeds(self) -> int:
        return len(self.seeds)

    @property
    def generator(self) -> torch.Generator:
        """The first seed's generator (the only one of a solo agent)."""
        return self.generators[0]

    def _noise(self, shape: tuple[int, ...]) -> Tensor:
        """Standard-normal noise ``[S, *shape]``, seed ``s``'s slice from its own generator."""
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.generators])

    def _masks(self, net: TaskConditionedMLP, rows: int) -> list[Tensor]:
        """Dropout masks of ``net`` for ``rows`` rows per seed (none without dropout: an empty list, which ``vmap``
        passes through where ``None`` would stop it)."""
        if not net.dropouts:
            return []
        shape = (rows, net.hidden_dim)
        return [dropout_mask(net.dropout_p, shape, self.dropout_generators, self.device) for _ in range(net.dropouts)]

    def _twin_masks(self, critic: TwinQ, rows: int) -> tuple[list[Tensor], list[Tensor]]:
        return self._masks(critic.q1, rows), self._masks(critic.q2, rows)

    def _update_masks(self, rows: int) -> tuple[Any, ...]:
        """The dropout masks of one update step, in a fixed order: the actor at obs and at next_obs, the target
        critic, the critic, the critic in the actor's objective."""
        actor, next_actor = self._masks(self.actor.net, rows), self._masks(self.actor.net, rows)
        target = self._twin_masks(self.critic_target, rows)
        return actor, next_actor, target, self._twin_masks(self.critic, rows), self._twin_masks(self.critic, rows)

    # ------------------------------------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions in [-1, 1] for observations ``[S, K, obs]`` (row ``k`` of seed ``s`` = task ``k``), or
        ``[S * K, obs]`` (seeds one after the other; a solo agent: ``[K, obs]``); same leading shape out."""
        self.actor.eval()
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        s, k = self.num_seeds, self.num_tasks
        flat = o.dim() == 2
        o = o.reshape(s, k, -1)
        task = self._task_ids.expand(s, k)
        if deterministic:
            action = self.actor.mode(o, task)
        else:
            action = self.actor(o, task, self._noise((k, self.act_dim)))[0]
        return (action.reshape(s * k, -1) if flat else action).cpu().numpy()

    @torch.no_grad()
    def act_seed(self, obs: np.ndarray, seed_index: int, deterministic: bool = True) -> np.ndarray:
        """Actions ``[K, act]`` of one seed's policy for its observations ``[K, obs]`` (e.g. for its video env): the
        deterministic action ``tanh(mu)``, or sampled with noise from that seed's generator. The other seeds' rows
        of the group forward see zeros and are dropped."""
        self.actor.eval()
        s, k = self.num_seeds, self.num_tasks
        o = torch.zeros(s, k, obs.shape[-1], device=self.device)
        o[seed_index] = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        task = self._task_ids.expand(s, k)
        if deterministic:
            action = self.actor.mode(o, task)
        else:
            eps = torch.zeros(s, k, self.act_dim, device=self.device)
            eps[seed_index] = torch.randn(k, self.act_dim, generator=self.generators[seed_index], device=self.device)
            action = self.actor(o, task, eps)[0]
        return action[seed_index].cpu().numpy()

    def check_finite(self) -> None:
        """Raise :class:`~mtrl.mto.base.NonFiniteError` for a non-finite loss seen since the last call.

        On CPU every update checks its losses at once; on a GPU the check is deferred to this call (one host sync),
        which the training loop makes before logging and before saving a checkpoint. Clears every part's record and
        raises the first of critic, actor, temperature (of the first seed that has one).
        """
        if self.captured is not None:
            self.captured.flush_finite()
        errors = []
        for part in self.parts.values():
            for combiner in part.combiners:
                try:
                    combiner.raise_deferred()
                except NonFiniteError as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]

    def _alpha_of(self, task: Tensor, log_alpha: Tensor) -> Tensor:
        """The log temperature of each row ``[S, N]`` from ``log_alpha [S, n]`` (per task, or one shared)."""
        if log_alpha.shape[-1] > 1:
            return torch.take_along_dim(log_alpha, task, dim=-1)
        return log_alpha.expand(*task.shape)

    # ------------------------------------------------------------------------------------------------ losses
    def _critic_rows(self, params: dict[str, Tensor], inputs: tuple[Any, ...]) -> Tensor:
        obs, act, target, task, masks = inputs
        q1, q2 = functional_call(self.critic, params, (obs, act, task, masks))
        if self.q_value_max > 0:  # metaworld-algorithms clips the predictions too (no gradient beyond the bound)
            q1, q2 = q1.clamp(-self.q_value_max, self.q_value_max), q2.clamp(-self.q_value_max, self.q_value_max)
        return 0.5 * ((q1 - target) ** 2 + (q2 - target) ** 2)  # [S, N], SB3's 0.5 * (mse1 + mse2)

    def _actor_rows(self, params: dict[str, Tensor], inputs: tuple[Any, ...]) -> Tensor:
        obs, eps, alpha, task, masks, critic_masks = inputs
        action, logp = functional_call(self.actor, params, (obs, task, eps, masks))
        return self._actor_objective(obs, action, logp, alpha, task, critic_masks)

    def _actor_objective(
        self, obs: Tensor, action: Tensor, logp: Tensor, alpha: Tensor, task: Tensor, critic_masks: Any
    ) -> Tensor:
        q1, q2 = self.critic(obs, action, task, critic_masks)
        return alpha * logp - torch.minimum(q1, q2)  # [S, N]

    def _alpha_rows(self, params: dict[str, Tensor], inputs: tuple[Tensor, ...]) -> Tensor:
        logp, task = inputs
        log_alpha = self._alpha_of(task, params["log_alpha"])
        if self.alpha_on_alpha:  # facebookresearch/mtrl: the loss is linear in alpha itself
            return -log_alpha.exp() * (logp + self.target_entropy)  # [S, N]
        return -log_alpha * (logp + self.target_entropy)  # [S, N]

    # ------------------------------------------------------------------------------------------------ update
    def update(self, batch: ReplayBatch, noise: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """One SAC update (joint schedule) or one sequence of per-group updates (alternating schedule).

        :param batch: ``[S, N, ...]`` fields (a solo agent also takes ``[N, ...]``).
        :param noise: the standard-normal reparameterization noise ``(eps, next_eps)``, each ``[S, N, A]`` (or
            ``[N, A]``), for the actions at ``obs`` and ``next_obs``; drawn from each seed's generator when omitted.
        :returns: detached tensors (no host sync) with a leading seed axis (none for flat batches): losses, alpha,
            combiner stats.
        """
        flat = batch.obs.dim() == 2
        if flat:
            batch = ReplayBatch(*(x[None] for x in batch))
            noise = None if noise is None else (noise[0][None], noise[1][None])
        self.actor.train()
        self.critic.train()
        n = batch.obs.shape[1]
        if noise is None:
            eps, next_eps = self._noise((2, n, self.act_dim)).unbind(1)
            noise = (eps, next_eps)
        if self.graph_mode:
            if self.captured is None:  # after a load_state_dicts: the optimizers' state tensors are new ones
                self.captured = CapturedUpdate(self, self.graph_mode)
            logs = self.captured(tuple(batch), noise, self._update_masks(n))
        else:
            if self.agent_cfg.schedule == "joint":
                logs = self._sac_step(batch, noise, None)
            else:
                logs = self._alternating_steps(batch, noise)
            with torch.no_grad():
                torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.tau)
        for name, part in self.parts.items():
            for key in part.combiner.stats_tensors:
                logs[f"mto/{name}/{key}"] = torch.stack([c.stats_tensors[key] for c in part.combiners])
        return {k: v[0] for k, v in logs.items()} if flat else logs

    def _alternating_steps(self, batch: ReplayBatch, noise: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """Pascal et al.'s independent update steps (one seed): one temperature/critic/actor step per task group, in
        sequence, each on its group's rows and plain mean loss (no combiner); logs of the last group."""
        if self.agent_cfg.regroup:
            self.groups = self._draw_groups()
        logs: dict[str, Tensor] = {}
        for g, tasks in enumerate(self.groups):
            rows = torch.isin(batch.task[0], tasks).nonzero().squeeze(1)
            sub = ReplayBatch(*(x[:, rows] for x in batch))
            logs = self._sac_step(sub, (noise[0][:, rows], noise[1][:, rows]), g)
        return logs

    def _sample_for_temperature_and_actor(
        self, obs: Tensor, task: Tensor, eps: Tensor, masks: list[Tensor], group: int | None
    ) -> tuple[Tensor, Tensor, bool]:
        """Fresh actions at ``obs`` and their log-probabilities, for the temperature loss and the actor loss.

        The temperature step only needs ``log pi`` (detached). The actor's parameters do not change before its own
        step, so when the actor step backpropagates through the live parameters (loss-space combiners, the
        alternating schedule) this same forward, kept with its graph, is also its loss (as stable-baselines3 does):
        one actor forward per update instead of two. Gradient-space combiners recompute the actor loss per task under
        ``vmap`` (with the same noise and dropout masks), so no graph is kept for them.

        :returns: ``(action, log_prob, reused)`` where ``reused`` says the graph is kept for the actor step.
        """
        reuse = self.actor_part.reuses_rows(group)
        with torch.set_grad_enabled(reuse):
            action, logp = self.actor(obs, task, eps, masks)
        return action, logp, reuse

    def _sac_step(self, batch: ReplayBatch, noise: tuple[Tensor, Tensor], group: int | None) -> dict[str, Tensor]:
        """Temperature, critic and actor steps on one batch ``[S, N, ...]`` (the whole batch, or one task group's
        rows)."""
        obs, act, _, _, _, task, _ = batch
        eps, next_eps = noise
        stratified = self.stratified and group is None
        actor_masks, next_masks, target_masks, critic_masks, objective_masks = self._update_masks(obs.shape[1])

        # temperature, on log pi of fresh actions; every loss of this update uses the pre-step alpha
        action_now, logp_now, reused = self._sample_for_temperature_and_actor(obs, task, eps, actor_masks, group)
        with torch.no_grad():
            alpha = self._alpha_of(task, self.alpha.log_alpha).exp()  # [S, N]
        alpha_losses, _ = self.alpha_part.step(self._alpha_rows, (logp_now.detach(), task), task, stratified, group)

        # critic
        target = self.td_target(batch, next_eps, alpha, next_masks, target_masks)
        critic_losses, critic_norm = self.critic_part.step(
            self._critic_rows, (obs, act, target, task, critic_masks), task, stratified, group
        )

        # actor, against the updated critic (its parameters are not stepped here)
        actor_rows = self._actor_objective(obs, action_now, logp_now, alpha, task, objective_masks) if reused else None
        actor_losses, actor_norm = self.actor_part.step(
            self._actor_rows, (obs, eps, alpha, task, actor_masks, objective_masks), task, stratified, group,
            actor_rows,
        )  # fmt: skip

        logs: dict[str, Tensor] = {
            "losses/critic": critic_losses.mean(-1),
            "losses/actor": actor_losses.mean(-1),
            "losses/alpha": alpha_losses.mean(-1),
            "losses/target_q": target.mean(-1),
            "alpha": self.alpha.log_alpha.detach().exp(),
            "losses/logp": logp_now.detach().mean(-1),
        }
        if critic_norm is not None:
            logs["losses/critic_grad_norm"] = critic_norm
        if actor_norm is not None:
            logs["losses/actor_grad_norm"] = actor_norm
        return logs

    @torch.no_grad()
    def td_target(
        self, batch: Sequence[Tensor], next_eps: Tensor, alpha: Tensor, next_masks: list[Tensor], target_masks: Any
    ) -> Tensor:
        """The critic's TD target ``[S, N]`` with the pre-step temperature ``alpha``, clipped as configured."""
        _, _, rew, next_obs, done, task, rew_absmax = batch
        next_action, next_logp = self.actor(next_obs, task, next_eps, next_masks)
        tq1, tq2 = self.critic_target(next_obs, next_action, task, target_masks)
        target = rew + (1.0 - done) * self.gamma * (torch.minimum(tq1, tq2) - alpha * next_logp)
        if self.agent_cfg.q_target_clip:
            bound = rew_absmax / (1.0 - self.gamma)
            target = torch.maximum(torch.minimum(target, bound), -bound)
        if self.q_value_max > 0:
            target = target.clamp(-self.q_value_max, self.q_value_max)
        return target

    def _draw_groups(self) -> list[Tensor]:
        """A random partition of the tasks into groups of ``agent.group_size`` (the last may be smaller)."""
        perm = torch.randperm(self.num_tasks, generator=self.generator, device=self.device)
        return list(perm.split(self.agent_cfg.group_size))

    # ------------------------------------------------------------------------------------------------ state
    def state_dicts(self) -> list[dict[str, Any]]:
        """Each seed's full state in the solo format: what a solo run with that seed checkpoints."""
        modules = {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target, "alpha": self.alpha}
        stacked = {name: m.state_dict() for name, m in modules.items()}
        optimizers = {name: [opt.state_dict() for opt in part.optimizers] for name, part in self.parts.items()}
        out = []
        for s in range(self.num_seeds):
            state: dict[str, Any] = {name: {k: v[s].clone() for k, v in sd.items()} for name, sd in stacked.items()}
            for name, part in self.parts.items():
                state[f"{name}_combiner"] = part.combiners[s].state_dict()
                state[f"{name}_optimizers"] = [_seed_slice(opt, s) for opt in optimizers[name]]
            state["groups"] = [g.cpu() for g in self.groups]
            state["generator"] = self.generators[s].get_state()
            state["dropout_generator"] = self.dropout_generators[s].get_state()
            out.append(state)
        return out

    def load_state_dicts(self, states: Sequence[dict[str, Any]]) -> None:
        """Restore every seed from its solo-format state (:meth:`state_dicts`; checkpoints of earlier versions, which
        have no dropout generator, too). Raises ``RuntimeError``/``KeyError``/``ValueError`` when they do not fit."""
        if len(states) != self.num_seeds:
            raise ValueError(f"got {len(states)} states for {self.num_seeds} seeds")
        modules = {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target, "alpha": self.alpha}
        for name, module in modules.items():
            module.load_state_dict({k: torch.stack([st[name][k] for st in states]) for k in states[0][name]})
        for name, part in self.parts.items():
            for i, opt in enumerate(part.optimizers):
                opt.load_state_dict(_seed_stack([st[f"{name}_optimizers"][i] for st in states]))
            for combiner, st in zip(part.combiners, states):
                combiner.load_state_dict(st[f"{name}_combiner"])
        for s, st in enumerate(states):
            set_generator_state(self.generators[s], st["generator"])  # saved on any device
            if "dropout_generator" in st:
                set_generator_state(self.dropout_generators[s], st["dropout_generator"])
        self.groups = [g.to(self.device) for g in states[0]["groups"]]
        if self.captured is not None:  # keep what it saw, then rebuild it on the new optimizer state
            self.captured.flush_finite()
            self.captured = None

    def state_dict(self) -> dict[str, Any]:
        """The state of a solo agent (its one seed)."""
        return self.state_dicts()[0]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a solo agent (or every seed of a group from one state)."""
        self.load_state_dicts([state] * self.num_seeds)


def _seed_slice(opt_state: dict[str, Any], s: int) -> dict[str, Any]:
    """An optimizer state of stacked parameters cut to seed ``s`` (per-parameter tensors lose the seed axis;
    scalars such as ``step`` are shared)."""
    state = {
        i: {k: (v[s].clone() if isinstance(v, Tensor) and v.dim() > 0 else v) for k, v in entry.items()}
        for i, entry in opt_state["state"].items()
    }
    return {"state": state, "param_groups": opt_state["param_groups"]}


def _seed_stack(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed optimizer states joined along the seed axis (the inverse of :func:`_seed_slice`)."""
    first = states[0]
    state = {
        i: {
            k: (torch.stack([st["state"][i][k] for st in states]) if isinstance(v, Tensor) and v.dim() > 0 else v)
            for k, v in entry.items()
        }
        for i, entry in first["state"].items()
    }
    return {"state": state, "param_groups": first["param_groups"]}
