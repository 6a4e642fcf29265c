"""Check our Meta-World env layer and evaluator against Meta-World itself, with Meta-World's scripted experts.

Each task's expert policy (``metaworld.policies.ENV_POLICY_MAP[task]``, deterministic) runs through two paths:

- **ours**: ``make_env(EnvConfig(benchmark=...), seed, evaluation=True)`` and :func:`mtrl.evaluate.evaluate` with
  reset seed ``eval_seed(seed)``, as the trainer evaluates;
- **direct**: ``gym.make_vec("Meta-World/MT10" | "Meta-World/MT50", seed=seed, task_select="pseudorandom")`` (a task
  list or ``MT1-<task>``: ``"Meta-World/custom-mt-envs"`` with ``envs_list``) and Meta-World's own
  ``metaworld.evaluation.evaluation``.

Both build the goal set from the same benchmark object (``MT10(seed)`` / ``MT50(seed)``; task ``k`` of a list:
``MT1(task_k, seed + k)``), use 500-step episodes and terminate on success. The direct path needs one call besides
``gym.make_vec``: ``toggle_sample_tasks_on_reset(True)``. With ``task_select="pseudorandom"`` alone no sub-env ever
sets a goal (its ``PseudoRandomTaskSelectWrapper`` samples only on ``sample_tasks()``; ``reset()`` fails with an
AssertionError) and, once set, a goal would never change; with it every reset takes the next of the 50 goals, the
goal cycle our evaluation env uses.

Goal order (``--goal-order``). Both paths visit each task's 50 goals in a random order, one pass after another,
shuffled by the sub-env's own generator: ours seeded with ``eval_seed(seed) + k`` (sub-env ``k``), Meta-World's
MT10/MT50 with ``seed`` for every sub-env. ``metaworld`` leaves Meta-World's order as it is: the two paths evaluate
the same episodes only when ``--episodes`` is a multiple of 50 (full passes over the goals); episodes are then paired
by their first observation (it shows goal and object positions). ``ours`` re-seeds each direct sub-env's generator
with ``eval_seed(seed) + k`` before the evaluation, so that both paths see the same goals in the same order for any
number of episodes (nothing else of Meta-World's path changes); episodes are compared in order. The default is
``metaworld`` for multiples of 50, ``ours`` otherwise. Task lists (``custom-mt-envs``) already seed sub-env ``k``
with ``seed + k`` and are re-seeded the same way.

Observations (``--direct-obs``). Our env returns float32 observations (the networks' dtype); Meta-World's are
float64. ``float32`` (default) hands the direct path's expert the same float32-rounded observation, so that both
paths run the very same trajectories and every episode's return must agree (up to float32 reward sums).
``float64`` hands it Meta-World's own: trajectories with contacts then drift apart by rounding alone and can end
differently; returns are shown but not checked.

Exit code 0 when every task's success rates differ by at most ``--tol`` and, where the two paths evaluate the same
episodes, every episode starts from the same observation and (float32 observations) its return agrees within
``rtol=1e-5, atol=1e-3``; 1 otherwise.

Runtime on two cores: MT10 with 50 episodes about 3 minutes per path, MT50 about 40 (its last episodes are a few
tasks' failing 500-step episodes, for which every sub-env keeps stepping, in both evaluators); ``--jobs 2`` runs
the two paths side by side.

Usage::

    python scripts/expert_check.py --benchmark MT10 --seed 1
    python scripts/expert_check.py --benchmark MT50 --seed 1 --episodes 50 --jobs 2
    python scripts/expert_check.py --benchmark reach-v3,push-v3 --episodes 5 --direct-obs float64
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from mtrl.envs.gl import ensure_gl_backend

ensure_gl_backend()  # before mujoco is imported (through metaworld)

import gymnasium as gym  # noqa: E402
import metaworld  # noqa: E402, F401  # registers the Meta-World/... gymnasium ids
from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # noqa: E402
from metaworld.evaluation import evaluation  # noqa: E402
from metaworld.policies import ENV_POLICY_MAP  # noqa: E402

from mtrl.config import EnvConfig  # noqa: E402
from mtrl.envs import eval_seed, make_env  # noqa: E402
from mtrl.envs.base import MultiTaskVecEnv, StepResult, benchmark_kind, benchmark_label  # noqa: E402
from mtrl.envs.metaworld import task_names  # noqa: E402
from mtrl.evaluate import evaluate  # noqa: E402

GOALS_PER_TASK = 50
"""Goal variations per task in Meta-World's benchmarks (one pass of the evaluation goal cycle)."""
RETURN_RTOL = 1e-5
RETURN_ATOL = 1e-3
"""Tolerance on an episode's return: our env sums float32 rewards, Meta-World's float64 ones."""
START_ATOL = 1e-6
"""Tolerance on an episode's first observation, both rounded to float32 (equal in practice)."""


