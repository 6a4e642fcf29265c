"""Evaluation: deterministic policy, success if the task's success flag is set at any step of an episode."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from mtrl.envs.base import MultiTaskVecEnv

Policy = Callable[[np.ndarray], np.ndarray]


class EvalResult(NamedTuple):
    mean: float  # mean success rate over tasks
    per_task: np.ndarray  # [K] success rate of each task
    returns: np.ndarray  # [K, episodes] undiscounted episode returns


def evaluate(policy: Policy, env: MultiTaskVecEnv, episodes: int, seed: int | None = None) -> EvalResult:
    """Run every task until it has finished ``episodes`` episodes; episodes beyond that are ignored.

    :param policy: maps observations ``[K, obs]`` to actions ``[K, act]`` (pass the agent's deterministic act).
    :param env: the evaluation env (Meta-World evaluation envs end an episode at success and cycle goals).
    :param seed: reset seed, so successive evaluations see the same start states where the env allows it.
    """
    k = env.num_tasks
    obs = env.reset(seed)
    done_eps = np.zeros(k, dtype=np.int64)
    success = np.zeros((k, episodes), dtype=bool)
    returns = np.zeros((k, episodes))
    ep_success = np.zeros(k, dtype=bool)
    ep_return = np.zeros(k)
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
    per_task = success.mean(axis=1)
    return EvalResult(float(per_task.mean()), per_task, returns)
