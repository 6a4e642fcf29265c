"""The vector-environment contract shared by the toy env and Meta-World.

One sub-environment per task: row ``k`` of every array belongs to task ``k``. Observations never include a
task id; task conditioning is the agent's job (``mtrl.nets``), so the same agent works on every env.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np


class StepResult(NamedTuple):
    """What :meth:`MultiTaskVecEnv.step` returns, one row per task."""

    next_obs: np.ndarray  # [K, obs] true successor state (the final obs where an episode ended): goes to replay
    obs: np.ndarray  # [K, obs] observation to act on next (the reset obs where an episode ended)
    reward: np.ndarray  # [K] float32
    terminated: np.ndarray  # [K] bool: a true terminal state, the only thing that stops the TD bootstrap
    truncated: np.ndarray  # [K] bool: time limit; the critic bootstraps through it
    success: np.ndarray  # [K] bool: the task's success flag at this step


class MultiTaskVecEnv(Protocol):
    """K tasks stepped together; autoreset happens inside :meth:`step`."""

    task_names: list[str]
    obs_dim: int
    act_dim: int
    max_episode_steps: int

    @property
    def num_tasks(self) -> int: ...

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset every task; returns observations ``[K, obs]`` (float32)."""
        ...

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every task with ``actions`` ``[K, act]`` in ``[-1, 1]``."""
        ...

    def render(self) -> list[np.ndarray]:
        """One RGB frame ``[H, W, 3]`` (uint8) per task; only for envs built with ``render=True``."""
        ...

    def close(self) -> None: ...
