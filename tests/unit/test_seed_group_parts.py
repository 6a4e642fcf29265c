"""The parts of a seed group, each against its solo counterpart: replay, gradient clipping, the envs of several seeds
(toy and Meta-World, in-process and in a pool of worker processes), evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtrl.agents.mtsac import clip_per_seed
from mtrl.buffers import MultiTaskReplay
from mtrl.config import EnvConfig
from mtrl.envs import make_env
from mtrl.evaluate import evaluate, evaluate_seeds

SEEDS = [3, 5, 8]


def _transitions(rng: np.random.Generator, seeds: int, k: int) -> tuple[np.ndarray, ...]:
    return (
        rng.normal(size=(seeds, k, 3)), rng.uniform(-1, 1, (seeds, k, 2)), rng.normal(size=(seeds, k)),
        rng.normal(size=(seeds, k, 3)), rng.uniform(size=(seeds, k)) < 0.1,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["stratified", "uniform"])
def test_a_group_replay_stores_and_samples_what_the_solo_replays_do(kind: str) -> None:
    k = 3
    group = MultiTaskReplay(k, 3, 2, 60, 12, kind=kind, reward_norm=True, seed=SEEDS)
    solos = [MultiTaskReplay(k, 3, 2, 60, 12, kind=kind, reward_norm=True, seed=s) for s in SEEDS]
    rng = np.random.default_rng(0)
    for _ in range(33):  # past the 20 rows per task: wraparound
        rows = _transitions(rng, len(SEEDS), k)
        group.add(*rows)
        for i, solo in enumerate(solos):
            solo.add(*(x[i] for x in rows))
    for _ in range(3):
        batch = group.sample()
        assert batch.obs.shape == (len(SEEDS), 12, 3)
        for i, solo in enumerate(solos):
            for got, want in zip(batch, solo.sample()):
                assert torch.equal(got[i], want)
    for state, solo in zip(group.state_dicts(), solos):
        want = solo.state_dict()
        assert state.keys() == want.keys()
        for key in state:
            assert (
                torch.equal(state[key], want[key]) if isinstance(state[key], torch.Tensor) else state[key] == want[key]
            )
    again = MultiTaskReplay(k, 3, 2, 60, 12, kind=kind, reward_norm=True, seed=[0, 0, 0])
    again.load_state_dicts([s.state_dict() for s in solos])
    for got, want in zip(again.sample(), group.sample()):
        assert torch.equal(got, want)


def test_gradient_clipping_uses_each_seeds_own_norm() -> None:
    """Seed s's gradients are scaled as ``clip_grad_norm_`` scales them in its solo network; a seed under the bound
    keeps its gradient even when the group's norm is over it."""
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.01, 3.0, 40.0])  # under, over and far over the bound
    params = [torch.nn.Parameter(torch.zeros(3, *shape)) for shape in ((4, 5), (5,), (2, 4))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scales.view(-1, *[1] * (p.dim() - 1))
    solo = [[torch.nn.Parameter(torch.zeros(p.shape[1:])) for p in params] for _ in range(3)]
    for s, ps in enumerate(solo):
        for p, q in zip(ps, params):
            p.grad = q.grad[s].clone()
    norms = clip_per_seed(params, 1.0)
    for s, ps in enumerate(solo):
        expected = torch.nn.utils.clip_grad_norm_(ps, 1.0)
        torch.testing.assert_close(norms[s], expected)
        for p, q in zip(ps, params):
            torch.testing.assert_close(q.grad[s], p.grad)
    assert norms[0] < 1.0 and norms[2] > 1.0


def _rollout(env, steps: int, seeds) -> list[np.ndarray]:
    """Every field of a random-action rollout (seeded actions, the same for each seed's rows)."""
    rng = np.random.default_rng(0)
    out = [env.reset(seed=seeds)]
    for _ in range(steps):
        action = rng.uniform(-1, 1, (env.num_tasks, env.act_dim))
        res = env.step(np.tile(action, (getattr(env, "num_seeds", 1), 1)))
        out += [res.next_obs, res.obs, res.reward[:, None], res.terminated[:, None], res.truncated[:, None]]
        out += [res.success[:, None]]
    return out


def _seed_rows(rollout: list[np.ndarray], s: int, k: int) -> list[np.ndarray]:
    return [x[s * k : (s + 1) * k] for x in rollout]


@pytest.mark.parametrize(
    "cfg",
    [
        EnvConfig(benchmark="toy", max_episode_steps=7),
        EnvConfig(benchmark="MT1-push-v3", max_episode_steps=6, vector_strategy="sync"),
        EnvConfig(benchmark="reach-v3,window-open-v3", max_episode_steps=6, vector_strategy="async", num_workers=2),
        EnvConfig(benchmark="reach-v3,window-open-v3", protocol="legacy", max_episode_steps=6, vector_strategy="async"),
    ],
    ids=["toy", "MT1 sync", "MT2 pooled in 2 workers", "MT2 legacy pooled"],
)
@pytest.mark.parametrize("evaluation", [False, True], ids=["train", "eval"])
def test_the_env_of_a_group_is_each_seeds_solo_env(cfg: EnvConfig, evaluation: bool) -> None:
    """Rows s*K..(s+1)*K of a group's env (training or evaluation: goals from each seed), stepped across episode
    ends, equal the solo env of seed s step for step, in-process or in worker processes that step several sub-envs
    each."""
    group = make_env(cfg, SEEDS[:2], evaluation=evaluation)
    got = _rollout(group, 14, [11, 12])
    group.close()
    for s, seed in enumerate(SEEDS[:2]):
        solo = make_env(EnvConfig(**{**cfg.__dict__, "vector_strategy": "sync"}), seed, evaluation=evaluation)
        want = _rollout(solo, 14, 11 + s)
        solo.close()
        for a, b in zip(_seed_rows(got, s, group.num_tasks), want):
            np.testing.assert_array_equal(a, b)
    assert any(x.any() for x in got[5::6])  # truncations happened (episode ends were crossed)


def test_the_pooled_env_gives_the_infos_of_one_sync_vector_env() -> None:
    """The pool merges its workers' infos into exactly the layout of one SyncVectorEnv over all sub-envs."""
    from mtrl.envs.metaworld import make_metaworld

    cfg = EnvConfig(benchmark="reach-v3,push-v3,window-open-v3", max_episode_steps=3)
    pooled = make_metaworld(EnvConfig(**{**cfg.__dict__, "vector_strategy": "async", "num_workers": 2}), [1, 2])
    sync = make_metaworld(EnvConfig(**{**cfg.__dict__, "vector_strategy": "sync"}), [1, 2])
    assert pooled.vector_env.workers == 2 and pooled.vector_env.num_envs == 6
    for env in (pooled, sync):
        env.reset([4, 9])
    rng = np.random.default_rng(1)
    for _ in range(4):  # step 3 ends every episode: final_obs and final_info
        action = rng.uniform(-1, 1, (6, 4)).astype(np.float32)
        a, b = pooled.vector_env.step(action), sync.vector_env.step(action)
        for x, y in zip(a[:4], b[:4]):
            np.testing.assert_array_equal(x, y)
        _same_infos(a[4], b[4])
    pooled.close()
    sync.close()


def _same_infos(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _same_infos(a[key], b[key])
        elif a[key].dtype == object:
            for x, y in zip(a[key], b[key]):
                assert (x is None and y is None) or np.array_equal(x, y), key
        else:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_dying_env_worker_gives_one_line() -> None:
    from mtrl.envs.metaworld import make_metaworld
    from mtrl.envs.pool import EnvWorkerError

    env = make_metaworld(EnvConfig(benchmark="reach-v3,push-v3", vector_strategy="async", num_workers=2), [1])
    env.reset(1)
    env.vector_env._processes[1].kill()
    with pytest.raises(EnvWorkerError, match=r"^an env worker process died \(exit codes \[None, -9\]\)$"):
        env.step(np.zeros((2, 4)))
    env.close()


def test_a_group_evaluation_is_each_seeds_solo_evaluation() -> None:
    cfg = EnvConfig(benchmark="toy", max_episode_steps=9)
    weights = [np.array([[0.7, 0.2], [-0.4, 0.9], [0.1, -0.8], [0.5, 0.5]]) * s for s in (0.3, 1.0, 2.0)]

    def policy_of(w: np.ndarray):
        return lambda obs: np.tanh(w - obs)

    group = make_env(cfg, SEEDS, evaluation=True)
    results = evaluate_seeds(lambda o: np.concatenate([policy_of(w)(x) for w, x in zip(weights, np.split(o, 3))]),
                             group, 3, [s + 10_000 for s in SEEDS])  # fmt: skip
    for w, seed, result in zip(weights, SEEDS, results):
        solo = evaluate(policy_of(w), make_env(cfg, seed, evaluation=True), 3, seed=seed + 10_000)
        assert result.mean == solo.mean
        np.testing.assert_array_equal(result.per_task, solo.per_task)
        np.testing.assert_array_equal(result.returns, solo.returns)
    assert len({r.mean for r in results}) > 1 or len({tuple(r.returns.ravel()) for r in results}) > 1


def test_an_env_of_several_seeds_needs_one_reset_seed_per_seed() -> None:
    env = make_env(EnvConfig(benchmark="toy"), SEEDS)
    with pytest.raises(ValueError, match="seed: got 1 seeds for an env of 3"):
        env.reset(seed=[1])
