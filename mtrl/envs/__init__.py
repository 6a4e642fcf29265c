"""Environment construction: :func:`make_env` picks the toy env or Meta-World from an :class:`EnvConfig`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mtrl.envs.base import (
    EVAL_SEED_OFFSET,
    MultiTaskVecEnv,
    StepResult,
    benchmark_kind,
    benchmark_label,
    benchmark_num_tasks,
    eval_seed,
)
from mtrl.envs.toy import ToyReachEnv

if TYPE_CHECKING:
    from mtrl.config import EnvConfig


def make_env(
    cfg: EnvConfig,
    seed: int | Sequence[int],
    *,
    evaluation: bool = False,
    render: bool = False,
    sim_seed: int | None = None,
) -> MultiTaskVecEnv:
    """Build the vector env of ``cfg.benchmark``, one sub-env per task.

    :param seed: the run's seed. It picks the goal set, which is the same for the training and the evaluation env
        (``cfg.eval_goals: fresh``: the evaluation env gets goals of another seed), and seeds the simulator. A list:
        the seeds of a seed group, one K-task env each (rows seed-major).
    :param evaluation: an evaluation env (Meta-World: terminate on success, cycle through the goals); its simulator
        seed is :func:`~mtrl.envs.base.eval_seed` ``(seed)``.
    :param render: make ``env.render()`` return one RGB frame per task.
    :param sim_seed: override the simulator seed (e.g. ``mtrl evaluate --seed``); the goals stay the run's.
    """
    if cfg.benchmark == "toy":
        fresh = evaluation and cfg.eval_goals == "fresh"
        seeds = 1 if isinstance(seed, int) else len(seed)
        return ToyReachEnv(
            cfg.toy_tasks, cfg.max_episode_steps or 50, render=render, fresh_goals=fresh, num_seeds=seeds
        )
    from mtrl.config import ConfigError
    from mtrl.envs.metaworld import make_metaworld  # the only module importing metaworld

    try:
        return make_metaworld(cfg, seed, evaluation=evaluation, render=render, sim_seed=sim_seed)
    except ValueError as exc:  # unknown task names and the like: a config problem, reported in one line
        raise ConfigError(str(exc)) from None


__all__ = [
    "EVAL_SEED_OFFSET",
    "MultiTaskVecEnv",
    "StepResult",
    "ToyReachEnv",
    "benchmark_kind",
    "benchmark_label",
    "benchmark_num_tasks",
    "eval_seed",
    "make_env",
]
