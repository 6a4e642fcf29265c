"""One short toy-env training run per combiner (and the alternating schedule): finite losses, diagnostics logged."""

import numpy as np
import pytest
import torch

from mtrl.config import from_flat
from mtrl.mto import COMBINERS
from mtrl.runs.scalars import read_scalars
from mtrl.train import train

TINY = {
    "total_steps": 120,
    "warmup_steps": 60,
    "eval_interval": 0,
    "eval_episodes": 1,
    "log_interval": 30,
    "checkpoint_interval": 120,
    "agent.actor.hidden_dim": 16,
    "agent.critic.hidden_dim": 16,
    "buffer.batch_size": 32,
    "env.max_episode_steps": 20,
    "device": "cpu",
}
EXTRA = {"fixed": {"combiner.weights": [0.4, 0.3, 0.2, 0.1]}}


def _parts(name: str) -> dict[str, bool]:
    """Apply the combiner to critic and actor, or to the critic only where it allows no more (FAMO, log-losses)."""
    try:
        COMBINERS[name](**{k.split(".")[1]: v for k, v in EXTRA.get(name, {}).items()}).check(4, {"critic", "actor"})
    except ValueError:
        return {"combine_actor": False}
    return {}


@pytest.mark.parametrize("name", list(COMBINERS))
def test_short_toy_run_per_combiner(tmp_path, name):
    items = {**TINY, "run_dir": str(tmp_path), "run_name": name, "combiner": name, **EXTRA.get(name, {})}
    cfg = from_flat({**items, **_parts(name)})
    df = read_scalars(train(cfg, progress=False))
    for tag in ("losses/critic", "losses/actor", "losses/alpha"):
        values = df[df.tag == tag].value.to_numpy()
        assert len(values) >= 2 and np.isfinite(values).all(), tag
    tags = set(df.tag)
    if cfg.combiner.kind == "gradient":  # the actor's stats where the combiner is applied to it (not critic-only)
        assert {"mto/critic/cos_sim_mean", "mto/critic/num_conflicts"} <= tags
        assert ("mto/actor/grad_norm_after" in tags) == cfg.combine_actor
    weights = {t for t in tags if t.startswith("mto/critic/weight/")}
    probe = cfg.combiner.build(4, seed=0)  # does this combiner record task weights? then all 4 reach TensorBoard
    probe(torch.randn(4, 8) if cfg.combiner.kind == "gradient" else None, torch.rand(4) + 0.1)
    assert len(weights) == (4 if "weight" in probe.stats_tensors else 0)
    assert np.isfinite(df[df.tag.isin(weights)].value.to_numpy()).all()


def test_alternating_schedule_trains(tmp_path):
    extra = {"agent.schedule": "alternating", "agent.group_size": 2, "agent.optimizer_per_group": True}
    cfg = from_flat({**TINY, "run_dir": str(tmp_path), "run_name": "alt", **extra})
    df = read_scalars(train(cfg, progress=False))
    values = df[df.tag == "losses/critic"].value.to_numpy()
    assert len(values) >= 2 and np.isfinite(values).all()
