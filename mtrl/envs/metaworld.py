"""Meta-World v3 as a :class:`~mtrl.envs.base.MultiTaskVecEnv`: MT10, MT50, MT1-<task> or a custom task list, two
protocols.

The only module of the package that imports :mod:`metaworld`. Sub-envs are built from Meta-World's public pieces
(benchmark objects, env classes, wrappers) rather than ``gym.make_vec``, because the protocols need control over goal
selection and seeding:

- ``official`` (Meta-World+ v3): the benchmark's 50 goal variations per task; a training env draws a random goal each
  episode, an evaluation env cycles through the goals (after :meth:`MetaWorldVecEnv.reset`, ``n <= 50`` episodes of a
  task see ``n`` distinct goals, so 50 episodes see each goal once) and terminates on success; 500-step episodes.
- ``legacy`` (mtrl/CARE): one fixed goal per task, drawn from the seed among that task's 50 variations; 150-step
  episodes; never terminates on success (mtrl's evaluation runs all 150 steps and counts success at any step).

Goals and seeds. The goal set of a run (official: the 50 variations per task; legacy: the one fixed goal) comes from
the **run's seed** alone, for the training env and the evaluation env alike: a policy is evaluated on the goals it
trained on, as in Meta-World's official evaluation, metaworld-algorithms and facebookresearch/mtrl.
``EnvConfig.eval_goals = "fresh"`` builds the evaluation env on the goals of seed ``seed + FRESH_GOAL_OFFSET``
instead (a generalization check). The simulator seed is separate: sub-env ``k`` of a training env is seeded with
``seed + k``, of an evaluation env with ``eval_seed(seed) + k`` (see :func:`make_metaworld`).

Benchmarks: ``MT10`` and ``MT50`` take their goals from ``metaworld.MT10(seed)`` / ``metaworld.MT50(seed)``,
``MT1-<task>`` from ``metaworld.MT1(task, seed)``, a custom list ``task-a-v3,task-b-v3,...`` (any Meta-World v3
tasks) task ``k``'s from ``metaworld.MT1(task_k, seed + k)``, as Meta-World's own ``Meta-World/custom-mt-envs``.

Determinism: Meta-World ignores ``reset(seed=...)`` and samples with the global ``np.random`` unless told otherwise.
Here after ``set_task`` positions are frozen (no global RNG), and the goal sampling / goal cycling of a sub-env uses
that env's own generator, seeded at construction and re-seeded by ``reset(seed)`` (sub-env ``k``: ``seed + k``).
The same seed gives the same observations.

Rendering (sync vector env only) uses one ``mujoco.Renderer`` per task and the ``corner`` camera, whose up axis
points down in Meta-World's model: frames are rotated by 180 degrees. Shadows and reflections are switched off
(nearly identical frames, about 7x faster with software GL).
"""

from __future__ import annotations

import difflib
import functools
import os
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from mtrl.envs.gl import ensure_gl_backend, software_gl

ensure_gl_backend()  # before mujoco is imported (through metaworld)

import gymnasium as gym  # noqa: E402
import metaworld  # noqa: E402
import mujoco  # noqa: E402
from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3, MT50_V3  # noqa: E402
from metaworld.types import Task  # noqa: E402
from metaworld.wrappers import (  # noqa: E402
    AutoTerminateOnSuccessWrapper,
    OneHotWrapper,
    PseudoRandomTaskSelectWrapper,
    RandomTaskSelectWrapper,
)

from mtrl.config import EnvConfig  # noqa: E402
from mtrl.envs.base import StepResult, benchmark_kind, custom_tasks, eval_seed, goal_seed  # noqa: E402
from mtrl.envs.pool import PooledVectorEnv  # noqa: E402

EPISODE_STEPS = {"official": 500, "legacy": 150}
"""Default episode length of each protocol (``EnvConfig.max_episode_steps = 0``)."""
RENDER_SIZE = 256
"""Height and width of rendered frames."""
RENDER_CAMERA = "corner"
"""Meta-World camera used for frames (a three-quarter view of the table and the arm)."""


