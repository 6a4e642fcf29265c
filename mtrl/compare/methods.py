"""Methods and settings: which config keys make two runs the same experiment, and a readable label for each method.

Runs that differ in a setting key (benchmark, protocol, reward version, episode length, step budget, evaluation
schedule) are never pooled; within a setting, the keys that differ between runs (seed and bookkeeping excluded)
define the methods.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

from mtrl.config import BOOKKEEPING_KEYS

SETTING_KEYS: tuple[str, ...] = (
    "env.benchmark",
    "env.protocol",
    "env.reward_version",
    "env.max_episode_steps",
    "env.toy_tasks",
    "total_steps",
    "eval_episodes",
    "eval_interval",
)
"""Config keys that define the setting: runs that differ in any of them are never pooled."""

NOT_METHOD_KEYS: frozenset[str] = BOOKKEEPING_KEYS | {"seed"}
"""Config keys that neither define a method nor a setting (bookkeeping, hardware)."""

REGULARIZERS: frozenset[str] = frozenset(
    {"weight_decay", "layer_norm", "dropout", "reward_norm", "q_target_clip", "max_grad_norm"}
)
"""Leaf names of config keys that count as regularizers/stabilizers (the default baseline has all of them off)."""

_ABBREV = {
    "weight_decay": "wd",
    "layer_norm": "ln",
    "dropout": "drop",
    "reward_norm": "rnorm",
    "q_target_clip": "qclip",
    "max_grad_norm": "gclip",
    "temperature": "alpha",
    "init_temperature": "alpha0",
    "conditioning": "cond",
    "schedule": "sched",
    "hidden_dim": "width",
    "num_layers": "depth",
    "batch_size": "batch",
    "capacity": "buffer",
    "kind": "buffer",
    "updates_per_step": "utd",
    "warmup_steps": "warmup",
    "combine_critic": "comb-critic",
    "combine_actor": "comb-actor",
    "combine_alpha": "comb-alpha",
}
_MTSAC_AGENT_NAMES = {"mtsac", "mt_sac", "mt-sac", "sac"}


def _fmt_num(v: float | int) -> str:
    """Short number for labels: 3e-4, 0.4, 256, 1e6."""
    if isinstance(v, bool):
        return str(v).lower()
    if v == 0:
        return "0"
    a = abs(v)
    if isinstance(v, int) and a < 100_000:
        return str(v)
    if 1e-2 <= a < 1e5:
        return f"{v:.3g}"
    mantissa, exp = f"{v:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


def fmt_value(v: Any) -> str:
    """A value for a label: short numbers; a list as ``[a,b,c]``, a long one (task weights of MT50) as its first
    three items and its length, ``[a,b,c,...(50)]``."""
    if isinstance(v, (list, tuple)):
        items = [fmt_value(x) for x in v]
        return "[" + ",".join(items if len(items) <= 4 else [*items[:3], f"...({len(items)})"]) + "]"
    return _fmt_num(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


@functools.cache
def _package_defaults() -> dict[str, Any]:
    """Flat defaults of the training config and of every combiner's options (empty if unavailable)."""
    try:
        from mtrl.config import TrainConfig, to_flat
        from mtrl.mto import COMBINERS

        defaults = {k: v for k, v in to_flat(TrainConfig()).items() if not k.startswith("combiner")}
        for name, cls in COMBINERS.items():
            for k, v in to_flat(cls()).items():
                defaults[f"combiner[{name}].{k}"] = v
        return defaults
    except Exception:  # the config module is optional here: labels then show every differing value
        return {}


def _agent_name(cfg: dict[str, Any]) -> str | None:
    for key in ("agent", "agent.name", "agent.kind"):
        v = cfg.get(key)
        if isinstance(v, str) and v.lower() not in _MTSAC_AGENT_NAMES:
            return v
    return None


def _combiner(cfg: dict[str, Any]) -> str | None:
    v = cfg.get("combiner", cfg.get("combiner.name"))
    return None if v is None else str(v)


