"""Replay: one ring per task with a leading task axis, on the training device.

Every vector-env step adds exactly one transition per task, so all tasks fill in lockstep and a per-task ring of
``capacity // K`` is the same FIFO as mtrl's one shared buffer of ``capacity``. Two sampling modes:

- ``stratified`` (default): ``batch_size // K`` rows of each task, returned task-major (rows ``k*m:(k+1)*m`` are
  task ``k``), which is what the vmapped per-task gradients need;
- ``uniform`` (mtrl legacy): ``batch_size`` rows uniformly over all stored transitions; per-task counts vary.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from mtrl.utils import set_generator_state


class ReplayBatch(NamedTuple):
    obs: Tensor  # [N, obs]
    act: Tensor  # [N, act]
    rew: Tensor  # [N] (divided by the task's reward std if reward_norm)
    next_obs: Tensor  # [N, obs]
    done: Tensor  # [N] 1.0 where terminated (not truncated)
    task: Tensor  # [N] long
    rew_absmax: Tensor  # [N] largest |reward| seen so far for the row's task (same scale as rew), for Q clipping


class MultiTaskReplay:
    """Per-task rings ``[K, C, ...]`` with optional per-task reward normalization (divide by running std)."""

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
        seed: int = 0,
    ) -> None:
        if capacity < num_tasks:
            raise ValueError(f"buffer.capacity: got {capacity}, expected at least one slot per task ({num_tasks})")
        if kind == "stratified" and batch_size % num_tasks:
            raise ValueError(
                f"buffer.batch_size: got {batch_size}, expected a multiple of the number of tasks ({num_tasks}) "
                "for stratified sampling"
            )
        self.num_tasks, self.kind, self.reward_norm, self.batch_size = num_tasks, kind, reward_norm, batch_size
        self.device = torch.device(device)
        self.per_task = capacity // num_tasks
        k, c = num_tasks, self.per_task
        self.obs = torch.zeros(k, c, obs_dim, device=self.device)
        self.act = torch.zeros(k, c, act_dim, device=self.device)
        self.rew = torch.zeros(k, c, device=self.device)
        self.next_obs = torch.zeros(k, c, obs_dim, device=self.device)
        self.done = torch.zeros(k, c, device=self.device)
        self.pos = 0
        self.size = 0
        # per-task running reward moments (float64 for a long run's accuracy) and max |reward|
        self.rew_count = torch.zeros(k, dtype=torch.float64, device=self.device)
        self.rew_mean = torch.zeros(k, dtype=torch.float64, device=self.device)
        self.rew_m2 = torch.zeros(k, dtype=torch.float64, device=self.device)
        self.rew_absmax = torch.zeros(k, device=self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._task_ids = torch.arange(k, device=self.device)

    def __len__(self) -> int:
        return self.size * self.num_tasks

    def add(self, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, next_obs: np.ndarray, done: np.ndarray) -> None:
        """Add one transition per task (row ``k`` = task ``k``)."""
        p = self.pos
        self.obs[:, p] = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        self.act[:, p] = torch.as_tensor(act, dtype=torch.float32, device=self.device)
        r = torch.as_tensor(rew, dtype=torch.float32, device=self.device)
        self.rew[:, p] = r
        self.next_obs[:, p] = torch.as_tensor(next_obs, dtype=torch.float32, device=self.device)
        self.done[:, p] = torch.as_tensor(done, dtype=torch.float32, device=self.device)
        self.pos = (p + 1) % self.per_task
        self.size = min(self.size + 1, self.per_task)
        # Welford update of the per-task reward moments, one new value per task
        r64 = r.double()
        self.rew_count += 1
        delta = r64 - self.rew_mean
        self.rew_mean += delta / self.rew_count
        self.rew_m2 += delta * (r64 - self.rew_mean)
        self.rew_absmax = torch.maximum(self.rew_absmax, r.abs())

    def reward_std(self) -> Tensor:
        """Running per-task reward std ``[K]`` (1 before two rewards were seen)."""
        var = self.rew_m2 / (self.rew_count - 1).clamp(min=1)
        std = var.sqrt().float()
        return torch.where(self.rew_count > 1, std.clamp(min=1e-4), torch.ones_like(std))

    def sample(self) -> ReplayBatch:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        k = self.num_tasks
        if self.kind == "stratified":
            m = self.batch_size // k
            idx = torch.randint(0, self.size, (k, m), generator=self.generator, device=self.device)  # [K, m]
            task = self._task_ids[:, None].expand(k, m)  # [K, m]
        else:
            flat = torch.randint(0, self.size * k, (self.batch_size,), generator=self.generator, device=self.device)
            task, idx = flat % k, flat // k  # [B] each
        task, idx = task.reshape(-1), idx.reshape(-1)
        rew = self.rew[task, idx]
        scale = self.reward_std()[task] if self.reward_norm else torch.ones_like(rew)
        return ReplayBatch(
            obs=self.obs[task, idx],
            act=self.act[task, idx],
            rew=rew / scale,
            next_obs=self.next_obs[task, idx],
            done=self.done[task, idx],
            task=task,
            rew_absmax=self.rew_absmax[task] / scale,
        )

    def state_dict(self) -> dict:
        """The filled rows only (copies: ``torch.save`` of a slice would write the whole pre-allocated ring)."""
        n = self.size
        return {
            "obs": self.obs[:, :n].to("cpu", copy=True),
            "act": self.act[:, :n].to("cpu", copy=True),
            "rew": self.rew[:, :n].to("cpu", copy=True),
            "next_obs": self.next_obs[:, :n].to("cpu", copy=True),
            "done": self.done[:, :n].to("cpu", copy=True),
            "pos": self.pos,
            "size": n,
            "rew_stats": torch.stack([self.rew_count, self.rew_mean, self.rew_m2]).cpu(),
            "rew_absmax": self.rew_absmax.cpu(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; ``ValueError`` when its shape does not fit this buffer."""
        n = state["size"]
        saved, here = tuple(state["obs"].shape), (self.num_tasks, n, self.obs.shape[-1])
        if saved != here or n > self.per_task or tuple(state["act"].shape[::2]) != (self.num_tasks, self.act.shape[-1]):
            raise ValueError(
                f"replay of shape {saved} (tasks, rows, obs) does not fit {self.num_tasks} tasks x "
                f"{self.per_task} rows x {self.obs.shape[-1]} obs"
            )
        for name in ("obs", "act", "rew", "next_obs", "done"):
            getattr(self, name)[:, :n] = state[name].to(self.device)
        self.pos, self.size = state["pos"], n
        self.rew_count, self.rew_mean, self.rew_m2 = state["rew_stats"].to(self.device).unbind(0)
        self.rew_absmax = state["rew_absmax"].to(self.device)
        set_generator_state(self.generator, state["generator"])  # saved on any device
