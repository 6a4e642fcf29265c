"""The MT-SAC update as one function of device tensors, for capture (``agent.graph``).

:class:`CapturedUpdate` computes what :meth:`mtrl.agents.mtsac.MTSAC.update` computes for the joint schedule and a
loss-space combiner with fixed task weights (``mean``, ``sum``, ``fixed``), in one function with static shapes, no
host read and no Python branch on a tensor value: temperature, critic and actor losses per task, their gradients
(``torch.func.grad``, not ``.backward``), each seed's gradient-norm clipping, the AdamW steps and the Polyak update,
all in place on the agent's own parameters and on its optimizers' state tensors, so that a checkpoint written in
either mode loads in the other. Replay sampling, reparameterization noise and dropout masks are drawn before it,
from the same generators and in the same order as the eager update, so both modes see the same randomness.

On a CPU the function is compiled whole (``torch.compile(fullgraph=True)``): this is also the proof that nothing in
it breaks a graph or syncs with the host. On CUDA it is compiled with ``mode="reduce-overhead"`` (CUDA graphs,
replayed each step). Non-finite losses are recorded on the device, inside the function, and raised at the agent's
next :meth:`~mtrl.agents.mtsac.MTSAC.check_finite` (before each log and checkpoint), as on a GPU in eager mode.

What is not captured (:func:`why_not`) runs eagerly, and the training loop says why in one line: the alternating
schedule (a data-dependent row selection per task group), gradient-space combiners and loss-space combiners whose
weights change with the losses or with a counter (their captured parts are not built yet), and the uniform replay
(unequal rows per task).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, grad

from mtrl.mto.base import Weighting
from mtrl.mto.fixed import Fixed
from mtrl.mto.grads import task_mean
from mtrl.mto.mean import Mean
from mtrl.mto.sum import Sum
from mtrl.nets import seed_clip_coefficients

MTSAC = Any  # mtrl.agents.mtsac.MTSAC, which imports this module (no import back: the layers have no cycle)

STATIC_WEIGHTS = (Mean, Sum, Fixed)
"""Loss-space combiners whose task weights are constants: their whole update is captured."""


def why_not(agent: MTSAC) -> str | None:
    """Why the agent's update cannot be captured (one short reason), or None when it can."""
    cfg = agent.agent_cfg
    if cfg.schedule != "joint":
        return "the alternating schedule selects each task group's rows by value"
    if not agent.stratified:
        return "the uniform replay has unequal rows per task"
    if cfg.compile:
        return "agent.compile compiles the networks instead"
    for name, part in agent.parts.items():
        if not isinstance(part.combiner, STATIC_WEIGHTS):
            kind = "gradient-space" if part.combiner.requires_grads else "loss-space"
            return f"the {kind} combiner '{part.combiner}' of the {name} is not captured yet"
    return None


def _static_weights(agent: MTSAC, part: str) -> Tensor:
    """The constant task weights ``[S, K]`` of a part's combiners (one per seed)."""
    rows = []
    for combiner in agent.parts[part].combiners:
        k = combiner.num_tasks
        losses = torch.zeros(k, device=agent.device)
        weighting = combiner.forward(None, losses)
        assert isinstance(weighting, Weighting)
        rows.append(weighting.weights.detach().to(agent.device, torch.float32))
    return torch.stack(rows)


