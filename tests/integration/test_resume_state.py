"""Resume restores everything: networks, target critic, optimizers, temperatures, combiner states, generators and
the replay, so that training continues with the same update stream.

Checked by behaviour against the live objects of the run that wrote the checkpoint (captured in-process): equal
state, the same replay sample, bitwise-equal parameters after one more update with the agent's own noise; and, end
to end, a resumed run draws the same random streams (warm-up actions, dropout masks, exploration and replay
sampling) as the run that was never interrupted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from toyruns import TINY

import mtrl.train as train_module
from mtrl.buffers import MultiTaskReplay
from mtrl.cli import main
from mtrl.config import from_flat
from mtrl.runs import checkpoint
from mtrl.runs.restore import restore
from mtrl.train import train

STATEFUL = {
    "combiner": "gradvac",  # EMA cosine targets per task pair, per instance (critic and actor)
    "agent.actor.dropout": 0.1,  # draws from torch's global generator during updates
    "agent.temperature": "per_task",
}


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Nested dicts, lists, tuples, tensors and numbers, equal exactly (tensors bitwise, dtype and shape too)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{where}: {type(b)} is not a tensor"
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{where}: {a.dtype}{list(a.shape)}, {b.dtype}{list(b.shape)}"
        assert torch.equal(a.cpu(), b.cpu()), f"{where}: values differ"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture
def live(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The agent and replay that ``mtrl.train.train`` builds, kept after it returns."""
    objects: dict[str, Any] = {}
    make_agent, replay = train_module.make_group_agent, train_module.MultiTaskReplay

    def spy_agent(*args, **kwargs):
        objects["agent"] = make_agent(*args, **kwargs)
        return objects["agent"]

    def spy_replay(*args, **kwargs):
        objects["buffer"] = replay(*args, **kwargs)
        objects["buffer_args"] = (args, kwargs)
        return objects["buffer"]

    monkeypatch.setattr(train_module, "make_group_agent", spy_agent)
    monkeypatch.setattr(train_module, "MultiTaskReplay", spy_replay)
    return objects


def test_restored_agent_and_replay_equal_the_live_ones_and_take_the_same_next_update(tmp_path, live) -> None:
    cfg = from_flat({**TINY, **STATEFUL, "total_steps": 200, "run_dir": str(tmp_path), "run_name": "r"})
    run = train(cfg, progress=False)
    agent, buffer = live["agent"], live["buffer"]
    _, restored, state = restore(run)
    assert state["step"] == 200
    assert_same(agent.state_dict(), restored.state_dict(), "agent")
    assert agent.critic_part.combiner.state_dict()  # gradvac has state to restore (its targets)

    args, kwargs = live["buffer_args"]
    reloaded = MultiTaskReplay(*args, **kwargs)
    reloaded.load_state_dict(checkpoint.load_buffer(checkpoint.resolve(run), 200))
    assert_same(buffer.state_dict(), reloaded.state_dict(), "replay")

    batch, again = buffer.sample(), reloaded.sample()  # the sampling generator too
    assert_same(batch._asdict(), again._asdict(), "batch")
    torch.manual_seed(7)  # dropout masks: the same global stream for both
    logs = agent.update(batch)  # reparameterization noise from each agent's own generator
    torch.manual_seed(7)
    logs_again = restored.update(again)
    assert_same(agent.state_dict(), restored.state_dict(), "agent after one update")
    assert_same({k: v.detach() for k, v in logs.items()}, {k: v.detach() for k, v in logs_again.items()}, "logs")
    obs = np.zeros((4, 2), dtype=np.float32)
    np.testing.assert_array_equal(agent.act(obs), restored.act(obs))  # exploration noise


def _fingerprints(monkeypatch: pytest.MonkeyPatch) -> dict[int, tuple[str, str, str]]:
    """Per update (numbered by its step): digests of torch's global generator, the agent's and the replay's."""
    from mtrl.agents.mtsac import MTSAC

    seen: dict[int, tuple[str, str, str]] = {}
    original_update, original_sample = MTSAC.update, MultiTaskReplay.sample
    replay_state: dict[str, torch.Tensor] = {}

    def digest(t: torch.Tensor) -> str:
        return hashlib.sha1(t.numpy().tobytes()).hexdigest()

    def sample(self):
        replay_state["g"] = self.generator.get_state()
        return original_sample(self)

    def update(self, batch, noise=None):
        step = len(seen)
        seen[step] = (digest(torch.get_rng_state()), digest(self.generator.get_state()), digest(replay_state["g"]))
        return original_update(self, batch, noise)

    monkeypatch.setattr(MTSAC, "update", update)
    monkeypatch.setattr(MultiTaskReplay, "sample", sample)
    return seen


def _args(tmp_path: Path, name: str, **extra: Any) -> list[str]:
    items = {**TINY, **STATEFUL, **extra}
    return [f"--{k}={v}" for k, v in items.items()] + ["--run_dir", str(tmp_path), "--run_name", name, "--no-progress"]


def test_a_resumed_run_continues_the_random_streams_of_an_uninterrupted_one(tmp_path, monkeypatch) -> None:
    """Run A trains 200 steps; run B 150, then resumes to 200. Every update after the resume starts from the same
    states of torch's global generator (dropout), the agent's (exploration, reparameterization) and the replay's
    (sampling) as in A."""
    a = _fingerprints(monkeypatch)
    assert main(["train", *_args(tmp_path, "a", total_steps=200)]) == 0
    a_streams = dict(a)
    a.clear()
    assert main(["train", *_args(tmp_path, "b", total_steps=150)]) == 0
    a.clear()
    assert main(["train", "--resume", str(tmp_path / "b"), "--total_steps", "200", "--no-progress"]) == 0
    resumed = list(a.values())  # the updates of steps 151..200
    assert len(resumed) == 50 and resumed == [a_streams[i] for i in range(50, 100)]


def test_a_run_resumed_during_warm_up_takes_the_same_random_actions(tmp_path) -> None:
    """Warm-up actions come from the loop's own generator, saved in the checkpoint: a run stopped at step 50 of a
    100-step warm-up and resumed stores the same actions at steps 50..99 as a run that was never stopped."""
    assert main(["train", *_args(tmp_path, "a", total_steps=100, checkpoint_interval=50)]) == 0
    assert main(["train", *_args(tmp_path, "b", total_steps=50, checkpoint_interval=50)]) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--total_steps", "100", "--no-progress"]) == 0
    acts = [checkpoint.load_buffer(checkpoint.resolve(tmp_path / n), 100)["act"] for n in ("a", "b")]
    assert acts[0].shape == (4, 100, 2)
    torch.testing.assert_close(acts[0], acts[1], rtol=0, atol=0)
