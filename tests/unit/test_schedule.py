"""Pascal et al.'s alternating schedule: group_size = K is the joint mean update; groups partition the tasks."""

import pytest
import torch

from mtrl.agents.build import make_agent
from mtrl.agents.mtsac import MTSAC
from mtrl.buffers import ReplayBatch
from mtrl.config import ConfigError, from_flat

K, M, OBS, ACT = 4, 8, 5, 2


def _agent(**extra) -> MTSAC:
    torch.manual_seed(0)
    flat = {"env.toy_tasks": K, "agent.actor.hidden_dim": 16, "agent.critic.hidden_dim": 16, "buffer.batch_size": K * M}
    return make_agent(from_flat({**flat, **extra}), OBS, ACT, K, torch.device("cpu"))


def _batch() -> ReplayBatch:
    g = torch.Generator().manual_seed(0)
    n = K * M
    obs, next_obs = torch.randn(n, OBS, generator=g), torch.randn(n, OBS, generator=g)
    act = torch.rand(n, ACT, generator=g) * 2 - 1
    task = torch.arange(K).repeat_interleave(M)
    return ReplayBatch(obs, act, torch.randn(n, generator=g), next_obs, torch.zeros(n), task, torch.ones(n))


def _params(agent: MTSAC) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in [*agent.actor.parameters(), *agent.critic.parameters()]])


def test_one_group_of_all_tasks_equals_the_joint_mean_update():
    joint, alternating = _agent(), _agent(**{"agent.schedule": "alternating", "agent.group_size": K})
    noise = tuple(torch.randn(2, K * M, ACT).unbind(0))
    for _ in range(3):
        joint.update(_batch(), noise=noise)
        alternating.update(_batch(), noise=noise)
    assert torch.allclose(_params(joint), _params(alternating), atol=1e-6)


@pytest.mark.parametrize("group_size,per_group", [(1, False), (2, False), (3, True)])
def test_groups_partition_the_tasks_and_take_one_step_each(group_size, per_group):
    agent = _agent(
        **{"agent.schedule": "alternating", "agent.group_size": group_size, "agent.optimizer_per_group": per_group}
    )
    tasks = torch.cat(agent.groups).sort().values
    assert torch.equal(tasks, torch.arange(K))
    n_groups = -(-K // group_size)
    assert len(agent.groups) == n_groups
    assert len(agent.actor_part.optimizers) == (n_groups if per_group else 1)
    agent.update(_batch())
    steps = [int(opt.state[next(iter(agent.actor.parameters()))]["step"]) for opt in agent.actor_part.optimizers]
    assert sum(steps) == n_groups  # one optimizer step per group per update


def test_regroup_draws_new_groups_and_fixed_groups_stay():
    fixed = _agent(**{"agent.schedule": "alternating", "agent.group_size": 2})
    before = [g.clone() for g in fixed.groups]
    fixed.update(_batch())
    assert all(torch.equal(a, b) for a, b in zip(before, fixed.groups))
    moving = _agent(**{"agent.schedule": "alternating", "agent.group_size": 2, "agent.regroup": True})
    seen = set()
    for _ in range(8):
        moving.update(_batch())
        seen.add(tuple(tuple(sorted(g.tolist())) for g in sorted(moving.groups, key=lambda g: int(g.min()))))
    assert len(seen) > 1


def test_optimizer_per_group_needs_fixed_groups():
    from mtrl.train import check_config

    with pytest.raises(ConfigError, match="needs fixed groups"):
        check_config(
            from_flat({"agent.schedule": "alternating", "agent.optimizer_per_group": True, "agent.regroup": True})
        )
