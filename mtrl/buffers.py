"""Replay: one ring per task with a leading task axis, on the training device; for one run or a seed group.

Every vector-env step adds exactly one transition per task, so all tasks fill in lockstep and a per-task ring of
``capacity // K`` is the same FIFO as mtrl's one shared buffer of ``capacity``. Two sampling modes:

- ``stratified`` (default): ``batch_size // K`` rows of each task, returned task-major (rows ``k*m:(k+1)*m`` are
  task ``k``), which is what the vmapped per-task gradients need;
- ``uniform`` (mtrl legacy): ``batch_size`` rows uniformly over all stored transitions; per-task counts vary.

A **seed group** (``seed=[s1, s2, ...]``) keeps the replays of several runs in one set of tensors with a leading seed
axis ``[S, K, C, ...]``: each seed has its own rows, reward statistics and sampling generator (seeded with its seed),
so seed ``s`` of a group stores and draws exactly what a solo run with seed ``s`` stores and draws. Its
:meth:`MultiTaskReplay.state_dicts` are in the solo format, one per seed. A buffer built with one ``int`` seed is a
solo run's: it takes ``[K, ...]`` transitions and returns flat ``[N, ...]`` batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from mtrl.utils import set_generator_state


class ReplayBatch(NamedTuple):
    """A sampled batch: fields ``[N, ...]`` (solo) or ``[S, N, ...]`` (a seed group)."""

    obs: Tensor  # [N, obs]
    act: Tensor  # [N, act]
    rew: Tensor  # [N] (divided by the task's reward std if reward_norm)
    next_obs: Tensor  # [N, obs]
    done: Tensor  # [N] 1.0 where terminated (not truncated)
    task: Tensor  # [N] long
    rew_absmax: Tensor  # [N] largest |reward| seen so far for the row's task (same scale as rew), for Q clipping


FIELDS = ("obs", "act", "rew", "next_obs", "done")


def replay_bytes(num_seeds: int, num_tasks: int, capacity: int, obs_dim: int, act_dim: int) -> int:
    """Bytes the rings of :class:`MultiTaskReplay` take (float32), without building it."""
    return 4 * num_seeds * num_tasks * (capacity // num_tasks) * (2 * obs_dim + act_dim + 2)


class MultiTaskReplay:
    """Per-task rings ``[S, K, C, ...]`` with optional per-task reward normalization (divide by running std)."""

    def __init__(
        self,
        num_tasks: int,
        obs_dim: int,
        act_dim: int,
        capacity: int,
        batch_size: int,
        *,
        kind: str = "stratified",
        reward_norm: bool = False,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
    ) -> None:
        if capacity < num_tasks:
            raise ValueError(f"buffer.capacity: got {capacity}, expected at least one slot per task ({num_tasks})")
        if kind == "stratified" and batch_size % num_tasks:
            raise ValueError(
                f"buffer.batch_size: got {batch_size}, expected a multiple of the number of tasks ({num_tasks}) "
                "for stratified sampling"
            )
        self.flat = isinstance(seed, int)
        seeds = [seed] if isinstance(seed, int) else list(seed)
        self.num_tasks, self.kind, self.reward_norm, self.batch_size = num_tasks, kind, reward_norm, batch_size
        self.num_seeds = len(seeds)
        self.device = torch.device(device)
        self.per_task = capacity // num_tasks
        s, k, c = self.num_seeds, num_tasks, self.per_task
        self.obs = torch.zeros(s, k, c, obs_dim, device=self.device)
        self.act = torch.zeros(s, k, c, act_dim, device=self.device)
        self.rew = torch.zeros(s, k, c, device=self.device)
        self.next_obs = torch.zeros(s, k, c, obs_dim, device=self.device)
        self.done = torch.zeros(s, k, c, device=self.device)
        self.pos = 0
        self.size = 0
        # per-task running reward moments (float64 for a long run's accuracy) and max |reward|
        self.rew_count = torch.zeros(s, k, dtype=torch.float64, device=self.device)
        self.rew_mean = torch.zeros(s, k, dtype=torch.float64, device=self.device)
        self.rew_m2 = torch.zeros(s, k, dtype=torch.float64, device=self.device)
        self.rew_absmax = torch.zeros(s, k, device=self.device)
        self.generators = [torch.Generator(device=self.device).manual_seed(x) for x in seeds]
        self._task_ids = torch.arange(k, device=self.device)
        self._seed_ids = torch.arange(s, device=self.device)

    @property
    def generator(self) -> torch.Generator:
        """The first seed's sampling generator (the only one of a solo buffer)."""
        return self.generators[0]

    def __len__(self) -> int:
        """Transitions stored per seed."""
        return self.size * self.num_tasks

    def add(self, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, next_obs: np.ndarray, done: np.ndarray) -> None:
        """Add one transition per seed and task: arrays ``[S, K, ...]`` (solo: ``[K, ...]``; row ``k`` = task
        ``k``)."""
        p = self.pos
        shape = (self.num_seeds, self.num_tasks)
        for name, value in zip(FIELDS, (obs, act, rew, next_obs, done)):
            ring = getattr(self, name)
            ring[:, :, p] = torch.as_tensor(value, dtype=torch.float32, device=self.device).reshape(
                *shape, *ring.shape[3:]
            )
        self.pos = (p + 1) % self.per_task
        self.size = min(self.size + 1, self.per_task)
        # Welford update of the per-task reward moments, one new value per seed and task
        r = self.rew[:, :, p]
        r64 = r.double()
        self.rew_count += 1
        delta = r64 - self.rew_mean
        self.rew_mean += delta / self.rew_count
        self.rew_m2 += delta * (r64 - self.rew_mean)
        self.rew_absmax = torch.maximum(self.rew_absmax, r.abs())

    def reward_std(self) -> Tensor:
        """Running per-task reward std ``[S, K]`` (solo: ``[K]``; 1 before two rewards were seen)."""
        var = self.rew_m2 / (self.rew_count - 1).clamp(min=1)
        std = var.sqrt().float()
        std = torch.where(self.rew_count > 1, std.clamp(min=1e-4), torch.ones_like(std))
        return std[0] if self.flat else std

    def _indices(self) -> tuple[Tensor, Tensor]:
        """Task and slot of every sampled row ``[S, N]``, seed ``s``'s drawn from its own generator."""
        k = self.num_tasks
        tasks, slots = [], []
        for g in self.generators:
            if self.kind == "stratified":
                m = self.batch_size // k
                idx = torch.randint(0, self.size, (k, m), generator=g, device=self.device)  # [K, m]
                task = self._task_ids[:, None].expand(k, m)  # [K, m]
            else:
                flat = torch.randint(0, self.size * k, (self.batch_size,), generator=g, device=self.device)
                task, idx = flat % k, flat // k  # [B] each
            tasks.append(task.reshape(-1))
            slots.append(idx.reshape(-1))
        return torch.stack(tasks), torch.stack(slots)

    def sample(self) -> ReplayBatch:
        """A batch ``[S, N, ...]`` (solo: ``[N, ...]``)."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        task, idx = self._indices()  # [S, N]
        seed = self._seed_ids[:, None].expand_as(task)
        rew = self.rew[seed, task, idx]
        if self.reward_norm:
            std = self.reward_std()
            scale = (std[None] if self.flat else std)[seed, task]
        else:
            scale = torch.ones_like(rew)
        batch = ReplayBatch(
            obs=self.obs[seed, task, idx],
            act=self.act[seed, task, idx],
            rew=rew / scale,
            next_obs=self.next_obs[seed, task, idx],
            done=self.done[seed, task, idx],
            task=task,
            rew_absmax=self.rew_absmax[seed, task] / scale,
        )
        return ReplayBatch(*(x[0] for x in batch)) if self.flat else batch

    def state_dicts(self) -> list[dict]:
        """Each seed's replay in the solo format: the filled rows only (copies: ``torch.save`` of a slice would write
        the whole pre-allocated ring)."""
        n = self.size
        return [
            {
                **{name: getattr(self, name)[s, :, :n].to("cpu", copy=True) for name in FIELDS},
                "pos": self.pos,
                "size": n,
                "rew_stats": torch.stack([self.rew_count[s], self.rew_mean[s], self.rew_m2[s]]).cpu(),
                "rew_absmax": self.rew_absmax[s].cpu(),
                "generator": self.generators[s].get_state(),
            }
            for s in range(self.num_seeds)
        ]

    def load_state_dicts(self, states: Sequence[dict]) -> None:
        """Restore every seed from its solo-format state (:meth:`state_dicts`); ``ValueError`` when one does not fit
        this buffer or the seeds' fill levels differ."""
        if len(states) != self.num_seeds:
            raise ValueError(f"replay: got {len(states)} states for {self.num_seeds} seeds")
        for state in states:
            n = state["size"]
            saved, here = tuple(state["obs"].shape), (self.num_tasks, n, self.obs.shape[-1])
            if (
                saved != here
                or n > self.per_task
                or tuple(state["act"].shape[::2]) != (self.num_tasks, self.act.shape[-1])
            ):
                raise ValueError(
                    f"replay of shape {saved} (tasks, rows, obs) does not fit {self.num_tasks} tasks x "
                    f"{self.per_task} rows x {self.obs.shape[-1]} obs"
                )
        if len({(st["size"], st["pos"]) for st in states}) > 1:
            raise ValueError("replay: the seeds' replays were saved at different fill levels")
        n = states[0]["size"]
        for s, state in enumerate(states):
            for name in FIELDS:
                getattr(self, name)[s, :, :n] = state[name].to(self.device)
            self.rew_count[s], self.rew_mean[s], self.rew_m2[s] = state["rew_stats"].to(self.device).unbind(0)
            self.rew_absmax[s] = state["rew_absmax"].to(self.device)
            set_generator_state(self.generators[s], state["generator"])  # saved on any device
        self.pos, self.size = states[0]["pos"], n

    def state_dict(self) -> dict:
        """The state of a solo buffer (its one seed)."""
        return self.state_dicts()[0]

    def load_state_dict(self, state: dict) -> None:
        """Restore a solo buffer from a :meth:`state_dict`; ``ValueError`` when its shape does not fit this buffer."""
        self.load_state_dicts([state] * self.num_seeds)
