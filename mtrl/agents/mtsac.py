"""Multi-task SAC: double Q with a target critic, per-task or shared temperature, target entropy -|A|.

Every loss is computed per task (mean over the task's rows) and handed to a combiner (:mod:`mtrl.mto`); the
``mean`` combiner is unitary scalarization. Update order follows stable-baselines3's SAC: temperature, critic,
actor (with the freshly updated critic), then Polyak averaging of the target critic.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtrl.buffers import ReplayBatch
from mtrl.config import NetConfig, TrainConfig
from mtrl.mto import Combiner
from mtrl.mto.grads import LossRows, combine_backward, task_mean
from mtrl.mto.mean import MeanConfig
from mtrl.nets import Actor, TwinQ


class _Component:
    """One trained part (critic, actor or temperature): its parameters, optimizer and combiner."""

    def __init__(
        self, module: nn.Module, task_specific: set[str], cfg: NetConfig | None, lr: float, combiner: Combiner
    ):
        self.params = dict(module.named_parameters())
        self.task_specific = task_specific
        wd = cfg.weight_decay if cfg else 0.0
        self.max_grad_norm = cfg.max_grad_norm if cfg else 0.0
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=lr, weight_decay=wd)
        self.combiner = combiner

    def step(self, loss_rows: LossRows, inputs: Any, task: Tensor, stratified: bool) -> tuple[Tensor, Tensor | None]:
        """Combine, clip, step. Returns the per-task losses ``[K]`` and the pre-clip grad norm (if clipping)."""
        losses = combine_backward(loss_rows, self.params, inputs, task, self.combiner, self.task_specific, stratified)
        norm = None
        if self.max_grad_norm > 0:
            norm = nn.utils.clip_grad_norm_(self.params.values(), self.max_grad_norm, foreach=True)
        self.optimizer.step()
        if self.combiner.needs_losses_after_step:
            with torch.no_grad():
                self.combiner.after_step(task_mean(loss_rows(self.params, inputs), task, self.combiner.num_tasks))
        return losses, norm


class _LogAlpha(nn.Module):
    def __init__(self, n: int, init: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((n,), float(np.log(init))))


class MTSAC:
    """The agent. ``act`` for rollouts, ``update`` for one gradient step on a replay batch."""

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, cfg: TrainConfig, device: torch.device) -> None:
        a = cfg.agent
        self.cfg, self.device, self.num_tasks, self.act_dim = cfg, device, num_tasks, act_dim
        self.gamma, self.tau = a.gamma, a.tau
        self.target_entropy = -float(act_dim)
        self.stratified = cfg.buffer.kind == "stratified"
        self.actor = Actor(obs_dim, act_dim, num_tasks, a.conditioning, a.actor).to(device)
        self.critic = TwinQ(obs_dim, act_dim, num_tasks, a.conditioning, a.critic).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.alpha = _LogAlpha(num_tasks if a.temperature == "per_task" else 1, a.init_temperature).to(device)

        def combiner(on: bool, offset: int) -> Combiner:
            chosen = cfg.combiner if on else MeanConfig()
            return chosen.build(num_tasks, seed=cfg.seed * 1000 + offset).to(device)

        self.critic_part = _Component(
            self.critic, self.critic.task_specific_params(), a.critic, a.critic.lr, combiner(cfg.combine_critic, 1)
        )
        self.actor_part = _Component(
            self.actor, self.actor.task_specific_params(), a.actor, a.actor.lr, combiner(cfg.combine_actor, 2)
        )
        alpha_specific = {"log_alpha"} if a.temperature == "per_task" else set()
        self.alpha_part = _Component(self.alpha, alpha_specific, None, a.alpha_lr, combiner(cfg.combine_alpha, 3))
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
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

    def _alpha_of(self, task: Tensor, log_alpha: Tensor) -> Tensor:
        return log_alpha[task] if log_alpha.shape[0] > 1 else log_alpha.expand(task.shape[0])

    # ------------------------------------------------------------------------------------------------ losses
    def _critic_rows(self, params: dict[str, Tensor], inputs: tuple[Tensor, ...]) -> Tensor:
        obs, act, target, task = inputs
        q1, q2 = functional_call(self.critic, params, (obs, act, task))
        return 0.5 * ((q1 - target) ** 2 + (q2 - target) ** 2)  # [N], SB3's 0.5 * (mse1 + mse2)

    def _actor_rows(self, params: dict[str, Tensor], inputs: tuple[Tensor, ...]) -> Tensor:
        obs, eps, alpha, task = inputs
        action, logp = functional_call(self.actor, params, (obs, task, eps))
        q1, q2 = self.critic(obs, action, task)
        return alpha * logp - torch.minimum(q1, q2)  # [N]

    def _alpha_rows(self, params: dict[str, Tensor], inputs: tuple[Tensor, ...]) -> Tensor:
        logp, task = inputs
        log_alpha = self._alpha_of(task, params["log_alpha"])
        return -log_alpha * (logp + self.target_entropy)  # [N]

    # ------------------------------------------------------------------------------------------------ update
    def update(self, batch: ReplayBatch, noise: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """One SAC update. Returns detached tensors (no host sync): losses, alpha, combiner stats.

        :param noise: the standard-normal reparameterization noise ``(eps, next_eps)``, each ``[N, A]``, for the
            actions at ``obs`` and ``next_obs``; drawn from the agent's generator when omitted.
        """
        self.actor.train()
        self.critic.train()
        obs, act, rew, next_obs, done, task, rew_absmax = batch
        n = obs.shape[0]
        if noise is None:
            noise = torch.randn(2, n, self.act_dim, generator=self.generator, device=self.device).unbind(0)
        eps, next_eps = noise

        # temperature: uses log pi of fresh actions (detached), alpha for the other losses is the pre-step value
        with torch.no_grad():
            _, logp_now = self.actor(obs, task, eps)
            alpha = self._alpha_of(task, self.alpha.log_alpha).exp()  # [N]
        alpha_losses, _ = self.alpha_part.step(self._alpha_rows, (logp_now, task), task, self.stratified)

        # critic
        with torch.no_grad():
            next_action, next_logp = self.actor(next_obs, task, next_eps)
            tq1, tq2 = self.critic_target(next_obs, next_action, task)
            target = rew + (1.0 - done) * self.gamma * (torch.minimum(tq1, tq2) - alpha * next_logp)
            if self.cfg.agent.q_target_clip:
                bound = rew_absmax / (1.0 - self.gamma)
                target = torch.maximum(torch.minimum(target, bound), -bound)
        critic_losses, critic_norm = self.critic_part.step(
            self._critic_rows, (obs, act, target, task), task, self.stratified
        )

        # actor, against the updated critic (its parameters are not stepped here)
        actor_losses, actor_norm = self.actor_part.step(
            self._actor_rows, (obs, eps, alpha, task), task, self.stratified
        )

        with torch.no_grad():
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), self.tau)

        logs: dict[str, Tensor] = {
            "losses/critic": critic_losses.mean(),
            "losses/actor": actor_losses.mean(),
            "losses/alpha": alpha_losses.mean(),
            "losses/target_q": target.mean(),
            "alpha": self.alpha.log_alpha.detach().exp(),
            "losses/logp": logp_now.mean(),
        }
        if critic_norm is not None:
            logs["losses/critic_grad_norm"] = critic_norm
        if actor_norm is not None:
            logs["losses/actor_grad_norm"] = actor_norm
        for name, part in (("critic", self.critic_part), ("actor", self.actor_part), ("alpha", self.alpha_part)):
            for key, value in part.combiner.stats.items():
                logs[f"mto/{name}/{key}"] = torch.as_tensor(value)
        return logs

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "alpha": self.alpha.state_dict(),
            **{
                f"{name}_{what}": getattr(part, what).state_dict()
                for name, part in (("critic", self.critic_part), ("actor", self.actor_part), ("alpha", self.alpha_part))
                for what in ("optimizer", "combiner")
            },
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.alpha.load_state_dict(state["alpha"])
        for name, part in (("critic", self.critic_part), ("actor", self.actor_part), ("alpha", self.alpha_part)):
            part.optimizer.load_state_dict(state[f"{name}_optimizer"])
            part.combiner.load_state_dict(state[f"{name}_combiner"])
        self.generator.set_state(state["generator"])
