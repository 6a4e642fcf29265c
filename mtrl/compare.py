"""Compare finished runs: final success per seed, IQM with bootstrap CIs, probability of improvement, cost.

``mtrl compare RUNS...`` reads run directories written by ``mtrl train`` (``config.yaml``, ``meta.yaml`` and
TensorBoard event files) and writes ``success_curves.png``, ``iqm.png`` and ``summary.md``.

Rules it enforces (see ``references/mtrl-protocols.md`` §9-10):

- final success of a run = mean of its evaluations of ``eval/success_rate`` in the last 10% of its steps (at least
  its last evaluation; :func:`final_success`), never the max over training;
- runs from different settings (benchmark, protocol, reward version, episode length, step budget, evaluation
  schedule) are never pooled: each setting is compared on its own and the set-apart runs are listed with the reason;
- per-seed values are always shown next to the IQM, so bimodal seeds (some never learn) stay visible.

Statistics follow rliable (Agarwal et al. 2021, https://arxiv.org/abs/2108.13264): percentile bootstrap CIs
resampling seeds with replacement (its stratified bootstrap, with one task: the mean over tasks), IQM, probability of
improvement. ``rliable.library`` is not imported: rliable 1.2 fails at import with arch 7.2 + pandas 3 and at call
time with arch 8 (``random_state`` was removed), and it draws from numpy's global RNG. :func:`bootstrap_ci` is the
same resampling with an owned, seeded generator; :func:`iqm` and :func:`probability_of_improvement` return the values
of ``rliable.metrics.aggregate_iqm`` and ``rliable.metrics.probability_of_improvement`` (the tests check this).
"""

from __future__ import annotations

import functools
import math
import re
import struct
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tyro
import yaml

from mtrl.config import flatten
from mtrl.logger import HPARAMS_SUFFIX, write_hparams

SUCCESS_TAG = "eval/success_rate"
TASK_SUCCESS_PREFIX = "eval/success_rate/"
SPS_TAG = "charts/sps"

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

NOT_METHOD_KEYS: frozenset[str] = frozenset(
    {
        "seed",
        "run_name",
        "run_dir",
        "device",
        "threads",
        "log_interval",
        "checkpoint_interval",
        "eval_mode",
        "env.vector_strategy",
    }
)
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


class CompareError(Exception):
    """A user error; the message is one line."""


# ------------------------------------------------------------------------------------------------ reading runs


@dataclass
class Run:
    """One run directory, read once."""

    path: Path
    config: dict[str, Any]
    """Flat ``dotted.key: value`` config."""
    meta: dict[str, Any]
    steps: np.ndarray
    """Steps of the evaluations, ascending. [E]"""
    success: np.ndarray
    """``eval/success_rate`` at each evaluation (mean over tasks). [E]"""
    task_final: dict[str, float]
    """Final success of each task (:func:`final_success` of its curve)."""
    final: float
    """Final success: :func:`final_success` of ``eval/success_rate``."""
    n_final: int
    """Number of evaluations averaged into ``final``."""
    sps: float | None
    """Mean of ``charts/sps`` (vector-env steps per second), None when not logged."""
    wall_clock_s: float | None
    """Training seconds from meta.yaml, None when missing."""
    has_hparams: bool = False

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


