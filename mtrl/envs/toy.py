"""A tiny multi-task env: K point-reaching tasks in the plane, stepped in numpy (thousands of steps/s).

Task ``k`` moves a point from near the origin to a goal at angle ``2*pi*k/K`` on a circle of radius 0.7. The
observation is only the position, so the tasks conflict unless the agent is told which task it is solving: a
good check of task conditioning. Reward is the negative distance to the goal; success is being within 0.1 of it.
Episodes end by time limit only (never ``terminated``), as in Meta-World. ``fresh_goals`` rotates every goal by half
the angle between two tasks: goals the tasks never trained on (``eval_goals: fresh``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtrl.envs.base import StepResult

_SPEED = 0.1
_RADIUS = 0.7
_SUCCESS_DIST = 0.1


class ToyReachEnv:
    """K point-reaching tasks; row ``k`` of every array is task ``k``. With ``num_seeds`` > 1 the envs of a seed
    group: ``num_seeds x K`` rows, seed-major, each seed's K rows with their own start-position generator (seeded by
    :meth:`reset` as its solo env is), so seed ``s``'s rows are exactly its solo env's."""

    obs_dim = 2
    act_dim = 2

    def __init__(
        self,
        num_tasks: int = 4,
        max_episode_steps: int = 50,
        render: bool = False,
        fresh_goals: bool = False,
        num_seeds: int = 1,
    ) -> None:
        self.task_names = [f"reach-{k}" for k in range(num_tasks)]
        self.num_seeds = num_seeds
        self.max_episode_steps = max_episode_steps
        angles = 2 * np.pi * (np.arange(num_tasks) + (0.5 if fresh_goals else 0.0)) / num_tasks
        self.goals = np.tile(_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1), (num_seeds, 1))  # [rows, 2]
        self._rngs = [np.random.default_rng(0) for _ in range(num_seeds)]
        self._pos = np.zeros((self.rows, 2))
        self._t = np.zeros(self.rows, dtype=np.int64)
        self._render = render

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def rows(self) -> int:
        """``num_seeds x num_tasks``."""
        return self.num_seeds * self.num_tasks

    def _starts(self, rows: np.ndarray) -> np.ndarray:
        """Start positions of the rows flagged in ``rows`` ``[rows]``, each seed's from its own generator."""
        k = self.num_tasks
        parts = [
            self._rngs[s].uniform(-0.1, 0.1, size=(int(rows[s * k : (s + 1) * k].sum()), 2))
            for s in range(self.num_seeds)
        ]
        return np.concatenate(parts)

    def reset(self, seed: int | Sequence[int] | None = None) -> np.ndarray:
        """Reset every row; ``seed``: one per seed (an int for a solo env). Returns obs ``[rows, 2]``."""
        if seed is not None:
            seeds = [seed] if isinstance(seed, int) else list(seed)
            if len(seeds) != self.num_seeds:
                raise ValueError(f"seed: got {len(seeds)} seeds for an env of {self.num_seeds}")
            self._rngs = [np.random.default_rng(x) for x in seeds]
        self._pos = self._starts(np.ones(self.rows, dtype=bool))
        self._t[:] = 0
        return self._pos.astype(np.float32)

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
        self._pos = np.clip(self._pos + _SPEED * actions, -1.0, 1.0)
        self._t += 1
        dist = np.linalg.norm(self._pos - self.goals, axis=1)
        next_obs = self._pos.astype(np.float32)
        truncated = self._t >= self.max_episode_steps
        if truncated.any():
            self._pos[truncated] = self._starts(truncated)
            self._t[truncated] = 0
        return StepResult(
            next_obs=next_obs,
            obs=self._pos.astype(np.float32),
            reward=(-dist).astype(np.float32),
            terminated=np.zeros(self.rows, dtype=bool),
            truncated=truncated,
            success=dist < _SUCCESS_DIST,
        )

    def render(self, size: int = 128) -> list[np.ndarray]:
        """One RGB frame ``[size, size, 3]`` per task: goal ring in green, point in blue."""
        if not self._render:
            raise RuntimeError("ToyReachEnv was built with render=False")
        ys, xs = np.mgrid[0:size, 0:size]
        frames = []
        for k in range(self.num_tasks):
            frame = np.full((size, size, 3), 255, dtype=np.uint8)
            for (cx, cy), radius, color in (
                (self.goals[k], _SUCCESS_DIST, (40, 170, 60)),
                (self._pos[k], 0.04, (30, 80, 220)),
            ):
                px, py = (cx + 1) / 2 * (size - 1), (1 - (cy + 1) / 2) * (size - 1)
                mask = (xs - px) ** 2 + (ys - py) ** 2 <= (radius / 2 * (size - 1)) ** 2
                frame[mask] = color
            frames.append(frame)
        return frames

    def close(self) -> None:
        pass
