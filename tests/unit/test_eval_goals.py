"""Evaluation scores a policy on the goals it trained on (``env.eval_goals: train``), or on goals it never saw
(``fresh``), checked by behaviour: the goal positions the envs show in their observations."""

from mtrl.envs.gl import ensure_gl_backend

ensure_gl_backend()  # before mujoco is imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mtrl.config import EnvConfig  # noqa: E402
from mtrl.envs import ToyReachEnv, make_env  # noqa: E402
from mtrl.evaluate import evaluate  # noqa: E402

GOAL = slice(36, 39)  # goal position in Meta-World's 39-dim observation


def _goal(obs: np.ndarray) -> tuple[float, ...]:
    """The goal position of one observation, float32 as the vector env returns it, rounded."""
    return tuple(np.round(np.asarray(obs[GOAL], dtype=np.float32).astype(np.float64), 4).tolist())


def _goal_set(env) -> list[set[tuple[float, ...]]]:
    """Per task, the goal positions of the goal variations a (training) env samples from, as its observations show
    them: each of the env's task variations set and reset once."""
    out = []
    for sub in env.vector_env.envs:
        goals = set()
        for task in sub.get_wrapper_attr("tasks"):
            sub.unwrapped.set_task(task)
            obs, _ = sub.unwrapped.reset()
            goals.add(_goal(obs))
        out.append(goals)
    return out


def _goals_seen(env, episodes: int) -> list[set[tuple[float, ...]]]:
    """Per task, the goal positions shown at the start of ``episodes`` episodes (1-step episodes, zero actions)."""
    seen: list[set[tuple[float, ...]]] = [set() for _ in range(env.num_tasks)]
    obs = env.reset()
    for _ in range(episodes):
        for k in range(env.num_tasks):
            seen[k].add(_goal(obs[k]))
        obs = env.step(np.zeros((env.num_tasks, env.act_dim))).obs
    return seen


@pytest.mark.parametrize("tasks", ["MT1-reach-v3", "push-v3,window-open-v3"])
def test_official_evaluation_shows_every_training_goal_and_nothing_else(tasks):
    cfg = EnvConfig(benchmark=tasks, protocol="official", max_episode_steps=1)
    trained = _goal_set(make_env(cfg, seed=3))
    assert all(len(goals) == 50 for goals in trained)
    drawn = _goals_seen(make_env(cfg, seed=3), 30)  # training episodes draw from that set
    assert all(d <= t and len(d) > 10 for d, t in zip(drawn, trained))
    eval_env = make_env(cfg, seed=3, evaluation=True)
    shown = _goals_seen(eval_env, 50)  # one pass over the goals
    for k in range(eval_env.num_tasks):
        assert shown[k] == trained[k]  # every training goal once, and only training goals
    fresh = _goals_seen(make_env(EnvConfig(**{**cfg.__dict__, "eval_goals": "fresh"}), seed=3, evaluation=True), 50)
    for k in range(eval_env.num_tasks):
        assert len(fresh[k]) == 50 and not fresh[k] & trained[k]
    other_seed = _goals_seen(make_env(cfg, seed=4, evaluation=True), 5)
    assert not other_seed[0] & trained[0]  # the goal set is the run seed's


def test_legacy_evaluation_uses_the_fixed_training_goal():
    cfg = EnvConfig(benchmark="reach-v3,push-v3,drawer-open-v3", protocol="legacy", max_episode_steps=1)
    trained = _goals_seen(make_env(cfg, seed=7), 5)
    assert all(len(goals) == 1 for goals in trained)  # one fixed goal per task
    shown = _goals_seen(make_env(cfg, seed=7, evaluation=True), 5)
    assert shown == trained
    fresh = _goals_seen(make_env(EnvConfig(**{**cfg.__dict__, "eval_goals": "fresh"}), seed=7, evaluation=True), 5)
    assert all(not f & t for f, t in zip(fresh, trained))


def test_evaluation_env_has_its_own_simulator_seed():
    cfg = EnvConfig(benchmark="MT1-reach-v3", max_episode_steps=1)

    def order(env) -> list[tuple[float, ...]]:
        obs = [env.reset()]
        obs += [env.step(np.zeros((1, 4))).obs for _ in range(9)]
        return [_goal(o[0]) for o in obs]

    default, same, other = (make_env(cfg, 1, evaluation=True, sim_seed=s) for s in (None, 10_001, 99))
    assert order(default) == order(same)  # the default simulator seed is eval_seed(1) = 10001
    assert order(other) != order(same)  # another simulator seed: another goal order over the same goals
    assert set(order(other)) <= _goal_set(make_env(cfg, seed=1))[0]


def test_toy_fresh_goals_are_new_goals():
    train_goals = ToyReachEnv(4).goals
    cfg = EnvConfig(benchmark="toy", eval_goals="fresh")
    fresh = make_env(cfg, seed=0, evaluation=True)
    assert isinstance(fresh, ToyReachEnv)
    assert np.linalg.norm(fresh.goals[:, None] - train_goals[None], axis=-1).min() > 0.5
    assert np.array_equal(make_env(EnvConfig(benchmark="toy"), seed=0, evaluation=True).goals, train_goals)

    def to_training_goals(obs: np.ndarray) -> np.ndarray:  # a perfect policy for the training goals
        return np.clip((train_goals - obs) / 0.1, -1, 1)

    assert evaluate(to_training_goals, make_env(EnvConfig(benchmark="toy"), 0, evaluation=True), 3).mean == 1.0
    assert evaluate(to_training_goals, fresh, 3).mean == 0.0
