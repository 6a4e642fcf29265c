"""Frozen dataclass configs, one docstring per field, and the flat ``dotted.key: value`` layer shared by YAML
presets, the command line and the ``config.yaml`` saved in every run directory.

A combiner is a tagged union: ``combiner`` (or ``combiner.name``) names one entry of :data:`mtrl.mto.COMBINERS`,
and ``combiner.<option>`` sets that combiner's own typed options.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mtrl.envs.base import benchmark_kind, benchmark_num_tasks
from mtrl.mto import COMBINERS
from mtrl.mto.mean import MeanConfig


class ConfigError(ValueError):
    """A bad config value; the message is one line: the field, what was given, what is allowed."""


@dataclass(frozen=True)
class EnvConfig:
    benchmark: str = "toy"
    """toy (K-task point reaching, for tests and the CPU demo), MT10, MT50, MT1-<task> (e.g. MT1-reach-v3), or a
    comma-separated list of Meta-World v3 tasks (an MT-K of your choice, e.g. reach-v3,push-v3,window-open-v3)."""
    protocol: Literal["official", "legacy"] = "official"
    """Meta-World protocol. official: v3 defaults, 50 goals per task resampled each episode, 500-step episodes,
    evaluation cycles through the goals. legacy: the mtrl/CARE setting, one fixed goal per task chosen from the
    seed, 150-step episodes."""
    reward_version: Literal["v1", "v2"] = "v2"
    """Meta-World reward function version."""
    max_episode_steps: int = 0
    """Episode length; 0 takes the protocol's (official 500, legacy 150, toy 50)."""
    vector_strategy: Literal["auto", "sync", "async"] = "auto"
    """Meta-World vector env: sync (one process) or async (one worker process per task); auto takes async when
    the machine has at least K + 2 CPU cores (and the env is not rendered), else sync. The toy env ignores it."""
    eval_goals: Literal["train", "fresh"] = "train"
    """Goals of evaluation, recording and `mtrl evaluate`. train: the run's training goals (its seed's 50 variations
    per task, or the legacy fixed goal), as Meta-World's official evaluation; fresh: goals of another seed, never
    trained on (a generalization check; toy env: goals rotated between the training ones)."""
    toy_tasks: int = 4
    """Number of tasks of the toy env."""

    @property
    def num_tasks(self) -> int:
        """K without building the env: toy -> toy_tasks, MT10 -> 10, MT50 -> 50, MT1-<task> -> 1, a task list -> its
        length."""
        return benchmark_num_tasks(self.benchmark, self.toy_tasks)


@dataclass(frozen=True)
class NetConfig:
    hidden_dim: int = 256
    """Width of each hidden layer."""
    num_layers: int = 2
    """Number of hidden layers."""
    layer_norm: bool = False
    """LayerNorm after each hidden linear layer (before the ReLU)."""
    dropout: float = 0.0
    """Dropout probability after each hidden layer (0 = off); active in updates, off when acting."""
    lr: float = 3e-4
    """Adam(W) learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW); 0 = plain Adam."""
    max_grad_norm: float = 0.0
    """Clip the global gradient norm to this value before the step (0 = off)."""
    init: Literal["torch", "he_uniform", "xavier"] = "torch"
    """Weight initialisation. torch: PyTorch's nn.Linear default. he_uniform: metaworld-algorithms (He-uniform hidden
    weights, zero biases, output layer U(-1e-3, 1e-3) for the actor and U(-3e-3, 3e-3) for the critic, weights and
    bias). xavier: facebookresearch/mtrl (Xavier-uniform weights, zero biases, every layer)."""


