"""One short toy-env training run per combiner (and the alternating schedule): finite losses, diagnostics logged."""

import numpy as np
import pytest

from mtrl.compare import read_scalars
from mtrl.config import from_flat
from mtrl.mto import COMBINERS
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
UNWEIGHTED = {"mean", "graddrop"}  # mean: constant 1/K, not logged; graddrop masks coordinates, no task weights
EXTRA = {"fixed": {"combiner.weights": [0.4, 0.3, 0.2, 0.1]}, "famo": {"combine_actor": False}}


@pytest.mark.parametrize("name", list(COMBINERS))
def test_short_toy_run_per_combiner(tmp_path, name):
    cfg = from_flat({**TINY, "run_dir": str(tmp_path), "run_name": name, "combiner": name, **EXTRA.get(name, {})})
    df = read_scalars(train(cfg, progress=False))
    for tag in ("losses/critic", "losses/actor", "losses/alpha"):
        values = df[df.tag == tag].value.to_numpy()
        assert len(values) >= 2 and np.isfinite(values).all(), tag
    tags = set(df.tag)
    combiner = cfg.combiner.build(4)
    if combiner.requires_grads:
        assert {"mto/critic/cos_sim_mean", "mto/critic/num_conflicts", "mto/actor/grad_norm_after"} <= tags
    weights = {t for t in tags if t.startswith("mto/critic/weight/")}
    assert len(weights) == (0 if name in UNWEIGHTED else 4)


def test_alternating_schedule_trains(tmp_path):
    extra = {"agent.schedule": "alternating", "agent.group_size": 2, "agent.optimizer_per_group": True}
    cfg = from_flat({**TINY, "run_dir": str(tmp_path), "run_name": "alt", **extra})
    df = read_scalars(train(cfg, progress=False))
    assert np.isfinite(df[df.tag == "losses/critic"].value.to_numpy()).all()
