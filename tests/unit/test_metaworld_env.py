"""Meta-World vector env: shapes, both protocols' goal handling, episode length, determinism, rendering."""

from mtrl.envs.gl import ensure_gl_backend

ensure_gl_backend()  # before mujoco is imported

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mtrl.config import EnvConfig  # noqa: E402
from mtrl.envs import make_env  # noqa: E402
from mtrl.envs.gl import check_gl_backend  # noqa: E402
from mtrl.envs.metaworld import env_workers, make_metaworld, task_names, vector_strategy  # noqa: E402
from mtrl.envs.pool import PooledVectorEnv  # noqa: E402

GOAL = slice(36, 39)  # goal position in the 39-dim observation


def _goal(obs: np.ndarray) -> tuple[float, ...]:
    return tuple(np.round(obs[GOAL], 6))


def _rollout(env, steps: int, reset_seed: int | None = None) -> np.ndarray:
    """Reset, then ``steps`` random-action steps; returns every obs and next_obs stacked."""
    rng = np.random.default_rng(0)
    out = [env.reset(seed=reset_seed)]
    for _ in range(steps):
        result = env.step(rng.uniform(-1, 1, (env.num_tasks, env.act_dim)))
        out += [result.next_obs, result.obs]
    return np.stack(out)


def _episode_goals(env, episodes: int) -> list[tuple[float, ...]]:
    """Goal of task 0 in each of ``episodes`` episodes (zero actions until the episode ends)."""
    goals = [_goal(env.reset()[0])]
    while len(goals) < episodes:
        result = env.step(np.zeros((env.num_tasks, env.act_dim)))
        if result.terminated[0] or result.truncated[0]:
            goals.append(_goal(result.obs[0]))
    return goals


@pytest.fixture(scope="module")
def mt10():
    env = make_env(EnvConfig(benchmark="MT10"), seed=1)
    yield env
    env.close()


def test_mt10_builds_ten_tasks_with_39_dim_obs(mt10):
    assert mt10.num_tasks == 10
    assert mt10.task_names == task_names("MT10")
    assert mt10.task_names[:3] == ["reach-v3", "push-v3", "pick-place-v3"]
    assert (mt10.obs_dim, mt10.act_dim, mt10.max_episode_steps) == (39, 4, 500)
    obs = mt10.reset()
    assert obs.shape == (10, 39) and obs.dtype == np.float32


def test_mt10_step_shapes(mt10):
    mt10.reset()
    result = mt10.step(np.random.default_rng(0).uniform(-1, 1, (10, 4)))
    assert result.next_obs.shape == result.obs.shape == (10, 39)
    assert result.next_obs.dtype == result.obs.dtype == np.float32
    assert result.reward.shape == (10,) and result.reward.dtype == np.float32 and np.isfinite(result.reward).all()
    for flags in (result.terminated, result.truncated, result.success):
        assert flags.shape == (10,) and flags.dtype == bool
    with pytest.raises(ValueError, match="expected shape"):
        mt10.step(np.zeros((10, 3)))


def test_mt10_one_hot_appends_task_id():
    env = make_metaworld(EnvConfig(benchmark="MT10"), seed=1, evaluation=True, use_one_hot=True)
    obs = env.reset()
    assert env.obs_dim == 49 and obs.shape == (10, 49)
    np.testing.assert_array_equal(obs[:, 39:], np.eye(10, dtype=np.float32))
    env.close()


def test_task_names_and_unknown_task():
    assert len(task_names("MT50")) == 50 and set(task_names("MT10")) <= set(task_names("MT50"))
    assert task_names("MT1-reach-v3") == ["reach-v3"]
    with pytest.raises(ValueError) as err:
        make_metaworld(EnvConfig(benchmark="MT1-foo-v3"), seed=0)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("env.benchmark: unknown Meta-World task 'foo-v3'; valid: reach-v3, push-v3")
    assert "(50 tasks)" in message
    with pytest.raises(ValueError, match="did you mean 'reach-v3'"):
        task_names("MT1-rech-v3")
    with pytest.raises(ValueError, match="unknown Meta-World benchmark"):
        task_names("MT20")