@dataclass
class PathResult:
    """What one path measured: per task, its success rate and, per episode, its return and first observation."""

    per_task: np.ndarray  # [K] success rate
    returns: np.ndarray  # [K, E] undiscounted episode returns, in the order the episodes ran
    starts: np.ndarray  # [K, E, 39] first observation of each episode (float32)
    seconds: float  # wall time of the evaluation, building the env included


@dataclass
class Comparison:
    """Per-task agreement of the two paths' results."""

    diff: np.ndarray  # [K] ours - direct success rate
    same_goals: np.ndarray | None  # [K] each episode started from the same observation; None: not comparable
    return_err: np.ndarray | None  # [K] largest |return difference| over paired episodes; None: not comparable
    returns_checked: bool  # return_err counts towards the verdict
    pairing: str  # how episodes were paired: "in order", "by first observation" or "none"
    ok: np.ndarray  # [K] the task agrees


class ExpertPolicy:
    """The scripted experts of ``tasks`` as one batched policy: obs ``[K, 39]`` -> actions ``[K, 4]``."""

    def __init__(self, tasks: Sequence[str], obs_dtype: type = np.float32) -> None:
        self.policies = [ENV_POLICY_MAP[name]() for name in tasks]
        self.obs_dtype = obs_dtype

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=self.obs_dtype)
        with warnings.catch_warnings():  # metaworld.policies.move warns whenever a gain saturates the action
            warnings.simplefilter("ignore", UserWarning)
            return np.stack([policy.get_action(o) for policy, o in zip(self.policies, obs)])


class _RecordingEnv:
    """Pass-through of our vector env for :func:`evaluate` that records each episode's first observation and
    reports finished episodes (first ``episodes`` per task) to a progress bar. Changes nothing it passes on."""

    def __init__(self, env: MultiTaskVecEnv, episodes: int, bar: tqdm) -> None:
        self.env = env
        self.episodes = episodes
        self.bar = bar
        self.done = np.zeros(env.num_tasks, dtype=np.int64)
        self.starts = np.zeros((env.num_tasks, episodes, env.obs_dim), dtype=np.float32)

    @property
    def num_tasks(self) -> int:
        return self.env.num_tasks

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs = self.env.reset(seed)
        self.done[:] = 0
        self.starts[:, 0] = obs
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        result = self.env.step(actions)
        for k in np.flatnonzero(result.terminated | result.truncated):
            if self.done[k] < self.episodes:
                self.bar.update(1)
            self.done[k] += 1
            if self.done[k] < self.episodes:
                self.starts[k, self.done[k]] = result.obs[k]  # the reset observation of its next episode
        return result


