"""Per-task gradients: the single vmapped pass equals K separate backward passes on the real SAC losses.

The loss functions take seed-axis inputs (``[S, N, ...]``, here one seed) and dropout masks (``[]``: none)."""

import pytest
import torch

from mtrl.agents.build import make_agent
from mtrl.buffers import ReplayBatch
from mtrl.config import from_flat
from mtrl.mto.base import Combiner, NonFiniteError
from mtrl.mto.grads import combine_backward, per_task_grads, task_mean
from mtrl.mto.mean import Mean

K, M, OBS, ACT = 4, 8, 6, 3


def _setup(conditioning: str, dropout: float = 0.0):
    torch.manual_seed(0)
    cfg = from_flat(
        {
            "env.toy_tasks": K,
            "agent.conditioning": conditioning,
            "agent.actor.hidden_dim": 16,
            "agent.critic.hidden_dim": 16,
            "agent.critic.layer_norm": True,
            "agent.actor.dropout": dropout,
            "buffer.batch_size": K * M,
        }
    )
    agent = make_agent(cfg, OBS, ACT, K, torch.device("cpu"))
    n = K * M
    task = torch.arange(K).repeat_interleave(M)[None]
    obs, act = torch.randn(1, n, OBS, dtype=torch.float32), torch.rand(1, n, ACT) * 2 - 1
    return agent, task, obs, act


NO_MASKS = ([], [])  # the twin critic's dropout masks: none


def _allclose(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("conditioning", ["none", "one_hot", "multi_head"])
def test_vmap_equals_k_loop_on_critic_loss(conditioning):
    agent, task, obs, act = _setup(conditioning)
    target = torch.randn(1, K * M)
    params = dict(agent.critic.named_parameters())
    inputs = (obs, act, target, task, NO_MASKS)
    fast, fast_losses = per_task_grads(agent._critic_rows, params, inputs, task, K, stratified=True)
    slow, slow_losses = per_task_grads(agent._critic_rows, params, inputs, task, K, stratified=False)
    _allclose(fast, slow)
    assert torch.allclose(fast_losses, slow_losses, atol=1e-6)
    if conditioning == "multi_head":  # a head only gets gradient from its own task
        head = fast["q1.head.weight"][0]  # [K, K*1, hidden] of the one seed
        off_diagonal = head.abs().sum(-1) * (1 - torch.eye(K))
        assert off_diagonal.max() == 0 and head.abs().sum() > 0


@pytest.mark.parametrize("conditioning", ["one_hot", "multi_head"])
def test_vmap_equals_k_loop_on_actor_loss_with_fixed_noise(conditioning):
    agent, task, obs, _ = _setup(conditioning)
    eps = torch.randn(1, K * M, ACT)
    alpha = torch.rand(1, K * M)
    params = dict(agent.actor.named_parameters())
    inputs = (obs, eps, alpha, task, [], NO_MASKS)
    fast, _ = per_task_grads(agent._actor_rows, params, inputs, task, K, stratified=True)
    slow, _ = per_task_grads(agent._actor_rows, params, inputs, task, K, stratified=False)
    _allclose(fast, slow)


def test_mean_combiner_equals_plain_backward_of_the_mean_loss():
    agent, task, obs, act = _setup("multi_head")
    target = torch.randn(1, K * M)
    params = dict(agent.critic.named_parameters())
    inputs = (obs, act, target, task, NO_MASKS)
    losses = task_mean(agent._critic_rows(params, inputs), task, K)
    expected = torch.autograd.grad(losses.mean(), list(params.values()))
    combine_backward(agent._critic_rows, params, inputs, task, [Mean(K)], agent.critic.task_specific_params())
    for (name, p), g in zip(params.items(), expected):
        assert torch.allclose(p.grad, g, atol=1e-7), name


def test_uniform_batch_mean_is_the_batch_mean_and_other_combiners_keep_task_means():
    """mtrl's unitary loss with uniform replay is the mean over the batch's rows, whatever the per-task counts."""
    from mtrl.mto.fixed import Fixed
    from mtrl.mto.sum import Sum

    agent, _, obs, act = _setup("one_hot")
    task = torch.tensor([[0] * 20 + [1] * 7 + [2] * 3 + [3] * 2])  # unequal rows per task, as a uniform sample has
    target = torch.randn(1, K * M)
    params = dict(agent.critic.named_parameters())
    inputs = (obs, act, target, task, NO_MASKS)
    rows = agent._critic_rows(params, inputs).detach()
    for combiner, scale in ((Mean(K), 1.0), (Sum(K), float(K))):
        expected = torch.autograd.grad(agent._critic_rows(params, inputs).mean() * scale, list(params.values()))
        combine_backward(agent._critic_rows, params, inputs, task, [combiner], stratified=False)
        for (name, p), g in zip(params.items(), expected):
            assert torch.allclose(p.grad, g, atol=1e-6), (str(combiner), name)
    assert not torch.allclose(rows.mean(), task_mean(rows, task, K).mean())  # the two means differ here
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1])  # static scalarization keeps the per-task means (mtrl's MTO agents)
    live = task_mean(agent._critic_rows(params, inputs), task, K)
    expected = torch.autograd.grad((weights * live).sum(), list(params.values()))
    combine_backward(agent._critic_rows, params, inputs, task, [Fixed(K, weights=weights.tolist())], stratified=False)
    for (name, p), g in zip(params.items(), expected):
        assert torch.allclose(p.grad, g, atol=1e-6), name