def test_mt1_has_one_task():
    env = make_metaworld(EnvConfig(benchmark="MT1-reach-v3"), seed=0)
    assert env.task_names == ["reach-v3"] and env.num_tasks == 1
    assert env.reset().shape == (1, 39)
    result = env.step(np.zeros((1, 4)))
    assert result.obs.shape == (1, 39) and result.reward.shape == (1,)
    env.close()


def test_step_before_reset_is_an_error():
    env = make_metaworld(EnvConfig(benchmark="MT1-reach-v3"), seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros((1, 4)))
    env.close()


def test_legacy_fixed_goal_per_seed():
    cfg = EnvConfig(benchmark="MT1-push-v3", protocol="legacy", max_episode_steps=3)
    train = make_metaworld(cfg, seed=3)
    assert make_metaworld(EnvConfig(benchmark="MT1-push-v3", protocol="legacy"), seed=3).max_episode_steps == 150
    goals = _episode_goals(train, 4)
    assert len(set(goals)) == 1  # the same goal in every episode
    again = _episode_goals(make_metaworld(cfg, seed=3), 2)
    evaluation = _episode_goals(make_metaworld(cfg, seed=3, evaluation=True), 2)
    assert set(again) == set(evaluation) == set(goals)  # same seed: same goal, in training and evaluation envs
    others = {_episode_goals(make_metaworld(cfg, seed=s), 1)[0] for s in (4, 5)}
    assert goals[0] not in others  # another seed picks another goal (equal with prob. ~1/50 per seed)


def test_official_training_goal_changes_between_episodes():
    env = make_metaworld(EnvConfig(benchmark="MT1-push-v3", max_episode_steps=2), seed=0)
    assert make_metaworld(EnvConfig(benchmark="MT1-push-v3"), seed=0).max_episode_steps == 500
    assert len(set(_episode_goals(env, 6))) >= 2


def test_official_evaluation_cycles_through_all_goals():
    env = make_metaworld(EnvConfig(benchmark="MT1-push-v3", max_episode_steps=1), seed=0, evaluation=True)
    first = _episode_goals(env, 50)
    assert len(set(first)) == 50  # one episode per goal
    second = _episode_goals(env, 50)  # reset() starts a new pass
    assert set(second) == set(first)


def test_episode_length_and_final_observation():
    env = make_metaworld(EnvConfig(benchmark="MT1-reach-v3", max_episode_steps=5), seed=0)
    assert env.max_episode_steps == 5
    obs = env.reset()
    for t in range(1, 11):
        result = env.step(np.zeros((1, 4)))
        assert bool(result.truncated[0]) == (t % 5 == 0) and not result.terminated[0]
        if t % 5 == 0:  # next_obs is the final state (same goal as before), obs the new episode's first
            assert _goal(result.next_obs[0]) == _goal(obs[0]) != _goal(result.obs[0])
        else:
            np.testing.assert_array_equal(result.next_obs, result.obs)
        obs = result.obs


def test_episodes_longer_than_metaworld_horizon():
    env = make_metaworld(EnvConfig(benchmark="MT1-reach-v3", max_episode_steps=502), seed=0)
    env.reset()
    truncated = [bool(env.step(np.zeros((1, 4))).truncated[0]) for _ in range(502)]
    assert truncated == [False] * 501 + [True]


def test_official_evaluation_terminates_on_success_and_reports_it():
    def reach(obs: np.ndarray) -> np.ndarray:  # scripted: move the hand to the goal
        actions = np.zeros((obs.shape[0], 4))
        actions[:, :3] = np.clip(10 * (obs[:, GOAL] - obs[:, :3]), -1, 1)
        return actions

    cases = (("official", True, True), ("official", False, False), ("legacy", True, False))  # (protocol, eval, ends)
    for protocol, evaluation, terminates in cases:
        cfg = EnvConfig(benchmark="MT1-reach-v3", protocol=protocol, max_episode_steps=100)
        env = make_metaworld(cfg, seed=0, evaluation=evaluation)
        obs, ever = env.reset(), False
        for _ in range(100):
            result = env.step(reach(obs))
            ever |= bool(result.success[0])
            if result.terminated[0]:
                assert result.success[0]  # the success flag of the final step comes through final_info
                break
            obs = result.obs
        assert ever and bool(result.terminated[0]) == terminates
        env.close()


