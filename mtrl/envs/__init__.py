"""Environment construction: :func:`make_env` picks the toy env or Meta-World from an :class:`EnvConfig`."""

from __future__ import annotations

from mtrl.config import ConfigError, EnvConfig
from mtrl.envs.base import MultiTaskVecEnv, StepResult
from mtrl.envs.toy import ToyReachEnv


def make_env(cfg: EnvConfig, seed: int, *, evaluation: bool = False, render: bool = False) -> MultiTaskVecEnv:
    """Build the vector env of ``cfg.benchmark``, one sub-env per task.

    :param seed: seeds goal choice (legacy protocol), goal sampling and the simulator.
    :param evaluation: evaluation envs (Meta-World: terminate on success, cycle through the goals).
    :param render: make ``env.render()`` return one RGB frame per task.
    """
    if cfg.benchmark == "toy":
        return ToyReachEnv(cfg.toy_tasks, cfg.max_episode_steps or 50, render=render)
    from mtrl.envs.metaworld import make_metaworld  # the only module importing metaworld

    try:
        return make_metaworld(cfg, seed, evaluation=evaluation, render=render)
    except ValueError as exc:  # unknown task names and the like: a config problem, reported in one line
        raise ConfigError(str(exc)) from None


__all__ = ["MultiTaskVecEnv", "StepResult", "ToyReachEnv", "make_env"]