class _ExpertAgent:
    """Meta-World's ``evaluation.Agent`` around :class:`ExpertPolicy`; records each episode's first observation and
    reports finished episodes to a progress bar (``reset(mask)`` is told which sub-envs just ended an episode)."""

    def __init__(self, policy: ExpertPolicy, episodes: int, bar: tqdm) -> None:
        k = len(policy.policies)
        self.policy = policy
        self.episodes = episodes
        self.bar = bar
        self.started = False
        self.done = np.zeros(k, dtype=np.int64)
        self.fresh = np.ones(k, dtype=bool)  # the next observation starts an episode
        self.starts = np.zeros((k, episodes, 39), dtype=np.float32)

    def eval_action(self, obs: np.ndarray) -> np.ndarray:
        for k in np.flatnonzero(self.fresh & (self.done < self.episodes)):
            self.starts[k, self.done[k]] = obs[k]
        self.fresh[:] = False
        return self.policy(obs)

    def reset(self, env_mask: np.ndarray) -> None:
        if not self.started:  # evaluation() calls reset(all True) once after its env reset
            self.started = True
            return
        for k in np.flatnonzero(env_mask):
            if self.done[k] < self.episodes:
                self.bar.update(1)
            self.done[k] += 1
            self.fresh[k] = True


def _bar(label: str, total: int, progress: bool, position: int = 0) -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=label,
        position=position,
        unit="ep",
        disable=not progress,
        file=sys.stderr,
        mininterval=0.5 if interactive else 30.0,
        dynamic_ncols=interactive,
    )


def run_ours(benchmark: str, seed: int, episodes: int, *, progress: bool = True) -> PathResult:
    """The experts through our evaluation env and :func:`mtrl.evaluate.evaluate` (reset seed ``eval_seed(seed)``)."""
    start = time.perf_counter()
    env = make_env(EnvConfig(benchmark=benchmark), seed, evaluation=True)
    try:
        policy = ExpertPolicy(env.task_names)
        with _bar("ours", env.num_tasks * episodes, progress) as bar:
            recorder = _RecordingEnv(env, episodes, bar)
            result = evaluate(policy, recorder, episodes, seed=eval_seed(seed))  # type: ignore[arg-type]
    finally:
        env.close()
    return PathResult(result.per_task, result.returns, recorder.starts, time.perf_counter() - start)


def make_direct_env(benchmark: str, seed: int) -> gym.vector.SyncVectorEnv:
    """Meta-World's own vector env of ``benchmark`` with the goal cycle of an evaluation (see the module docstring)."""
    common: dict[str, Any] = {"vector_strategy": "sync", "seed": seed, "task_select": "pseudorandom"}
    if benchmark in ("MT10", "MT50"):
        envs = gym.make_vec(f"Meta-World/{benchmark}", **common)
    else:
        envs = gym.make_vec("Meta-World/custom-mt-envs", envs_list=task_names(benchmark), **common)
    envs.call("toggle_sample_tasks_on_reset", True)
    return envs  # type: ignore[return-value]


def run_direct(
    benchmark: str,
    seed: int,
    episodes: int,
    *,
    align_goal_order: bool,
    obs_dtype: type = np.float32,
    progress: bool = True,
) -> PathResult:
    """The experts through ``gym.make_vec`` and ``metaworld.evaluation.evaluation``.

    :param align_goal_order: re-seed sub-env ``k``'s generator (it shuffles the goal cycle) with
        ``eval_seed(seed) + k``, as our evaluation does; otherwise Meta-World's own seeding stays.
    :param obs_dtype: dtype of the observations handed to the experts (float32: as our env returns them).
    """
    start = time.perf_counter()
    names = task_names(benchmark)
    envs = make_direct_env(benchmark, seed)
    try:
        for k, (name, sub) in enumerate(zip(names, envs.envs)):
            if type(sub.unwrapped) is not ALL_V3_ENVIRONMENTS[name]:
                raise RuntimeError(f"direct sub-env {k} is {type(sub.unwrapped).__name__}, expected task {name}")
            if align_goal_order:
                sub.unwrapped.seed(eval_seed(seed) + k)
        agent_policy = ExpertPolicy(names, obs_dtype)
        with _bar("direct", len(names) * episodes, progress, position=1) as bar:
            agent = _ExpertAgent(agent_policy, episodes, bar)
            _, _, per_task, returns = evaluation(agent, envs, episodes)
    finally:
        envs.close()
    return PathResult(
        np.array([per_task[name] for name in names]),
        np.array([returns[name] for name in names]),
        agent.starts,
        time.perf_counter() - start,
    )


