"""Saved state loads on any device: random-generator states stay CPU byte tensors (``Generator.set_state`` and
``torch.set_rng_state`` reject CUDA tensors), everything else is moved by ``load_state_dict``. A generator state
written on the other device type (CUDA's 16-byte Philox state against the CPU's 5056-byte Mersenne Twister) cannot be
restored as such: it seeds the new generator deterministically instead.

Without a GPU the device path is checked by what the loaders do: every ``torch.load`` of the package maps to the CPU,
whatever device the run asks for. With a GPU (``scripts/gpu_check.sh``), the CUDA tests below run for real.
"""

from pathlib import Path

import pytest
import torch
from toyruns import TINY

from mtrl.config import from_flat
from mtrl.evaluate import evaluate_checkpoint
from mtrl.runs import checkpoint
from mtrl.runs.restore import restore
from mtrl.train import train
from mtrl.utils import set_generator_state

PHILOX = torch.tensor([7, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8)  # CUDA: seed, offset


def _leaves(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dev")
    return train(from_flat({**TINY, "run_dir": str(tmp), "run_name": "d", "total_steps": 150}), progress=False)


def test_checkpoint_state_is_all_cpu_with_cpu_generator_states(run):
    state = checkpoint.load(run)
    tensors = list(_leaves(state))
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    for gen in (state["agent"]["generator"], state["torch_rng"], state["agent"]["critic_combiner"]["_extra_state"]):
        for t in _leaves(gen):
            assert t.dtype == torch.uint8 and t.device.type == "cpu"


def test_every_load_maps_to_the_cpu_whatever_the_device(run, monkeypatch):
    seen = []
    original = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    restore(run, device="cpu")
    cfg = from_flat({**checkpoint.load(run)["config"], "total_steps": 200})
    train(cfg, run=run, progress=False)  # resume: checkpoint and replay
    assert len(seen) >= 3 and all(m == "cpu" for m in seen), seen


@pytest.mark.device
def test_resume_and_restore_on_the_device(run, tmp_path, device):
    """With --device cuda (scripts/gpu_check.sh): a CPU-written run resumes and restores on the GPU."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    cfg = from_flat({**checkpoint.load(copy)["config"], "total_steps": 200, "device": device.type})
    train(cfg, run=copy, progress=False)
    _, agent, state = restore(copy, device=device)
    assert state["step"] == 200 and next(agent.actor.parameters()).device.type == device.type


def test_generator_state_of_the_same_device_type_is_restored_exactly():
    g = torch.Generator().manual_seed(3)
    torch.rand(5, generator=g)
    saved = g.get_state()
    expected = torch.rand(4, generator=g)
    h = torch.Generator().manual_seed(99)
    set_generator_state(h, saved)
    assert torch.equal(torch.rand(4, generator=h), expected)


def test_generator_state_of_the_other_device_type_seeds_deterministically():
    """What a CPU generator does with the state of a CUDA one (and the reverse, by the same size check)."""
    draws = []
    for state in (PHILOX, PHILOX.clone(), PHILOX.roll(1)):
        g = torch.Generator().manual_seed(0)
        set_generator_state(g, state)
        draws.append(torch.rand(4, generator=g))
    assert torch.equal(draws[0], draws[1])  # same saved state, same stream
    assert not torch.equal(draws[0], draws[2])  # another saved state, another stream
    assert not torch.equal(draws[0], torch.rand(4, generator=torch.Generator().manual_seed(0)))


def test_a_gpu_written_checkpoint_restores_evaluates_and_resumes_on_the_cpu(run, tmp_path):
    """The checkpoint as a CUDA run writes it (device generators hold Philox states, plus the CUDA RNG state):
    restore, evaluate and resume on the CPU. Found on an H200: ``mtrl record`` (CPU) of a GPU run refused it."""
    import shutil

    copy = tmp_path / "gpu_written"
    shutil.copytree(run, copy)
    unit = checkpoint.resolve(copy).parent
    state = torch.load(unit / checkpoint.STATE, weights_only=False)
    state["agent"]["generator"] = PHILOX.clone()
    state["cuda_rng"] = PHILOX.clone()
    torch.save(state, unit / checkpoint.STATE)
    replay = torch.load(unit / checkpoint.BUFFER, weights_only=False)
    replay["generator"] = PHILOX.roll(3)
    torch.save(replay, unit / checkpoint.BUFFER)

    step = state["step"]
    _, agent, restored = restore(copy, device="cpu")
    assert restored["step"] == step and agent.generator.get_state().numel() == torch.Generator().get_state().numel()
    result = evaluate_checkpoint(str(copy), episodes=1, sim_seed=None, eval_goals=None, device="cpu")
    assert result.result.per_task.shape == (len(result.task_names),) and result.step == step
    train(from_flat({**checkpoint.load(copy)["config"], "total_steps": step + 50}), run=copy, progress=False)
    assert checkpoint.load(copy)["step"] == step + 50
