"""Evaluation counts an episode as a success when the task's success flag is set at ANY step of it.

Pinned with a scripted vector env (success flags that turn on and off again, on only at the first or the last
step, episodes of different lengths per task, ending by ``terminated`` or ``truncated``): :func:`mtrl.evaluate.evaluate`
returns exactly the expected per-task rates and returns, does not carry success into the next episode, and ignores
episodes beyond the requested count. With the real Meta-World wrapper: under the legacy protocol an evaluation
episode runs all ``max_episode_steps`` past success, and a policy that reaches the goal and then leaves it still
scores 1; under the official protocol the evaluation episode ends at success.
"""

from mtrl.envs.gl import ensure_gl_backend

ensure_gl_backend()  # before mujoco is imported

from collections.abc import Callable  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mtrl.config import EnvConfig  # noqa: E402
from mtrl.envs import StepResult, make_env  # noqa: E402
from mtrl.envs.base import MultiTaskVecEnv  # noqa: E402
from mtrl.evaluate import evaluate  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high:UserWarning")  # metaworld's move()


class Episode(NamedTuple):
    flags: str  # success flag of each step: "1" on, "0" off; its length is the episode's length
    reward: float  # reward of every step
    terminated: bool = False  # how the episode ends: terminated (as official evaluation at success) or truncated


EXTRA = Episode("1", 1000.0)
"""What every task plays after its script: a success worth 1000, which must never be counted."""


