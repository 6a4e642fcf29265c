"""Agent options that make a preset equal to its reference (metaworld-algorithms, facebookresearch/mtrl)."""

import pytest
import torch

from mtrl.agents.build import make_agent
from mtrl.agents.mtsac import MTSAC
from mtrl.buffers import ReplayBatch
from mtrl.config import from_flat

K, M, OBS, ACT = 3, 4, 5, 2


def _agent(**items) -> MTSAC:
    torch.manual_seed(0)
    cfg = from_flat({"env.toy_tasks": K, "agent.actor.hidden_dim": 8, "agent.critic.hidden_dim": 8, **items})
    return make_agent(cfg, OBS, ACT, K, torch.device("cpu"))


def _batch(reward: float = 1.0) -> ReplayBatch:
    n = K * M
    g = torch.Generator().manual_seed(1)
    return ReplayBatch(
        obs=torch.randn(n, OBS, generator=g),
        act=torch.rand(n, ACT, generator=g) * 2 - 1,
        rew=torch.full((n,), reward),
        next_obs=torch.randn(n, OBS, generator=g),
        done=torch.zeros(n),
        task=torch.arange(K).repeat_interleave(M),
        rew_absmax=torch.full((n,), abs(reward)),
    )


def test_adam_eps_reaches_every_optimizer():
    agent = _agent(**{"agent.adam_eps": 1e-5})
    groups = [g for part in agent.parts.values() for opt in part.optimizers for g in opt.param_groups]
    assert len(groups) == 3 and all(g["eps"] == 1e-5 for g in groups)
    assert all(g["eps"] == 1e-8 for p in _agent().parts.values() for o in p.optimizers for g in o.param_groups)


@pytest.mark.parametrize("temperature", ["per_task", "shared"])
def test_alpha_loss_on_alpha_scales_the_log_alpha_gradient_by_alpha(temperature):
    """mtrl's loss -alpha (log pi + target) has gradient alpha times that of SB3's -log(alpha) (log pi + target): the
    same direction and fixed point, a different step size."""
    logp, task = torch.randn(1, K * M), torch.arange(K).repeat_interleave(M)[None]  # one seed's rows
    grads = {}
    for loss in ("log_alpha", "alpha"):
        agent = _agent(**{"agent.alpha_loss": loss, "agent.temperature": temperature, "agent.init_temperature": 0.3})
        log_alpha = agent.alpha.log_alpha.detach().clone().requires_grad_(True)
        agent._alpha_rows({"log_alpha": log_alpha}, (logp, task)).mean().backward()
        grads[loss] = log_alpha.grad
    assert torch.allclose(grads["alpha"], 0.3 * grads["log_alpha"], rtol=1e-5)
    assert grads["alpha"].abs().min() > 0


def test_q_value_max_clips_targets_and_predictions():
    huge = _agent(**{"agent.q_value_max": 50.0}).update(_batch(reward=1e6))
    assert float(huge["losses/target_q"]) == pytest.approx(50.0)
    free = _agent().update(_batch(reward=1e6))
    assert float(free["losses/target_q"]) > 1e5
    for bound, frozen in ((1e-7, True), (0.0, False)):  # predictions beyond the bound get no gradient
        agent = _agent(**{"agent.q_value_max": bound})
        batch = _batch()
        params = dict(agent.critic.named_parameters())
        obs, act, task = batch.obs[None], batch.act[None], batch.task[None]  # one seed's rows
        with torch.no_grad():
            q1, q2 = agent.critic(obs, act, task)
        assert (q1.abs() > 1e-6).all() and (q2.abs() > 1e-6).all()
        rows = agent._critic_rows(params, (obs, act, torch.zeros_like(q1), task, ([], [])))
        grads = torch.autograd.grad(rows.sum(), list(params.values()))
        assert all(g.abs().sum() == 0 for g in grads) == frozen
