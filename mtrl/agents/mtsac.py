"""Multi-task SAC: double Q with a target critic, per-task or shared temperature, target entropy -|A|.

Every loss is computed per task (mean over the task's rows) and handed to a combiner (:mod:`mtrl.mto`); the
``mean`` combiner is unitary scalarization. Update order follows stable-baselines3's SAC: temperature, critic,
actor (with the freshly updated critic), then Polyak averaging of the target critic.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtrl.buffers import ReplayBatch
from mtrl.config import AgentConfig, NetConfig
from mtrl.mto import Combiner
from mtrl.mto.base import NonFiniteError
from mtrl.mto.grads import LossRows, combine_backward, task_mean
from mtrl.nets import Actor, TwinQ
from mtrl.utils import set_generator_state


class _Component:
    """One trained part (critic, actor or temperature): its parameters, optimizer(s) and combiner."""

    def __init__(
        self,
        module: nn.Module,
        task_specific: set[str],
        cfg: NetConfig | None,
        lr: float,
        combiner: Combiner,
        num_optimizers: int = 1,
        eps: float = 1e-8,
    ):
        self.params: dict[str, Tensor] = dict(module.named_parameters())
        self.task_specific = task_specific
        wd = cfg.weight_decay if cfg else 0.0
        self.max_grad_norm = cfg.max_grad_norm if cfg else 0.0
        # fused: one kernel per step instead of a loop over tensors (2.9 -> 1.0 ms for the 3x400 twin critic on CPU)
        self.optimizers = [
            torch.optim.AdamW(self.params.values(), lr=lr, eps=eps, weight_decay=wd, fused=True)
            for _ in range(num_optimizers)
        ]
        self.combiner = combiner

    def step(
        self,
        loss_rows: LossRows,
        inputs: Any,
        task: Tensor,
        stratified: bool,
        group: int | None = None,
        rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Backward, clip, step. Returns the per-task losses ``[K]`` and the pre-clip grad norm (if clipping).

        :param group: alternating schedule: the batch holds one task group; its plain mean loss is stepped with
            optimizer ``group`` (modulo the number of optimizers), bypassing the combiner.
        :param rows: ``loss_rows(self.params, inputs)`` if already computed (see :meth:`reuses_rows`).
        """
        if group is None:
            losses = combine_backward(
                loss_rows, self.params, inputs, task, self.combiner, self.task_specific, stratified, rows
            )
            optimizer = self.optimizers[0]
        else:
            loss = (loss_rows(self.params, inputs) if rows is None else rows).mean()
            plist = list(self.params.values())
            for p, g in zip(plist, torch.autograd.grad(loss, plist, allow_unused=True)):
                p.grad = g if g is not None else torch.zeros_like(p)
            losses = loss.detach()[None]
            optimizer = self.optimizers[group % len(self.optimizers)]
        norm = None
        if self.max_grad_norm > 0:
            norm = nn.utils.clip_grad_norm_(self.params.values(), self.max_grad_norm, foreach=True)
        optimizer.step()
        if group is None and self.combiner.needs_losses_after_step:
            with torch.no_grad():
                self.combiner.after_step(task_mean(loss_rows(self.params, inputs), task, self.combiner.num_tasks))
        return losses, norm

    def reuses_rows(self, group: int | None) -> bool:
        """Whether :meth:`step` can take precomputed loss rows (it backpropagates through the live parameters)."""
        return group is not None or not self.combiner.requires_grads


class _LogAlpha(nn.Module):
    def __init__(self, n: int, init: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((n,), float(np.log(init))))


class Combiners(NamedTuple):
    """One combiner instance per trained part (critic and actor never share state); see ``build_combiners`` in
    :mod:`mtrl.train` for how a config maps to them."""

    critic: Combiner
    actor: Combiner
    alpha: Combiner


