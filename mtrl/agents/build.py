"""An MT-SAC agent from a config: its combiners (one instance per trained part) and the agent itself."""

from __future__ import annotations

import torch

from mtrl.agents.mtsac import MTSAC, Combiners
from mtrl.config import ConfigError, TrainConfig
from mtrl.mto.mean import MeanConfig


def build_combiners(cfg: TrainConfig, num_tasks: int) -> Combiners:
    """The combiner instance of each part: ``cfg.combiner`` where ``combine_<part>`` is set, else ``mean``; seeded
    ``seed * 1000 + (1, 2, 3)``. The combiner checks its options against K and the parts it is applied to
    (``check``); its one-line complaint becomes a :class:`ConfigError`."""
    parts = {"critic": cfg.combine_critic, "actor": cfg.combine_actor, "alpha": cfg.combine_alpha}
    try:
        cfg.combiner.check(num_tasks, frozenset(part for part, on in parts.items() if on))
        return Combiners(
            *(
                (cfg.combiner if on else MeanConfig()).build(num_tasks, seed=cfg.seed * 1000 + offset)
                for offset, on in enumerate(parts.values(), start=1)
            )
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def make_agent(cfg: TrainConfig, obs_dim: int, act_dim: int, num_tasks: int, device: torch.device) -> MTSAC:
    """The MT-SAC agent of a config: its :class:`~mtrl.config.AgentConfig` and its built combiners."""
    return make_group_agent([cfg], obs_dim, act_dim, num_tasks, device)


def make_group_agent(
    cfgs: list[TrainConfig], obs_dim: int, act_dim: int, num_tasks: int, device: torch.device
) -> MTSAC:
    """One agent for the configs of a seed group (alike but for their seeds): each seed's combiners are built as
    its solo run builds them."""
    cfg = cfgs[0]
    return MTSAC(
        obs_dim, act_dim, num_tasks, cfg.agent, [build_combiners(c, num_tasks) for c in cfgs], device,
        seed=[c.seed for c in cfgs], stratified=cfg.buffer.kind == "stratified",
        updates=max(cfg.total_steps - cfg.warmup_steps, 0) * cfg.updates_per_step,
    )  # fmt: skip