def _by_first_obs(starts: np.ndarray) -> np.ndarray:
    """Per task, the permutation sorting its episodes by first observation: ``[K, E]``."""
    return np.stack([np.lexsort(task.T[::-1]) for task in starts])


def compare(ours: PathResult, direct: PathResult, *, paired: str, check_returns: bool, tol: float = 0.0) -> Comparison:
    """Compare two paths task by task.

    :param paired: how the two paths' episodes correspond: ``in order`` (same goal order), ``by first observation``
        (the same goals, in another order: full passes over the goal cycle) or ``none`` (different goal subsets:
        only success rates are compared).
    :param check_returns: a return difference beyond tolerance makes a task disagree (same observations for both).
    :param tol: largest accepted difference of success rates.
    """
    diff = ours.per_task - direct.per_task
    ok = np.abs(diff) <= tol + 1e-12
    if paired == "none":
        return Comparison(diff, None, None, False, paired, ok)
    o_starts, d_starts, o_ret, d_ret = ours.starts, direct.starts, ours.returns, direct.returns
    if paired == "by first observation":
        o_idx, d_idx = _by_first_obs(o_starts), _by_first_obs(d_starts)
        o_starts, o_ret = np.take_along_axis(o_starts, o_idx[..., None], 1), np.take_along_axis(o_ret, o_idx, 1)
        d_starts, d_ret = np.take_along_axis(d_starts, d_idx[..., None], 1), np.take_along_axis(d_ret, d_idx, 1)
    same_goals = (np.abs(o_starts - d_starts) <= START_ATOL).all(axis=(1, 2))
    return_err = np.abs(o_ret - d_ret).max(axis=1)
    ok &= same_goals
    if check_returns:
        ok &= np.isclose(o_ret, d_ret, rtol=RETURN_RTOL, atol=RETURN_ATOL).all(axis=1)
    return Comparison(diff, same_goals, return_err, check_returns, paired, ok)