def differing_keys(configs: Sequence[dict[str, Any]], exclude: Iterable[str] = ()) -> list[str]:
    """Config keys whose value is not the same in all ``configs`` (a missing key counts as None), sorted."""
    skip = set(exclude)
    keys = sorted({k for c in configs for k in c} - skip)
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def method_labels(configs: Sequence[dict[str, Any]], defaults: dict[str, Any] | None = None) -> list[str]:
    """A readable method label per config, built from the keys that differ across ``configs``.

    The label starts with the combiner (or a non-MT-SAC agent name such as ``single_task``), then combiner options
    joined by ``-`` and other differing keys joined by ``+``: ``pcgrad``, ``cagrad-c0.4``, ``mean+wd3e-4``,
    ``mean+actor-wd3e-4`` (actor only), ``mean+ln+alpha-shared``. Values that are off (False, None) or equal to the
    package default are left out. Setting keys and bookkeeping keys (seed, run name, device, ...) are ignored.

    :param configs: flat configs, one per run.
    :param defaults: flat default values (``combiner[<name>].<opt>`` for combiner options); None reads the package's.
    """
    defaults = _package_defaults() if defaults is None else defaults
    diff = differing_keys(configs, exclude=set(SETTING_KEYS) | NOT_METHOD_KEYS)
    # combiner options shown even at their default when they vary among runs of the same combiner
    varying_opts: set[tuple[str | None, str]] = set()
    for k in (k for k in diff if k.startswith("combiner.") and k != "combiner.name"):
        by_combiner: dict[str | None, set[str]] = {}
        for c in configs:
            by_combiner.setdefault(_combiner(c), set()).add(repr(c.get(k)))
        varying_opts |= {(name, k) for name, values in by_combiner.items() if len(values) > 1}

    labels = []
    for cfg in configs:
        agent = _agent_name(cfg)
        comb = _combiner(cfg)
        base = agent or comb or "run"
        opts: list[str] = []
        tokens: dict[str, str] = {}  # key without actor/critic -> token, for merging actor and critic
        net_values: dict[str, dict[str, Any]] = {}
        for k in diff:
            v = cfg.get(k)
            if k in ("combiner", "combiner.name") or v is None or v is False:
                continue
            if k in ("agent", "agent.name", "agent.kind") and agent is not None:
                continue
            if k.startswith("combiner."):
                opt = k[len("combiner.") :]
                dk = f"combiner[{comb}].{opt}"
                if agent is None and ((comb, k) in varying_opts or dk not in defaults or defaults[dk] != v):
                    opts.append(f"{opt}{fmt_value(v)}" if v is not True else opt)
                continue
            if defaults and k in defaults and defaults[k] == v:
                continue
            if not defaults and isinstance(v, (int, float)) and v == 0:
                continue
            m = re.match(r"^agent\.(actor|critic)\.(.+)$", k)
            leaf = k.rsplit(".", 1)[-1]
            abbr = _ABBREV.get(leaf, leaf)
            token = abbr if v is True else (f"{abbr}-{v}" if isinstance(v, str) else f"{abbr}{fmt_value(v)}")
            if m:
                net_values.setdefault(m.group(2), {})[m.group(1)] = token
            else:
                tokens[k] = token
        for leaf, per_net in net_values.items():
            if set(per_net) == {"actor", "critic"} and per_net["actor"] == per_net["critic"]:
                tokens[f"agent.{leaf}"] = per_net["actor"]
            else:
                for net, token in per_net.items():
                    tokens[f"agent.{net}.{leaf}"] = f"{net}-{token}"
        labels.append(base + "".join("-" + o for o in opts) + "".join("+" + tokens[k] for k in sorted(tokens)))
    return labels


def regularizers_on(cfg: dict[str, Any]) -> int | None:
    """How many regularizer/stabilizer keys a ``mean`` run (joint schedule, MT-SAC) has on; None for other runs. The
    default baseline is the ``mean`` method with the fewest: plain ``mean`` where there is one, else (every run
    clips its gradients, say) the ``mean`` run with only the setting's shared stabilizers."""
    if _agent_name(cfg) is not None or _combiner(cfg) != "mean" or cfg.get("agent.schedule") == "alternating":
        return None
    return sum(bool(cfg[k]) for k in cfg if k.rsplit(".", 1)[-1] in REGULARIZERS)


def describe_setting(cfg: dict[str, Any]) -> str:
    """Human-readable setting: ``MT10 · official protocol · reward v2 · 500-step episodes · 2,000,000 steps ...``."""
    parts = [str(cfg.get("env.benchmark", "unknown benchmark"))]
    if cfg.get("env.protocol") is not None:
        parts.append(f"{cfg['env.protocol']} protocol")
    if cfg.get("env.reward_version") is not None:
        parts.append(f"reward {cfg['env.reward_version']}")
    h = cfg.get("env.max_episode_steps")
    if h is not None:
        parts.append("protocol's episode length" if h == 0 else f"{h}-step episodes")
    if cfg.get("env.benchmark") == "toy" and cfg.get("env.toy_tasks") is not None:
        parts.append(f"{cfg['env.toy_tasks']} tasks")
    if isinstance(cfg.get("total_steps"), int):
        parts.append(f"{cfg['total_steps']:,} steps per task")
    if cfg.get("eval_episodes") is not None:
        parts.append(f"{cfg['eval_episodes']} eval episodes per task")
    if cfg.get("eval_interval") is not None:
        parts.append(f"eval every {cfg['eval_interval']:,} steps" if cfg["eval_interval"] else "eval at the end only")
    return " · ".join(parts)


def setting_key(cfg: dict[str, Any]) -> tuple[str, ...]:
    return tuple(repr(cfg.get(k)) for k in SETTING_KEYS)
