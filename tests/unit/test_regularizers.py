"""Regularizers and stabilizers of the MT-SAC update, each on and off, pinned by what its definition says it does.

- weight decay (AdamW, decoupled): one step gives ``p (1 - lr wd) - lr g / (|g| + eps)`` on the decayed network
  only, i.e. ``p_wd = p_plain - lr wd p_before``;
- LayerNorm: each hidden pre-activation row has mean 0 and variance 1 before the affine, and the network equals
  ``Linear -> LayerNorm -> ReLU`` rebuilt by hand from its weights (and differs from the same weights without it);
- dropout: in updates a fraction ~p of the live hidden units is zeroed and the rest scaled by 1/(1-p); when acting
  the actor is deterministic and equals the same weights without dropout;
- gradient-norm clipping: the optimizer sees the gradient scaled to the bound when its norm exceeds it, the raw
  gradient otherwise, and ``losses/<net>_grad_norm`` logs the pre-clip norm;
- the Q-target clip: TD targets are clipped per row to ``+-rew_absmax / (1 - gamma)`` and untouched inside it
  (with ``q_value_max``, also within ``+-q_value_max``, both signs, per row);
- reward normalization (beyond tests/unit/test_buffers.py): each sampled reward is exactly its stored reward over
  the task's running std (ddof 1, over every reward added, evicted ones included), and ``rew_absmax`` is scaled alike.

Expected values come from float64 arithmetic on captured inputs, or from a twin agent with the option off.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mtrl.agents.build import make_agent
from mtrl.agents.mtsac import MTSAC
from mtrl.buffers import MultiTaskReplay, ReplayBatch
from mtrl.config import from_flat
from mtrl.nets import TaskConditionedMLP

K, M, OBS, ACT, HIDDEN = 3, 4, 5, 2, 16
PARTS = ("alpha", "critic", "actor")  # the order of the steps in one update
Captured = dict[str, list[dict[str, tuple[Tensor, Tensor]]]]


def _agent(**items: Any) -> MTSAC:
    torch.manual_seed(0)
    cfg = from_flat({"env.toy_tasks": K, "agent.actor.hidden_dim": HIDDEN, "agent.critic.hidden_dim": HIDDEN, **items})
    return make_agent(cfg, OBS, ACT, K, torch.device("cpu"))


def _batch(m: int = M, reward: float = 1.0, seed: int = 1) -> ReplayBatch:
    n = K * m
    g = torch.Generator().manual_seed(seed)
    return ReplayBatch(
        obs=torch.randn(n, OBS, generator=g),
        act=torch.rand(n, ACT, generator=g) * 2 - 1,
        rew=reward * (torch.rand(n, generator=g) * 2 - 1),
        next_obs=torch.randn(n, OBS, generator=g),
        done=torch.zeros(n),
        task=torch.arange(K).repeat_interleave(m),
        rew_absmax=torch.full((n,), abs(reward)),
    )


def _noise(n: int = K * M, seed: int = 2) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    eps, next_eps = torch.randn(2, n, ACT, generator=g).unbind(0)
    return eps, next_eps


def _capture_steps(agent: MTSAC) -> Captured:
    """Per part, at each optimizer step: ``{name: (parameter before the step, gradient the optimizer sees)}``."""
    seen: Captured = {name: [] for name in agent.parts}
    for name, part in agent.parts.items():

        def hook(
            _opt: torch.optim.Optimizer, _args: Any, _kwargs: Any, name: str = name, params: Any = part.params
        ) -> None:
            seen[name].append({n: (p.detach().clone(), p.grad.detach().clone()) for n, p in params.items()})

        for opt in part.optimizers:
            opt.register_step_pre_hook(hook)
    return seen


def _norm(grads: dict[str, tuple[Tensor, Tensor]]) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for _, g in grads.values()))


def _record_targets(agent: MTSAC) -> list[Tensor]:
    """The TD targets handed to the critic loss, one per call."""
    targets: list[Tensor] = []
    original = agent._critic_rows

    def rows(params: dict[str, Tensor], inputs: tuple[Tensor, ...]) -> Tensor:
        targets.append(inputs[2][0].detach().clone())  # [S, N] -> the one seed's rows
        return original(params, inputs)

    agent._critic_rows = rows  # type: ignore[method-assign]
    return targets


def _nets(agent: MTSAC, net: str) -> list[TaskConditionedMLP]:
    if net == "actor":
        return [agent.actor.net]
    return [agent.critic.q1, agent.critic.q2, agent.critic_target.q1, agent.critic_target.q2]


def _modules(nets: list[TaskConditionedMLP], kind: type[nn.Module]) -> list[nn.Module]:
    """The modules of ``kind`` in the nets (trunks, then the head for ``nn.Linear``)."""
    return [m for net in nets for m in [*net.trunk, net.head] if isinstance(m, kind)]


# ----------------------------------------------------------------------------------------------- weight decay


@pytest.mark.parametrize("net", ["actor", "critic"])
def test_weight_decay_is_decoupled_and_only_on_its_network(net: str) -> None:
    """First AdamW step of each part: ``p (1 - lr wd) - lr g / (|g| + eps)``, wd only on the configured network."""
    lr, wd = 1e-2, 0.5
    common = {"agent.actor.lr": lr, "agent.critic.lr": lr, "agent.alpha_lr": lr}
    plain, decayed = _agent(**common), _agent(**common, **{f"agent.{net}.weight_decay": wd})
    seen_plain, seen = _capture_steps(plain), _capture_steps(decayed)
    batch, noise = _batch(), _noise()
    plain.update(batch, noise=noise)
    decayed.update(batch, noise=noise)
    for part in PARTS:
        rate = wd if part == net else 0.0
        assert [g["weight_decay"] for g in decayed.parts[part].optimizers[0].param_groups] == [rate]
        assert len(seen[part]) == 1
        for name, (before, grad) in seen[part][0].items():
            b, g = before.double(), grad.double()
            expected = b * (1 - lr * rate) - lr * g / (g.abs() + 1e-8)
            after = decayed.parts[part].params[name].detach().double()
            torch.testing.assert_close(after, expected, rtol=0, atol=1e-6, msg=f"{part} {name}")
    for name, (before, grad) in seen[net][0].items():  # same gradient with and without decay: only the decay differs
        assert torch.equal(grad, seen_plain[net][0][name][1])
        diff = (decayed.parts[net].params[name] - plain.parts[net].params[name]).detach().double()
        torch.testing.assert_close(diff, -lr * wd * before.double(), rtol=0, atol=1e-6, msg=name)
        assert diff.abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------- LayerNorm


def _relu_inputs(net: TaskConditionedMLP, x: Tensor, task: Tensor) -> list[Tensor]:
    """The inputs of the trunk's ReLUs in one forward."""
    seen: list[Tensor] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
        for m in net.trunk
        if isinstance(m, nn.ReLU)
    ]
    with torch.no_grad():
        net(x, task)
    for h in hooks:
        h.remove()
    return [z.reshape(-1, z.shape[-1]) for z in seen]  # [S=1, N, hidden] -> [N, hidden]