class CapturedUpdate:
    """The joint-schedule update of ``agent`` as one compiled function (see the module docstring).

    :param mode: ``compile``: ``torch.compile(fullgraph=True)`` (CPU), ``cudagraph``: ``torch.compile`` with
        ``mode="reduce-overhead"`` (CUDA graphs), ``eager``: the same function uncompiled (for tests).
    """

    def __init__(self, agent: MTSAC, mode: str = "compile") -> None:
        reason = why_not(agent)
        if reason is not None:
            raise ValueError(f"the update cannot be captured: {reason}")
        self.agent = agent
        self.weights = {name: _static_weights(agent, name) for name in agent.parts}
        self.params = {name: part.params for name, part in agent.parts.items()}
        self.states: dict[str, list[dict[str, Tensor]]] = {}
        for name, part in agent.parts.items():
            optimizer = part.optimizers[0]
            group = optimizer.param_groups[0]
            self.states[name] = [self._adam_state(optimizer, p) for p in group["params"]]
        self.bad = {name: torch.zeros(agent.num_seeds, agent.num_tasks, dtype=torch.bool, device=agent.device)
                    for name in agent.parts}  # fmt: skip
        self.targets: list[Tensor] = list(agent.critic_target.parameters())
        self.sources: list[Tensor] = list(agent.critic.parameters())
        self.mode = mode
        if mode == "compile":
            self.fn = torch.compile(self._update, fullgraph=True, dynamic=False)
        elif mode == "cudagraph":
            static = [*self.targets, *self.bad.values()]  # updated in place: kept at fixed addresses
            static += [p for params in self.params.values() for p in params.values()]
            static += [t for states in self.states.values() for st in states for t in st.values()]
            for x in static:
                torch._dynamo.mark_static_address(x)
            self.fn = torch.compile(self._update, mode="reduce-overhead", fullgraph=True, dynamic=False)
        else:
            self.fn = self._update

    @staticmethod
    def _adam_state(optimizer: torch.optim.Optimizer, p: Tensor) -> dict[str, Tensor]:
        """The optimizer's state of ``p`` as AdamW (fused) creates it on its first step, created here if absent."""
        state = optimizer.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    # ------------------------------------------------------------------------------------------------ pieces
    def _adamw(self, name: str, grads: list[Tensor]) -> None:
        """One AdamW step of part ``name`` (torch's AdamW formula, as its fused kernel applies it), in place."""
        group = self.agent.parts[name].optimizers[0].param_groups[0]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        params = list(self.params[name].values())
        states = self.states[name]
        for p, g, st in zip(params, grads, states, strict=True):
            st["step"].add_(1.0)
            step = st["step"]
            if wd:
                p.mul_(1.0 - lr * wd)
            st["exp_avg"].lerp_(g, 1.0 - beta1)
            st["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
            bias1 = 1.0 - torch.pow(beta1, step)
            bias2_sqrt = torch.sqrt(1.0 - torch.pow(beta2, step))
            denom = (st["exp_avg_sq"].sqrt() / bias2_sqrt).add_(eps)
            p.sub_(st["exp_avg"] / denom * (lr / bias1))

    def _clip(self, name: str, grads: list[Tensor]) -> tuple[list[Tensor], Tensor | None]:
        """Each seed's gradient-norm clipping, out of place (:func:`mtrl.agents.mtsac.clip_per_seed` is in place)."""
        max_norm = self.agent.parts[name].max_grad_norm
        if max_norm <= 0:
            return grads, None
        coef, total = seed_clip_coefficients(grads, max_norm)
        return [g * coef.view(-1, *[1] * (g.dim() - 1)) for g in grads], total

    def _part_step(self, name: str, loss_rows: Any, inputs: Any, task: Tensor) -> tuple[Tensor, Tensor | None]:
        """Gradient of the weighted per-task losses of part ``name``, clipped, stepped; its losses ``[S, K]``."""
        agent, weights = self.agent, self.weights[name]
        params = self.params[name]

        def total(p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            losses = task_mean(loss_rows(p, inputs), task, agent.num_tasks)  # [S, K]
            return (weights * losses).sum(), losses.detach()

        detached = {k: v.detach() for k, v in params.items()}
        g, losses = grad(total, has_aux=True)(detached)
        grads, norm = self._clip(name, [g[k] for k in params])
        self._adamw(name, grads)
        self.bad[name] |= ~torch.isfinite(losses)
        return losses, norm

    # ------------------------------------------------------------------------------------------------ update
    def _update(
        self, batch: tuple[Tensor, ...], noise: tuple[Tensor, Tensor], masks: tuple[Any, ...]
    ) -> dict[str, Tensor]:
        agent = self.agent
        obs, act, _, _, _, task, _ = batch
        eps, next_eps = noise
        actor_masks, next_masks, target_masks, critic_masks, objective_masks = masks

        with torch.no_grad():
            _, logp_now = agent.actor(obs, task, eps, actor_masks)
            alpha = agent._alpha_of(task, agent.alpha.log_alpha).exp()  # [S, N], the pre-step temperature
        alpha_losses, _ = self._part_step("alpha", agent._alpha_rows, (logp_now, task), task)

        target = agent.td_target(batch, next_eps, alpha, next_masks, target_masks)
        critic_losses, critic_norm = self._part_step(
            "critic", agent._critic_rows, (obs, act, target, task, critic_masks), task
        )

        def actor_rows(p: dict[str, Tensor], inputs: Any) -> Tensor:
            action, logp = functional_call(agent.actor, p, (obs, task, eps, actor_masks))
            return agent._actor_objective(obs, action, logp, alpha, task, objective_masks)

        actor_losses, actor_norm = self._part_step("actor", actor_rows, None, task)

        with torch.no_grad():
            torch._foreach_lerp_(self.targets, self.sources, agent.tau)
        logs = {
            "losses/critic": critic_losses.mean(-1),
            "losses/actor": actor_losses.mean(-1),
            "losses/alpha": alpha_losses.mean(-1),
            "losses/target_q": target.mean(-1),
            "alpha": agent.alpha.log_alpha.detach().exp(),
            "losses/logp": logp_now.mean(-1),
        }
        if critic_norm is not None:
            logs["losses/critic_grad_norm"] = critic_norm
        if actor_norm is not None:
            logs["losses/actor_grad_norm"] = actor_norm
        return logs

    def __call__(self, batch: tuple[Tensor, ...], noise: tuple[Tensor, Tensor], masks: tuple[Any, ...]) -> dict:
        with torch.no_grad():
            logs = self.fn(tuple(batch), noise, masks)
        if self.mode == "cudagraph":  # the outputs live in the graph's pool: copy them before the next replay
            logs = {k: v.clone() for k, v in logs.items()}
        return logs

    def flush_finite(self) -> None:
        """Hand the non-finite losses seen since the last call to the combiners' deferred checks (raised by the
        agent's ``check_finite``, before each log and checkpoint), off the per-update path."""
        for part, bad in self.bad.items():
            for s, combiner in enumerate(self.agent.parts[part].combiners):
                seen = bad[s].clone()  # not a view: bad is cleared below
                combiner._deferred_bad = seen if combiner._deferred_bad is None else combiner._deferred_bad | seen
            bad.zero_()