class ScriptedEnv:
    """A :class:`~mtrl.envs.base.MultiTaskVecEnv` whose task ``k`` plays the episodes of ``scripts[k]`` in order,
    then :data:`EXTRA` forever. Autoreset inside :meth:`step`; the observation is ``(k, episode, step)``."""

    obs_dim = 3
    act_dim = 2
    max_episode_steps = 100

    def __init__(self, scripts: list[list[Episode]]) -> None:
        self.scripts = scripts
        self.task_names = [f"task-{k}" for k in range(len(scripts))]
        self.steps = 0  # env steps since the last reset
        self._episode = np.zeros(self.num_tasks, dtype=np.int64)
        self._t = np.zeros(self.num_tasks, dtype=np.int64)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def _obs(self) -> np.ndarray:
        return np.stack([np.arange(self.num_tasks), self._episode, self._t], axis=1).astype(np.float32)

    def _current(self, k: int) -> Episode:
        episodes = self.scripts[k]
        return episodes[self._episode[k]] if self._episode[k] < len(episodes) else EXTRA

    def reset(self, seed: int | None = None) -> np.ndarray:
        self._episode[:] = 0
        self._t[:] = 0
        self.steps = 0
        return self._obs()

    def step(self, actions: np.ndarray) -> StepResult:
        assert actions.shape == (self.num_tasks, self.act_dim)
        k = self.num_tasks
        reward = np.zeros(k, dtype=np.float32)
        success, terminated, truncated = (np.zeros(k, dtype=bool) for _ in range(3))
        for i in range(k):
            episode = self._current(i)
            success[i] = episode.flags[self._t[i]] == "1"
            reward[i] = episode.reward
            self._t[i] += 1
            if self._t[i] == len(episode.flags):
                terminated[i], truncated[i] = episode.terminated, not episode.terminated
        next_obs = self._obs()
        ended = terminated | truncated
        self._episode[ended] += 1
        self._t[ended] = 0
        self.steps += 1
        return StepResult(next_obs, self._obs(), reward, terminated, truncated, success)

    def render(self) -> list[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _zeros(env: MultiTaskVecEnv) -> Callable[[np.ndarray], np.ndarray]:
    return lambda obs: np.zeros((env.num_tasks, env.act_dim))


SCRIPTS = [
    [Episode("000", 1.0), Episode("00000", 2.0), Episode("0", 3.0)],  # never on
    [Episode("1000", 1.0), Episode("0000", 2.0), Episode("10", 3.0)],  # on at the first step only
    [Episode("0001", 1.0, terminated=True), Episode("001", 2.0), Episode("0000", 3.0), Episode("1", 4.0)],  # last
    [Episode("00110", 1.0), Episode("0000", 2.0), Episode("0100000", 3.0)],  # on, then off before the end
    [Episode("1", 1.0, terminated=True), Episode("01", 2.0, terminated=True), Episode("0110", 3.0)],
]
EXPECTED_SUCCESS = np.array([[0, 0, 0], [1, 0, 1], [1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=bool)
EXPECTED_RETURNS = np.array([[3, 10, 3], [4, 8, 6], [4, 6, 12], [5, 8, 21], [1, 4, 12]], dtype=float)


@pytest.mark.parametrize("episodes", [1, 2, 3])
def test_scripted_flags_give_exact_rates_and_returns(episodes: int) -> None:
    """Per task: success at any step of each of the first ``episodes`` episodes, the returns, nothing more."""
    env = ScriptedEnv(SCRIPTS)
    result = evaluate(_zeros(env), env, episodes)
    expected = EXPECTED_SUCCESS[:, :episodes].mean(axis=1)
    np.testing.assert_array_equal(result.per_task, expected)
    assert result.mean == pytest.approx(expected.mean(), abs=1e-12)
    np.testing.assert_array_equal(result.returns, EXPECTED_RETURNS[:, :episodes])
    lengths = [sum(len(e.flags) for e in script[:episodes]) for script in SCRIPTS]
    assert env.steps == max(lengths)  # stops once every task has its episodes; the extra ones were not needed


def test_success_is_not_carried_into_the_next_episode() -> None:
    """An episode that ends with the flag on is followed by one where it never is: that one fails."""
    env = ScriptedEnv([[Episode("01", 1.0), Episode("000", 1.0), Episode("1", 1.0, True), Episode("00", 1.0)]])
    result = evaluate(_zeros(env), env, 4)
    np.testing.assert_array_equal(result.per_task, [0.5])
    np.testing.assert_array_equal(result.returns, [[2.0, 3.0, 1.0, 2.0]])


def test_episodes_beyond_the_requested_count_are_ignored() -> None:
    """A task that finishes early keeps stepping; its later successful, high-return episodes do not count."""
    fast = [Episode("0", 1.0)] * 2 + [Episode("1", 50.0)] * 20  # done after 2 steps, then successes
    slow = [Episode("0" * 9 + "1", 1.0), Episode("0" * 10, 1.0), Episode("1", 1.0)]
    env = ScriptedEnv([fast, slow])
    result = evaluate(_zeros(env), env, 2)
    np.testing.assert_array_equal(result.per_task, [0.0, 0.5])
    np.testing.assert_array_equal(result.returns, [[1.0, 1.0], [10.0, 10.0]])
    assert result.returns.shape == (2, 2) and env.steps == 20


@pytest.mark.parametrize("seed", range(5))
def test_random_flag_patterns_match_any_step_success(seed: int) -> None:
    """Random lengths, flags and endings per task and episode: rates and returns as counted by hand."""
    rng = np.random.default_rng(seed)
    episodes, k = 4, 6
    scripts = [
        [
            Episode(
                "".join(rng.choice(["0", "1"], p=[0.8, 0.2], size=int(rng.integers(1, 9)))),
                float(rng.integers(-3, 4)),
                bool(rng.random() < 0.3),
            )
            for _ in range(episodes + 2)
        ]
        for _ in range(k)
    ]
    env = ScriptedEnv(scripts)
    result = evaluate(_zeros(env), env, episodes)
    hits = np.array([[("1" in e.flags) for e in s[:episodes]] for s in scripts])
    np.testing.assert_array_equal(result.per_task, hits.mean(axis=1))
    np.testing.assert_array_equal(result.returns, [[e.reward * len(e.flags) for e in s[:episodes]] for s in scripts])


# ------------------------------------------------------------------------------------------------- real Meta-World

EPISODE_STEPS = 80
REACH_STEPS = 50  # the scripted reach policy succeeds after about 40 steps on this goal, then the hand leaves
AWAY = np.array([0.0, -1.0, 0.0, 0.0])  # hand towards the robot base: reach goals lie at y 0.8 to 0.9


class Recorder:
    """Passes a real env through, recording each step's success flag per task and episode, and how it ended."""

    def __init__(self, env: MultiTaskVecEnv) -> None:
        self.env = env
        self.task_names = env.task_names
        self.obs_dim, self.act_dim, self.max_episode_steps = env.obs_dim, env.act_dim, env.max_episode_steps
        self.t = np.zeros(env.num_tasks, dtype=np.int64)  # step of each task within its current episode
        self.flags: list[list[list[bool]]] = [[[]] for _ in range(env.num_tasks)]  # [task][episode][step]
        self.terminated: list[list[bool]] = [[] for _ in range(env.num_tasks)]  # [task][episode]

    @property
    def num_tasks(self) -> int:
        return self.env.num_tasks

    def reset(self, seed: int | None = None) -> np.ndarray:
        return self.env.reset(seed)

    def step(self, actions: np.ndarray) -> StepResult:
        res = self.env.step(actions)
        self.t += 1
        for k in range(self.num_tasks):
            self.flags[k][-1].append(bool(res.success[k]))
            if res.terminated[k] or res.truncated[k]:
                self.terminated[k].append(bool(res.terminated[k]))
                self.flags[k].append([])
                self.t[k] = 0
        return res

    def render(self) -> list[np.ndarray]:
        return self.env.render()

    def close(self) -> None:
        self.env.close()

    def episodes(self, k: int) -> list[list[bool]]:
        """Task ``k``'s finished episodes: the success flag of each step."""
        return self.flags[k][:-1]


def _reach_then_leave(rec: Recorder, reach_steps: int) -> Callable[[np.ndarray], np.ndarray]:
    """Meta-World's scripted reach-v3 policy for ``reach_steps`` steps of each episode, then :data:`AWAY`."""
    from metaworld.policies import SawyerReachV3Policy

    scripted = SawyerReachV3Policy()

    def policy(obs: np.ndarray) -> np.ndarray:
        return np.stack(
            [scripted.get_action(o) if rec.t[k] < reach_steps else AWAY for k, o in enumerate(obs.astype(np.float64))]
        )

    return policy


def _env(protocol: str) -> Recorder:
    cfg = EnvConfig(benchmark="MT1-reach-v3", protocol=protocol, max_episode_steps=EPISODE_STEPS)
    return Recorder(make_env(cfg, seed=2, evaluation=True))


def test_legacy_episode_runs_past_success_and_a_policy_that_leaves_still_succeeds() -> None:
    """Legacy: full-length episodes; success on in the middle and off at the end counts as a success."""
    rec = _env("legacy")
    try:
        result = evaluate(_reach_then_leave(rec, REACH_STEPS), rec, 2, seed=0)
        flags = rec.episodes(0)
        assert len(flags) >= 2 and rec.terminated[0][:2] == [False, False]
        for ep in flags[:2]:
            assert len(ep) == EPISODE_STEPS  # not ended at success
            assert True in ep[:REACH_STEPS] and not any(ep[-10:])  # reached, then left: off for the last 10 steps
        np.testing.assert_array_equal(result.per_task, [1.0])
        assert result.returns.shape == (1, 2) and np.isfinite(result.returns).all()
        never = evaluate(lambda obs: np.tile(AWAY, (rec.num_tasks, 1)), rec, 2, seed=0)  # control: never reaches
        np.testing.assert_array_equal(never.per_task, [0.0])
    finally:
        rec.close()


def test_official_evaluation_episode_ends_at_success() -> None:
    """Official: the evaluation episode terminates at the first step whose success flag is on."""
    rec = _env("official")
    try:
        result = evaluate(_reach_then_leave(rec, REACH_STEPS), rec, 2, seed=0)
        for ep, terminated in zip(rec.episodes(0)[:2], rec.terminated[0][:2]):
            assert terminated and ep[-1] and not any(ep[:-1])  # ended at the first success
            assert len(ep) <= REACH_STEPS < EPISODE_STEPS
        np.testing.assert_array_equal(result.per_task, [1.0])
    finally:
        rec.close()
