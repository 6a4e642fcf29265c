"""``agent.precision: bf16``: networks under bfloat16 autocast, everything else float32; equal to fp32 within bf16's
resolution; every path that touches the networks works (acting, per-task gradients under vmap, multi-head, the
alternating schedule, the evaluation worker's actor)."""

import pytest
import torch

from mtrl.agents.build import make_agent
from mtrl.buffers import ReplayBatch
from mtrl.config import NetConfig, from_flat
from mtrl.nets import Actor, TwinQ
from mtrl.train import check_config

K, M, OBS, ACT = 3, 8, 6, 2


def _batch() -> ReplayBatch:
    g = torch.Generator().manual_seed(0)
    n = K * M
    return ReplayBatch(
        obs=torch.randn(n, OBS, generator=g),
        act=torch.rand(n, ACT, generator=g) * 2 - 1,
        rew=torch.randn(n, generator=g),
        next_obs=torch.randn(n, OBS, generator=g),
        done=torch.zeros(n),
        task=torch.arange(K).repeat_interleave(M),
        rew_absmax=torch.ones(n),
    )


def test_bf16_networks_output_float32_close_to_fp32():
    torch.manual_seed(0)
    cfg = NetConfig(hidden_dim=64, num_layers=2)
    fp32, bf16 = Actor(OBS, ACT, K, "multi_head", cfg), Actor(OBS, ACT, K, "multi_head", cfg, precision="bf16")
    bf16.load_state_dict(fp32.state_dict())
    obs, task = torch.randn(20, OBS), torch.arange(K).repeat(7)[:20]
    a, b = fp32.dist_params(obs, task)[0], bf16.dist_params(obs, task)[0]
    assert b.dtype == torch.float32 and torch.allclose(a, b, atol=0.03, rtol=0.03) and not torch.equal(a, b)
    q = TwinQ(OBS, ACT, K, "one_hot", cfg, precision="bf16")
    q1, _ = q(obs, torch.zeros(20, ACT), task)
    q1.sum().backward()
    assert q1.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in q.q1.parameters())


@pytest.mark.parametrize(
    "extra",
    [
        {"combiner": "mean"},
        {"combiner": "pcgrad"},  # per-task gradients through vmap under autocast
        {"combiner": "mgda", "agent.conditioning": "multi_head"},
        {"agent.schedule": "alternating", "agent.group_size": 1},
    ],
    ids=["mean", "pcgrad", "mgda-multi_head", "alternating"],
)
def test_bf16_update_keeps_state_float32_and_tracks_fp32(extra):
    agents = {}
    for precision in ("fp32", "bf16"):
        sizes = {"agent.actor.hidden_dim": 32, "agent.critic.hidden_dim": 32, "buffer.batch_size": K * M}
        cfg = from_flat({"env.toy_tasks": K, **sizes, "agent.precision": precision, **extra})
        check_config(cfg)
        torch.manual_seed(0)
        agent = make_agent(cfg, OBS, ACT, K, torch.device("cpu"))
        logs = [agent.update(_batch()) for _ in range(3)]
        agents[precision] = (agent, logs)
    agent, logs = agents["bf16"]
    state = agent.state_dict()
    for t in (*state["actor"].values(), *state["critic"].values(), agent.alpha.log_alpha):
        assert t.dtype == torch.float32
    for opt in agent.critic_part.optimizers:
        assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values() if v.is_floating_point())
    for key in ("losses/critic", "losses/actor", "losses/alpha"):
        ours, ref = float(logs[-1][key]), float(agents["fp32"][1][-1][key])
        assert logs[-1][key].dtype == torch.float32 and abs(ours - ref) <= 0.05 * abs(ref) + 0.05, (key, ours, ref)
    obs = torch.randn(K, OBS).numpy()
    assert agent.act(obs, deterministic=True).dtype == agents["fp32"][0].act(obs, deterministic=True).dtype


def test_tf32_needs_cuda():
    from mtrl.config import ConfigError

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="agent.precision: got 'tf32' on device 'auto'"):
        check_config(from_flat({"agent.precision": "tf32"}))