@dataclass(frozen=True)
class AgentConfig:
    kind: Literal["mtsac", "single_task"] = "mtsac"
    """mtsac: one multi-task SAC (this package). single_task: one stable-baselines3 SAC per task, the "one agent per
    task" reference of the MT10 literature; it uses the actor/critic sizes, gamma, tau, lr and batch_size/K per task
    from this config. `--agent single_task` is short for `--agent.kind single_task`."""
    conditioning: Literal["none", "one_hot", "multi_head"] = "one_hot"
    """How the networks know the task. none: not at all (mtrl's MT-SAC); one_hot: the task one-hot is concatenated
    to the input; multi_head: shared trunk with one output head per task (the one-hot is not input)."""
    actor: NetConfig = field(default_factory=NetConfig)
    """Actor network and optimizer."""
    critic: NetConfig = field(default_factory=NetConfig)
    """Twin-Q critic network and optimizer."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target critic."""
    temperature: Literal["per_task", "shared"] = "per_task"
    """Entropy temperature alpha: one per task, or one shared by all tasks."""
    init_temperature: float = 1.0
    """Initial alpha."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log(alpha)."""
    adam_eps: float = 1e-8
    """Adam epsilon of the actor, critic and temperature optimizers (PyTorch default 1e-8; metaworld-algorithms
    1e-5)."""
    log_std: Literal["clamp", "tanh"] = "clamp"
    """How the actor's log-std is bounded to [-20, 2]. clamp: clipped (SB3, metaworld-algorithms); tanh: squashed,
    -20 + 11 (tanh(x) + 1) (facebookresearch/mtrl, CleanRL)."""
    alpha_loss: Literal["log_alpha", "alpha"] = "log_alpha"
    """Temperature loss: -log(alpha) (log pi + target) (SB3, metaworld-algorithms) or -alpha (log pi + target)
    (facebookresearch/mtrl; same fixed point, gradient scaled by alpha)."""
    q_value_max: float = 0.0
    """Clip TD targets and Q predictions to [-q_value_max, q_value_max] (metaworld-algorithms MTSAC: 5000); 0 = off."""
    q_target_clip: bool = False
    """Clip TD targets to +-max|r|/(1-gamma) of the task's (normalized) rewards seen so far (Kurin et al.)."""
    schedule: Literal["joint", "alternating"] = "joint"
    """joint: one update of all tasks per step, through the combiner. alternating: Pascal et al.'s independent
    update steps: per update, one optimizer step per task group in sequence, each on its group's plain mean loss
    (the combiner is not used); the target critic still moves once per update."""
    group_size: int = 1
    """alternating: tasks per group (1 = one step per task; K = unitary)."""
    regroup: bool = False
    """alternating: draw a new random partition into groups at every update (default: once, at the start)."""
    optimizer_per_group: bool = False
    """alternating: one Adam per group (Pascal et al.'s IO; needs fixed groups) instead of one shared Adam (IUS)."""
    compile: bool = False
    """torch.compile the actor, critic and target critic forward passes (inductor, default mode; no CUDA graphs).
    For GPU throughput; on a CPU it was measured slower than eager. Only with loss-space combiners: the per-task
    gradients of gradient-space ones run under torch.func.vmap, which it does not trace. The first updates compile
    (tens of seconds); results equal eager within float tolerance."""