def test_same_seed_same_observations():
    cfg = EnvConfig(benchmark="MT1-push-v3", max_episode_steps=7)
    np.random.seed(123)  # Meta-World's global RNG must not matter
    first = _rollout(make_metaworld(cfg, seed=5), 30)
    np.random.seed(999)
    second = _rollout(make_metaworld(cfg, seed=5), 30)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, _rollout(make_metaworld(cfg, seed=6), 30))

    env = make_metaworld(cfg, seed=5)  # reset(seed) restores a used env
    _rollout(env, 12)
    np.testing.assert_array_equal(_rollout(env, 30, reset_seed=5), first)


def test_mt10_same_seed_same_observations(mt10):
    fresh = make_env(EnvConfig(benchmark="MT10"), seed=1)
    np.testing.assert_array_equal(_rollout(fresh, 5), _rollout(mt10, 5, reset_seed=1))  # mt10 was used before
    fresh.close()


def test_async_matches_sync():
    sync = make_metaworld(EnvConfig(benchmark="MT1-push-v3", max_episode_steps=4, vector_strategy="sync"), seed=2)
    asynchronous = make_metaworld(EnvConfig(benchmark="MT1-push-v3", max_episode_steps=4, vector_strategy="async"), 2)
    assert isinstance(sync.vector_env, gym.vector.SyncVectorEnv)
    assert isinstance(asynchronous.vector_env, PooledVectorEnv)
    np.testing.assert_array_equal(_rollout(sync, 10), _rollout(asynchronous, 10))
    asynchronous.close()
    with pytest.raises(ValueError, match="sync"):
        make_metaworld(EnvConfig(benchmark="MT1-reach-v3", vector_strategy="async"), 0, render=True)


def test_auto_vector_strategy_is_async_where_it_gets_two_workers(monkeypatch):
    """auto: sub-envs in worker processes when that gives at least two (one core left to the trainer), else sync."""
    mt10, mt1 = EnvConfig(benchmark="MT10"), EnvConfig(benchmark="MT1-reach-v3")
    monkeypatch.setattr("mtrl.envs.metaworld.cpu_count", lambda: 3)
    assert (vector_strategy(mt10), vector_strategy(mt1)) == ("async", "sync")  # MT1 alone: one sub-env
    assert vector_strategy(mt1, num_seeds=2) == "async"  # a seed group of two: two sub-envs
    assert vector_strategy(mt10, render=True) == "sync"  # frames need the sync vector env
    assert vector_strategy(EnvConfig(benchmark="MT50", vector_strategy="sync")) == "sync"
    assert env_workers(mt10, 10) == 2 and env_workers(EnvConfig(benchmark="MT10", num_workers=7), 10) == 7
    assert env_workers(EnvConfig(benchmark="MT10", num_workers=70), 10) == 10  # never more than the sub-envs
    monkeypatch.setattr("mtrl.envs.metaworld.cpu_count", lambda: 2)
    assert (vector_strategy(mt10), vector_strategy(mt1, num_seeds=5)) == ("sync", "sync")
    assert vector_strategy(EnvConfig(benchmark="MT10", vector_strategy="async")) == "async"
    assert isinstance(make_metaworld(mt1, seed=0).vector_env, gym.vector.SyncVectorEnv)


def test_render_frames():
    problem = check_gl_backend()
    if problem is not None:
        pytest.skip(f"no offscreen GL backend: {problem}")
    env = make_metaworld(EnvConfig(benchmark="MT10"), seed=1, evaluation=True, render=True)
    env.reset()
    frames = env.render()
    assert len(frames) == 10
    for frame in frames:  # every task's own scene (one GL context per task), none blank
        assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8 and frame.std() > 10
    assert not np.array_equal(frames[0], frames[1])
    np.testing.assert_array_equal(env.render(tasks=[3])[0], frames[3])
    env.close()
    with pytest.raises(RuntimeError, match="render=False"):
        make_metaworld(EnvConfig(benchmark="MT1-reach-v3"), seed=0).render()


@pytest.mark.slow
def test_mt50_builds_fifty_tasks():  # ~80 s: building MT50's goal variations alone takes ~50 s
    env = make_env(EnvConfig(benchmark="MT50"), seed=1)
    assert env.num_tasks == 50 and env.task_names == task_names("MT50")
    assert env.reset().shape == (50, 39)
    assert env.step(np.zeros((50, 4))).obs.shape == (50, 39)
    env.close()
