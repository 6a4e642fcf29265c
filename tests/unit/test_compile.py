"""``agent.compile``: torch.compile'd networks give the eager results (CPU, within float tolerance)."""

import shutil

import numpy as np
import pytest
import torch

from mtrl.bench import make_agent, make_batch
from mtrl.config import ConfigError

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")


def test_compiled_update_and_actions_equal_eager():
    k, batch, device = 3, 48, torch.device("cpu")
    eager = make_agent("mean", k, batch, device, hidden=32)
    compiled = make_agent("mean", k, batch, device, hidden=32, **{"agent.compile": True})
    assert compiled.actor.net._compiled_call_impl is not None and eager.actor.net._compiled_call_impl is None
    data, noise = make_batch(k, batch, device)
    for _ in range(3):
        a, b = eager.update(data, noise=noise), compiled.update(data, noise=noise)
        for key in ("losses/critic", "losses/actor", "losses/alpha"):
            assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-6), key
    for (name, p), q in zip(eager.critic.named_parameters(), compiled.critic.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), name
    assert set(eager.state_dict()["actor"]) == set(compiled.state_dict()["actor"])  # checkpoints interchangeable
    obs = np.random.default_rng(0).normal(size=(k, 39)).astype(np.float32)
    np.testing.assert_allclose(eager.act(obs, True), compiled.act(obs, True), rtol=1e-5, atol=1e-6)


def test_compile_refuses_gradient_space_combiners():
    from mtrl.config import from_flat
    from mtrl.train import check_config

    with pytest.raises(ConfigError, match="agent.compile: got true with combiner pcgrad; torch.compile only works"):
        check_config(from_flat({"agent.compile": True, "combiner": "pcgrad"}))