def _manual_forward(net: TaskConditionedMLP, x: Tensor, task: Tensor, layer_norm: bool) -> Tensor:
    """``Linear -> [LayerNorm (biased variance, eps 1e-5, affine)] -> ReLU`` per hidden layer, then the head."""
    h = torch.cat([x, torch.eye(net.num_tasks)[task]], dim=-1).double()
    linears = [m for m in net.trunk if isinstance(m, nn.Linear)]
    norms = [m for m in net.trunk if isinstance(m, nn.LayerNorm)]
    for i, lin in enumerate(linears):
        z = h @ lin.weight[0].double().T + lin.bias[0].double()  # [0]: the one seed's layer
        if layer_norm:
            mean, var = z.mean(-1, keepdim=True), z.var(-1, unbiased=False, keepdim=True)
            z = (z - mean) / torch.sqrt(var + 1e-5) * norms[i].weight[0].double() + norms[i].bias[0].double()
        h = z.clamp(min=0)
    return h @ net.head.weight[0].double().T + net.head.bias[0].double()


@pytest.mark.parametrize("net", ["actor", "critic"])
def test_layer_norm_normalises_hidden_rows_of_its_network_only(net: str) -> None:
    """Pre-ReLU rows: mean 0, variance 1 at the identity affine; the net equals its hand-built LN forward."""
    other = "critic" if net == "actor" else "actor"
    normed, plain = _agent(**{f"agent.{net}.layer_norm": True}), _agent()
    assert len(_modules(_nets(normed, net), nn.LayerNorm)) == 2 * len(_nets(normed, net))
    assert _modules(_nets(normed, other), nn.LayerNorm) == []
    g = torch.Generator().manual_seed(3)
    for ln_net, raw_net in zip(_nets(normed, net), _nets(plain, net)):
        in_dim = ln_net.trunk[0].in_features - K
        x, task = 3.0 * torch.randn(64, in_dim, generator=g) + 1.0, torch.arange(K).repeat(22)[:64]
        pre_relu = _relu_inputs(ln_net, x, task)
        assert len(pre_relu) == 2
        for z in pre_relu:
            torch.testing.assert_close(z.mean(-1), torch.zeros(64), rtol=0, atol=1e-5)
            torch.testing.assert_close(z.var(-1, unbiased=False), torch.ones(64), rtol=0, atol=1e-3)
        with torch.no_grad():  # a non-trivial affine, so that the check below sees where it applies
            for ln in _modules([ln_net], nn.LayerNorm):
                assert isinstance(ln, nn.LayerNorm)
                ln.weight.copy_(1.0 + 0.5 * torch.randn(HIDDEN, generator=g))
                ln.bias.copy_(0.3 * torch.randn(HIDDEN, generator=g))
            out, raw_out = ln_net(x, task).double(), raw_net(x, task).double()
        lin, raw_lin = _modules([ln_net], nn.Linear), _modules([raw_net], nn.Linear)
        assert all(torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) for a, b in zip(lin, raw_lin))
        torch.testing.assert_close(out, _manual_forward(ln_net, x, task, True), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(raw_out, _manual_forward(raw_net, x, task, False), rtol=1e-5, atol=1e-6)
        assert (out - raw_out).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("net", ["actor", "critic"])
def test_dropout_in_updates_zeroes_a_fraction_p_and_rescales_survivors(net: str) -> None:
    """Every hidden dropout of the configured network, during ``update`` (also after ``act``): a fraction ~p of the
    live units is zeroed, the others scaled by 1/(1-p); the other network has none."""
    p, m = 0.25, 64
    other = "critic" if net == "actor" else "actor"
    agent = _agent(**{f"agent.{net}.dropout": p, "agent.actor.hidden_dim": 32, "agent.critic.hidden_dim": 32})
    dropouts = _modules(_nets(agent, net), nn.Dropout)
    assert len(dropouts) == 2 * len(_nets(agent, net)) and _modules(_nets(agent, other), nn.Dropout) == []
    seen: list[tuple[Tensor, Tensor]] = []
    for d in dropouts:
        d.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].detach(), out.detach())))
    agent.act(np.zeros((K, OBS), dtype=np.float32))  # switches the actor to eval mode; update must switch it back
    seen.clear()
    agent.update(_batch(m=m), noise=_noise(K * m))
    assert seen
    x = torch.cat([i.reshape(-1) for i, _ in seen])
    y = torch.cat([o.reshape(-1) for _, o in seen])
    live = x != 0  # ReLU outputs: zeros stay zeros with or without dropout
    n = int(live.sum())
    dropped = float((y[live] == 0).double().mean())
    # Binomial(n, p) fraction: 5 standard deviations (n is in the tens of thousands: +-0.02 here); a fair p-dropout
    # fails with probability < 1e-6, and the masks are seeded, so the outcome is fixed
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n), (dropped, n)
    kept = live & (y != 0)
    torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=1e-6, atol=0)


