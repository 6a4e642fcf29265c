"""The paths that touch a device, on the device given with ``--device`` (cpu by default; ``scripts/gpu_check.sh``
runs them with ``-m device --device cuda``): replay and generator state, per-task gradients through vmap, every
gradient-space combiner's update, bf16 autocast, deferred finite checks, acting, save and load."""

import numpy as np
import pytest
import torch

from mtrl.agents.build import make_agent
from mtrl.buffers import MultiTaskReplay
from mtrl.config import from_flat
from mtrl.mto import COMBINERS
from mtrl.mto.base import NonFiniteError
from mtrl.mto.grads import per_task_grads
from mtrl.train import check_config

pytestmark = pytest.mark.device
K, OBS, ACT, BATCH = 4, 7, 3, 32


def _buffer(device: torch.device) -> MultiTaskReplay:
    buf = MultiTaskReplay(K, OBS, ACT, 400, BATCH, device=device, seed=3)
    rng = np.random.default_rng(0)
    for _ in range(60):
        obs = rng.normal(size=(K, OBS)).astype(np.float32)
        buf.add(obs, rng.uniform(-1, 1, (K, ACT)), rng.normal(size=K), obs + 0.1, np.zeros(K))
    return buf


def _agent(device: torch.device, **extra):
    cfg = from_flat({"env.toy_tasks": K, "agent.actor.hidden_dim": 32, "agent.critic.hidden_dim": 32,
                     "buffer.batch_size": BATCH, **extra})  # fmt: skip
    check_config(cfg)
    torch.manual_seed(0)
    return make_agent(cfg, OBS, ACT, K, device)


def test_replay_sampling_and_state_round_trip_on_device(device):
    buf = _buffer(device)
    state = buf.state_dict()
    assert all(t.device.type == "cpu" for t in state.values() if isinstance(t, torch.Tensor))  # saved on the CPU
    again = MultiTaskReplay(K, OBS, ACT, 400, BATCH, device=device, seed=99)
    again.load_state_dict(state)
    a, b = buf.sample(), again.sample()
    assert a.obs.device.type == device.type and all(torch.equal(x, y) for x, y in zip(a, b))


def test_vmap_per_task_gradients_equal_the_k_loop_on_device(device):
    agent = _agent(device)
    batch = _buffer(device).sample()
    params = dict(agent.critic.named_parameters())
    target = batch.rew[None] + 0.5
    inputs = (batch.obs[None], batch.act[None], target, batch.task[None], ([], []))  # one seed, no dropout masks
    fast, _ = per_task_grads(agent._critic_rows, params, inputs, batch.task[None], K, stratified=True)
    slow, _ = per_task_grads(agent._critic_rows, params, inputs, batch.task[None], K, stratified=False)
    for name in fast:
        assert torch.allclose(fast[name], slow[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("name", [n for n, c in COMBINERS.items() if c.kind == "gradient"])
def test_every_gradient_space_combiner_updates_on_device(device, name):
    extra: dict = {"combiner": name}
    try:  # critic-only methods (logs of the losses) on the critic alone
        COMBINERS[name]().check(K, frozenset({"critic", "actor"}))
    except ValueError:
        extra["combine_actor"] = False
    agent = _agent(device, **extra)
    buf = _buffer(device)
    for _ in range(2):
        logs = agent.update(buf.sample())
    agent.check_finite()
    assert all(torch.isfinite(v).all() for v in logs.values())
    assert next(agent.critic.parameters()).device.type == device.type


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_update_act_save_and_load_on_device(device, precision):
    agent = _agent(device, **{"agent.precision": precision, "combiner": "pcgrad"})
    buf = _buffer(device)
    agent.update(buf.sample())
    state = {k: v for k, v in agent.state_dict().items()}
    copy = _agent(device, **{"agent.precision": precision, "combiner": "pcgrad"})
    copy.load_state_dict(torch.load(_roundtrip(state), map_location="cpu", weights_only=False))
    obs = np.random.default_rng(1).normal(size=(K, OBS)).astype(np.float32)
    assert np.array_equal(agent.act(obs, deterministic=True), copy.act(obs, deterministic=True))
    assert np.array_equal(agent.act(obs), copy.act(obs))  # the exploration generator came along


def _roundtrip(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_a_non_finite_loss_is_reported_at_check_finite(device):
    agent = _agent(device)
    batch = _buffer(device).sample()
    with pytest.raises(NonFiniteError):  # immediate on a CPU, deferred to check_finite on a GPU (no host sync)
        agent.update(batch._replace(rew=batch.rew * float("nan")))
        agent.check_finite()


# ops that make the host wait for a GPU: reading a value (item, bool, int, float), or an output size that depends on
# the data (nonzero, bincount, masked_select, unique, repeat_interleave without output_size)
HOST_SYNCING = ("_local_scalar_dense", "nonzero", "bincount", "masked_select", "unique", "repeat_interleave",
                "is_nonzero", "equal", "allclose")  # fmt: skip


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("buffer_kind", ["stratified", "uniform"])
def test_a_mean_update_makes_no_host_sync_with_deferred_checks(device, buffer_kind):
    """The unitary baseline's update on a GPU queues work and returns: no op in it waits for the device (on a GPU
    the agent defers its finite checks; here they are deferred by hand). Found on an H200 with torch.profiler: three
    ``torch.bincount`` calls (per-task loss means) each synced with the host, six syncs per update."""
    agent = _agent(device, **{"buffer.kind": buffer_kind})
    for part in agent.parts.values():
        part.combiner.defer_finite_checks = True
    batch = _buffer(device).sample()
    if buffer_kind == "uniform":  # unequal rows per task
        batch = type(batch)(*(x[torch.arange(BATCH - 5, device=x.device)] for x in batch))
    agent.update(batch)  # lazy initialisation (optimizer state) outside the log
    with _OpLog() as log:
        agent.update(batch)
    assert log.ops, "the dispatch log saw nothing"
    syncing = sorted({op for op in log.ops if op.split(".")[0].lstrip("_") in {s.lstrip("_") for s in HOST_SYNCING}})
    assert not syncing, syncing