@dataclass(frozen=True)
class BufferConfig:
    kind: Literal["stratified", "uniform"] = "stratified"
    """stratified: per-task buffers, every batch has batch_size/K rows of each task. uniform: one shared FIFO
    sampled uniformly (mtrl legacy)."""
    capacity: int = 100_000
    """Total transitions kept (capacity/K per task when stratified)."""
    batch_size: int = 256
    """Transitions per update over all tasks (batch_size/K per task when stratified)."""
    reward_norm: bool = False
    """Divide sampled rewards by the running per-task reward std (no mean shift; Kurin et al.)."""


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1
    """Seed for networks, buffer sampling, combiners and environments."""
    total_steps: int = 4000
    """Vector-env steps (= environment steps per task)."""
    warmup_steps: int = 500
    """Random-action steps before the first update."""
    updates_per_step: int = 1
    """Gradient updates per vector-env step after warm-up."""
    eval_interval: int = 1000
    """Evaluate every this many steps (and at the end); 0 = only at the end."""
    eval_episodes: int = 10
    """Evaluation episodes per task (official Meta-World protocol: 50, one per goal)."""
    eval_mode: Literal["auto", "sync", "async"] = "auto"
    """sync: evaluate inside the training loop (training waits). async: one worker process evaluates CPU copies of
    the actor while training goes on; each result is logged at the step of its copy and equals sync's on a CPU
    device (on a GPU it may differ in the last float bits); a pending evaluation is lost when a run is killed
    (resuming does not redo one taken at the checkpoint's step). auto: async on Meta-World benchmarks with at least
    4 CPU cores, else sync. MT-SAC only (single_task evaluates in its loop)."""
    video_interval: int = 0
    """Every this many evaluations, also render one episode per task into TensorBoard (images tab, GIF); 0 = off."""
    log_interval: int = 250
    """Write training scalars every this many steps."""
    checkpoint_interval: int = 2000
    """Write a checkpoint every this many steps (and at the end)."""
    run_dir: str = "runs"
    """Parent folder of run directories."""
    run_name: str = ""
    """Run directory name; empty = {benchmark}__{combiner}__s{seed}__{timestamp}."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Torch device; auto picks cuda when available."""
    threads: int = 0
    """torch CPU threads; 0 = torch's default."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Environment."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """Multi-task SAC agent."""
    buffer: BufferConfig = field(default_factory=BufferConfig)
    """Replay buffer."""
    combiner: Any = field(default_factory=MeanConfig)
    """Combiner of the per-task losses/gradients; one of: {combiners}."""
    combine_critic: bool = True
    """Apply the combiner to the critic update."""
    combine_actor: bool = True
    """Apply the combiner to the actor update."""
    combine_alpha: bool = False
    """Apply the combiner (own instance) to the temperature update; off = plain mean."""


# ----------------------------------------------------------------------------------------------- flat key layer

_TAGGED = {"combiner": COMBINERS}


def combiner_name(cfg: Any) -> str:
    """The command-line name of a combiner config instance."""
    for name, cls in COMBINERS.items():
        if type(cfg) is cls:
            return name
    raise ConfigError(f"unknown combiner config type {type(cfg).__name__}")


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass, by field name."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allowed(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if tp is bool:
        return "true or false"
    return f"a{'n' if tp is int else ''} {getattr(tp, '__name__', str(tp))}"


def _coerce(key: str, raw: Any, tp: Any) -> Any:
    """Convert ``raw`` (a YAML value or a command-line string) to ``tp``, or raise a one-line ConfigError."""
    bad = ConfigError(f"{key}: got {raw!r}, expected {_allowed(tp)}")
    if typing.get_origin(tp) is Literal:
        options = typing.get_args(tp)
        for opt in options:
            if raw == opt or str(raw) == str(opt):
                return opt
        raise bad
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return raw.lower() in ("true", "1", "yes", "on")
        raise bad
    if tp is int:
        if isinstance(raw, bool):
            raise bad
        if isinstance(raw, int):
            return raw
        try:
            as_float = float(str(raw).replace("_", ""))
        except ValueError:
            raise bad from None
        if not as_float.is_integer():
            raise bad
        return int(as_float)
    if tp is float:
        if isinstance(raw, bool):
            raise bad
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        if isinstance(raw, (dict, list)):
            raise bad
        return str(raw)
    if typing.get_origin(tp) in (tuple, list):
        items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).replace(",", " ").split() if s]
        (inner, *_) = typing.get_args(tp) or (str,)
        return tuple(_coerce(key, item, inner) for item in items)
    raise bad


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mapping -> ``{"a.b.c": value}``; dotted keys pass through."""
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        key = f"{prefix}{str(k).replace('-', '_')}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _apply(obj: Any, items: dict[str, Any], prefix: str) -> Any:
    """Return a copy of dataclass ``obj`` with flat ``items`` (keys relative to ``prefix``) applied."""
    cls = type(obj)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    changes: dict[str, Any] = {}
    for name in names:
        full = prefix + name
        if name in _TAGGED and not prefix:
            variants = _TAGGED[name]
            current = getattr(obj, name)
            chosen = items.get(full, items.get(full + ".name"))
            if chosen is not None:
                if str(chosen) not in variants:
                    raise ConfigError(f"{full}: got {chosen!r}, expected one of {', '.join(variants)}")
                if type(current) is not variants[str(chosen)]:
                    current = variants[str(chosen)]()
            sub = {k: v for k, v in items.items() if k.startswith(full + ".") and k != full + ".name"}
            changes[name] = _apply(current, sub, full + ".")
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            sub = {k: v for k, v in items.items() if k.startswith(full + ".")}
            if full in items:
                if "kind" not in {f.name for f in dataclasses.fields(tp)}:
                    raise ConfigError(f"{full}: is a section; set its fields as {full}.<field>")
                sub.setdefault(full + ".kind", items[full])
            changes[name] = _apply(getattr(obj, name), sub, full + ".")
        elif full in items:
            changes[name] = _coerce(full, items[full], tp)
    known = {prefix + n for n in names}
    for key in items:
        if not any(key == k or key.startswith(k + ".") for k in known):
            raise ConfigError(f"unknown config key '{key}'; valid keys here: {', '.join(sorted(known))}")
    return dataclasses.replace(obj, **changes)


