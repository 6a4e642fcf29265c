"""Saved state loads on any device: random-generator states stay CPU byte tensors (``Generator.set_state`` and
``torch.set_rng_state`` reject CUDA tensors), everything else is moved by ``load_state_dict``.

Without a GPU the device path is checked by what the loaders do: every ``torch.load`` of the package maps to the CPU,
whatever device the run asks for. With a GPU (``scripts/gpu_check.sh``), the CUDA tests below run for real.
"""

from pathlib import Path

import pytest
import torch
from toyruns import TINY

from mtrl import checkpoint
from mtrl.config import from_flat
from mtrl.train import restore, train


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
