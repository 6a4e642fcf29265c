"""A vector env that steps many sub-envs in a few worker processes: each worker steps its share in turn.

gymnasium's ``AsyncVectorEnv`` starts one process per sub-env. A seed group on MT10 has ``N x 10`` sub-envs (50 for
five seeds), more than a machine has cores, and one process per sub-env then only adds context switches. Here
``workers`` processes each hold a gymnasium ``SyncVectorEnv`` over a contiguous share of the sub-envs (so the
stepping, autoreset and info layout are gymnasium's own), write their observations into one shared-memory array,
and return rewards, flags and infos through a pipe; this process merges the infos into the layout one
``SyncVectorEnv`` over all sub-envs would give. Same seeds, same sub-envs: the same observations as the sync vector
env, whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space


class EnvWorkerError(RuntimeError):
    """An env worker process failed or died; the message is one line."""


def _worker(
    conn: Connection, fns: list[Callable[[], gym.Env]], buffer: Any, dtype: str, shape: tuple[int, ...], start: int
) -> None:
    """Body of one worker: build its sub-envs once, then answer ``reset``, ``step``, ``call`` and ``close``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group; the trainer closes us
    env = None
    try:
        env = gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
        obs = np.frombuffer(buffer, dtype=dtype).reshape(shape)[start : start + len(fns)]
        conn.send(("ok", None))
        while True:
            command, payload = conn.recv()
            if command == "reset":
                seeds, options = payload
                observation, info = env.reset(seed=seeds, options=options)
                obs[:] = observation
                conn.send(("ok", info))
            elif command == "step":
                observation, reward, terminated, truncated, info = env.step(payload)
                obs[:] = observation
                conn.send(("ok", (reward, terminated, truncated, info)))
            elif command == "call":
                name, args, kwargs = payload
                conn.send(("ok", env.call(name, *args, **kwargs)))
            else:  # close
                break
    except (KeyboardInterrupt, EOFError):
        pass
    except Exception as exc:  # reported to the trainer, which raises EnvWorkerError
        with contextlib.suppress(OSError):
            conn.send(("error", " ".join(f"{type(exc).__name__}: {exc}".split())))
    finally:
        if env is not None:
            env.close()
        conn.close()


def merge_infos(parts: Sequence[tuple[slice, dict[str, Any]]], num_envs: int) -> dict[str, Any]:
    """The vector infos of all sub-envs from the vector infos of contiguous shares (``(rows, infos)`` each), in the
    layout of gymnasium's ``VectorEnv._add_info``: each key an array over all sub-envs with its ``_key`` mask, nested
    dicts (``final_info``) alike."""
    out: dict[str, Any] = {}
    for rows, infos in parts:
        _merge_into(out, rows, infos, num_envs)
    return out


def _merge_into(out: dict[str, Any], rows: slice, infos: dict[str, Any], num_envs: int) -> None:
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict):
            _merge_into(out.setdefault(key, {}), rows, value, num_envs)
        else:
            value = np.asarray(value)
            if key not in out:
                out[key] = (
                    np.full(num_envs, None, dtype=object)
                    if value.dtype == object
                    else np.zeros((num_envs, *value.shape[1:]), dtype=value.dtype)
                )
            out[key][rows] = value
        out.setdefault(f"_{key}", np.zeros(num_envs, dtype=bool))[rows] = infos[f"_{key}"]


class PooledVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` sub-envs stepped by ``workers`` processes (autoreset mode ``SAME_STEP``), see the module
    docstring.

    :param env_fns: one constructor per sub-env (picklable, as for ``AsyncVectorEnv``).
    :param workers: worker processes (at most one per sub-env).
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], workers: int) -> None:
        self.num_envs = len(env_fns)
        dummy = env_fns[0]()  # the spaces and metadata, as AsyncVectorEnv reads them
        self.single_observation_space = dummy.observation_space
        self.single_action_space = dummy.action_space
        self.metadata = {**dummy.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        dummy.close()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        shape = (self.num_envs, *(self.single_observation_space.shape or ()))
        dtype = np.dtype(self.single_observation_space.dtype)
        ctx = multiprocessing.get_context()
        buffer = ctx.RawArray("b", int(np.prod(shape)) * dtype.itemsize)
        self._obs = np.frombuffer(buffer, dtype=dtype).reshape(shape)
        shares = np.array_split(np.arange(self.num_envs), max(1, min(workers, self.num_envs)))
        self._rows = [slice(int(s[0]), int(s[-1]) + 1) for s in shares]
        self._conns: list[Connection] = []
        self._processes: list[Any] = []
        self.closed = False
        try:
            for rows in self._rows:
                parent, child = ctx.Pipe()
                process = ctx.Process(
                    target=_worker,
                    args=(child, list(env_fns[rows]), buffer, dtype.str, shape, rows.start),
                    name="mtrl-env",
                    daemon=True,
                )
                process.start()
                child.close()
                self._conns.append(parent)
                self._processes.append(process)
            self._gather()
        except BaseException:
            self.close()
            raise

    @property
    def workers(self) -> int:
        return len(self._processes)

    def _send(self, messages: Sequence[Any]) -> None:
        for conn, message in zip(self._conns, messages):
            try:
                conn.send(message)
            except OSError:
                raise EnvWorkerError(self._died()) from None

    def _gather(self) -> list[Any]:
        out, error = [], None
        for conn in self._conns:
            try:
                status, payload = conn.recv()
            except (EOFError, OSError):
                raise EnvWorkerError(self._died()) from None
            if status == "error":
                error = error or payload
            out.append(payload)
        if error is not None:
            raise EnvWorkerError(f"env worker failed: {error}")
        return out

    def _died(self) -> str:
        codes = []
        for p in self._processes:
            p.join(timeout=1)
            codes.append(p.exitcode)
        return f"an env worker process died (exit codes {codes})"

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """As ``SyncVectorEnv.reset``: ``seed`` an int (sub-env ``i`` gets ``seed + i``), one per sub-env, or None."""
        seeds: list[int | None]
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"seed: got {len(seeds)} seeds for {self.num_envs} sub-envs")
        self._send([("reset", (seeds[rows], options)) for rows in self._rows])
        infos = self._gather()
        return self._obs.copy(), merge_infos(list(zip(self._rows, infos)), self.num_envs)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions = np.asarray(actions)
        self._send([("step", actions[rows]) for rows in self._rows])
        results = self._gather()
        reward = np.concatenate([r[0] for r in results])
        terminated = np.concatenate([r[1] for r in results])
        truncated = np.concatenate([r[2] for r in results])
        infos = merge_infos([(rows, r[3]) for rows, r in zip(self._rows, results)], self.num_envs)
        return self._obs.copy(), reward, terminated, truncated, infos

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        self._send([("call", (name, args, kwargs))] * len(self._rows))
        return tuple(x for part in self._gather() for x in part)

    def close_extras(self, **kwargs: Any) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(("close", None))
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._conns, self._processes = [], []

    def close(self, **kwargs: Any) -> None:
        if self.closed:
            return
        self.close_extras()
        self.closed = True