class _GradSpaceMean(Combiner):
    """The mean, computed in gradient space: exercises the vmap path and the write-back."""

    requires_grads = True

    def forward(self, grads, losses):
        return grads.mean(0)


@pytest.mark.parametrize("stratified", [True, False])
def test_gradient_space_write_back_equals_plain_backward(stratified):
    agent, task, obs, act = _setup("multi_head")
    target = torch.randn(1, K * M)
    params = dict(agent.critic.named_parameters())
    inputs = (obs, act, target, task, NO_MASKS)
    losses = task_mean(agent._critic_rows(params, inputs), task, K)
    expected = torch.autograd.grad(losses.mean(), list(params.values()))
    specific = agent.critic.task_specific_params()
    assert specific == {"q1.head.weight", "q1.head.bias", "q2.head.weight", "q2.head.bias"}
    combine_backward(agent._critic_rows, params, inputs, task, [_GradSpaceMean(K)], specific, stratified)
    for (name, p), g in zip(params.items(), expected):
        assert torch.allclose(p.grad, g, atol=1e-6), name


def test_update_through_vmap_path_runs_with_dropout():
    agent, task, obs, act = _setup("one_hot", dropout=0.2)
    agent.actor_part.combiners = [_GradSpaceMean(K)]
    agent.critic_part.combiners = [_GradSpaceMean(K)]
    obs, act, task = obs[0], act[0], task[0]
    batch = ReplayBatch(obs, act, torch.randn(K * M), obs, torch.zeros(K * M), task, torch.ones(K * M))
    logs = agent.update(batch)
    assert all(torch.isfinite(v).all() for v in logs.values())


@pytest.mark.parametrize("conditioning", ["one_hot", "multi_head"])
def test_reused_actor_forward_equals_recomputed_actor_loss(conditioning):
    """The unitary path reuses the temperature step's actor forward for the actor loss; the gradient-space path
    recomputes it per task under vmap. Same noise, same batches: the same parameters after several updates."""
    reused, task, obs, act = _setup(conditioning)
    obs, act, task = obs[0], act[0], task[0]  # flat batches: a solo agent takes them too
    recomputed, *_ = _setup(conditioning)
    recomputed.actor_part.combiners = [_GradSpaceMean(K)]
    assert reused.actor_part.reuses_rows(None) and not recomputed.actor_part.reuses_rows(None)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        batch = ReplayBatch(
            obs, act, torch.randn(K * M, generator=g), torch.randn(K * M, OBS, generator=g), torch.zeros(K * M),
            task, torch.ones(K * M),
        )  # fmt: skip
        noise = tuple(torch.randn(2, K * M, ACT, generator=g))
        a, b = reused.update(batch, noise=noise), recomputed.update(batch, noise=noise)
        assert torch.allclose(a["losses/actor"], b["losses/actor"], atol=1e-6)
    for (name, p), q in zip(reused.actor.named_parameters(), recomputed.actor.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    assert not torch.equal(reused.actor.net.head.weight, _setup(conditioning)[0].actor.net.head.weight)


def test_deferred_finite_check_raises_at_check_finite_not_in_update():
    """On a GPU the loss-space checks are deferred (no host sync per update); forced here on CPU."""
    agent, task, obs, act = _setup("one_hot")
    obs, act, task = obs[0], act[0], task[0]
    assert not agent.critic_part.combiner.defer_finite_checks  # CPU: checked in every update
    rew = torch.zeros(K * M)
    rew[task == 2] = float("nan")
    batch = ReplayBatch(obs, act, rew, obs, torch.zeros(K * M), task, torch.ones(K * M))
    with pytest.raises(NonFiniteError, match="combiner 'mean' got a non-finite loss for task 2"):
        agent.update(batch)
    agent, *_ = _setup("one_hot")
    for part in agent.parts.values():
        part.combiner.defer_finite_checks = True
    agent.update(batch._replace(rew=torch.zeros(K * M)))
    agent.check_finite()  # finite so far
    agent.update(batch)  # no error yet
    with pytest.raises(NonFiniteError, match="combiner 'mean' got a non-finite loss for task 2"):
        agent.check_finite()
    agent.check_finite()  # reported once, then cleared


def test_a_gradient_space_combiner_on_a_part_without_shared_parameters_leaves_each_task_its_gradient():
    """combine_alpha with a per-task temperature: log_alpha has one entry per task and nothing is shared, so the
    combiner has nothing to combine and each entry gets its own task's gradient (it used to fail: empty blocks)."""
    from mtrl.mto.pcgrad import PCGrad

    agent, task, obs, act = _setup("one_hot")
    logp = torch.randn(1, K * M)
    params = dict(agent.alpha.named_parameters())
    losses = combine_backward(agent._alpha_rows, params, (logp, task), task, [PCGrad(K)], {"log_alpha"})
    rows = agent._alpha_rows(params, (logp, task))
    expected = torch.autograd.grad(task_mean(rows, task, K).mean(), [params["log_alpha"]])  # the mean convention
    torch.testing.assert_close(params["log_alpha"].grad, expected[0])
    assert losses.shape == (1, K)
