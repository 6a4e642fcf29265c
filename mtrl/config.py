"""Frozen dataclass configs (one docstring per field) read by tyro, and the flat ``dotted.key: value`` form of them
used by YAML presets, the ``config.yaml`` of every run directory and checkpoints.

The command line is tyro's (:func:`parse`): ``--dotted.key value`` for every field, the combiner a tagged union of
the combiner configs of :data:`mtrl.mto.COMBINERS` (``--combiner NAME`` or tyro's ``combiner:NAME``, then
``--combiner.OPTION value``). A flat mapping goes through the same parser (:func:`from_flat`), so a preset, a saved
config and the command line accept the same keys and values. Values are parsed into their types here; what depends
on the number of tasks or on other fields is checked by :func:`mtrl.train.check_config` before anything starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import math
import os
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import tyro
import yaml
from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec, PrimitiveTypeInfo

from mtrl.mto import COMBINERS, CombinerConfigBase
from mtrl.mto.mean import MeanConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config value; the message is one line: the field, what was given, what is allowed."""


if typing.TYPE_CHECKING:
    CombinerConfig = CombinerConfigBase
else:  # built at run time from the registry: one tyro subcommand ``combiner:NAME`` per combiner config
    CombinerConfig = Union[  # noqa: UP007
        tuple(Annotated[cls, tyro.conf.subcommand(name, prefix_name=True)] for name, cls in COMBINERS.items())
    ]
"""Any combiner config of :data:`mtrl.mto.COMBINERS` (tyro subcommands ``combiner:NAME``)."""


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
    """Meta-World vector env: sync (every sub-env in the training process) or async (the sub-envs stepped in worker
    processes, each stepping its share in turn: num_workers); auto takes async where that gives at least two workers
    (3 or more CPU cores) and the env is not rendered, else sync. Same results either way. The toy env ignores it."""
    num_workers: int = 0
    """async: worker processes stepping the sub-envs (K per seed); 0 = one per sub-env, at most the CPU cores less
    one."""
    eval_goals: Literal["train", "fresh"] = "train"
    """Goals of evaluation, recording and `mtrl evaluate`. train: the run's training goals (its seed's 50 variations
    per task, or the legacy fixed goal), as Meta-World's official evaluation; fresh: goals of another seed, never
    trained on (a generalization check; toy env: goals rotated between the training ones)."""
    toy_tasks: int = 4
    """Number of tasks of the toy env."""


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
    precision: Literal["fp32", "bf16", "tf32"] = "fp32"
    """Network arithmetic. fp32: float32 throughout. bf16: every network forward and backward under bfloat16 autocast
    (CPU and CUDA; fast on CPUs with AVX512-BF16 or AMX and on GPUs, slow on AVX2-only CPUs); parameters, optimizer
    states, targets, log-probabilities, losses, temperatures and combiner solves stay float32. tf32: float32 with
    TensorFloat-32 matmuls (CUDA only)."""
    compile: bool = False
    """torch.compile the actor, critic and target critic forward passes (inductor, default mode; no CUDA graphs).
    For GPU throughput; on a CPU it was measured slower than eager. Only with loss-space combiners: the per-task
    gradients of gradient-space ones run under torch.func.vmap, which it does not trace. The first updates compile
    (tens of seconds); results equal eager within float tolerance."""
    graph: Literal["auto", "on", "off"] = "auto"
    """The whole update as one captured function (mtrl.agents.graph): on a GPU CUDA graphs (torch.compile
    reduce-overhead), on a CPU one compiled graph (torch.compile fullgraph). on: captured wherever it can be; off:
    eager; auto: on a GPU, and on a CPU for runs of 50,000 updates or more (compiled it was 1.08x faster in fp32 and
    1.26x in bf16 at MT10 size; compiling takes about a minute). Updates that cannot be captured (the alternating
    schedule, combiners other than mean, sum and fixed, the uniform replay) run eagerly, and training says why in
    one line. Results equal eager within float rounding; checkpoints load in either mode."""


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
    seeds: tuple[int, ...] = ()
    """A seed group: train one independent run per seed in this one process (`--seeds 1 2 3 4 5`), each writing the
    run directory its solo run (`--seed N`) would write; empty = the one run of `seed`."""
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
    combiner: CombinerConfig = field(default_factory=MeanConfig)
    """Combiner of the per-task losses/gradients (`--combiner NAME`, its options `--combiner.OPTION`; `mtrl train
    --combiner NAME --help` lists them)."""
    combine_critic: bool = True
    """Apply the combiner to the critic update."""
    combine_actor: bool = True
    """Apply the combiner to the actor update."""
    combine_alpha: bool = False
    """Apply the combiner (own instance) to the temperature update; off = plain mean."""


