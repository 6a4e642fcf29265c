"""Replay and TD-target integrity of the multi-task loop, pinned by behaviour.

- Through the real training loop (:func:`mtrl.train.train`) on an "ID env" whose observations encode
  ``(task, episode, t)``: every row of the checkpointed replay, before and after the ring wraps, holds the
  transition the env produced for that task and step: its observation, the action the env received (random
  warm-up actions included), its reward, the true successor (the final observation where an episode ended, never
  the reset observation), ``done`` 1.0 only at a true terminal (0.0 at a time-limit truncation), row ``k`` = task
  ``k``, in FIFO order.
- Sampling: every sampled row is one stored transition of its row's task with all its fields together, from the
  filled part of the ring only (the oldest rows are gone after wraparound), in both modes; stratified batches are
  task-major with ``batch_size // K`` rows per task; every stored row can be drawn.
- The TD target the agent regresses on: ``r + (1 - done) * gamma * (min(Q1', Q2')(s', a') - alpha * log pi(a'|s'))``
  with ``a'`` the actor's sample at ``next_obs`` with ``next_eps``, the target critic, and the pre-step temperature
  of the row's task; a terminal row's target is exactly ``r``, a truncated row bootstraps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from toyruns import TINY

import mtrl.train
from mtrl.agents.build import make_agent
from mtrl.agents.mtsac import MTSAC
from mtrl.buffers import MultiTaskReplay, ReplayBatch
from mtrl.config import from_flat
from mtrl.envs.base import StepResult
from mtrl.runs import checkpoint

K, OBS_DIM, ACT_DIM = 3, 3, 2
MAX_STEPS = 10
"""Time limit of every task (truncated=True)."""
TERMINAL_TASK, TERMINAL_STEP = 1, 6
"""Task ``TERMINAL_TASK`` reaches a true terminal state after ``TERMINAL_STEP`` steps of each episode."""
TOTAL, WARMUP, PER_TASK = 150, 50, 100
"""Loop steps, random warm-up steps, replay rows per task (the ring wraps after PER_TASK steps)."""


def id_obs(task: int, episode: int, t: int) -> np.ndarray:
    """The observation of task ``task`` at step ``t`` of its episode ``episode``."""
    return np.array([task, episode, t], dtype=np.float32)


def id_reward(task: int, episode: int, t: int) -> np.float32:
    """The reward of acting at step ``t`` of episode ``episode`` of task ``task`` (unique per triple)."""
    return np.float32(task + 0.01 * episode + 0.0001 * t)


class IdEnv:
    """K tasks whose every observation names (task, episode, t); records every action it receives.

    Task ``TERMINAL_TASK`` terminates after ``TERMINAL_STEP`` steps, every task is truncated after ``MAX_STEPS``;
    autoreset inside :meth:`step`, as the :class:`~mtrl.envs.base.MultiTaskVecEnv` protocol asks.
    """

    obs_dim = OBS_DIM
    act_dim = ACT_DIM
    max_episode_steps = MAX_STEPS

    def __init__(self) -> None:
        self.task_names = [f"id-{k}" for k in range(K)]
        self.episode = np.zeros(K, dtype=np.int64)
        self.t = np.zeros(K, dtype=np.int64)
        self.actions: list[np.ndarray] = []  # [K, act] per step, as received

    @property
    def num_tasks(self) -> int:
        return K

    def _observe(self) -> np.ndarray:
        return np.stack([id_obs(k, self.episode[k], self.t[k]) for k in range(K)])

    def reset(self, seed: int | None = None) -> np.ndarray:
        if self.actions:  # a reset after steps starts new episodes: ids never repeat
            self.episode += 1
        self.t[:] = 0
        return self._observe()

    def step(self, actions: np.ndarray) -> StepResult:
        assert np.shape(actions) == (K, ACT_DIM)
        self.actions.append(np.array(actions, copy=True))
        reward = np.array([id_reward(k, self.episode[k], self.t[k]) for k in range(K)], dtype=np.float32)
        self.t += 1
        next_obs = self._observe()
        terminated = (np.arange(K) == TERMINAL_TASK) & (self.t == TERMINAL_STEP)
        truncated = ~terminated & (self.t >= MAX_STEPS)
        ended = terminated | truncated
        self.episode[ended] += 1
        self.t[ended] = 0
        return StepResult(next_obs, self._observe(), reward, terminated, truncated, np.zeros(K, dtype=bool))

    def render(self) -> list[np.ndarray]:
        raise RuntimeError("IdEnv does not render")

    def close(self) -> None:
        pass


def expected_transitions(task: int, steps: int) -> Iterator[tuple[np.ndarray, np.float32, np.ndarray, float]]:
    """``(obs, reward, next_obs, done)`` of task ``task`` at loop steps ``0 .. steps-1``, from the env's rules."""
    episode, t = 0, 0
    for _ in range(steps):
        nxt = t + 1
        terminal = task == TERMINAL_TASK and nxt == TERMINAL_STEP
        yield id_obs(task, episode, t), id_reward(task, episode, t), id_obs(task, episode, nxt), float(terminal)
        episode, t = (episode + 1, 0) if terminal or nxt >= MAX_STEPS else (episode, nxt)