def from_flat(items: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Apply flat ``dotted.key: value`` items to ``base`` (default: the embedded defaults) and validate."""
    cfg = _apply(base or TrainConfig(), {k.replace("-", "_"): v for k, v in items.items()}, "")
    validate(cfg)
    return cfg


def to_flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """The inverse of :func:`from_flat`: every field as ``dotted.key: value`` (tagged unions write ``.name``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        if f.name in _TAGGED and not prefix:
            out[key] = combiner_name(value)
            out.update(to_flat(value, key + "."))
        elif dataclasses.is_dataclass(value):
            out.update(to_flat(value, key + "."))
        else:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def read_mapping(path: str | Path, label: str, expected: str = "a mapping of config keys to values") -> dict:
    """Read a YAML file holding a mapping; one-line ConfigErrors, prefixed with ``label``, for missing or malformed
    files."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{label}: file '{path}' does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: '{path}' is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: '{path}' must be {expected}")
    return data


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a flat (or nested) YAML preset into flat items.

    A preset may inherit: ``base: other.yaml`` (a path relative to the preset's own folder) loads that preset
    first, and this one's keys override it; bases can inherit in turn.
    """
    p = Path(path)
    items = flatten(read_mapping(p, "--config"))
    base = items.pop("base", None)
    if base is None:
        return items
    base_path = p.parent / str(base)
    if base_path.resolve() in {q.resolve() for q in (*_chain, p)}:
        raise ConfigError(f"--config: '{path}' inherits from itself through base: {base}")
    if not base_path.is_file():
        raise ConfigError(f"--config: base: '{base}' of '{path}' does not exist (paths are relative to '{p.parent}')")
    return {**load_yaml(base_path, (*_chain, p)), **items}


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_flat(cfg), sort_keys=False)


_POSITIVE = ("total_steps", "updates_per_step", "log_interval", "checkpoint_interval", "eval_episodes")
_NON_NEGATIVE = ("warmup_steps", "eval_interval", "video_interval", "threads", "env.max_episode_steps")


def validate(cfg: TrainConfig) -> None:
    """Check values that types alone cannot; raise a one-line ConfigError naming the field."""
    flat = to_flat(cfg)
    for key in _POSITIVE:
        if flat[key] <= 0:
            raise ConfigError(f"{key}: got {flat[key]}, expected a positive integer")
    for key in _NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"{key}: got {flat[key]}, expected an integer >= 0")
    for net in ("agent.actor", "agent.critic"):
        for key in ("hidden_dim", "num_layers"):
            if flat[f"{net}.{key}"] <= 0:
                raise ConfigError(f"{net}.{key}: got {flat[f'{net}.{key}']}, expected a positive integer")
        if not 0.0 <= flat[f"{net}.dropout"] < 1.0:
            raise ConfigError(f"{net}.dropout: got {flat[f'{net}.dropout']}, expected a probability in [0, 1)")
        for key in ("lr",):
            if flat[f"{net}.{key}"] <= 0:
                raise ConfigError(f"{net}.{key}: got {flat[f'{net}.{key}']}, expected a positive number")
        for key in ("weight_decay", "max_grad_norm"):
            if flat[f"{net}.{key}"] < 0:
                raise ConfigError(f"{net}.{key}: got {flat[f'{net}.{key}']}, expected a number >= 0")
    for key in ("agent.alpha_lr", "agent.init_temperature", "agent.adam_eps"):
        if flat[key] <= 0:
            raise ConfigError(f"{key}: got {flat[key]}, expected a positive number")
    if not flat["agent.q_value_max"] >= 0:
        raise ConfigError(f"agent.q_value_max: got {flat['agent.q_value_max']}, expected a number >= 0 (0 = off)")
    if not 0.0 <= flat["agent.gamma"] < 1.0:
        raise ConfigError(f"agent.gamma: got {flat['agent.gamma']}, expected a number in [0, 1)")
    if not 0.0 < flat["agent.tau"] <= 1.0:
        raise ConfigError(f"agent.tau: got {flat['agent.tau']}, expected a number in (0, 1]")
    if cfg.agent.group_size < 1:
        raise ConfigError(f"agent.group_size: got {cfg.agent.group_size}, expected a positive integer")
    if cfg.agent.optimizer_per_group and cfg.agent.regroup:
        raise ConfigError(
            "agent.optimizer_per_group: got true with agent.regroup true; one optimizer per group needs fixed groups"
        )
    if cfg.eval_mode == "async" and cfg.agent.kind == "single_task":
        raise ConfigError(
            "eval_mode: got 'async' with agent.kind single_task, which evaluates in its loop; use auto or sync"
        )
    if cfg.env.toy_tasks < 1:
        raise ConfigError(f"env.toy_tasks: got {cfg.env.toy_tasks}, expected a positive integer")
    if cfg.buffer.batch_size <= 0 or cfg.buffer.capacity <= 0:
        bad = "buffer.batch_size" if cfg.buffer.batch_size <= 0 else "buffer.capacity"
        raise ConfigError(f"{bad}: got {flat[bad]}, expected a positive integer")
    bench = cfg.env.benchmark
    kind = benchmark_kind(bench)
    if kind is None:
        raise ConfigError(
            f"env.benchmark: got {bench!r}, expected toy, MT10, MT50, MT1-<task> (e.g. MT1-reach-v3) or a "
            "comma-separated list of Meta-World v3 tasks (e.g. reach-v3,push-v3)"
        )
    if kind == "custom":
        from mtrl.envs.base import custom_tasks

        names = custom_tasks(bench)
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise ConfigError(f"env.benchmark: task {dup!r} is listed twice in {bench!r}; list each task once")
    if combiner_name(cfg.combiner) == "famo" and (cfg.combine_actor or cfg.combine_alpha):
        raise ConfigError(
            "combiner: famo needs losses bounded below and the SAC actor/alpha losses are not; add "
            "--combine_actor false (critic only, as in the FAMO paper's MT10 runs)"
        )
    check = getattr(cfg.combiner, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:  # combiner configs raise plain ValueErrors with one-line messages
            raise ConfigError(str(exc)) from None


def help_rows(cls: type = TrainConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every leaf field, for ``--help``."""
    rows: list[tuple[str, str, str]] = []
    docs = field_docs(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        value = getattr(default, f.name)
        doc = docs.get(f.name, "")
        if f.name in _TAGGED and not prefix:
            doc = doc.replace("{combiners}", ", ".join(COMBINERS))
            rows.append((key, combiner_name(value), doc))
            for name, variant in COMBINERS.items():
                for sub_key, sub_default, sub_doc in help_rows(variant, f"{key}."):
                    rows.append((sub_key, sub_default, f"[{name}] {sub_doc}"))
        elif dataclasses.is_dataclass(value):
            rows.extend(help_rows(type(value), key + "."))
        else:
            tp = _hints(cls)[f.name]
            allowed = f" ({_allowed(tp)})" if typing.get_origin(tp) is Literal else ""
            rows.append((key, str(value), doc + allowed))
    return rows