# ----------------------------------------------------------------------------------------------- parsing (tyro)

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _parse_bool(args: list[str]) -> bool:
    value = args[0].lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ValueError(f"got {args[0]!r}, expected true or false")


def _parse_int(args: list[str]) -> int:
    text = args[0].replace("_", "")
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"got {args[0]!r}, expected an integer") from None
    if not (math.isfinite(number) and number.is_integer()):
        raise ValueError(f"got {args[0]!r}, expected an integer")
    return int(number)


def _parse_float(args: list[str]) -> float:
    try:
        number = float(args[0].replace("_", ""))
    except ValueError:
        raise ValueError(f"got {args[0]!r}, expected a number") from None
    if not math.isfinite(number):
        raise ValueError(f"got {args[0]!r}, expected a finite number")
    return number


def _primitive_spec(info: PrimitiveTypeInfo) -> PrimitiveConstructorSpec | None:
    """bool as ``true/false`` (any case, also yes/no/on/off/1/0), int with ``1e6`` and ``2_000_000``, float finite."""
    if info.type is bool:
        return PrimitiveConstructorSpec(
            nargs=1,
            metavar="{true,false}",
            instance_from_str=_parse_bool,
            is_instance=lambda x: isinstance(x, bool),
            str_from_instance=lambda x: ["true" if x else "false"],
        )
    if info.type is int:
        return PrimitiveConstructorSpec(
            nargs=1,
            metavar="INT",
            instance_from_str=_parse_int,
            is_instance=lambda x: isinstance(x, int) and not isinstance(x, bool),
            str_from_instance=lambda x: [str(x)],
        )
    if info.type is float:
        return PrimitiveConstructorSpec(
            nargs=1,
            metavar="FLOAT",
            instance_from_str=_parse_float,
            is_instance=lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
            str_from_instance=lambda x: [repr(float(x))],
        )
    return None


BOOKKEEPING_KEYS: frozenset[str] = frozenset(
    {
        "run_name",
        "run_dir",
        "device",
        "threads",
        "log_interval",
        "checkpoint_interval",
        "video_interval",
        "eval_mode",
        "env.vector_strategy",
        "env.num_workers",
        "seeds",
        "agent.graph",
    }
)
"""Flat config keys that change neither the experiment nor its result: where a run is kept, the hardware it runs
on (and whether its update is captured), how often it logs, checkpoints and films. They define no method
(``mtrl compare``) and are left out of the TensorBoard HParams."""

_MARKERS = (tyro.conf.FlagConversionOff, tyro.conf.CascadeSubcommandArgs)

REGISTRY = ConstructorRegistry()
REGISTRY.primitive_rule(_primitive_spec)
_FLAG_REGISTRY = ConstructorRegistry()  # booleans left to tyro: flags
_FLAG_REGISTRY.primitive_rule(lambda info: None if info.type is bool else _primitive_spec(info))


def option_keys(cls: type) -> dict[str, Any]:
    """Every option of a config dataclass as ``{dotted.key: type}``; union fields list each member's options under
    the field's prefix (``combiner.c``), and the union field itself (``combiner``)."""
    keys: dict[str, Any] = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        members = _union_members(tp)
        if members:
            keys[f.name] = tp
            for member in members:
                keys.update({f"{f.name}.{k}": v for k, v in option_keys(member).items()})
        elif dataclasses.is_dataclass(tp):
            keys.update({f"{f.name}.{k}": v for k, v in option_keys(tp).items()})  # type: ignore[arg-type]
        else:
            keys[f.name] = tp
    return keys


def _union_members(tp: Any) -> list[Any]:
    if typing.get_origin(tp) is not Union:
        return []
    out = []
    for arg in typing.get_args(tp):
        inner = typing.get_args(arg)[0] if typing.get_origin(arg) is Annotated else arg
        if dataclasses.is_dataclass(inner):
            out.append(inner)
    return out