def format_table(names: Sequence[str], ours: PathResult, direct: PathResult, cmp: Comparison) -> str:
    """The comparison as a table: one row per task, then the means."""
    width = max(len("task"), *(len(n) for n in names))
    head = f"{'task':<{width}}  {'ours':>6}  {'direct':>6}  {'diff':>7}  {'goals':>5}  {'max|dR|':>8}  agree"
    lines = [head, "-" * len(head)]
    for k, name in enumerate(names):
        goals = "-" if cmp.same_goals is None else ("same" if cmp.same_goals[k] else "DIFF")
        err = "-" if cmp.return_err is None else f"{cmp.return_err[k]:.1e}"
        lines.append(
            f"{name:<{width}}  {ours.per_task[k]:6.3f}  {direct.per_task[k]:6.3f}  {cmp.diff[k]:+7.3f}  {goals:>5}  "
            f"{err:>8}  {'yes' if cmp.ok[k] else 'NO'}"
        )
    lines.append("-" * len(head))
    mean_diff = ours.per_task.mean() - direct.per_task.mean()
    lines.append(
        f"{'mean':<{width}}  {ours.per_task.mean():6.3f}  {direct.per_task.mean():6.3f}  {mean_diff:+7.3f}  "
        f"{'':>5}  {'':>8}  {int(cmp.ok.sum())}/{len(names)}"
    )
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Meta-World's scripted experts through our env + evaluate() and through gym.make_vec + "
        "Meta-World's evaluation(): per-task success of both (see the module docstring).",
    )
    parser.add_argument("--benchmark", default="MT10", help="MT10, MT50 or a comma-separated list of v3 tasks")
    parser.add_argument("--seed", type=int, default=1, help="the run's seed: picks the goal set (default 1)")
    parser.add_argument("--episodes", type=int, default=GOALS_PER_TASK, help="episodes per task (default 50)")
    parser.add_argument(
        "--goal-order",
        choices=["auto", "metaworld", "ours"],
        default="auto",
        help="goal order of the direct path: Meta-World's own, or re-seeded to ours (auto: metaworld for multiples "
        "of 50 episodes, else ours)",
    )
    parser.add_argument(
        "--direct-obs",
        choices=["float32", "float64"],
        default="float32",
        help="observations the direct path's expert sees: rounded to float32 as ours (default) or Meta-World's",
    )
    parser.add_argument("--tol", type=float, default=0.0, help="largest accepted success-rate difference (default 0)")
    parser.add_argument(
        "--jobs", type=int, choices=[1, 2], default=1, help="2: run the direct path in a second process meanwhile"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both paths, print the table; 0 if every task agrees, 1 otherwise, 2 for bad arguments."""
    args = _parse(argv)
    try:
        names = task_names(args.benchmark)
    except ValueError as exc:
        print(f"expert_check: {exc}", file=sys.stderr)
        return 2
    if benchmark_kind(args.benchmark) in ("custom", "MT1") and args.seed == 0:
        # Meta-World's custom-mt-envs seeds its goals with `None if not seed else seed + k`: seed 0 gives random goals
        print("expert_check: a task list needs --seed != 0 (Meta-World's custom-mt-envs drops seed 0)", file=sys.stderr)
        return 2
    if args.episodes < 1:
        print("expert_check: --episodes must be at least 1", file=sys.stderr)
        return 2
    full_passes = args.episodes % GOALS_PER_TASK == 0
    order = args.goal_order if args.goal_order != "auto" else ("metaworld" if full_passes else "ours")
    if order == "ours":
        paired = "in order"
    elif full_passes:
        paired = "by first observation"
    else:
        paired = "none"
        print(
            f"expert_check: Meta-World's goal order with {args.episodes} episodes (not a multiple of "
            f"{GOALS_PER_TASK}): the two paths evaluate different goals; only success rates are compared",
            file=sys.stderr,
        )
    obs_dtype = np.float32 if args.direct_obs == "float32" else np.float64
    progress = not args.no_progress

    direct_kwargs = {"align_goal_order": order == "ours", "obs_dtype": obs_dtype, "progress": progress}
    if args.jobs == 2:  # the direct path in a second process (spawn: no forked MuJoCo / OpenGL state)
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            future = pool.submit(run_direct, args.benchmark, args.seed, args.episodes, **direct_kwargs)
            ours = run_ours(args.benchmark, args.seed, args.episodes, progress=progress)
            direct = future.result()
    else:
        ours = run_ours(args.benchmark, args.seed, args.episodes, progress=progress)
        direct = run_direct(args.benchmark, args.seed, args.episodes, **direct_kwargs)
    cmp = compare(ours, direct, paired=paired, check_returns=obs_dtype is np.float32, tol=args.tol)

    print(
        f"benchmark {benchmark_label(args.benchmark)}, seed {args.seed}, {args.episodes} episodes per task; direct "
        f"path: goal order {order}, {args.direct_obs} observations; episodes paired {paired}"
    )
    print(f"ours: {ours.seconds:.0f} s, direct: {direct.seconds:.0f} s")
    print(format_table(names, ours, direct, cmp))
    returns = "checked" if cmp.returns_checked else "not checked"
    verdict = "AGREE" if cmp.ok.all() else "DISAGREE"
    checks = f"success rates within {args.tol:g}"
    if paired != "none":
        checks += f", same first observation per episode, returns {returns}"
    if cmp.returns_checked:
        checks += f" (rtol {RETURN_RTOL:g}, atol {RETURN_ATOL:g})"
    print(f"{verdict}: {checks}")
    return 0 if cmp.ok.all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