def _copy_linears(src: TaskConditionedMLP, dst: TaskConditionedMLP) -> None:
    """Copy the hidden and output layers' weights (the trunks differ in their Dropout modules)."""
    pairs = list(zip(_modules([src], nn.Linear), _modules([dst], nn.Linear)))
    assert len(pairs) == 3
    with torch.no_grad():
        for a, b in pairs:
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)


def test_acting_is_deterministic_with_dropout_and_equals_the_network_without_it() -> None:
    """``act`` (deterministic, and with the same generator state) runs the actor without dropout, also after an
    update."""
    p = 0.5
    dropped, plain = _agent(**{"agent.actor.dropout": p}), _agent()
    obs = np.random.default_rng(0).normal(size=(K, OBS)).astype(np.float32)
    for _ in range(2):
        det = dropped.act(obs, deterministic=True)
        np.testing.assert_array_equal(det, dropped.act(obs, deterministic=True))
        np.testing.assert_array_equal(det, plain.act(obs, deterministic=True))
        np.testing.assert_array_equal(dropped.act(obs), plain.act(obs))  # same seed: same generator stream
        dropped.update(_batch(), noise=_noise())
        _copy_linears(dropped.actor.net, plain.actor.net)
        plain.generator.set_state(dropped.generator.get_state())
    with torch.no_grad():  # the train-mode forward does drop units
        dropped.actor.train()
        mus = [dropped.actor.dist_params(torch.as_tensor(obs), torch.arange(K))[0] for _ in range(2)]
    assert not torch.equal(mus[0], mus[1])


