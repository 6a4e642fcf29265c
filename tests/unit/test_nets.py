import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from mtrl.config import NetConfig
from mtrl.nets import Actor, TaskConditionedMLP, TwinQ, mlp, squash_log_prob


def test_squash_log_prob_matches_torch_transformed_distribution():
    torch.manual_seed(0)
    mu = torch.randn(500, 3, dtype=torch.float64)
    log_std = torch.randn(500, 3, dtype=torch.float64).clamp(-3, 1)
    u = mu + log_std.exp() * torch.randn(500, 3, dtype=torch.float64) * 2
    u = u.clamp(-8, 8)  # keep tanh(u) away from +-1 in float64 so the reference is exact
    ref = TransformedDistribution(Normal(mu, log_std.exp()), [TanhTransform()]).log_prob(torch.tanh(u)).sum(-1)
    assert torch.allclose(squash_log_prob(u, mu, log_std), ref, atol=1e-8, rtol=1e-8)


def test_squash_log_prob_matches_numerical_change_of_variables():
    # density of a = tanh(u) by finite differences of the CDF in a
    mu, log_std = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-0.5]], dtype=torch.float64)
    normal = Normal(mu, log_std.exp())
    for a0 in (-0.9, -0.2, 0.0, 0.5, 0.95):
        h = 1e-6
        lo, hi = torch.tensor([[a0 - h]], dtype=torch.float64), torch.tensor([[a0 + h]], dtype=torch.float64)
        density = (normal.cdf(torch.atanh(hi)) - normal.cdf(torch.atanh(lo))) / (2 * h)
        u = torch.atanh(torch.tensor([[a0]], dtype=torch.float64))
        assert math.isclose(squash_log_prob(u, mu, log_std).item(), math.log(density.item()), rel_tol=1e-6)


def test_squash_log_prob_is_finite_when_saturated():
    u = torch.tensor([[40.0, -40.0]])
    out = squash_log_prob(u, torch.zeros(1, 2), torch.zeros(1, 2))
    assert torch.isfinite(out).all()


def test_multi_head_equals_running_each_head_separately():
    torch.manual_seed(0)
    k, d_in, d_out = 5, 7, 3
    net = TaskConditionedMLP(d_in, d_out, k, "multi_head", NetConfig(hidden_dim=16, num_layers=2))
    x = torch.randn(40, d_in)
    task = torch.randint(0, k, (40,))
    out = net(x, task)
    features = net.trunk(x)
    w = net.head.weight.view(k, d_out, -1)
    b = net.head.bias.view(k, d_out)
    for i in range(40):
        t = task[i]
        assert torch.allclose(out[i], features[i] @ w[t].T + b[t], atol=1e-6)


def test_one_hot_conditioning_changes_output_per_task_and_none_ignores_task():
    torch.manual_seed(0)
    x = torch.randn(1, 4).expand(3, 4)
    task = torch.arange(3)
    one_hot = TaskConditionedMLP(4, 2, 3, "one_hot", NetConfig(hidden_dim=8))
    none = TaskConditionedMLP(4, 2, 3, "none", NetConfig(hidden_dim=8))
    assert not torch.allclose(one_hot(x, task)[0], one_hot(x, task)[1])
    assert torch.allclose(none(x, task)[0], none(x, task)[1])
    assert one_hot.trunk[0].in_features == 4 + 3


@pytest.mark.parametrize("layer_norm,dropout", [(False, 0.0), (True, 0.0), (True, 0.5)])
def test_mlp_switches(layer_norm, dropout):
    net = mlp(4, 8, 3, layer_norm=layer_norm, dropout=dropout)

    def count(kind: type) -> int:
        return sum(isinstance(m, kind) for m in net)

    assert count(nn.Linear) == 3
    assert count(nn.LayerNorm) == (3 if layer_norm else 0)
    assert count(nn.Dropout) == (3 if dropout else 0)


def test_actor_and_critic_shapes_and_bounds():
    torch.manual_seed(0)
    cfg = NetConfig(hidden_dim=16)
    actor = Actor(6, 4, 3, "multi_head", cfg)
    obs, task, eps = torch.randn(9, 6), torch.arange(3).repeat(3), torch.randn(9, 4)
    action, logp = actor(obs, task, eps)
    assert action.shape == (9, 4) and logp.shape == (9,)
    assert action.abs().le(1).all()
    assert actor.mode(obs, task).shape == (9, 4)
    q1, q2 = TwinQ(6, 4, 3, "one_hot", cfg)(obs, action, task)
    assert q1.shape == q2.shape == (9,)
    assert actor.task_specific_params() == {"net.head.weight", "net.head.bias"}


@pytest.mark.parametrize("conditioning", ["one_hot", "multi_head"])
def test_he_uniform_init_is_the_reference_init(conditioning):
    """metaworld-algorithms: He-uniform hidden weights, zero biases, output layer U(+-1e-3) (actor) / U(+-3e-3)."""
    torch.manual_seed(0)
    cfg = NetConfig(hidden_dim=400, num_layers=3, init="he_uniform")
    actor, critic = Actor(39, 4, 10, conditioning, cfg), TwinQ(39, 4, 10, conditioning, cfg)
    for net, head_scale in ((actor.net, 1e-3), (critic.q1, 3e-3), (critic.q2, 3e-3)):
        hidden = [m for m in net.trunk if isinstance(m, nn.Linear)]
        assert len(hidden) == 3
        for layer in hidden:
            bound = math.sqrt(6.0 / layer.in_features)
            w = layer.weight.detach()
            assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
            assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.02 * bound  # uniform, not e.g. normal
            assert torch.count_nonzero(layer.bias) == 0
        assert net.head.weight.abs().max() <= head_scale and net.head.weight.abs().max() > 0.9 * head_scale
        assert net.head.bias.abs().max() <= head_scale and torch.count_nonzero(net.head.bias) == net.head.bias.numel()


def test_xavier_and_torch_inits():
    torch.manual_seed(0)
    net = TaskConditionedMLP(39, 8, 10, "none", NetConfig(hidden_dim=400, num_layers=2, init="xavier"))
    for layer in [m for m in net.trunk if isinstance(m, nn.Linear)] + [net.head]:
        bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.95 * bound
        assert torch.count_nonzero(layer.bias) == 0
    default = TaskConditionedMLP(39, 8, 10, "none", NetConfig(hidden_dim=400, num_layers=2))
    first = default.trunk[0]
    assert torch.count_nonzero(first.bias) > 0  # nn.Linear's own init: U(+-1/sqrt(fan_in)) biases
    assert first.weight.abs().max() <= 1 / math.sqrt(first.in_features)


def test_tanh_log_std_is_squashed_into_the_bounds():
    actor = Actor(3, 2, 1, "none", NetConfig(hidden_dim=8), log_std="tanh")
    with torch.no_grad():
        actor.net.head.bias.copy_(torch.tensor([0.0, 0.0, -1e4, 1e4]))  # mu, mu, log_std, log_std
        actor.net.head.weight.zero_()
    mu, log_std = actor.dist_params(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))
    assert torch.allclose(log_std, torch.tensor([[-20.0, 2.0]]))
    with torch.no_grad():
        actor.net.head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.5]))
    _, log_std = actor.dist_params(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long))
    expected = -20.0 + 11.0 * (torch.tanh(torch.tensor([0.0, 0.5])) + 1.0)  # mtrl: min + (max - min)(tanh + 1) / 2
    assert torch.allclose(log_std[0], expected)
