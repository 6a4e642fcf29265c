"""Evaluation: deterministic policy, success if the task's success flag is set at any step of an episode.

:func:`evaluate` runs in the caller's process; :class:`AsyncEvaluator` runs it in a worker process on snapshots
of the actor, so that training does not wait for it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from mtrl.config import AgentConfig, EnvConfig
from mtrl.envs import make_env
from mtrl.envs.base import MultiTaskVecEnv
from mtrl.nets import Actor, stack_seeds

Policy = Callable[[np.ndarray], np.ndarray]


class EvalResult(NamedTuple):
    mean: float  # mean success rate over tasks
    per_task: np.ndarray  # [K] success rate of each task
    returns: np.ndarray  # [K, episodes] undiscounted episode returns


class CheckpointEval(NamedTuple):
    """What :func:`evaluate_checkpoint` measured."""

    task_names: list[str]
    episodes: int  # per task
    step: int  # of the checkpoint
    result: EvalResult


def evaluate_checkpoint(
    path: str, episodes: int | None, sim_seed: int | None, eval_goals: str | None, device: str
) -> CheckpointEval:
    """``mtrl evaluate``: a checkpoint's deterministic policy on its run's evaluation env.

    :param episodes: per task (None: the run's ``eval_episodes``).
    :param sim_seed: simulator seed (None: the run's evaluation seed); the goals are always the run's.
    :param eval_goals: ``train`` or ``fresh`` (None: the run's ``env.eval_goals``).
    """
    from dataclasses import replace

    from mtrl.envs import eval_seed
    from mtrl.runs.restore import load_policy

    cfg, act, task_names, step = load_policy(path, device)
    env_cfg = cfg.env if eval_goals is None else replace(cfg.env, eval_goals=eval_goals)  # type: ignore[arg-type]
    seed = eval_seed(cfg.seed) if sim_seed is None else sim_seed
    n = episodes or cfg.eval_episodes
    if env_cfg.benchmark == "toy" and env_cfg.eval_goals == "fresh":
        print(
            "mtrl evaluate: note: the toy env's observation holds no goal (only the position), so no policy can find "
            "goals it never trained on: expect 0 on fresh goals",
            file=sys.stderr,
        )
    with contextlib.closing(make_env(env_cfg, cfg.seed, evaluation=True, sim_seed=seed)) as env:
        result = evaluate(act, env, n, seed=seed)
    return CheckpointEval(task_names, n, step, result)


def evaluate(policy: Policy, env: MultiTaskVecEnv, episodes: int, seed: int | None = None) -> EvalResult:
    """Run every task until it has finished ``episodes`` episodes; episodes beyond that are ignored.

    :param policy: maps observations ``[K, obs]`` to actions ``[K, act]`` (pass the agent's deterministic act).
    :param env: the evaluation env of one run (Meta-World evaluation envs end an episode at success and cycle goals).
    :param seed: reset seed, so successive evaluations see the same start states where the env allows it.
    """
    return evaluate_seeds(policy, env, episodes, None if seed is None else [seed])[0]


def evaluate_seeds(
    policy: Policy, env: MultiTaskVecEnv, episodes: int, seeds: Sequence[int] | None = None
) -> list[EvalResult]:
    """:func:`evaluate` for the env of a seed group (``env.num_seeds`` runs, rows seed-major): one result per seed,
    each what evaluating that seed's policy on its solo env gives (rows never interact).

    :param policy: observations ``[rows, obs]`` to actions ``[rows, act]``.
    :param seeds: the reset seed of each seed's env.
    """
    num_seeds = getattr(env, "num_seeds", 1)
    k = env.num_tasks
    rows = num_seeds * k
    obs = env.reset(None if seeds is None else (seeds[0] if num_seeds == 1 else list(seeds)))
    done_eps = np.zeros(rows, dtype=np.int64)
    success = np.zeros((rows, episodes), dtype=bool)
    returns = np.zeros((rows, episodes))
    ep_success = np.zeros(rows, dtype=bool)
    ep_return = np.zeros(rows)
    while (done_eps < episodes).any():
        res = env.step(policy(obs))
        obs = res.obs
        ep_success |= res.success
        ep_return += res.reward
        ended = res.terminated | res.truncated
        for t in np.flatnonzero(ended & (done_eps < episodes)):
            success[t, done_eps[t]] = ep_success[t]
            returns[t, done_eps[t]] = ep_return[t]
            done_eps[t] += 1
        ep_success[ended] = False
        ep_return[ended] = 0.0
    per_task = success.mean(axis=1).reshape(num_seeds, k)
    returns = returns.reshape(num_seeds, k, episodes)
    return [EvalResult(float(per_task[s].mean()), per_task[s], returns[s]) for s in range(num_seeds)]


# ------------------------------------------------------------------------------------------- asynchronous evaluation


class EvalWorkerError(RuntimeError):
    """The evaluation worker process failed or died; the message is one line."""


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # unwinds through the worker's finally, which closes the env (and its worker processes)


def _worker(
    conn: Connection,
    env_cfg: EnvConfig,
    agent_cfg: AgentConfig,
    run_seed: int | list[int],
    episodes: int,
    seed: int | list[int],
) -> None:
    """Body of the evaluation process: build the env and a CPU actor once, then evaluate each snapshot received.

    Messages in: ``(step, actor weights as numpy arrays)``, or ``None`` to stop. Messages out: ``("ready",)`` once
    built, ``("result", step, EvalResult or one per seed)`` per snapshot, ``("error", one line)`` on failure (then it
    exits).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the trainer stops us
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    torch.set_num_threads(1)  # one [K, obs] batch per env step: threads would only compete with training
    env: MultiTaskVecEnv | None = None
    try:
        env = make_env(env_cfg, run_seed, evaluation=True)
        seeds = env.num_seeds
        one = Actor(
            env.obs_dim, env.act_dim, env.num_tasks, agent_cfg.conditioning, agent_cfg.actor, agent_cfg.log_std,
            agent_cfg.precision,
        )  # fmt: skip
        actor = stack_seeds([one] * seeds).eval()
        tasks = torch.arange(env.num_tasks).expand(seeds, env.num_tasks)

        @torch.no_grad()
        def policy(obs: np.ndarray) -> np.ndarray:  # as MTSAC.act(obs, deterministic=True)
            o = torch.as_tensor(obs, dtype=torch.float32).reshape(seeds, env.num_tasks, -1)
            return actor.mode(o, tasks).reshape(obs.shape[0], -1).numpy()

        reset_seeds = [seed] if isinstance(seed, int) else seed
        conn.send(("ready",))
        while (message := conn.recv()) is not None:
            step, weights = message
            actor.load_state_dict({name: torch.from_numpy(w) for name, w in weights.items()})
            results = evaluate_seeds(policy, env, episodes, reset_seeds)
            conn.send(("result", step, results[0] if isinstance(run_seed, int) else results))
    except Exception as exc:  # reported to the trainer, which raises EvalWorkerError; EOFError: the trainer is gone
        with contextlib.suppress(OSError):
            conn.send(("error", _one_line(exc)))
    finally:
        if env is not None:
            env.close()
        conn.close()


class AsyncEvaluator:
    """Evaluates snapshots of the actor in one long-lived worker process while training goes on.

    The worker is started with the ``spawn`` method (forking a process that runs torch and MuJoCo threads is
    unsafe). It builds its own evaluation env, ``make_env(env_cfg, run_seed, evaluation=True)``, and a CPU
    :class:`~mtrl.nets.Actor` once, then runs :func:`evaluate` with the deterministic action ``tanh(mu)`` for each
    snapshot, in the order submitted, one at a time; snapshots wait in this process until the worker is free. On a
    CPU device the results equal those of evaluating the agent in-process with the same seeds.

    Use as a context manager (or call :meth:`close`) so the worker never outlives the trainer. As with any use of
    ``spawn``, a script that starts one (e.g. through :func:`mtrl.train.train`) needs an
    ``if __name__ == "__main__":`` guard: the worker imports the script's main module.

    :param env_cfg: the run's env config.
    :param agent_cfg: the run's agent config (network conditioning and sizes of the actor).
    :param run_seed: the run's seed (picks the evaluation goals, see :func:`~mtrl.envs.make_env`), or the seeds of a
        seed group: then each snapshot holds every seed's actor (a seed axis) and its result is one
        :class:`EvalResult` per seed, each seed on its own goals.
    :param episodes: evaluation episodes per task.
    :param seed: reset seed passed to :func:`evaluate` (one per seed of a group).
    """

    def __init__(
        self,
        env_cfg: EnvConfig,
        agent_cfg: AgentConfig,
        run_seed: int | Sequence[int],
        episodes: int,
        seed: int | Sequence[int],
    ) -> None:
        run_seed = run_seed if isinstance(run_seed, int) else list(run_seed)
        seed = seed if isinstance(seed, int) else list(seed)
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        # not a daemon: daemonic processes may not start children, and an async eval env starts one per task
        self._process = ctx.Process(
            target=_worker, args=(child, env_cfg, agent_cfg, run_seed, episodes, seed), name="mtrl-eval"
        )
        self._process.start()
        child.close()  # the worker holds the only other end: its exit shows here as end-of-file
        self._waiting: deque[tuple[int, dict[str, np.ndarray]]] = deque()  # snapshots not yet sent
        self._ready = False  # the worker has built its env and actor
        self._in_flight: int | None = None  # step of the snapshot being evaluated
        self._closed = False

    @property
    def pending(self) -> int:
        """Snapshots submitted whose result has not been returned yet."""
        return len(self._waiting) + (self._in_flight is not None)

    def submit(self, step: int, actor_state: dict[str, Tensor]) -> None:
        """Queue a copy of the actor's weights (``actor.state_dict()`` with its seed axis, any device) for evaluation
        at ``step``."""
        weights = {name: t.detach().to("cpu", copy=True).numpy() for name, t in actor_state.items()}
        self._waiting.append((step, weights))
        self._dispatch()

    def poll(self) -> list[tuple[int, Any]]:
        """The ``(step, result)`` pairs (an :class:`EvalResult`, or one per seed of a group) finished since the last
        call, in step order; never blocks."""
        done = []
        while self._conn.poll():
            done += self._receive()
        self._dispatch()
        return done

    def wait(self) -> list[tuple[int, Any]]:
        """Block until every submitted snapshot is evaluated; the ``(step, result)`` pairs not returned yet."""
        done = []
        while self.pending:
            self._dispatch()
            done += self._receive()
        return done

    def close(self) -> None:
        """Stop the worker: let it exit when idle, terminate it when it is busy or does not exit; reap it."""
        if self._closed:
            return
        self._closed = True
        if self._ready and self._in_flight is None:
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def __enter__(self) -> AsyncEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dispatch(self) -> None:
        if self._ready and self._in_flight is None and self._waiting:
            try:
                self._conn.send(self._waiting[0])
            except OSError:
                raise EvalWorkerError(self._died()) from None
            self._in_flight = self._waiting.popleft()[0]

    def _receive(self) -> list[tuple[int, Any]]:
        """Read one message (blocking); the finished evaluation it carries, if any."""
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            raise EvalWorkerError(self._died()) from None
        if message[0] == "error":
            raise EvalWorkerError(f"evaluation worker failed: {message[1]}")
        if message[0] == "ready":
            self._ready = True
            return []
        _, step, result = message
        self._in_flight = None
        return [(step, result)]

    def _died(self) -> str:
        self._process.join(timeout=5)
        return (
            f"the evaluation worker process died (exit code {self._process.exitcode}) with {self.pending} "
            "evaluation(s) pending; eval_mode sync evaluates in the training process instead"
        )