# ----------------------------------------------------------------------------------------------- gradient clipping


@pytest.mark.parametrize("net", ["actor", "critic"])
def test_grad_clipping_scales_to_the_bound_and_logs_the_raw_norm(net: str) -> None:
    """Above the bound the optimizer sees ``g * bound / |g|``; below, ``g`` itself; the log is ``|g|`` either way."""
    batch, noise = _batch(reward=1e4), _noise()  # huge TD errors: a huge critic gradient
    raw_agent = _agent()
    raw_seen = _capture_steps(raw_agent)
    raw_logs = raw_agent.update(batch, noise=noise)
    assert "losses/actor_grad_norm" not in raw_logs and "losses/critic_grad_norm" not in raw_logs
    raw = raw_seen[net][0]
    raw_norm = _norm(raw)
    assert raw_norm > (100.0 if net == "critic" else 1e-3)
    for factor in (0.125, 8.0):
        bound = raw_norm * factor
        agent = _agent(**{f"agent.{net}.max_grad_norm": bound})
        seen = _capture_steps(agent)
        logs = agent.update(batch, noise=noise)
        assert float(logs[f"losses/{net}_grad_norm"]) == pytest.approx(raw_norm, rel=1e-5)
        assert f"losses/{'critic' if net == 'actor' else 'actor'}_grad_norm" not in logs
        stepped = seen[net][0]
        if factor < 1:
            assert _norm(stepped) == pytest.approx(bound, rel=1e-5)
            for name, (_, g) in stepped.items():
                torch.testing.assert_close(g, raw[name][1] * (bound / raw_norm), rtol=1e-5, atol=1e-12)
        else:
            assert all(torch.equal(g, raw[name][1]) for name, (_, g) in stepped.items())
        for part in PARTS[: PARTS.index(net)]:  # the parts stepped before are not touched
            assert all(torch.equal(g, raw_seen[part][0][name][1]) for name, (_, g) in seen[part][0].items())


# ----------------------------------------------------------------------------------------------- Q-target clip


def _huge_target_agent(**items: Any) -> MTSAC:
    """Multi-head target critic whose outputs are exactly +1e6 (task 0), -1e6 (task 1), 0 (task 2)."""
    agent = _agent(**{"agent.conditioning": "multi_head", "agent.gamma": 0.9, **items})
    with torch.no_grad():
        for q in (agent.critic_target.q1, agent.critic_target.q2):
            q.head.weight.zero_()
            q.head.bias.copy_(torch.tensor([1e6, -1e6, 0.0]))
    return agent


