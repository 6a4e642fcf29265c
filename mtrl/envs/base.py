"""The vector-environment contract shared by the toy env and Meta-World.

One sub-environment per task: row ``k`` of every array belongs to task ``k``. The env of a **seed group** holds the
envs of ``num_seeds`` runs, seed-major: row ``s * K + k`` is task ``k`` of seed ``s``, and seed ``s``'s rows behave
exactly as the env of its solo run. Observations never include a task id; task conditioning is the agent's job
(``mtrl.nets``), so the same agent works on every env.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

import numpy as np

if TYPE_CHECKING:
    from mtrl.config import EnvConfig

EVAL_SEED_OFFSET = 10_000
"""An evaluation env's simulator seed is the run's seed plus this (:func:`eval_seed`); its goals are the run's."""
FRESH_GOAL_OFFSET = 1_000_003
"""``eval_goals: fresh`` evaluates on the goal set of the run's seed plus this (goals the run never trained on)."""

BenchmarkKind = Literal["toy", "MT10", "MT50", "MT1", "custom"]


def benchmark_kind(benchmark: str) -> BenchmarkKind | None:
    """What ``env.benchmark`` names: the toy env, MT10, MT50, ``MT1-<task>``, a custom task list (comma-separated
    Meta-World v3 task names, e.g. ``reach-v3,push-v3``), or None when it is none of these. Imports no Meta-World;
    task names are checked when the env is built."""
    if benchmark in ("toy", "MT10", "MT50"):
        return benchmark  # type: ignore[return-value]
    if benchmark.startswith("MT1-") and len(benchmark) > 4:
        return "MT1"
    names = benchmark.split(",")
    if all(n.strip().endswith("-v3") and n.strip()[:-3] for n in names):
        return "custom"
    return None


def custom_tasks(benchmark: str) -> list[str]:
    """The task names of a custom benchmark ``a-v3,b-v3,...``, in order, whitespace stripped."""
    return [n.strip() for n in benchmark.split(",")]


def benchmark_num_tasks(benchmark: str, toy_tasks: int) -> int:
    """K of ``env.benchmark`` without building anything (toy: ``toy_tasks``)."""
    kind = benchmark_kind(benchmark)
    if kind == "toy":
        return toy_tasks
    if kind == "custom":
        return len(custom_tasks(benchmark))
    return {"MT10": 10, "MT50": 50}.get(benchmark, 1)


def benchmark_label(benchmark: str) -> str:
    """``env.benchmark`` as it appears in run names: a custom list of K tasks becomes ``MT<K>-custom``."""
    if benchmark_kind(benchmark) == "custom":
        return f"MT{len(custom_tasks(benchmark))}-custom"
    return benchmark


def benchmark_dims(benchmark: str) -> tuple[int, int]:
    """Observation and action dimensions of ``env.benchmark`` without building it: toy (2, 2), Meta-World (39, 4)."""
    return (2, 2) if benchmark_kind(benchmark) == "toy" else (39, 4)


def eval_seed(seed: int) -> int:
    """Simulator seed of the evaluation env of a run with seed ``seed`` (its goals come from ``seed`` itself)."""
    return seed + EVAL_SEED_OFFSET


def goal_seed(cfg: EnvConfig, seed: int, evaluation: bool) -> int:
    """The seed that picks the goal set: the run's ``seed``, except for an evaluation env with ``eval_goals: fresh``."""
    return seed + FRESH_GOAL_OFFSET if evaluation and cfg.eval_goals == "fresh" else seed


class StepResult(NamedTuple):
    """What :meth:`MultiTaskVecEnv.step` returns, one row per task."""

    next_obs: np.ndarray  # [rows, obs] true successor state (the final obs where an episode ended): goes to replay
    obs: np.ndarray  # [rows, obs] observation to act on next (the reset obs where an episode ended)
    reward: np.ndarray  # [rows] float32
    terminated: np.ndarray  # [rows] bool: a true terminal state, the only thing that stops the TD bootstrap
    truncated: np.ndarray  # [rows] bool: time limit; the critic bootstraps through it
    success: np.ndarray  # [rows] bool: the task's success flag at this step


class MultiTaskVecEnv(Protocol):
    """K tasks (of ``num_seeds`` runs) stepped together; autoreset happens inside :meth:`step`."""

    task_names: list[str]
    obs_dim: int
    act_dim: int
    max_episode_steps: int
    num_seeds: int

    @property
    def num_tasks(self) -> int: ...

    @property
    def rows(self) -> int:
        """``num_seeds x num_tasks``: the rows of every array."""
        ...

    def reset(self, seed: int | Sequence[int] | None = None) -> np.ndarray:
        """Reset every task; ``seed``: the run's seed (an int), or one per seed of a group. Returns observations
        ``[rows, obs]`` (float32)."""
        ...

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every task with ``actions`` ``[rows, act]`` in ``[-1, 1]``."""
        ...

    def render(self) -> list[np.ndarray]:
        """One RGB frame ``[H, W, 3]`` (uint8) per task; only for envs built with ``render=True``."""
        ...

    def close(self) -> None: ...