class MTSAC:
    """The agent. ``act`` for rollouts, ``update`` for one gradient step on a replay batch.

    :param agent: networks, optimizers, temperature and update schedule.
    :param combiners: the built combiner of each part (``mean`` where a part is not combined).
    :param seed: seeds the agent's generator (exploration and reparameterization noise, task groups).
    :param stratified: batches are task-major with equal rows per task (the per-task gradients then take one vmapped
        pass); False for the uniform replay.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        num_tasks: int,
        agent: AgentConfig,
        combiners: Combiners,
        device: torch.device,
        *,
        seed: int = 0,
        stratified: bool = True,
    ) -> None:
        a = agent
        self.agent_cfg, self.device, self.num_tasks, self.act_dim = a, device, num_tasks, act_dim
        self.gamma, self.tau = a.gamma, a.tau
        self.target_entropy = -float(act_dim)
        self.q_value_max = a.q_value_max
        self.alpha_on_alpha = a.alpha_loss == "alpha"
        self.stratified = stratified
        self.actor = Actor(obs_dim, act_dim, num_tasks, a.conditioning, a.actor, a.log_std, a.precision).to(device)
        self.critic = TwinQ(obs_dim, act_dim, num_tasks, a.conditioning, a.critic, a.precision).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.alpha = _LogAlpha(num_tasks if a.temperature == "per_task" else 1, a.init_temperature).to(device)

        # alternating schedule (Pascal et al.): one optimizer per task group (IO) or one shared (IUS)
        alternating = a.schedule == "alternating"
        n_groups = -(-num_tasks // a.group_size) if alternating and a.optimizer_per_group else 1
        self.critic_part = _Component(
            self.critic, self.critic.task_specific_params(), a.critic, a.critic.lr, combiners.critic.to(device),
            n_groups, a.adam_eps,
        )  # fmt: skip
        self.actor_part = _Component(
            self.actor, self.actor.task_specific_params(), a.actor, a.actor.lr, combiners.actor.to(device),
            n_groups, a.adam_eps,
        )  # fmt: skip
        alpha_specific = {"log_alpha"} if a.temperature == "per_task" else set()
        self.alpha_part = _Component(
            self.alpha, alpha_specific, None, a.alpha_lr, combiners.alpha.to(device), n_groups, a.adam_eps
        )
        self.parts = {"critic": self.critic_part, "actor": self.actor_part, "alpha": self.alpha_part}
        if a.compile:  # loss-space combiners only (mtrl.train.check_config): vmap is not traced by torch.compile
            for net in (self.actor.net, self.critic.q1, self.critic.q2, self.critic_target.q1, self.critic_target.q2):
                net.compile()
        for part in self.parts.values():  # no host sync per update on a GPU: see check_finite()
            part.combiner.defer_finite_checks = device.type == "cuda"
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.groups: list[Tensor] = self._draw_groups() if alternating else []
        self._task_ids = torch.arange(num_tasks, device=device)

    # ------------------------------------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions ``[K, act]`` in [-1, 1] for observations ``[K, obs]`` (row k = task k)."""
        self.actor.eval()
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if deterministic:
            action = self.actor.mode(o, self._task_ids)
        else:
            eps = torch.randn(o.shape[0], self.act_dim, generator=self.generator, device=self.device)
            action = self.actor(o, self._task_ids, eps)[0]
        return action.cpu().numpy()

    def check_finite(self) -> None:
        """Raise :class:`~mtrl.mto.base.NonFiniteError` for a non-finite loss seen since the last call.

        On CPU every update checks its losses at once; on a GPU the check is deferred to this call (one host sync),
        which the training loop makes before logging and before saving a checkpoint. Clears every part's record and
        raises the first of critic, actor, temperature.
        """
        errors = []
        for part in self.parts.values():
            try:
                part.combiner.raise_deferred()
            except NonFiniteError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def _alpha_of(self, task: Tensor, log_alpha: Tensor) -> Tensor:
        return log_alpha[task] if log_alpha.shape[0] > 1 else log_alpha.expand(task.shape[0])

    # ------------------------------------------------------------------------------------------------ losses
    def _critic_rows(self, params: dict[str, Tensor], inputs: tuple[Tensor, ...]) -> Tensor:
        obs, act, target, task = inputs
        q1, q2 = functional_call(self.critic, params, (obs, act, task))
        if self.q_value_max > 0:  # metaworld-algorithms clips the predictions too (no gradient beyond the bound)
            q1, q2 = q1.clamp(-self.q_value_max, self.q_value_max), q2.clamp(-self.q_value_max, self.q_value_max)
        return 0.5 * ((q1 - target) ** 2 + (q2 - target) ** 2)  # [N], SB3's 0.5 * (mse1 + mse2)

    def _actor_rows(self, params: dict[str, Tensor], inputs: tuple[Tensor, ...]) -> Tensor:
        obs, eps, alpha, task = inputs
        action, logp = functional_call(self.actor, params, (obs, task, eps))
        return self._actor_objective(obs, action, logp, alpha, task)

    def _actor_objective(self, obs: Tensor, action: Tensor, logp: Tensor, alpha: Tensor, task: Tensor) -> Tensor:
        q1, q2 = self.critic(obs, action, task)
        return alpha * logp - torch.minimum(q1, q2)  # [N]

    def _alpha_rows(self, params: dict[str, Tensor], inputs: tuple[Tensor, ...]) -> Tensor:
        logp, task = inputs
        log_alpha = self._alpha_of(task, params["log_alpha"])
        if self.alpha_on_alpha:  # facebookresearch/mtrl: the loss is linear in alpha itself
            return -log_alpha.exp() * (logp + self.target_entropy)  # [N]
        return -log_alpha * (logp + self.target_entropy)  # [N]

    # ------------------------------------------------------------------------------------------------ update
    def update(self, batch: ReplayBatch, noise: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """One SAC update (joint schedule) or one sequence of per-group updates (alternating schedule).

        Returns detached tensors (no host sync): losses, alpha, combiner stats.

        :param noise: the standard-normal reparameterization noise ``(eps, next_eps)``, each ``[N, A]``, for the
            actions at ``obs`` and ``next_obs``; drawn from the agent's generator when omitted.
        """
        self.actor.train()
        self.critic.train()
        n = batch.obs.shape[0]
        if noise is None:
            eps, next_eps = torch.randn(2, n, self.act_dim, generator=self.generator, device=self.device).unbind(0)
            noise = (eps, next_eps)
        if self.agent_cfg.schedule == "joint":
            logs = self._sac_step(batch, noise, None)
        else:
            logs = self._alternating_steps(batch, noise)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.tau)
        for name, part in self.parts.items():
            for key, value in part.combiner.stats_tensors.items():
                logs[f"mto/{name}/{key}"] = value
        return logs

    def _alternating_steps(self, batch: ReplayBatch, noise: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        """Pascal et al.'s independent update steps: one temperature/critic/actor step per task group, in sequence,
        each on its group's rows and plain mean loss (no combiner); logs of the last group."""
        if self.agent_cfg.regroup:
            self.groups = self._draw_groups()
        logs: dict[str, Tensor] = {}
        for g, tasks in enumerate(self.groups):
            rows = torch.isin(batch.task, tasks).nonzero().squeeze(1)
            sub = ReplayBatch(*(x[rows] for x in batch))
            logs = self._sac_step(sub, (noise[0][rows], noise[1][rows]), g)
        return logs

    def _sample_for_temperature_and_actor(
        self, obs: Tensor, task: Tensor, eps: Tensor, group: int | None
    ) -> tuple[Tensor, Tensor, bool]:
        """Fresh actions at ``obs`` and their log-probabilities, for the temperature loss and the actor loss.

        The temperature step only needs ``log pi`` (detached). The actor's parameters do not change before its own
        step, so when the actor step backpropagates through the live parameters (loss-space combiners, the
        alternating schedule) this same forward, kept with its graph, is also its loss (as stable-baselines3 does):
        one actor forward per update instead of two. Gradient-space combiners recompute the actor loss per task under
        ``vmap``, so no graph is kept for them.

        :returns: ``(action, log_prob, reused)`` where ``reused`` says the graph is kept for the actor step.
        """
        reuse = self.actor_part.reuses_rows(group)
        with torch.set_grad_enabled(reuse):
            action, logp = self.actor(obs, task, eps)
        return action, logp, reuse

    def _sac_step(self, batch: ReplayBatch, noise: tuple[Tensor, Tensor], group: int | None) -> dict[str, Tensor]:
        """Temperature, critic and actor steps on one batch (the whole batch, or one task group's rows)."""
        obs, act, rew, next_obs, done, task, rew_absmax = batch
        eps, next_eps = noise
        stratified = self.stratified and group is None

        # temperature, on log pi of fresh actions; every loss of this update uses the pre-step alpha
        action_now, logp_now, reused = self._sample_for_temperature_and_actor(obs, task, eps, group)
        with torch.no_grad():
            alpha = self._alpha_of(task, self.alpha.log_alpha).exp()  # [N]
        alpha_losses, _ = self.alpha_part.step(self._alpha_rows, (logp_now.detach(), task), task, stratified, group)

        # critic
        with torch.no_grad():
            next_action, next_logp = self.actor(next_obs, task, next_eps)
            tq1, tq2 = self.critic_target(next_obs, next_action, task)
            target = rew + (1.0 - done) * self.gamma * (torch.minimum(tq1, tq2) - alpha * next_logp)
            if self.agent_cfg.q_target_clip:
                bound = rew_absmax / (1.0 - self.gamma)
                target = torch.maximum(torch.minimum(target, bound), -bound)
            if self.q_value_max > 0:
                target = target.clamp(-self.q_value_max, self.q_value_max)
        critic_losses, critic_norm = self.critic_part.step(
            self._critic_rows, (obs, act, target, task), task, stratified, group
        )

        # actor, against the updated critic (its parameters are not stepped here)
        actor_rows = self._actor_objective(obs, action_now, logp_now, alpha, task) if reused else None
        actor_losses, actor_norm = self.actor_part.step(
            self._actor_rows, (obs, eps, alpha, task), task, stratified, group, actor_rows
        )

        logs: dict[str, Tensor] = {
            "losses/critic": critic_losses.mean(),
            "losses/actor": actor_losses.mean(),
            "losses/alpha": alpha_losses.mean(),
            "losses/target_q": target.mean(),
            "alpha": self.alpha.log_alpha.detach().exp(),
            "losses/logp": logp_now.detach().mean(),
        }
        if critic_norm is not None:
            logs["losses/critic_grad_norm"] = critic_norm
        if actor_norm is not None:
            logs["losses/actor_grad_norm"] = actor_norm
        return logs

    def _draw_groups(self) -> list[Tensor]:
        """A random partition of the tasks into groups of ``agent.group_size`` (the last may be smaller)."""
        perm = torch.randperm(self.num_tasks, generator=self.generator, device=self.device)
        return list(perm.split(self.agent_cfg.group_size))

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "alpha": self.alpha.state_dict(),
            **{f"{name}_combiner": part.combiner.state_dict() for name, part in self.parts.items()},
            **{
                f"{name}_optimizers": [opt.state_dict() for opt in part.optimizers] for name, part in self.parts.items()
            },
            "groups": [g.cpu() for g in self.groups],
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.alpha.load_state_dict(state["alpha"])
        for name, part in self.parts.items():
            for opt, opt_state in zip(part.optimizers, state[f"{name}_optimizers"]):
                opt.load_state_dict(opt_state)
            part.combiner.load_state_dict(state[f"{name}_combiner"])
        set_generator_state(self.generator, state["generator"])  # saved on any device
        self.groups = [g.to(self.device) for g in state["groups"]]