@dataclass
class SetApart:
    """A run left out of a comparison, and why."""

    path: Path
    reason: str


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories (folders holding ``config.yaml``) given directly or found recursively under ``paths``.

    :raises CompareError: a path does not exist, or no run directory was found.
    """
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise CompareError(f"path '{p}' does not exist")
        if p.is_file():
            p = p.parent if p.name == "config.yaml" else p
            if not (p / "config.yaml").is_file():
                raise CompareError(f"'{p}' is a file, expected a run directory or a folder of runs")
        if (p / "config.yaml").is_file():
            found[p] = None
            continue
        for cfg in sorted(p.rglob("config.yaml")):
            found[cfg.parent] = None
    if not found:
        raise CompareError(
            f"no run directories (folders holding config.yaml) found under: {', '.join(map(str, paths))}"
        )
    return list(found)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a mapping")
    return flatten(data)


def _scalar_value(value: Any) -> float | None:
    """The number in a ``Summary.Value``: ``simple_value`` (torch's SummaryWriter) or a scalar tensor (TF2)."""
    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor") and value.metadata.plugin_data.plugin_name in ("scalars", ""):
        from tensorboard.util import tensor_util

        arr = tensor_util.make_ndarray(value.tensor)
        return float(arr.item()) if arr.size == 1 and arr.dtype.kind in "fiu" else None
    return None


_SESSION_START = 1
"""``SessionLog.START``: the status of the purge mark a resumed ``SummaryWriter(purge_step=...)`` writes."""


def _iter_event_file(path: Path) -> Iterable[Any]:
    """Events of one TFRecord event file; a truncated last record (a run still writing) ends the file."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto.event_pb2 import Event

    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):  # record: uint64 length, uint32 crc, payload, uint32 crc
        (length,) = struct.unpack_from("<Q", data, pos)
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            return
        try:
            yield Event.FromString(data[start:end])
        except DecodeError:
            return
        pos = end + 4


def read_scalars(run_dir: str | Path, keep: Callable[[str], bool] | None = None) -> pd.DataFrame:
    """Scalars of the event files directly in ``run_dir`` as a long frame (``step``, ``tag``, ``value``), sorted by
    tag then step; the same rows as ``tbparse.SummaryReader(event_file).scalars`` (a test checks this).

    Only ``events.out.tfevents.*`` files in the folder itself are read (not checkpoints, videos or sub-folders).
    A resumed run starts its event file with a purge mark at its checkpoint's step (``SummaryWriter(purge_step=)``):
    as in TensorBoard, everything written before the mark at that step or later (the interrupted segment's steps
    after its checkpoint) is dropped. When a step of a tag was still logged twice, the later write wins. The records
    are parsed here
    without checksums because tbparse (via TensorBoard's pure-Python CRC32C) needs about 9 s for a 2M-step MT10 run,
    this about 0.4 s.

    :param keep: tags to keep (default: all).
    """
    rows: list[tuple[int, str, float, float]] = []
    purges: list[tuple[float, int]] = []  # (wall time, step) of each resume's purge mark
    for f in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        for event in _iter_event_file(f):
            if event.HasField("session_log") and event.session_log.status == _SESSION_START:
                purges.append((event.wall_time, event.step))
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if keep is not None and not keep(value.tag):
                    continue
                number = _scalar_value(value)
                if number is not None:
                    rows.append((event.step, value.tag, number, event.wall_time))
    df = pd.DataFrame(rows, columns=["step", "tag", "value", "wall_time"])
    for wall, step in purges:
        df = df[~((df["wall_time"] < wall) & (df["step"] >= step))]
    df = df.sort_values("wall_time", kind="stable").drop_duplicates(["tag", "step"], keep="last")
    return df.sort_values(["tag", "step"], kind="stable").reset_index(drop=True)[["step", "tag", "value"]]


FINAL_WINDOW = 0.1
"""Final success averages the evaluations in this last fraction of a run's steps."""


def final_rule(window: float = FINAL_WINDOW) -> str:
    """The final-success rule in words, for tables, plots and messages."""
    return f"mean of the evaluations in the last {window:.0%} of the run's steps (at least its last evaluation)"


def final_mask(
    steps: Sequence[int] | np.ndarray, total_steps: float | None, window: float = FINAL_WINDOW
) -> np.ndarray:
    """Which evaluations count into the final value: those at steps ``>= (1 - window) * total_steps`` (total: the
    run's ``total_steps``, or its last evaluation's step when unknown), and always the last one."""
    arr = np.asarray(steps, dtype=float)
    if arr.size == 0:
        raise ValueError("no evaluations")
    total = float(total_steps) if total_steps else float(arr[-1])
    mask = arr >= (1.0 - window) * total
    mask[-1] = True
    return mask


def final_success(
    steps: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    total_steps: float | None,
    window: float = FINAL_WINDOW,
) -> float:
    """Mean of the evaluations in the last ``window`` of the run's steps (:func:`final_mask`); never the max over
    training, and never the whole curve of a short run."""
    return float(np.asarray(values, dtype=float)[final_mask(steps, total_steps, window)].mean())


def load_run(run_dir: str | Path, final_window: float = FINAL_WINDOW) -> Run:
    """Read one run: config, meta, evaluation curve, per-task finals, steps/s and wall-clock.

    :raises ValueError: with a one-line reason when the run cannot be used (bad YAML, no evaluations).
    """
    path = Path(run_dir)
    try:
        config = _read_yaml(path / "config.yaml")
        meta = _read_yaml(path / "meta.yaml")
    except (yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"unreadable config.yaml/meta.yaml ({str(exc).splitlines()[0]})") from None
    df = read_scalars(path, keep=lambda tag: tag.startswith(SUCCESS_TAG) or tag == SPS_TAG)
    succ = df[df["tag"] == SUCCESS_TAG]
    if succ.empty:
        raise ValueError(f"no evaluations (no '{SUCCESS_TAG}' scalars in its event files)")
    steps = succ["step"].to_numpy(dtype=np.int64)
    success = succ["value"].to_numpy(dtype=float)
    total = config.get("total_steps")
    total = total if isinstance(total, (int, float)) and not isinstance(total, bool) else None
    task_final = {
        tag[len(TASK_SUCCESS_PREFIX) :]: final_success(g["step"].to_numpy(), g["value"].to_numpy(), total, final_window)
        for tag, g in df[df["tag"].str.startswith(TASK_SUCCESS_PREFIX)].groupby("tag", sort=True)
    }
    sps_values = df.loc[df["tag"] == SPS_TAG, "value"]
    wall = meta.get("wall_clock_s")
    return Run(
        path=path,
        config=config,
        meta=meta,
        steps=steps,
        success=success,
        task_final=task_final,
        final=final_success(steps, success, total, final_window),
        n_final=int(final_mask(steps, total, final_window).sum()),
        sps=float(sps_values.mean()) if len(sps_values) else None,
        wall_clock_s=float(wall) if isinstance(wall, (int, float)) and not isinstance(wall, bool) else None,
        has_hparams=any(path.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}")),
    )


# ------------------------------------------------------------------------------------------------ statistics


def iqm(scores: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: mean of the middle 50% of the values, ``int(n / 4)`` cut from each end.

    The same value as ``rliable.metrics.aggregate_iqm`` (scipy's ``trim_mean(x, 0.25)``), without scipy's
    per-call overhead (0.4 ms), which dominates a bootstrap.
    """
    arr = np.sort(np.asarray(scores, dtype=float).ravel())
    cut = int(0.25 * arr.size)
    return float(arr[cut : arr.size - cut].mean())


def probability_of_improvement(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """P(X > Y) for a random run of X and a random run of Y, ties counting 1/2.

    The Mann-Whitney U statistic over ``n m``: the same value as ``rliable.metrics.probability_of_improvement`` on
    one task, computed directly (scipy's ``mannwhitneyu`` costs about 2 ms a call, too slow inside a bootstrap).
    """
    a, b = np.asarray(x, dtype=float)[:, None], np.asarray(y, dtype=float)[None, :]  # [n, 1], [1, m]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def bootstrap_ci(
    func: Callable[..., float],
    *samples: Sequence[float] | np.ndarray,
    reps: int = 2000,
    seed: int = 0,
    size: float = 0.95,
) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap CI of ``func(*samples)``, resampling each sample independently.

    This is rliable's stratified bootstrap (``get_interval_estimates``, method ``percentile``) for one task:
    each sample (the final scores of one method's seeds) is resampled with replacement, ``reps`` times.

    :param func: statistic of one or more 1-D samples, e.g. :func:`iqm` or :func:`probability_of_improvement`.
    :param samples: one 1-D array of per-seed scores per argument of ``func``.
    :param reps: bootstrap replications.
    :param seed: seed of the resampling generator.
    :param size: coverage of the interval.
    :return: ``(point, low, high)``.
    """
    arrays = [np.asarray(s, dtype=float) for s in samples]
    rng = np.random.default_rng(seed)
    point = float(func(*arrays))
    stats = np.empty(reps)
    for r in range(reps):
        stats[r] = func(*(a[rng.integers(0, a.size, a.size)] for a in arrays))
    low, high = np.percentile(stats, [50.0 * (1.0 - size), 50.0 * (1.0 + size)])
    return point, float(low), float(high)


def mean_curve_ci(
    curves: np.ndarray, reps: int = 2000, seed: int = 0, size: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds of learning curves and a percentile bootstrap band over seeds.

    :param curves: [S, T] success per seed and evaluation step; NaN where a seed has no value.
    :return: mean [T], low [T], high [T].
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, curves.shape[0], (reps, curves.shape[0]))  # [R, S]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(curves, axis=0)
        boot = np.nanmean(curves[idx], axis=1)  # [R, T]
        low, high = np.nanpercentile(boot, [50.0 * (1.0 - size), 50.0 * (1.0 + size)], axis=0)
    return mean, low, high


# ------------------------------------------------------------------------------------------------ methods and settings


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


def _fmt_value(v: Any) -> str:
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
                    opts.append(f"{opt}{_fmt_value(v)}" if v is not True else opt)
                continue
            if defaults and k in defaults and defaults[k] == v:
                continue
            if not defaults and isinstance(v, (int, float)) and v == 0:
                continue
            m = re.match(r"^agent\.(actor|critic)\.(.+)$", k)
            leaf = k.rsplit(".", 1)[-1]
            abbr = _ABBREV.get(leaf, leaf)
            token = abbr if v is True else (f"{abbr}-{v}" if isinstance(v, str) else f"{abbr}{_fmt_value(v)}")
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


def _is_plain_mean(cfg: dict[str, Any]) -> bool:
    if _agent_name(cfg) is not None or _combiner(cfg) != "mean":
        return False
    return not any(cfg[k] for k in cfg if k.rsplit(".", 1)[-1] in REGULARIZERS)


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


def _setting_key(cfg: dict[str, Any]) -> tuple[str, ...]:
    return tuple(repr(cfg.get(k)) for k in SETTING_KEYS)


# ------------------------------------------------------------------------------------------------ comparison


@dataclass
class MethodResult:
    """Aggregate of one method's seeds within one setting."""

    label: str
    runs: list[Run]
    """Runs ordered by seed."""
    finals: np.ndarray
    """Final success per seed (same order as ``runs``). [S]"""
    iqm: float
    iqm_ci: tuple[float, float]
    mean: float
    poi: float | None
    """P(a run of this method beats a run of the baseline); None for the baseline itself."""
    poi_ci: tuple[float, float] | None
    sps: float | None
    wall_clock_s: float | None
    task_final: dict[str, float]
    """Mean over seeds of each task's final success."""
    config: dict[str, Any]
    """Values of the method-defining keys (those that differ between methods of the setting)."""

    @property
    def seeds(self) -> list[Any]:
        return [r.seed for r in self.runs]


@dataclass
class SettingResult:
    """One setting (benchmark, protocol, budget, ...) and its methods."""

    description: str
    config: dict[str, Any]
    """Values of the setting keys."""
    methods: list[MethodResult]
    """Baseline first, then by label."""
    baseline: str
    method_keys: list[str]
    """Config keys that differ between the runs of this setting (they define the methods)."""
    out_dir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def n_runs(self) -> int:
        return sum(len(m.runs) for m in self.methods)


@dataclass
class Comparison:
    settings: list[SettingResult]
    """Main setting (most runs) first."""
    set_apart: list[SetApart]
    final_window: float
    reps: int
    seed: int
    summary: str = ""
    """Markdown written to ``summary.md``."""
    files: list[Path] = field(default_factory=list)


def _seed_sort_key(run: Run) -> tuple[int, Any]:
    s = run.seed
    return (0, s) if isinstance(s, (int, float)) else (1, str(s))


def _aggregate_setting(
    runs: list[Run], baseline: str | None, reps: int, seed: int, out_dir: Path
) -> tuple[SettingResult, list[SetApart]]:
    configs = [r.config for r in runs]
    labels = method_labels(configs)
    method_keys = differing_keys(configs, exclude=set(SETTING_KEYS) | NOT_METHOD_KEYS)
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(repr(run.config.get(k)) for k in method_keys), []).append(run)
    label_by_run = {id(run): label for run, label in zip(runs, labels, strict=True)}
    label_of: dict[tuple[str, ...], str] = {}
    for sig, members in groups.items():
        label = label_by_run[id(members[0])]
        while label in label_of.values():  # two configs that format alike: keep them apart anyway
            label += "'"
        label_of[sig] = label

    set_apart: list[SetApart] = []
    notes: list[str] = []
    by_label: dict[str, list[Run]] = {}
    for sig, members in groups.items():
        kept: dict[str, Run] = {}
        for run in sorted(members, key=lambda r: (str(r.meta.get("start_time", "")), r.path.stat().st_mtime)):
            key = repr(run.seed)
            if key in kept:
                set_apart.append(
                    SetApart(kept[key].path, f"duplicate of seed {run.seed} of method {label_of[sig]}: kept {run.path}")
                )
            kept[key] = run
        by_label[label_of[sig]] = sorted(kept.values(), key=_seed_sort_key)

    plain = [lab for lab, rs in by_label.items() if _is_plain_mean(rs[0].config)]
    if baseline is None or baseline not in by_label:
        if baseline is not None:
            notes.append(f"baseline '{baseline}' is not a method of this setting; using the default instead")
        baseline = min(plain, key=lambda s: (len(s), s)) if plain else sorted(by_label)[0]
    order = [baseline, *sorted(lab for lab in by_label if lab != baseline)]

    base_finals = np.array([r.final for r in by_label[baseline]])
    methods = []
    for i, label in enumerate(order):
        members = by_label[label]
        finals = np.array([r.final for r in members])
        point, low, high = bootstrap_ci(iqm, finals, reps=reps, seed=seed + i)
        poi = poi_ci = None
        if label != baseline:
            p, plo, phi = bootstrap_ci(probability_of_improvement, finals, base_finals, reps=reps, seed=seed + 1000 + i)
            poi, poi_ci = p, (plo, phi)
        sps = [r.sps for r in members if r.sps is not None]
        wall = [r.wall_clock_s for r in members if r.wall_clock_s is not None]
        tasks = sorted({t for r in members for t in r.task_final})
        task_final = {t: float(np.mean([r.task_final[t] for r in members if t in r.task_final])) for t in tasks}
        methods.append(
            MethodResult(
                label=label,
                runs=members,
                finals=finals,
                iqm=point,
                iqm_ci=(low, high),
                mean=float(finals.mean()),
                poi=poi,
                poi_ci=poi_ci,
                sps=float(np.mean(sps)) if sps else None,
                wall_clock_s=float(np.mean(wall)) if wall else None,
                task_final=task_final,
                config={k: members[0].config.get(k) for k in method_keys},
            )
        )
    setting_cfg = {k: runs[0].config.get(k) for k in SETTING_KEYS}
    result = SettingResult(
        description=describe_setting(runs[0].config),
        config=setting_cfg,
        methods=methods,
        baseline=baseline,
        method_keys=method_keys,
        out_dir=out_dir,
        notes=notes,
    )
    return result, set_apart


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "setting"


def compare(
    paths: Sequence[str | Path],
    out: str | Path = "compare",
    final_window: float = FINAL_WINDOW,
    baseline: str | None = None,
    reps: int = 2000,
    seed: int = 0,
    include_unfinished: bool = False,
    hparams: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Comparison:
    """Read runs, group them by setting and method, aggregate seeds, write plots and ``summary.md`` into ``out``.

    :param paths: run directories, or folders searched recursively for them.
    :param out: output folder; the main setting (most runs) writes there, other settings into sub-folders.
    :param final_window: final success = mean of the evaluations in this last fraction of each run's steps (at least
        its last evaluation; :func:`final_success`).
    :param baseline: method label that P(improvement) is measured against; None = plain ``mean`` if present.
    :param reps: bootstrap replications.
    :param seed: seed of the bootstrap.
    :param include_unfinished: keep runs whose last evaluation is before 95% of ``total_steps``.
    :param hparams: write an HParams summary (:func:`write_hparams`) into runs that lack one.
    :param warn: called with one-line warnings (default: print to stderr).
    :raises CompareError: no runs found, a path is missing, or no run has evaluations.
    """
    warn = warn or (lambda msg: print(f"mtrl compare: warning: {msg}", file=sys.stderr))
    if not 0.0 < final_window <= 1.0:
        raise CompareError(f"--final-window: got {final_window}, expected a fraction in (0, 1]")
    if reps < 1:
        raise CompareError(f"--reps: got {reps}, expected a positive integer")
    out = Path(out)
    set_apart: list[SetApart] = []
    runs: list[Run] = []
    for run_dir in find_runs(paths):
        try:
            run = load_run(run_dir, final_window)
        except ValueError as exc:
            warn(f"{run_dir}: {exc}; set apart")
            set_apart.append(SetApart(run_dir, str(exc)))
            continue
        total = run.config.get("total_steps")
        if not include_unfinished and isinstance(total, int) and run.steps[-1] < 0.95 * total:
            reason = f"unfinished: last evaluation at step {run.steps[-1]:,} of total_steps {total:,}"
            warn(f"{run_dir}: {reason}; set apart (--include-unfinished keeps it)")
            set_apart.append(SetApart(run_dir, reason))
            continue
        runs.append(run)
    if not runs:
        raise CompareError(f"none of the {len(set_apart)} runs can be compared (see the warnings above)")

    by_setting: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        by_setting.setdefault(_setting_key(run.config), []).append(run)
    ordered = sorted(by_setting.values(), key=lambda rs: (-len(rs), describe_setting(rs[0].config)))
    main_cfg = ordered[0][0].config

    settings: list[SettingResult] = []
    for i, group in enumerate(ordered):
        diff = [k for k in SETTING_KEYS if repr(group[0].config.get(k)) != repr(main_cfg.get(k))]
        sub = "" if i == 0 else _slug("__".join(f"{k.split('.')[-1]}-{group[0].config.get(k)}" for k in diff))
        setting, dupes = _aggregate_setting(group, baseline, reps, seed, out / sub if sub else out)
        settings.append(setting)
        set_apart.extend(dupes)
        if i > 0:
            what = ", ".join(f"{k}={group[0].config.get(k)} (main: {main_cfg.get(k)})" for k in diff)
            for run in group:
                set_apart.append(
                    SetApart(run.path, f"different setting: {what}; compared separately in {setting.out_dir}/")
                )
    if baseline is not None and all(s.baseline != baseline for s in settings):
        available = sorted({m.label for s in settings for m in s.methods})
        raise CompareError(f"--baseline '{baseline}' is not one of the methods: {', '.join(available)}")
    for setting in settings:
        for note in setting.notes:
            warn(f"{setting.description}: {note}")

    result = Comparison(settings=settings, set_apart=set_apart, final_window=final_window, reps=reps, seed=seed)
    for setting in settings:
        setting.out_dir.mkdir(parents=True, exist_ok=True)
        path = setting.out_dir / "success_curves.png"
        result.files.append(plot_success_curves(setting, path, final_window, reps, seed))
        result.files.append(plot_iqm(setting, setting.out_dir / "iqm.png", final_window))
    result.summary = summary_markdown(result, out)
    summary_path = out / "summary.md"
    summary_path.write_text(result.summary)
    result.files.append(summary_path)
    if hparams:
        for setting in settings:
            for m in setting.methods:
                for run in m.runs:
                    if not run.has_hparams:
                        metrics = {
                            "final_success": run.final,
                            **{f"final_success/{t}": v for t, v in run.task_final.items()},
                        }
                        write_hparams(run.path, run.config, metrics, step=int(run.steps[-1]))
    return result


# ------------------------------------------------------------------------------------------------ plots


def _steps_fmt(x: float, _pos: Any = None) -> str:
    if abs(x) >= 1e6:
        return f"{x / 1e6:g}M"
    if abs(x) >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def _wrap(text: str, width: int) -> str:
    """Wrap a `` · ``-separated description between its parts, lines at most ``width`` characters where possible."""
    lines: list[str] = []
    for part in text.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return "\n".join(lines)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _seeds_phrase(setting: SettingResult) -> str:
    counts = {len(m.runs) for m in setting.methods}
    return f"{_plural(counts.pop(), 'seed')} per method" if len(counts) == 1 else "seeds per method in the legend"


def plot_success_curves(
    setting: SettingResult, path: Path, final_window: float = FINAL_WINDOW, reps: int = 2000, seed: int = 0
) -> Path:
    """Mean success rate over tasks against environment steps per task: one line per method, mean over seeds with
    a shaded 95% bootstrap band across seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(9.5, 5.8), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for m, color in zip(setting.methods, _colors(len(setting.methods)), strict=True):
        grid = np.unique(np.concatenate([r.steps for r in m.runs]))
        curves = np.stack([np.interp(grid, r.steps, r.success, left=np.nan, right=np.nan) for r in m.runs])
        mean, low, high = mean_curve_ci(curves, reps=reps, seed=seed)
        base = " (baseline)" if m.label == setting.baseline else ""
        ax.plot(grid, mean, color=color, lw=2, label=f"{m.label}{base}, n={len(m.runs)}")
        if len(m.runs) > 1:
            ax.fill_between(grid, low, high, color=color, alpha=0.2, lw=0)
    ax.set_xlabel("environment steps per task")
    ax.set_ylabel("success rate (mean over tasks)")
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_formatter(FuncFormatter(_steps_fmt))
    ax.grid(alpha=0.3)
    ax.legend(title="method, seeds", loc="best", fontsize=9)
    ax.set_title(
        f"{_wrap(setting.description, 100)}\nSuccess rate during training ({_seeds_phrase(setting)}): "
        "line = mean over seeds, band = 95% bootstrap CI over seeds",
        fontsize=10,
    )
    fig.supxlabel(
        "Each point: success rate at one evaluation (eval/success_rate = fraction of tasks solved, averaged over "
        f"tasks).\nIn iqm.png and summary.md, final success = {final_rule(final_window)}.",
        fontsize=8,
        color="0.35",
    )
    fig.savefig(path)
    return path


def plot_iqm(setting: SettingResult, path: Path, final_window: float = FINAL_WINDOW) -> Path:
    """Horizontal interval plot of the IQM of final success with 95% CI and the seeds as dots; next to it the
    probability of improvement over the baseline with 95% CI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = setting.methods
    with_poi = len(methods) > 1
    height = 2.2 + 0.55 * len(methods)
    fig = Figure(figsize=(12 if with_poi else 7.5, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True, width_ratios=[1.3, 1]) if with_poi else [fig.add_subplot()]
    colors = _colors(len(methods))
    ys = np.arange(len(methods))
    ax = axes[0]
    for y, m, color in zip(ys, methods, colors, strict=True):
        ax.hlines(y, *m.iqm_ci, color=color, lw=6, alpha=0.45)
        ax.plot([m.iqm], [y], "|", color=color, ms=22, mew=3)
        jitter = np.linspace(-0.12, 0.12, len(m.finals)) if len(m.finals) > 1 else np.zeros(1)
        ax.scatter(m.finals, y + 0.22 + jitter * 0.4, s=14, color="0.25", zorder=3)
    ax.set_yticks(ys, [f"{m.label} (n={len(m.runs)})" for m in methods])
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(f"final success rate (mean over tasks; evaluations in the last {final_window:.0%} of steps)")
    ax.set_title("IQM over seeds: bar = 95% bootstrap CI, tick = IQM, dots = seeds", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if with_poi:
        ax2 = axes[1]
        for y, m, color in zip(ys, methods, colors, strict=True):
            if m.poi is None or m.poi_ci is None:
                ax2.text(0.02, float(y), "baseline (the reference)", ha="left", va="center", fontsize=9, color="0.35")
                continue
            ax2.hlines(y, *m.poi_ci, color=color, lw=6, alpha=0.45)
            ax2.plot([m.poi], [y], "|", color=color, ms=22, mew=3)
        ax2.axvline(0.5, color="0.4", ls="--", lw=1)
        ax2.set_xlim(-0.02, 1.02)
        ax2.set_xlabel(f"P(final success of a run > that of a run of {setting.baseline})")
        ax2.set_title(f"Probability of improvement over {setting.baseline} (0.5 = no difference)", fontsize=10)
        ax2.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"{_wrap(setting.description, 120)}\nFinal success = {final_rule(final_window)} "
        "(not the max over training); IQM = mean of the middle 50% of seeds",
        fontsize=10,
    )
    fig.savefig(path)
    return path


# ------------------------------------------------------------------------------------------------ markdown


def _f2(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def methods_table(setting: SettingResult) -> str:
    """The per-method markdown table of one setting."""
    header = [
        "method",
        "seeds",
        "IQM final [95% CI]",
        "mean final",
        "per-seed finals (by seed)",
        f"P(improve over {setting.baseline}) [95% CI]",
        "steps/s",
        "wall-clock",
    ]
    rows = []
    for m in setting.methods:
        poi = "baseline" if m.poi is None or m.poi_ci is None else f"{m.poi:.2f} [{m.poi_ci[0]:.2f}, {m.poi_ci[1]:.2f}]"
        rows.append(
            [
                f"`{m.label}`",
                str(len(m.runs)),
                f"{m.iqm:.2f} [{m.iqm_ci[0]:.2f}, {m.iqm_ci[1]:.2f}]",
                f"{m.mean:.2f}",
                " ".join(f"{v:.2f}" for v in m.finals),
                poi,
                "n/a" if m.sps is None else f"{m.sps:,.0f}",
                _duration(m.wall_clock_s),
            ]
        )
    return _table(header, rows)


def task_table(setting: SettingResult) -> str:
    """Per-task final success (mean over seeds), one column per method; empty string when no per-task scalars."""
    tasks = sorted({t for m in setting.methods for t in m.task_final})
    if not tasks:
        return ""
    rows = [[t] + [_f2(m.task_final.get(t)) for m in setting.methods] for t in tasks]
    return _table(["task"] + [f"`{m.label}`" for m in setting.methods], rows)


def _rel(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def summary_markdown(result: Comparison, out: Path) -> str:
    """The full ``summary.md``: explanation, one section per setting, the runs set apart."""
    lines = [
        "# Run comparison",
        "",
        f"- **final success** of a run = {final_rule(result.final_window)}, of `{SUCCESS_TAG}` (success rate "
        "averaged over tasks); never the max over training.",
        "- **IQM** = interquartile mean over seeds (mean of the middle 50% of per-seed finals), with a 95% "
        f"percentile bootstrap CI over seeds ({result.reps} resamples, seed {result.seed}).",
        "- **P(improve)** = probability that a random run of the method ends with a higher final success than a "
        "random run of the baseline (ties count 1/2), with a 95% bootstrap CI; 0.5 = no difference.",
        f"- **steps/s** = mean of `{SPS_TAG}` (vector-env steps per second); **wall-clock** = training time per run "
        "from meta.yaml, mean over seeds.",
        "- Runs of different settings (benchmark, protocol, reward version, episode length, step budget, evaluation "
        "schedule) are never pooled; each setting has its own section.",
        "",
    ]
    for s in result.settings:
        rel = _rel(s.out_dir, out)
        prefix = "" if rel in ("", ".") else rel + "/"
        lines += [
            f"## {s.description}",
            "",
            f"{_plural(s.n_runs, 'run')}, {_plural(len(s.methods), 'method')}. Baseline: `{s.baseline}`. "
            + (
                f"Methods differ in: {', '.join(f'`{k}`' for k in s.method_keys)}."
                if s.method_keys
                else "All runs share one configuration apart from the seed."
            ),
            "",
            f"![success rate during training]({prefix}success_curves.png)",
            "",
            f"![IQM of final success]({prefix}iqm.png)",
            "",
            methods_table(s),
            "",
        ]
        if s.method_keys:
            lines += ["Method labels:", ""]
            for m in s.methods:
                values = ", ".join(f"`{k}={_fmt_value(v) if v is not None else 'unset'}`" for k, v in m.config.items())
                lines.append(f"- `{m.label}`: {values}; seeds {', '.join(map(str, m.seeds))}")
            lines.append("")
        small = [m.label for m in s.methods if len(m.runs) < 5]
        if small:
            lines += [f"Fewer than 5 seeds (wide, unreliable CIs): {', '.join(f'`{x}`' for x in small)}.", ""]
        tt = task_table(s)
        if tt:
            window = f"{result.final_window:.0%}"
            lines += [
                f"### Per-task final success (mean over seeds; evaluations in the last {window} of steps)",
                "",
                tt,
                "",
            ]
        lines += [f"Note: {note}." for note in s.notes]
    lines += ["## Runs set apart", ""]
    if result.set_apart:
        lines += [f"- `{a.path}`: {a.reason}" for a in result.set_apart]
    else:
        lines.append("None.")
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ HParams


# ------------------------------------------------------------------------------------------------ CLI


@dataclass(frozen=True)
class CompareArgs:
    """Compare training runs of mtrl.

    - per method: final success per seed, IQM over seeds with 95% bootstrap CIs, probability of improvement over
      a baseline, per-task success, steps/s and wall-clock
    - methods: runs grouped by the config keys that differ between them (seed excluded)
    - runs of different settings (benchmark, protocol, reward version, episode length, total_steps, evaluation
      schedule) are never pooled but compared separately
    - writes success_curves.png, iqm.png and summary.md into --out and prints the summary table
    - example: mtrl compare runs/ --final-window 0.1 --out compare/"""

    runs: tyro.conf.Positional[tuple[str, ...]]
    """Run directories, or folders searched recursively for them."""
    final_window: float = FINAL_WINDOW
    """Final success = mean of the evaluations in this last fraction of each run's steps, at least its last
    evaluation (never the max over training)."""
    out: str = "compare"
    """Output folder."""
    baseline: str = ""
    """Method label for P(improvement); empty: plain `mean` without regularizers if present, else the first."""
    reps: int = 2000
    """Bootstrap replications."""
    seed: int = 0
    """Seed of the bootstrap."""
    include_unfinished: bool = False
    """Also compare runs whose last evaluation is before 95% of total_steps (set apart by default)."""
    write_hparams: bool = False
    """Write a TensorBoard HParams summary (config + final success) into runs that lack one."""


def cli(argv: list[str]) -> int:
    """``mtrl compare``: returns the exit code (0 ok, 2 user error with a one-line message on stderr)."""
    from mtrl.config import ConfigError, parse
    from mtrl.rundir import check_output_dir

    try:
        try:
            args = parse(CompareArgs, argv, prog="mtrl compare", flags=True, hyphens=True)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        if not args.runs:
            raise ConfigError("runs: give at least one run directory or folder of runs")
        if args.seed < 0:
            raise ConfigError(f"--seed: got {args.seed}, expected an integer >= 0")
        check_output_dir(args.out, "--out")
        result = compare(
            args.runs,
            out=args.out,
            final_window=args.final_window,
            baseline=args.baseline or None,
            reps=args.reps,
            seed=args.seed,
            include_unfinished=args.include_unfinished,
            hparams=args.write_hparams,
        )
    except (CompareError, ConfigError) as exc:
        print(f"mtrl compare: error: {exc}", file=sys.stderr)
        return 2
    for s in result.settings:
        print(f"\n## {s.description}\n")
        print(methods_table(s))
        print(f"\nplots: {s.out_dir / 'success_curves.png'}, {s.out_dir / 'iqm.png'}")
    if result.set_apart:
        print(f"\n{_plural(len(result.set_apart), 'run')} set apart:")
        for a in result.set_apart:
            print(f"  {a.path}: {a.reason}")
    print(f"\nfinal = {final_rule(result.final_window)}; summary: {Path(args.out) / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
