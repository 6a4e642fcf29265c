"""Cross-check: with one task, our MT-SAC update equals stable-baselines3's SAC update (same weights, batch, noise)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.logger import configure
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from mtrl.agents.build import make_agent
from mtrl.agents.mtsac import MTSAC
from mtrl.buffers import ReplayBatch
from mtrl.config import from_flat

OBS, ACT, HIDDEN, B = 5, 3, 32, 64


class _Box(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (OBS,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32)


def _copy_weights(sb3: SAC, ours: MTSAC) -> None:
    actor = sb3.policy.actor
    with torch.no_grad():
        trunk = [m for m in actor.latent_pi if isinstance(m, torch.nn.Linear)]
        for dst, src in zip([m for m in ours.actor.net.trunk if isinstance(m, torch.nn.Linear)], trunk):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
        ours.actor.net.head.weight.copy_(torch.cat([actor.mu.weight, actor.log_std.weight]))
        ours.actor.net.head.bias.copy_(torch.cat([actor.mu.bias, actor.log_std.bias]))
        for net, (ours_q, ours_t) in zip(
            range(2), [(ours.critic.q1, ours.critic_target.q1), (ours.critic.q2, ours.critic_target.q2)]
        ):
            for module, sb3_critic in ((ours_q, sb3.policy.critic), (ours_t, sb3.policy.critic_target)):
                src = [m for m in sb3_critic.q_networks[net] if isinstance(m, torch.nn.Linear)]
                dst = [m for m in module.trunk if isinstance(m, torch.nn.Linear)] + [module.head]
                for d, s in zip(dst, src, strict=True):
                    d.weight.copy_(s.weight)
                    d.bias.copy_(s.bias)


@pytest.mark.parametrize("updates", [1, 3])
def test_single_task_update_matches_stable_baselines3(monkeypatch, updates):
    torch.manual_seed(0)
    sb3 = SAC("MlpPolicy", _Box(), policy_kwargs={"net_arch": [HIDDEN, HIDDEN]}, batch_size=B, learning_starts=0)
    cfg = from_flat(
        {
            "env.toy_tasks": 1,
            "agent.conditioning": "none",
            "agent.actor.hidden_dim": HIDDEN,
            "agent.critic.hidden_dim": HIDDEN,
            "buffer.batch_size": B,
        }
    )
    ours = make_agent(cfg, OBS, ACT, 1, torch.device("cpu"))
    _copy_weights(sb3, ours)

    g = torch.Generator().manual_seed(1)
    batches, noises = [], []
    for _ in range(updates):
        obs, next_obs = torch.rand(B, OBS, generator=g) * 2 - 1, torch.rand(B, OBS, generator=g) * 2 - 1
        act = torch.rand(B, ACT, generator=g) * 2 - 1
        rew, done = torch.randn(B, generator=g), (torch.rand(B, generator=g) < 0.1).float()
        batches.append((obs, act, rew, next_obs, done))
        noises.append(torch.randn(2, B, ACT, generator=g))

    # SB3 draws its reparameterization noise inside torch.distributions.Normal.rsample: feed it ours, in order
    queue = [eps for pair in noises for eps in pair]
    monkeypatch.setattr(
        torch.distributions.Normal, "rsample", lambda self, shape=(): self.loc + self.scale * queue.pop(0)
    )
    samples = iter(ReplayBufferSamples(o, a, no, d[:, None], r[:, None]) for o, a, r, no, d in batches)
    monkeypatch.setattr(sb3.replay_buffer, "sample", lambda *args, **kwargs: next(samples))
    sb3.set_logger(configure(None, [""]))
    sb3.train(gradient_steps=updates, batch_size=B)
    assert not queue

    task = torch.zeros(B, dtype=torch.long)
    logs = [
        ours.update(ReplayBatch(obs, act, rew, next_obs, done, task, torch.zeros(B)), noise=tuple(noise.unbind(0)))
        for (obs, act, rew, next_obs, done), noise in zip(batches, noises)
    ]
    # SB3 logs the mean over its gradient steps; Adam's first steps hide small differences in the parameters, the
    # losses do not
    logged = sb3.logger.name_to_value
    for ours_key, sb3_key in (("critic", "critic_loss"), ("actor", "actor_loss"), ("alpha", "ent_coef_loss")):
        mean = np.mean([float(entry[f"losses/{ours_key}"]) for entry in logs])
        assert np.isclose(mean, logged[f"train/{sb3_key}"], rtol=1e-4, atol=1e-6), (ours_key, mean, logged)

    ref = {
        "mu": sb3.policy.actor.mu.weight,
        "log_std": sb3.policy.actor.log_std.weight,
        "q1_out": sb3.policy.critic.q_networks[0][-1].weight,
        "q2_target_out": sb3.policy.critic_target.q_networks[1][-1].weight,
        "log_alpha": sb3.log_ent_coef,
    }
    got = {
        "mu": ours.actor.net.head.weight[0, :ACT],  # [0]: the one seed's networks
        "log_std": ours.actor.net.head.weight[0, ACT:],
        "q1_out": ours.critic.q1.head.weight[0],
        "q2_target_out": ours.critic_target.q2.head.weight[0],
        "log_alpha": ours.alpha.log_alpha[0],
    }
    for name in ref:
        # SB3 adds 1e-6 inside log(1 - tanh^2); ours is the exact form, hence a tolerance above float32 noise
        assert torch.allclose(got[name], ref[name], atol=1e-6, rtol=1e-5), (name, (got[name] - ref[name]).abs().max())