def _check_task(name: str) -> str:
    if name not in ALL_V3_ENVIRONMENTS:
        close = difflib.get_close_matches(name, list(ALL_V3_ENVIRONMENTS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"env.benchmark: unknown Meta-World task '{name}'; valid: {', '.join(list(MT10_V3)[:4])}, ... "
            f"({len(ALL_V3_ENVIRONMENTS)} tasks){hint}"
        )
    return name


def task_names(benchmark: str) -> list[str]:
    """Meta-World task names of ``benchmark`` (``MT10``, ``MT50``, ``MT1-<task>`` or a comma-separated task list) in
    benchmark order.

    Builds no environment. Raises a one-line :class:`ValueError` for an unknown benchmark or task.
    """
    if benchmark == "MT10":
        return list(MT10_V3)
    if benchmark == "MT50":
        return list(MT50_V3)
    if benchmark.startswith("MT1-"):
        return [_check_task(benchmark[len("MT1-") :])]
    if benchmark_kind(benchmark) == "custom":
        return [_check_task(name) for name in custom_tasks(benchmark)]
    raise ValueError(
        f"env.benchmark: unknown Meta-World benchmark {benchmark!r}; valid: MT10, MT50, MT1-<task> (e.g. "
        "MT1-reach-v3) or a comma-separated list of tasks (e.g. reach-v3,push-v3)"
    )


@functools.lru_cache(maxsize=32)
def _benchmark(benchmark: str, seed: int) -> tuple[tuple[str, type, tuple[Task, ...]], ...]:
    """(name, env class, its 50 goal variations) per task; cached since building MT10 takes ~10 s, MT50 ~50 s."""
    names = task_names(benchmark)
    if benchmark in ("MT10", "MT50"):
        bench: Any = metaworld.MT10(seed=seed) if benchmark == "MT10" else metaworld.MT50(seed=seed)
        return tuple(
            (name, bench.train_classes[name], tuple(t for t in bench.train_tasks if t.env_name == name))
            for name in names
        )
    out = []
    for k, name in enumerate(names):  # MT1-<task>: k = 0, seed; custom lists: as Meta-World's custom-mt-envs
        bench = metaworld.MT1(name, seed=seed + k)
        out.append((name, bench.train_classes[name], tuple(bench.train_tasks)))
    return tuple(out)


class _Control(gym.Wrapper):
    """Outermost wrapper: seeding on ``reset(seed=...)`` (which Meta-World ignores) and restarting the goal cycle."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        if seed is not None:
            self.env.unwrapped.seed(seed)  # type: ignore[attr-defined]  # task sampling, action/obs/goal spaces
        return self.env.reset(options=options)

    def restart_goal_cycle(self) -> None:
        """Make the next reset start a fresh pass over the goals (evaluation envs of the official protocol)."""
        try:
            self.env.set_wrapper_attr("current_task_idx", -1, force=False)
        except AttributeError:
            pass


def _make_sub_env(
    env_cls: type,
    tasks: tuple[Task, ...],
    fixed_task: Task | None,
    *,
    seed: int,
    terminate_on_success: bool,
    cycle_goals: bool,
    max_episode_steps: int,
    reward_version: str,
    render: bool,
    task_index: int,
    num_tasks: int,
    use_one_hot: bool,
) -> gym.Env:
    """One task's env: base env -> TimeLimit -> terminate-on-success -> [one-hot] -> goal selection -> control."""
    base = env_cls(reward_function_version=reward_version)
    if render:  # cheap visuals for MetaWorldVecEnv.render (set before any GL context uploads the model)
        base.model.light_castshadow[:] = 0
        base.model.mat_reflectance[:] = 0
        if software_gl():
            base.model.vis.quality.offsamples = 0
    base.max_path_length = max_episode_steps  # Meta-World raises past its own horizon (500); TimeLimit decides
    base.seed(seed)
    env: gym.Env = gym.wrappers.TimeLimit(base, max_episode_steps)
    terminate = AutoTerminateOnSuccessWrapper(env)
    terminate.toggle_terminate_on_success(terminate_on_success)
    env = terminate
    if use_one_hot:
        with warnings.catch_warnings():  # its float64 bounds in a float32 Box: harmless precision warning
            warnings.simplefilter("ignore", UserWarning)
            env = OneHotWrapper(env, task_index, num_tasks)
    if fixed_task is not None:
        base.set_task(fixed_task)
    elif cycle_goals:
        env = PseudoRandomTaskSelectWrapper(env, list(tasks), sample_tasks_on_reset=True)
    else:
        env = RandomTaskSelectWrapper(env, list(tasks), sample_tasks_on_reset=True)
    return _Control(env)


def _masked(infos: dict[str, Any], key: str, num: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, mask) of a vector-env info key, or zeros and an all-False mask when absent."""
    if key not in infos:
        return np.zeros(num), np.zeros(num, dtype=bool)
    return np.asarray(infos[key]), np.asarray(infos[f"_{key}"], dtype=bool)


class MetaWorldVecEnv:
    """K Meta-World tasks (one sub-env each) behind the :class:`~mtrl.envs.base.MultiTaskVecEnv` contract, for one
    run or the ``num_seeds`` runs of a seed group (``num_seeds x K`` sub-envs, seed-major: rows ``s*K:(s+1)*K`` are
    seed ``s``'s).

    Build it with :func:`make_metaworld`. The underlying gymnasium vector env (autoreset mode ``SAME_STEP``) is
    :attr:`vector_env`.
    """

    def __init__(
        self,
        vector_env: gym.vector.SyncVectorEnv | PooledVectorEnv,
        task_names: list[str],
        max_episode_steps: int,
        *,
        protocol: str,
        evaluation: bool,
        render: bool,
        num_seeds: int = 1,
    ) -> None:
        self.vector_env = vector_env
        self.task_names = task_names
        self.num_seeds = num_seeds
        self.max_episode_steps = max_episode_steps
        self.protocol = protocol
        self.evaluation = evaluation
        self.needs_gl = render  # read by mtrl.video: frames need an offscreen OpenGL backend
        self.obs_dim = int(vector_env.single_observation_space.shape[0])  # type: ignore[index]
        self.act_dim = int(vector_env.single_action_space.shape[0])  # type: ignore[index]
        self._render = render
        self._renderers: dict[int, mujoco.Renderer] = {}  # per task, created on first use
        self._needs_reset = True

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def rows(self) -> int:
        """Sub-envs: ``num_seeds x num_tasks``."""
        return self.num_seeds * self.num_tasks

    def reset(self, seed: int | Sequence[int] | None = None) -> np.ndarray:
        """Reset every sub-env; ``seed`` re-seeds sub-env ``k`` of seed ``s`` with ``seed[s] + k`` (an int: the one
        seed of a solo env). Returns obs ``[rows, obs]`` float32.

        For official evaluation envs this also restarts the pass over the goals.
        """
        if self.evaluation and self.protocol == "official":
            self.vector_env.call("restart_goal_cycle")
        seeds: list[int | None] | None = None
        if seed is not None:
            seeds = [x + k for x in ([seed] if isinstance(seed, int) else seed) for k in range(self.num_tasks)]
        obs, _ = self.vector_env.reset(seed=seeds)
        self._needs_reset = False
        return np.asarray(obs, dtype=np.float32)

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every sub-env with ``actions`` ``[rows, 4]`` (clipped to ``[-1, 1]``); autoresets finished
        episodes."""
        if self._needs_reset:
            raise RuntimeError("MetaWorldVecEnv: call reset() before step()")
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.rows, self.act_dim):
            raise ValueError(f"actions: expected shape {(self.rows, self.act_dim)}, got {actions.shape}")
        obs, reward, terminated, truncated, infos = self.vector_env.step(np.clip(actions, -1.0, 1.0))
        obs = np.asarray(obs, dtype=np.float32)  # [rows, obs]
        next_obs = obs.copy()
        n = self.rows
        if "final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                next_obs[i] = infos["final_obs"][i]
        success, has = _masked(infos, "success", n)  # steps that did not end an episode
        final_success, final_has = _masked(infos.get("final_info", {}), "success", n)  # steps that did
        success = np.where(final_has, final_success, np.where(has, success, 0.0)) > 0
        return StepResult(
            next_obs=next_obs,
            obs=obs,
            reward=np.asarray(reward, dtype=np.float32),
            terminated=np.asarray(terminated, dtype=bool),
            truncated=np.asarray(truncated, dtype=bool),
            success=success,
        )

    def render(self, tasks: Sequence[int] | None = None) -> list[np.ndarray]:
        """One RGB frame ``[256, 256, 3]`` uint8 per task, or per task index in ``tasks`` (cheaper)."""
        if not self._render:
            raise RuntimeError("MetaWorldVecEnv was built with render=False; use make_env(..., render=True)")
        assert isinstance(self.vector_env, gym.vector.SyncVectorEnv)  # make_metaworld refuses async + render
        frames = []
        for i in range(self.num_tasks) if tasks is None else tasks:
            # One mujoco.Renderer per task: it makes its own GL context current on every call, which gymnasium's
            # env.render() does not do across envs (all but the last-created env would render black).
            base = self.vector_env.envs[i].unwrapped
            if i not in self._renderers:
                self._renderers[i] = mujoco.Renderer(base.model, RENDER_SIZE, RENDER_SIZE)  # type: ignore[attr-defined]
            self._renderers[i].update_scene(base.data, camera=RENDER_CAMERA)  # type: ignore[attr-defined]
            frames.append(np.ascontiguousarray(np.rot90(self._renderers[i].render(), 2)))  # corner cam: upside down
        return frames

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
        self.vector_env.close()

    def __enter__(self) -> MetaWorldVecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def env_workers(cfg: EnvConfig, num_envs: int) -> int:
    """Worker processes of an async vector env over ``num_envs`` sub-envs: ``cfg.num_workers``, or (0) one per
    sub-env up to the CPU cores less one (the trainer's); never more than the sub-envs."""
    cores = cpu_count()
    return max(1, min(num_envs, cfg.num_workers or cores - 1))


def cpu_count() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def vector_strategy(cfg: EnvConfig, *, render: bool = False, num_seeds: int = 1) -> Literal["sync", "async"]:
    """The vector env to build for ``cfg.vector_strategy``; ``auto`` is async (the sub-envs stepped in worker
    processes, :class:`~mtrl.envs.pool.PooledVectorEnv`) when that gives at least two workers (:func:`env_workers`:
    a machine with at least 3 cores) and nothing is rendered, else sync.

    :param render: the env must render, which needs the sync vector env; an explicit ``async`` raises ValueError.
    :param num_seeds: the runs of a seed group the env serves (``num_seeds x K`` sub-envs).
    """
    if cfg.vector_strategy not in ("auto", "sync", "async"):
        raise ValueError(f"env.vector_strategy: got {cfg.vector_strategy!r}, expected auto, sync or async")
    if render and cfg.vector_strategy == "async":
        # forked workers hang when the parent already holds an OpenGL context; frames are cheap to get in-process
        raise ValueError("env.vector_strategy: rendering needs the sync vector env; build it with vector_strategy=sync")
    if cfg.vector_strategy == "auto":
        n = num_seeds * len(task_names(cfg.benchmark))
        return "async" if not render and env_workers(cfg, n) >= 2 else "sync"
    return cfg.vector_strategy


def make_metaworld(
    cfg: EnvConfig,
    seed: int | Sequence[int],
    *,
    evaluation: bool = False,
    render: bool = False,
    use_one_hot: bool = False,
    sim_seed: int | None = None,
) -> MetaWorldVecEnv:
    """Build the Meta-World vector env of ``cfg.benchmark`` (``MT10``, ``MT50``, ``MT1-<task>`` or a task list).

    :param cfg: benchmark, protocol (official / legacy), reward version, episode length, vector strategy
        (:func:`vector_strategy`), evaluation goals (``eval_goals``).
    :param seed: the run's seed: picks the goal set (the benchmark's goal variations, the legacy goal choice), the
        same for training and evaluation envs unless ``cfg.eval_goals`` is ``fresh``. A list: the seeds of a seed
        group, one K-task env each (seed-major rows), each exactly the env of that seed's solo run.
    :param evaluation: official protocol: terminate on success and cycle through the 50 goals instead of sampling
        them; legacy protocol: same goal and episodes (mtrl evaluates full 150-step episodes on the fixed goals).
    :param sim_seed: simulator seed (sub-env ``k`` gets ``sim_seed + k``; one seed only); default ``seed`` for a
        training env and :func:`~mtrl.envs.base.eval_seed` ``(seed)`` for an evaluation env.
    :param render: ``render()`` returns one ``[256, 256, 3]`` frame per task (needs offscreen OpenGL and the
        sync vector env: ``vector_strategy`` sync or auto).
    :param use_one_hot: append the task one-hot to observations (obs dim 39 + K); the agent of this package does
        its own task conditioning, so this is off by default.
    """
    if cfg.protocol not in EPISODE_STEPS:
        raise ValueError(f"env.protocol: got {cfg.protocol!r}, expected one of {', '.join(EPISODE_STEPS)}")
    seeds = [seed] if isinstance(seed, int) else list(seed)
    if sim_seed is not None and len(seeds) != 1:
        raise ValueError("sim_seed: only for the env of one seed")
    strategy = vector_strategy(cfg, render=render, num_seeds=len(seeds))
    max_steps = cfg.max_episode_steps or EPISODE_STEPS[cfg.protocol]
    official = cfg.protocol == "official"
    fns = []
    names: list[str] = []
    for run_seed in seeds:
        goals = goal_seed(cfg, run_seed, evaluation)
        sim = (eval_seed(run_seed) if evaluation else run_seed) if sim_seed is None else sim_seed
        tasks = _benchmark(cfg.benchmark, goals)
        names = [name for name, _, _ in tasks]
        rng = np.random.default_rng(goals)  # legacy: one goal per task, in benchmark order
        for k, (_, env_cls, variations) in enumerate(tasks):
            fixed = None if official else variations[int(rng.integers(len(variations)))]
            fns.append(
                functools.partial(
                    _make_sub_env,
                    env_cls,
                    variations,
                    fixed,
                    seed=sim + k,
                    terminate_on_success=official and evaluation,
                    cycle_goals=official and evaluation,
                    max_episode_steps=max_steps,
                    reward_version=cfg.reward_version,
                    render=render,
                    task_index=k,
                    num_tasks=len(tasks),
                    use_one_hot=use_one_hot,
                )
            )
    vec: gym.vector.SyncVectorEnv | PooledVectorEnv
    if strategy == "async":
        vec = PooledVectorEnv(fns, env_workers(cfg, len(fns)))
    else:
        vec = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return MetaWorldVecEnv(
        vec, names, max_steps, protocol=cfg.protocol, evaluation=evaluation, render=render, num_seeds=len(seeds)
    )