@pytest.fixture(scope="module")
def id_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IdEnv]:
    """A short training run on the ID env; returns its run directory and the training env."""
    built: list[IdEnv] = []

    def fake_make_env(cfg: Any, seed: int, *, evaluation: bool = False, **_: Any) -> IdEnv:
        env = IdEnv()
        if not evaluation:
            built.append(env)
        return env

    cfg = from_flat(
        {
            **TINY,
            "total_steps": TOTAL,
            "warmup_steps": WARMUP,
            "eval_interval": 0,
            "eval_episodes": 1,
            "checkpoint_interval": 100,
            "env.toy_tasks": K,
            "buffer.capacity": K * PER_TASK,
            "buffer.batch_size": 8 * K,
            "run_dir": str(tmp_path_factory.mktemp("runs")),
            "run_name": "ids",
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mtrl.train, "make_env", fake_make_env)
        run = mtrl.train.train(cfg, progress=False)
    assert len(built) == 1
    return run, built[0]


@pytest.mark.parametrize("step", [100, TOTAL])
def test_every_stored_row_is_the_true_transition_of_its_task_and_step(id_run: tuple[Path, IdEnv], step: int) -> None:
    """Each replay row of a checkpoint (before and after wraparound) is exactly what the env did at that step."""
    run, env = id_run
    assert len(env.actions) == TOTAL
    state_file = run / checkpoint.CHECKPOINTS / checkpoint.unit_name(step) / checkpoint.STATE
    replay = checkpoint.load_buffer(state_file, checkpoint.load(state_file)["step"])
    assert replay["size"] == PER_TASK and replay["obs"].shape == (K, PER_TASK, OBS_DIM)
    first = step - PER_TASK  # the oldest loop step still stored
    order = torch.roll(torch.arange(PER_TASK), -replay["pos"])  # ring rows, oldest first
    for k in range(K):
        expected = list(expected_transitions(k, step))[first:]
        for n, (row, (obs, rew, next_obs, done)) in enumerate(zip(order.tolist(), expected)):
            where = f"task {k}, step {first + n}, row {row}"
            assert torch.equal(replay["obs"][k, row], torch.from_numpy(obs)), where
            received = torch.as_tensor(env.actions[first + n][k], dtype=torch.float32)
            assert torch.equal(replay["act"][k, row], received), where
            assert replay["rew"][k, row].item() == rew, where
            assert torch.equal(replay["next_obs"][k, row], torch.from_numpy(next_obs)), where
            assert replay["done"][k, row].item() == done, where
    # the checks were not vacuous: the window holds terminals, truncations and (at step 100) warm-up actions
    last_t = replay["next_obs"][:, :, 2]
    assert replay["done"][TERMINAL_TASK].sum() > 0 and replay["done"].sum() == replay["done"][TERMINAL_TASK].sum()
    assert (last_t == MAX_STEPS).sum() > 0 and replay["done"][last_t == MAX_STEPS].eq(0).all()
    assert (first < WARMUP) == (step == 100)


def test_reward_extremes_follow_each_tasks_own_rewards(id_run: tuple[Path, IdEnv]) -> None:
    """The replay's per-task max |reward| (Q-target clipping bound) is over that task's rewards only."""
    run, _ = id_run
    replay = checkpoint.load_buffer(checkpoint.resolve(run), TOTAL)
    for k in range(K):
        rewards = [r for _, r, _, _ in expected_transitions(k, TOTAL)]
        assert replay["rew_absmax"][k].item() == max(abs(r) for r in rewards)
    assert torch.equal(replay["rew_stats"][0], torch.full((K,), float(TOTAL), dtype=torch.float64))


# ------------------------------------------------------------------------------------------------ sampling

SAMPLE_TASKS, SAMPLE_PER_TASK = 4, 10


def sample_transition(task: int, i: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, float]:
    """``(obs, act, rew, next_obs, done)`` of the ``i``-th transition (``i >= 1``) added for ``task``; every field
    is a different function of ``(task, i)`` and the zero row is none of them."""
    obs = np.array([task, i, 1.0], dtype=np.float32)
    act = np.array([0.01 * i - 0.5, 0.1 * task - 0.2], dtype=np.float32)
    rew = float(np.float32(10.0 * task + 0.5 * i))
    next_obs = np.array([task, i + 0.5, 2.0], dtype=np.float32)
    return obs, act, rew, next_obs, float(i % 3 == 0)


def filled_replay(kind: str, added: int, batch_size: int) -> MultiTaskReplay:
    buf = MultiTaskReplay(SAMPLE_TASKS, 3, 2, SAMPLE_TASKS * SAMPLE_PER_TASK, batch_size, kind=kind, seed=5)
    for i in range(1, added + 1):
        rows = [sample_transition(k, i) for k in range(SAMPLE_TASKS)]
        obs, act, rew, next_obs, done = (np.stack([np.asarray(r[j]) for r in rows]) for j in range(5))
        buf.add(obs, act, rew, next_obs, done)
    return buf


def check_rows(batch: ReplayBatch, stored: range) -> set[tuple[int, int]]:
    """Assert every row of ``batch`` is one stored transition of its row's task; return the ``(task, i)`` seen."""
    seen = set()
    for n in range(batch.obs.shape[0]):
        task, i = int(batch.task[n]), int(batch.obs[n, 1])
        assert i in stored, f"row {n}: transition {i} of task {task} is not stored (stored: {stored})"
        obs, act, rew, next_obs, done = sample_transition(task, i)
        assert torch.equal(batch.obs[n], torch.from_numpy(obs)), f"row {n}: obs of another task"
        assert torch.equal(batch.act[n], torch.from_numpy(act)), f"row {n}"
        assert batch.rew[n].item() == rew, f"row {n}"
        assert torch.equal(batch.next_obs[n], torch.from_numpy(next_obs)), f"row {n}"
        assert batch.done[n].item() == done, f"row {n}"
        seen.add((task, i))
    return seen


@pytest.mark.parametrize("kind", ["stratified", "uniform"])
@pytest.mark.parametrize("added", [6, 25], ids=["partly-filled", "wrapped"])
def test_sampled_rows_are_whole_stored_transitions_of_the_filled_part(kind: str, added: int) -> None:
    """Every sampled row is one stored transition (all fields together) of its task, from the filled part only;
    after wraparound the oldest are gone; every stored row is drawn eventually."""
    batch_size = 8 * SAMPLE_TASKS
    buf = filled_replay(kind, added, batch_size)
    stored = range(max(1, added - SAMPLE_PER_TASK + 1), added + 1)
    seen: set[tuple[int, int]] = set()
    for _ in range(60):
        batch = buf.sample()
        assert batch.obs.shape == (batch_size, 3) and batch.task.shape == (batch_size,)
        if kind == "stratified":
            assert torch.equal(batch.task, torch.arange(SAMPLE_TASKS).repeat_interleave(batch_size // SAMPLE_TASKS))
        seen |= check_rows(batch, stored)
    assert seen == {(k, i) for k in range(SAMPLE_TASKS) for i in stored}


def test_replay_of_the_training_loop_samples_only_its_stored_rows(id_run: tuple[Path, IdEnv]) -> None:
    """A loaded replay of the loop samples whole stored rows of the right task (stratified, task-major)."""
    run, _ = id_run
    replay = checkpoint.load_buffer(checkpoint.resolve(run), TOTAL)
    buf = MultiTaskReplay(K, OBS_DIM, ACT_DIM, K * PER_TASK, 8 * K, seed=0)
    buf.load_state_dict(replay)
    stored = {
        (k, tuple(replay["obs"][k, r].tolist())): tuple(
            replay[f][k, r].flatten().tolist() for f in ("act", "rew", "next_obs", "done")
        )
        for k in range(K)
        for r in range(PER_TASK)
    }
    for _ in range(10):
        b = buf.sample()
        assert torch.equal(b.task, torch.arange(K).repeat_interleave(8))
        for n in range(b.obs.shape[0]):
            key = (int(b.task[n]), tuple(b.obs[n].tolist()))
            assert key in stored and int(b.obs[n, 0]) == key[0]
            fields = tuple(x.flatten().tolist() for x in (b.act[n], b.rew[n], b.next_obs[n], b.done[n]))
            assert fields == stored[key]


# ------------------------------------------------------------------------------------------------ TD target


@pytest.mark.parametrize("kind", ["stratified", "uniform"])
def test_td_target_matches_a_hand_computation(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The critic's regression target is r + (1 - done) gamma (min Q'(s', a') - alpha_task log pi(a'|s')) with the
    target critic, a' from next_eps and the pre-step temperature of the row's task; exactly r at a terminal."""
    gamma = 0.9
    cfg = from_flat(
        {
            "env.toy_tasks": K,
            "agent.actor.hidden_dim": 16,
            "agent.critic.hidden_dim": 16,
            "agent.gamma": gamma,
            "agent.alpha_lr": 0.1,  # a post-step temperature would differ visibly
            "buffer.kind": kind,
            "buffer.batch_size": 2 * K,
            "device": "cpu",
            "seed": 3,
        }
    )
    agent = make_agent(cfg, OBS_DIM, ACT_DIM, K, torch.device("cpu"))
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        agent.alpha.log_alpha.copy_(torch.tensor([-1.0, 0.2, 0.9]))
        for p in agent.critic_target.parameters():  # the target critic differs from the critic
            p.add_(0.3 * torch.randn(p.shape, generator=gen))

    # (task, episode, t): a mid-episode and a truncated row of task 0, the terminal and a mid row of task 1, two of 2
    ids = [(0, 0, 3), (0, 1, MAX_STEPS - 1), (1, 2, TERMINAL_STEP - 1), (1, 0, 0), (2, 4, 2), (2, 1, 7)]
    if kind == "uniform":
        ids = [ids[i] for i in (4, 2, 0, 5, 1, 3)]  # not task-major
    task = torch.tensor([k for k, _, _ in ids])
    obs = torch.from_numpy(np.stack([id_obs(*i) for i in ids]))
    next_obs = torch.from_numpy(np.stack([id_obs(k, e, t + 1) for k, e, t in ids]))
    rew = torch.tensor([float(id_reward(*i)) for i in ids])
    done = torch.tensor([float(k == TERMINAL_TASK and t + 1 == TERMINAL_STEP) for k, _, t in ids])
    act = torch.rand(len(ids), ACT_DIM, generator=gen) * 2 - 1
    batch = ReplayBatch(obs, act, rew, next_obs, done, task, rew.abs())
    eps, next_eps = torch.randn(2, len(ids), ACT_DIM, generator=gen).unbind(0)

    with torch.no_grad():
        next_act, next_logp = agent.actor(next_obs, task, next_eps)
        tq1, tq2 = agent.critic_target(next_obs, next_act, task)
        alpha = agent.alpha.log_alpha[0].exp()[task]  # pre-step, per task ([0]: the one seed's temperatures)
        expected = rew + (1.0 - done) * gamma * (torch.minimum(tq1, tq2) - alpha * next_logp)

    seen: list[tuple[torch.Tensor, ...]] = []
    critic_rows = MTSAC._critic_rows

    def recording(self: MTSAC, params: dict[str, torch.Tensor], inputs: tuple) -> torch.Tensor:
        seen.append(tuple(x[0].detach().clone() for x in inputs[:4]))  # [S=1, N, ...] -> the one seed's rows
        return critic_rows(self, params, inputs)

    monkeypatch.setattr(MTSAC, "_critic_rows", recording)
    agent.update(batch, noise=(eps, next_eps))
    assert seen, "the critic loss was never computed"
    got_obs, got_act, target, got_task = seen[0]
    assert torch.equal(got_obs, obs) and torch.equal(got_act, act) and torch.equal(got_task, task)
    torch.testing.assert_close(target, expected, rtol=1e-6, atol=1e-6)
    terminal = done.bool()
    assert terminal.sum() == 1 and torch.equal(target[terminal], rew[terminal])
    assert (target[~terminal] - rew[~terminal]).abs().min() > 1e-2  # truncated and mid rows bootstrap
    assert not torch.equal(agent.alpha.log_alpha[0].detach(), torch.tensor([-1.0, 0.2, 0.9]))  # alpha did step