@pytest.mark.parametrize("q_target_clip,q_value_max", [(True, 0.0), (False, 15.0), (True, 15.0)])
def test_td_targets_are_clipped_per_row_and_untouched_inside(q_target_clip: bool, q_value_max: float) -> None:
    """Target rows are clipped to ``+-rew_absmax / (1 - gamma)`` (task absmax 1, 2, 2.5: +-10, 20, 25) and/or to
    ``+-q_value_max``; a terminal row's target is its reward."""
    gamma = 0.9
    absmax = torch.tensor([1.0, 2.0, 2.5]).repeat_interleave(M)
    batch = _batch()._replace(rew_absmax=absmax, rew=_batch().rew * absmax)
    batch = batch._replace(done=(torch.arange(K * M) % M == 0).float())  # the first row of each task is terminal
    noise = _noise()
    free = _huge_target_agent()
    free_targets = _record_targets(free)
    free.update(batch, noise=noise)
    clipped = _huge_target_agent(**{"agent.q_target_clip": q_target_clip, "agent.q_value_max": q_value_max})
    targets = _record_targets(clipped)
    logs = clipped.update(batch, noise=noise)
    assert len(free_targets) == len(targets) == 1
    unclipped, target = free_targets[0].double().numpy(), targets[0].double().numpy()
    np.testing.assert_allclose(unclipped[batch.done.bool().numpy()], batch.rew[batch.done.bool()].numpy(), rtol=1e-6)
    live = ~batch.done.bool().numpy()
    task = batch.task.numpy()
    assert (unclipped[live & (task == 0)] > 1e5).all() and (unclipped[live & (task == 1)] < -1e5).all()
    bound = np.full(K * M, np.inf)
    if q_target_clip:
        bound = np.minimum(bound, absmax.double().numpy() / (1 - gamma))
    if q_value_max:
        bound = np.minimum(bound, q_value_max)
    inside = np.abs(unclipped) <= bound
    assert inside[task == 2].all() and (~inside).sum() == 2 * (M - 1)  # the small task and terminal rows stay inside
    np.testing.assert_allclose(target, np.clip(unclipped, -bound, bound), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(target[inside], unclipped[inside])
    assert float(logs["losses/target_q"]) == pytest.approx(float(target.mean()), rel=1e-5)


# ----------------------------------------------------------------------------------------------- reward normalization


@pytest.mark.parametrize("kind", ["stratified", "uniform"])
@pytest.mark.parametrize("reward_norm", [True, False])
def test_sampled_rewards_and_absmax_are_scaled_by_the_running_std(kind: str, reward_norm: bool) -> None:
    """Row by row: ``rew = stored / std_k`` and ``rew_absmax = max|r_k| / std_k`` with the numpy std (ddof 1) of every
    reward added to task k, evicted ones included; without normalization both are raw."""
    steps, capacity = 60, K * 40  # 40 rows per task: the first 20 rewards are evicted but still counted
    buf = MultiTaskReplay(K, 2, 1, capacity, batch_size=K * 20, kind=kind, reward_norm=reward_norm, seed=0)
    rng = np.random.default_rng(5)
    rewards = rng.normal(3.0, 1.0, (steps, K)) * np.array([1.0, 10.0, 0.1])
    rewards[0, 1] = -500.0  # the largest |reward| of task 1 is negative and evicted
    for t in range(steps):
        obs = np.stack([np.arange(K), np.full(K, t)], axis=1).astype(np.float32)  # encodes (task, step)
        buf.add(obs, np.zeros((K, 1)), rewards[t], obs, np.zeros(K))
    std = rewards.std(axis=0, ddof=1) if reward_norm else np.ones(K)
    absmax = np.abs(rewards).max(axis=0)
    for _ in range(3):
        b = buf.sample()
        task, step = b.obs[:, 0].long().numpy(), b.obs[:, 1].long().numpy()
        np.testing.assert_array_equal(task, b.task.numpy())
        assert (step >= steps - 40).all()
        np.testing.assert_allclose(b.rew.numpy(), rewards[step, task] / std[task], rtol=1e-5)
        np.testing.assert_allclose(b.rew_absmax.numpy(), absmax[task] / std[task], rtol=1e-5)
    assert absmax[1] == 500.0


def test_reward_std_is_one_until_two_rewards_were_seen() -> None:
    """A single reward per task has no std: it is sampled as stored."""
    buf = MultiTaskReplay(K, 2, 1, K * 4, batch_size=K, reward_norm=True, seed=0)
    buf.add(np.zeros((K, 2)), np.zeros((K, 1)), np.array([4.0, -7.0, 0.5]), np.zeros((K, 2)), np.zeros(K))
    b = buf.sample()
    np.testing.assert_array_equal(b.rew.numpy(), np.array([4.0, -7.0, 0.5], dtype=np.float32))
    np.testing.assert_array_equal(b.rew_absmax.numpy(), np.array([4.0, 7.0, 0.5], dtype=np.float32))