def _normalize(argv: Sequence[str], shorthands: dict[str, str]) -> list[str]:
    """Command-line spelling to tyro's: ``--a-b`` -> ``--a_b``, ``--key=value`` -> ``--key value``, ``--combiner
    NAME`` -> ``combiner:NAME``, and ``shorthands`` (``--agent X`` -> ``--agent.kind X``)."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if key == "combiner" and not eq and i + 1 < len(items) and not items[i + 1].startswith("-"):
                out.append(f"combiner:{items[i + 1]}")
                i += 2
                continue
            if key == "combiner" and eq:
                out.append(f"combiner:{value}")
                i += 1
                continue
            key = shorthands.get(key, key)
            out += [f"--{key}", value] if eq else [f"--{key}"]
        else:
            out.append(arg)
        i += 1
    return out


def _split_lists(args: list[str], known: dict[str, Any]) -> list[str]:
    """``--key a,b,c`` (or ``"a b c"``) -> ``--key a b c`` for tuple-typed options."""
    out: list[str] = []
    for i, arg in enumerate(args):
        previous = args[i - 1] if i else ""
        is_tuple = previous.startswith("--") and typing.get_origin(known.get(previous[2:])) in (tuple, list)
        if is_tuple and not arg.startswith("--") and ("," in arg or " " in arg.strip()):
            out += [part for part in re.split(r"[,\s]+", arg.strip()) if part]
        else:
            out.append(arg)
    return out


def _tyro_message(text: str) -> str:
    """tyro's multi-line error box as one line, in this package's words (field: got X, expected Y)."""
    lines = [ln.strip(" │╭╮╰╯─-") for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    body = " ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "invalid arguments")
    body = " ".join(body.split())
    m = re.search(r"Error parsing --([\w.-]+): (.*?)(?: Argument helptext:.*)?$", body)
    if m:
        return f"{m.group(1)}: {m.group(2)}"
    m = re.search(r"invalid choice '(.*?)' for argument '--([\w.-]+)'\. Expected one of \((.*?)\)", body)
    if m:
        allowed = ", ".join(x.strip().strip("'\"") for x in m.group(3).split(","))
        return f"{m.group(2)}: got {m.group(1)!r}, expected one of {allowed}"
    m = re.search(r"Missing value for argument '--([\w.-]+)'", body)
    if m:
        return f"{m.group(1)}: needs a value"
    m = re.search(r"Unrecognized options: (\S+)", body)
    if m:
        return f"unexpected argument {m.group(1).rstrip(',')!r}"
    return body.split(" For full helptext")[0]


def parse(
    cls: type[T],
    argv: Sequence[str],
    *,
    default: T | None = None,
    prog: str | None = None,
    description: str | None = None,
    shorthands: dict[str, str] | None = None,
    where: str = "",
    flags: bool = False,
    hyphens: bool = False,
) -> T:
    """Parse ``argv`` into ``cls`` with tyro; ``--help`` prints tyro's help and exits 0.

    :param default: the values of options not given (a preset), default ``cls()``.
    :param shorthands: extra ``--key`` spellings (``{"agent": "agent.kind"}``).
    :param where: prefix of error messages (e.g. the preset file).
    :param flags: booleans are flags (``--dry-run``, ``--no-dry-run``) instead of ``--key true|false``.
    :param hyphens: options are spelled ``--final-window`` in help and messages (the config keys of ``mtrl train``
        keep their underscores); either spelling is accepted.
    :raises ConfigError: one line naming the option, the value given and what is allowed.
    """
    known = option_keys(cls)
    args = _split_lists(_normalize(argv, shorthands or {}), known)

    def shown(key: str) -> str:
        return key.replace("_", "-") if hyphens else key

    for arg in args:
        if arg.startswith("--") and arg not in ("--help",):
            key = arg[2:]
            negated = flags and key.startswith("no_") and known.get(key[3:]) is bool
            if key not in known and not negated and any(k.startswith(key + ".") for k in known):
                raise ConfigError(f"{where}{key}: is a section; set its fields as --{key}.<field>")
            if key not in known and not negated:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean --{shown(close[0])}?" if close else ""
                raise ConfigError(f"{where}unknown option --{shown(key)}{hint}")
        elif ":" in arg and not arg.startswith("-"):
            prefix, _, name = arg.partition(":")
            members = {p.partition(":")[0] for p in known if "." not in p and _union_members(known[p])}
            if prefix in members and name not in COMBINERS:
                close = difflib.get_close_matches(name, list(COMBINERS), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(f"{where}{prefix}: got {name!r}, expected one of {', '.join(COMBINERS)}{hint}")
    if hyphens:
        args = [a.replace("_", "-") if a.startswith("--") else a for a in args]
    markers = (tyro.conf.CascadeSubcommandArgs,) if flags else _MARKERS
    registry = _FLAG_REGISTRY if flags else REGISTRY
    hint = _combiner_hint(args, default)
    if hint:
        raise ConfigError(where + hint)
    if "--help" in args or "-h" in args:  # at the terminal's width
        return tyro.cli(  # type: ignore[return-value]
            cls, args=args, default=default, prog=prog, description=description, use_underscores=not hyphens,
            registry=registry, config=markers,
        )  # fmt: skip
    buf = io.StringIO()
    old_columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "1000"  # tyro wraps its messages at the terminal width: one line to shorten
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            return tyro.cli(  # type: ignore[return-value]
                cls, args=args, default=default, prog=prog, description=description, use_underscores=not hyphens,
                registry=registry, config=markers,
            )  # fmt: skip
    except SystemExit as exc:
        if exc.code == 0:
            raise
        message = _tyro_message(buf.getvalue())
        if message.startswith("Missing from"):  # a required positional argument
            required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]  # type: ignore[arg-type]
            message = f"{required[0] if required else 'argument'}: needs a value (see {prog or 'the command'} --help)"
        m = re.match(r"([\w.-]+): Could not find valid parse for arguments: \[(.*)\]$", message)
        if m:
            inner = typing.get_args(known.get(str(m.group(1)).replace("-", "_")))
            what = "numbers" if inner and inner[0] is float else "integers" if inner and inner[0] is int else "values"
            message = f"{m.group(1)}: got {m.group(2).replace(chr(39), '')}, expected {what}"
        raise ConfigError(where + message) from None
    finally:
        if old_columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old_columns


def _combiner_hint(args: list[str], default: Any) -> str:
    """For an option of another combiner than the chosen one, the one-line reason; else ''."""
    chosen = next((a.partition(":")[2] for a in args if a.startswith("combiner:")), None)
    if chosen is None and default is not None and hasattr(default, "combiner"):
        chosen = combiner_name(default.combiner)
    chosen = chosen or "mean"
    own = {f.name for f in dataclasses.fields(COMBINERS[chosen])} if chosen in COMBINERS else set()
    for arg in args:
        if arg.startswith("--combiner."):
            option = arg[len("--combiner.") :]
            if option not in own:
                owners = [n for n, c in COMBINERS.items() if option in {f.name for f in dataclasses.fields(c)}]
                if not owners:
                    return ""  # an unknown key: reported as such
                return (
                    f"combiner.{option}: not an option of combiner '{chosen}' (its options: "
                    f"{', '.join(sorted(own)) or 'none'}); {option} is an option of {', '.join(owners)}"
                )
    return ""


# ----------------------------------------------------------------------------------------------- flat key layer


def combiner_name(cfg: Any) -> str:
    """The command-line name of a combiner config instance."""
    if type(cfg) not in COMBINERS.values():
        raise ConfigError(f"unknown combiner config type {type(cfg).__name__}")
    return str(cfg.name)


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


def _as_args(items: dict[str, Any]) -> list[str]:
    """Flat ``{key: value}`` -> command-line tokens (the combiner's subcommand first)."""
    args: list[str] = []
    for key, value in items.items():
        key = key.replace("-", "_")
        if key in ("combiner", "combiner.name"):
            args.insert(0, f"combiner:{value}")
        elif isinstance(value, (list, tuple)):
            args += [f"--{key}", *(str(v) for v in value)]
        elif isinstance(value, bool):
            args += [f"--{key}", "true" if value else "false"]
        elif isinstance(value, dict):
            raise ConfigError(f"{key}: is a section; set its fields as {key}.<field>")
        else:
            args += [f"--{key}", "" if value is None else str(value)]
    return args


def from_flat(items: dict[str, Any], base: TrainConfig | None = None, where: str = "") -> TrainConfig:
    """Apply flat ``dotted.key: value`` items (YAML values or strings) to ``base`` (default: the embedded defaults)
    through the command-line parser. Not validated against K: see :func:`mtrl.train.check_config`.

    :param where: prefix of error messages (e.g. ``"--config 'x.yaml': "``).
    """
    return parse(TrainConfig, _as_args(flatten(items)), default=base, shorthands={"agent": "agent.kind"}, where=where)


def to_flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """The inverse of :func:`from_flat`: every field as ``dotted.key: value`` (the combiner's name under its key)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = prefix + f.name
        if type(value) in COMBINERS.values():
            out[key] = combiner_name(value)
            out.update(to_flat(value, key + "."))
        elif dataclasses.is_dataclass(value):
            out.update(to_flat(value, key + "."))
        else:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def read_mapping(path: str | Path, label: str, expected: str = "a mapping of config keys to values") -> dict:
    """Read a YAML file holding a mapping; one-line ConfigErrors, prefixed with ``label``, for missing, unreadable,
    non-UTF-8 or malformed files."""
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise ConfigError(f"{label}: '{path}' {what}; expected a YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: '{path}' is not UTF-8 text; expected a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read '{path}' ({exc.strerror})") from None
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


def load_preset(path: str | Path) -> TrainConfig:
    """A preset file as a config (not yet checked against K)."""
    return from_flat(load_yaml(path), where=f"--config '{path}': ")


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_flat(cfg), sort_keys=False)
