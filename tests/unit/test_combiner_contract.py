"""What every combiner of the registry satisfies: the config contract (``name``, ``kind``, ``check``, ``build``,
``str()``), the input checks of ``Combiner.__call__``, non-finite inputs, degenerate Jacobians, stats, scale and
symmetry properties, state and seeding, column blocks, and pinned values.

Each combiner's own math is tested in ``test_combiner_<name>.py``; the independent torchjd oracle lives in
``test_combiner_oracle.py``, the invariants on hard Jacobians in ``test_combiner_invariants.py``. Math tests run in
float64.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np
import pytest
import torch
from combiner_helpers import F64, GRAD_NAMES, LOSS_NAMES, NAMES, build, degenerate, normal, reloaded, run
from docs_helper import field_docs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from mtrl.mto import COMBINERS, Combiner, CombinerConfigBase, NonFiniteError, Weighting
from mtrl.mto.adam import VectorAdam
from mtrl.mto.base import PARTS
from mtrl.mto.gramian import GramianCombiner

# ----------------------------------------------------------------------------------------------------- contract

ALLOWED_TYPES = (int, float, bool, str)


@pytest.mark.parametrize("name", NAMES)
def test_config_contract(name: str) -> None:
    cfg_cls = COMBINERS[name]
    assert dataclasses.is_dataclass(cfg_cls) and cfg_cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    cfg = cfg_cls()
    docs = field_docs(cfg_cls)
    hints = typing.get_type_hints(cfg_cls)
    for f in dataclasses.fields(cfg_cls):
        assert docs.get(f.name), f"{name}.{f.name} has no docstring"
        tp = hints[f.name]
        origin = typing.get_origin(tp)
        assert tp in ALLOWED_TYPES or origin in (typing.Literal, tuple), f"{name}.{f.name}: type {tp}"
    for k in (1, 3):
        cfg.check(k, frozenset({"critic"}))
        comb = cfg.build(k, seed=3)
        assert isinstance(comb, Combiner)
        assert comb.num_tasks == k
        text = str(comb)
        assert text.startswith(name.split("_")[0]) and len(text) <= 32
        assert " " not in text and "__" not in text and "/" not in text


@pytest.mark.parametrize("name", NAMES)
def test_config_loader_round_trip(name: str) -> None:
    from mtrl.config import from_flat, to_flat

    extra = {"combine_actor": False} if name == "famo" else {}  # famo is critic-only (actor losses are unbounded)
    cfg = from_flat({"combiner": name, **extra})
    assert type(cfg.combiner) is COMBINERS[name]
    flat = to_flat(cfg)
    assert flat["combiner"] == name
    assert from_flat(flat).combiner == cfg.combiner


def test_str_names() -> None:
    assert str(build("pcgrad", 3)) == "pcgrad"
    assert str(build("cagrad", 3)) == "cagrad-c0.4"
    assert str(build("cagrad", 3, c=0.9, solver="sgd20")) == "cagrad-c0.9-sgd20"
    assert str(build("cagrad_fast", 3, c=0.5, k=8)) == "cagrad_fast-c0.5-k8"
    assert str(build("nashmtl", 3)) == "nashmtl"
    assert str(build("nashmtl", 3, update_every=5)) == "nashmtl-u5"
    assert str(build("famo", 3)) == "famo"


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("cagrad", {"c": -1.0}, "combiner.c: got -1.0, expected a number >= 0"),
        ("cagrad_fast", {"k": 0}, "combiner.k: got 0"),
        ("nashmtl", {"update_every": 0}, "combiner.update_every: got 0"),
        ("nashmtl", {"max_norm": -1.0}, "combiner.max_norm: got -1.0"),
        ("graddrop", {"leak": 1.5}, "combiner.leak: got 1.5"),
        ("famo", {"lr": 0.0}, "combiner.lr: got 0.0"),
        ("uw", {"lr": -1.0}, "combiner.lr: got -1.0"),
        ("dwa", {"window": 0}, "combiner.window: got 0"),
        ("dwa", {"temperature": 0.0}, "combiner.temperature: got 0.0"),
        ("gradnorm", {"alpha": -1.0}, "combiner.alpha: got -1.0"),
        ("fixed", {"weights": (1.0, -1.0)}, "combiner.weights: got -1.0"),
        ("gradvac", {"beta": 1.5}, "combiner.beta: got 1.5"),
        ("fairgrad", {"alpha": -1.0}, "combiner.alpha: got -1.0"),
    ],
)
def test_check_messages(name: str, options: dict, message: str) -> None:
    cfg = COMBINERS[name](**options)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg.check(3, frozenset())
    with pytest.raises(ValueError):
        cfg.build(3)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_shapes_rejected(name: str) -> None:
    comb = build(name, 3)
    with pytest.raises(ValueError):
        comb(torch.randn(4, 5) if comb.requires_grads else None, torch.rand(4))
    if comb.requires_grads:
        with pytest.raises(ValueError, match="needs the per-task gradients"):
            comb(None, torch.rand(3))


#: the registry, in command-line order
REGISTRY = [
    "mean",
    "sum",
    "fixed",
    "rlw",
    "uw",
    "dwa",
    "famo",
    "imtll",
    "stch",
    "gls",
    "gradnorm",
    "pcgrad",
    "cagrad",
    "cagrad_fast",
    "mgda",
    "imtlg",
    "graddrop",
    "nashmtl",
    "alignedmtl",
    "upgrad",
    "dualproj",
    "con_fig",
    "gradvac",
    "fairgrad",
    "sdmgrad",
    "modo",
    "excessmtl",
    "crmogm",
    "moco",
    "dbmtl",
]


def test_registry_names_and_kinds() -> None:
    """One registry: ``name -> config class``, keyed by the class's own ``name``; ``kind`` agrees with the combiner;
    ``name`` and ``kind`` are class variables, not dataclass fields (so not command-line options)."""
    assert list(COMBINERS) == REGISTRY
    for name, cls in COMBINERS.items():
        assert issubclass(cls, CombinerConfigBase) and cls.name == name
        assert cls.kind == ("gradient" if cls().build(2).requires_grads else "loss")
        assert not {"name", "kind"} & {f.name for f in dataclasses.fields(cls)}


def option_types(name: str) -> dict[str, typing.Any]:
    """``{option: its type}`` of a combiner config (its dataclass fields)."""
    hints = typing.get_type_hints(COMBINERS[name])
    return {f.name: hints[f.name] for f in dataclasses.fields(COMBINERS[name])}


OPTIONS = [(name, option) for name in NAMES for option in option_types(name)]
FLOAT_OPTIONS = [(name, option) for name, option in OPTIONS if option_types(name)[option] is float]
LITERAL_OPTIONS = [(n, o) for n, o in OPTIONS if typing.get_origin(option_types(n)[o]) is typing.Literal]


def bad_value(tp: typing.Any) -> typing.Any:
    """A value that no option of type ``tp`` accepts."""
    if tp is float:
        return math.nan
    if tp is int:
        return 0
    if typing.get_origin(tp) is tuple:
        return (-1.0,)
    return "nope"


@pytest.mark.parametrize(("name", "option"), OPTIONS)
def test_check_rejects_a_bad_value_of_every_option(name: str, option: str) -> None:
    """Every option is checked: ``check`` and ``build`` reject a bad value with a one-line message naming it."""
    cfg = COMBINERS[name](**{option: bad_value(option_types(name)[option])})
    with pytest.raises(ValueError, match=rf"^combiner\.{option}: got [^\n]*, expected [^\n]+$"):
        cfg.check(3, frozenset())
    with pytest.raises(ValueError, match=rf"^combiner\.{option}: "):
        cfg.build(3)


@pytest.mark.parametrize(("name", "option"), FLOAT_OPTIONS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_check_rejects_non_finite_options(name: str, option: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"^combiner\.{option}: got {value}, expected "):
        COMBINERS[name](**{option: value}).check(3, frozenset({"critic"}))


@pytest.mark.parametrize(("name", "option"), LITERAL_OPTIONS)
def test_check_rejects_an_unknown_choice(name: str, option: str) -> None:
    allowed = ", ".join(typing.get_args(option_types(name)[option]))
    with pytest.raises(ValueError, match=rf"^combiner\.{option}: got 'nope', expected one of {allowed}$"):
        COMBINERS[name](**{option: "nope"}).check(3, frozenset())


#: combiners that may be applied to the critic only (their rules need losses bounded below or take their logs)
CRITIC_ONLY = {"famo", "imtll", "stch", "gls", "dbmtl"}


@pytest.mark.parametrize("name", NAMES)
def test_check_num_tasks_and_parts(name: str) -> None:
    """The defaults fit any K; every combiner but the critic-only ones (FAMO, IMTL-L, STCH, GLS, DB-MTL: see their
    ``test_combiner_<name>.py``) fits every part."""
    cfg = COMBINERS[name]()
    for k in (1, 2, 3, 10, 50):
        cfg.check(k, frozenset({"critic"}))
    with pytest.raises(ValueError, match=r"^num_tasks: got 0, expected an integer >= 1$"):
        cfg.check(0, frozenset())
    with pytest.raises(ValueError, match=r"^parts: got 'policy', expected some of critic, actor, alpha$"):
        cfg.check(3, frozenset({"critic", "policy"}))
    if name in CRITIC_ONLY:
        with pytest.raises(ValueError, match=rf"^combine_actor: got true with combiner {name}"):
            cfg.check(3, frozenset(PARTS))
    else:
        cfg.check(3, frozenset(PARTS))


#: bad calls of a combiner built for K=3: (id, gradient-space only, grads ("ok": a valid [3, 5] matrix for
#: gradient-space combiners, None for loss-space ones), losses, the message after "combiner '<str>' ")
BAD_CALLS: list[tuple[str, bool, typing.Any, typing.Any, str]] = [
    ("losses[K+1]", False, "ok", lambda: torch.ones(4), r"expects losses of shape \[3\], got \(4,\)"),
    ("losses[K,1]", False, "ok", lambda: torch.ones(3, 1), r"expects losses of shape \[3\], got \(3, 1\)"),
    ("losses[]", False, "ok", lambda: torch.ones(()), r"expects losses of shape \[3\], got \(\)"),
    ("grads=None", True, lambda: None, lambda: torch.ones(3), r"needs the per-task gradients \[K, P\], got None"),
    ("grads[K+1,P]", True, lambda: torch.ones(4, 5), lambda: torch.ones(3), r"expects grads of shape \[3, P\]"),
    ("grads[P]", True, lambda: torch.ones(5), lambda: torch.ones(3), r"expects grads of shape \[3, P\], got \(5,\)"),
    ("grads[K,P,1]", True, lambda: torch.ones(3, 5, 1), lambda: torch.ones(3), r"expects grads of shape \[3, P\]"),
    (
        "blocks[K,P],[K-1,P]",
        True,
        lambda: [torch.ones(3, 5), torch.ones(2, 4)],
        lambda: torch.ones(3),
        r"expects grads of shape \[3, P\], got \(2, 4\)",
    ),
    ("blocks=[]", True, lambda: [], lambda: torch.ones(3), r"expects grads as \[3, P_i\] blocks, got an empty list"),
]


@pytest.mark.parametrize(
    ("name", "grads", "losses", "message"),
    [
        pytest.param(name, grads, losses, message, id=f"{name}-{case}")
        for name in NAMES
        for case, gradient_only, grads, losses, message in BAD_CALLS
        if name in GRAD_NAMES or not gradient_only
    ],
)
def test_call_checks_the_inputs_before_forward(name: str, grads: typing.Any, losses: typing.Any, message: str) -> None:
    """``Combiner.__call__`` rejects bad shapes and missing gradients for every combiner, before ``forward``."""
    comb = build(name, 3)

    def forward(grads: typing.Any, losses: Tensor) -> typing.Any:
        raise AssertionError("forward called with bad inputs")

    comb.forward = forward  # type: ignore[method-assign]
    grads_in = (torch.ones(3, 5) if comb.requires_grads else None) if grads == "ok" else grads()
    with pytest.raises(ValueError, match=rf"^combiner '{comb}' {message}"):
        comb(grads_in, losses())


@pytest.mark.parametrize("name", NAMES)
def test_call_hands_the_inputs_to_forward_once(name: str) -> None:
    comb = build(name, 3)
    seen = []

    def forward(grads: typing.Any, losses: Tensor) -> str:
        seen.append((grads, losses))
        return "result"

    comb.forward = forward  # type: ignore[method-assign]
    blocks = [torch.ones(3, 5), torch.ones(3, 2)] if comb.requires_grads else None
    losses = torch.ones(3)
    assert comb(blocks, losses) == "result"
    assert len(seen) == 1 and seen[0][0] is blocks and seen[0][1] is losses


@pytest.mark.parametrize(("name", "where"), [(n, "loss") for n in NAMES] + [(n, "grad") for n in GRAD_NAMES])
def test_non_finite_names_combiner_and_task(name: str, where: str) -> None:
    comb = build(name, 4)
    jac = torch.randn(4, 6, dtype=F64)
    losses = torch.rand(4, dtype=F64) + 0.5
    if where == "loss":
        losses[2] = float("nan")
    else:
        jac[2, 3] = float("inf")
    with pytest.raises(NonFiniteError, match=rf"combiner '{comb}'.*task 2"):
        comb(jac if comb.requires_grads else None, losses)


def test_check_finite_fast_path_not_fooled_by_overflowing_sum() -> None:
    comb = build("pcgrad", 2)
    jac = torch.full((2, 4), 3e38, dtype=torch.float32)  # finite entries, infinite row sums
    comb.check_finite(jac, torch.ones(2))  # no error


# ----------------------------------------------------------------------------------------------------- all combiners

K_VALUES = (1, 2, 3, 10, 50)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", K_VALUES)
def test_finite_on_degenerate_inputs(name: str, k: int) -> None:
    for case, jac in degenerate(k).items():
        for scale in (1e-8, 1.0, 1e8):
            comb = build(name, k)
            losses = torch.linspace(0.5, 1.5, k, dtype=F64) * (scale if scale > 1 else 1.0)
            d = run(comb, jac * scale, losses)
            assert d.shape == (jac.shape[1],)
            assert bool(torch.isfinite(d).all()), (name, k, case, scale)
            stats = comb.stats
            assert all(math.isfinite(v) for v in stats.values()), (name, k, case, scale, stats)


#: the direction at K=1 as a multiple of the single gradient g (documented scales)
K1_SCALE = {
    "uw": lambda g: 0.5,
    "cagrad": lambda g: 1.4 / 1.16,
    "cagrad_fast": lambda g: 1.4 / 1.16,
    "nashmtl": lambda g: 1.0 / float(g.norm()),
    "stch": lambda g: 1.0 / 2.0,  # warm-up: 1 / L
    "fairgrad": lambda g: float((g * g).sum()) ** (-2 / 3),  # alpha = 2: w = ||g||^(-2 alpha / (1 + alpha))
    "dbmtl": lambda g: dbmtl_k1_scale(float(g.norm()), loss=2.0),
}


def dbmtl_k1_scale(norm: float, loss: float) -> float:
    """DB-MTL's first call at K=1: ``alpha hat g``, ``hat g = (1 - beta) g / (L + eps)``, ``alpha = u / (u + eps)``."""
    s = (1.0 - 0.9) / (loss + 1e-8)
    return s * (s * norm) / (s * norm + 1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_single_task_returns_the_gradient(name: str) -> None:
    g = torch.tensor([[3.0, -4.0, 1.0, 0.5]], dtype=F64)
    d = run(build(name, 1), g, torch.tensor([2.0], dtype=F64))
    expected = K1_SCALE.get(name, lambda g: 1.0)(g) * g[0]
    torch.testing.assert_close(d, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", GRAD_NAMES)
def test_stats_keys_and_values(name: str) -> None:
    jac = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=F64)
    comb = build(name, 3)
    d = run(comb, jac)
    assert isinstance(comb.stats_tensors["cos_sim_mean"], Tensor)
    stats = comb.stats
    assert stats["num_conflicts"] == 1.0
    assert stats["cos_sim_mean"] == pytest.approx(-1 / math.sqrt(2) / 3)
    assert stats["grad_norm_before"] == pytest.approx(float(jac.mean(0).norm()))
    assert stats["grad_norm_after"] == pytest.approx(float(d.norm()))
    weights = [stats[f"weight/{k}"] for k in range(3) if f"weight/{k}" in stats]
    if name != "graddrop":
        torch.testing.assert_close(torch.tensor(weights, dtype=F64) @ jac, d)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_space_stats_are_weights(name: str) -> None:
    comb = build(name, 3)
    out = comb(None, torch.tensor([1.0, 2.0, 3.0]))
    assert isinstance(out, Weighting)
    if name == "mean":
        return
    assert [comb.stats[f"weight/{k}"] for k in range(3)] == pytest.approx(out.weights.tolist())


def test_stats_conversion_is_lazy() -> None:
    comb = build("pcgrad", 3)
    run(comb, torch.randn(3, 5, dtype=F64))
    assert comb._stats_floats is None  # nothing converted until read
    first = comb.stats
    assert comb.stats is first


@pytest.mark.parametrize(
    "name",
    ["pcgrad", "cagrad", "mgda", "imtlg", "alignedmtl", "cagrad_fast", "upgrad", "dualproj", "con_fig", "gradvac"],
)
def test_positively_homogeneous(name: str) -> None:
    jac = normal(4, 9, seed=1)
    for s in (1e-8, 3.0, 1e8):
        torch.testing.assert_close(run(build(name, 4), s * jac), s * run(build(name, 4), jac), rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "name", ["mgda", "cagrad", "imtlg", "alignedmtl", "nashmtl", "upgrad", "dualproj", "con_fig", "fairgrad"]
)
def test_permutation_invariant(name: str) -> None:
    jac = normal(6, 11, seed=2)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run(build(name, 6), jac[perm]), run(build(name, 6), jac), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in GRAD_NAMES if n != "graddrop"])  # graddrop: U depends on dtype
def test_float32_close_to_float64(name: str) -> None:
    jac = normal(5, 40, seed=3)
    d64 = run(build(name, 5), jac)
    d32 = run(build(name, 5), jac.float()).double()
    tol = 1e-3 if name == "imtlg" else 1e-4  # IMTL-G inverts the Gramian
    assert float((d32 - d64).norm() / d64.norm()) < tol


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(GRAD_NAMES),
    st.integers(1, 8),
    st.integers(1, 8),
    st.integers(0, 10_000),
    st.floats(-8, 8),
)
def test_gradient_space_hypothesis(name: str, k: int, rank: int, seed: int, log_scale: float) -> None:
    """Finite output in the row span (weighted methods: ``d = sum_k weight_k g_k``) on random low-rank J."""
    jac = normal(k, 10, rank=min(rank, k), seed=seed) * 10.0**log_scale
    comb = build(name, k, seed=seed)
    d = run(comb, jac)
    assert bool(torch.isfinite(d).all())
    if name != "graddrop":
        weights = torch.tensor([comb.stats[f"weight/{i}"] for i in range(k)], dtype=F64)
        torch.testing.assert_close(weights @ jac, d, rtol=1e-7, atol=1e-12 * 10.0**log_scale)


# ----------------------------------------------------------------------------------------------------- helpers


def test_vector_adam_matches_torch_adam() -> None:
    p = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    ref = p.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.05, weight_decay=0.01)
    adam = VectorAdam(3, lr=0.05, weight_decay=0.01)
    for step in range(1, 8):
        g = torch.tensor([math.sin(step), math.cos(step), 0.1 * step], dtype=F64)
        adam.step(p, g)
        ref.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p, ref.detach(), rtol=1e-14, atol=1e-15)


# ----------------------------------------------------------------------------------------------------- state


def drive(comb: Combiner, calls: int, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    outs = []
    k = comb.num_tasks
    for _ in range(calls):
        jac = torch.randn(k, 8, generator=g, dtype=F64)
        losses = torch.rand(k, generator=g, dtype=F64) + 0.5
        outs.append(run(comb, jac, losses))
        if comb.needs_losses_after_step:
            comb.after_step(losses * (0.8 + 0.3 * torch.rand(k, generator=g, dtype=F64)))
    return outs


STATEFUL_OR_RANDOM = [
    "uw",
    "dwa",
    "famo",
    "gradnorm",
    "nashmtl",
    "mgda",
    "cagrad",
    "pcgrad",
    "rlw",
    "graddrop",
    "cagrad_fast",
    "imtll",
    "stch",
    "dbmtl",
    "gradvac",
    "sdmgrad",
    "modo",
    "excessmtl",
    "crmogm",
    "moco",
]


@pytest.mark.parametrize("name", STATEFUL_OR_RANDOM)
def test_state_dict_round_trip(name: str) -> None:
    options = {
        "dwa": {"window": 2},
        "nashmtl": {"update_every": 2},
        "stch": {"warmup_steps": 7, "nadir_steps": 4},  # saved inside the nadir window, restored through its end
    }.get(name, {})
    comb = build(name, 4, seed=5, **options)
    drive(comb, 5, seed=0)
    restored = reloaded(comb, build(name, 4, seed=99, **options))
    expected = drive(comb, 4, seed=1)
    for a, b in zip(drive(restored, 4, seed=1), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_seeded_reproducibility(name: str) -> None:
    a = drive(build(name, 4, seed=3), 3, seed=0)
    b = drive(build(name, 4, seed=3), 3, seed=0)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_gramian_combiners_share_the_base() -> None:
    names = ["pcgrad", "cagrad", "cagrad_fast", "mgda", "imtlg", "nashmtl", "alignedmtl"]
    for name in [*names, "upgrad", "dualproj", "con_fig", "gradvac", "fairgrad"]:
        assert isinstance(build(name, 2), GramianCombiner)


# ----------------------------------------------------------------------------------------------------- pinned values

#: torchjd's regression matrix and a 3 x 4 one
J_A = [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]
J_B = [[1.0, -2.0, 0.5, 3.0], [-1.5, 1.0, 2.0, -0.5], [0.25, 0.5, -1.0, 1.0]]
L_A = [[1.0, 2.0], [0.8, 1.9], [0.7, 1.7]]
L_B = [[1.0, 2.0, 0.5], [0.9, 1.5, 0.45], [0.85, 1.4, 0.5]]

#: three consecutive calls (default config, seed 0) on the same J with the losses above; FAMO gets
#: ``after_step(0.95 * losses)`` after each call. Computed once from this implementation after the property and
#: oracle tests passed; a change here means the math changed.
PINNED: dict[str, tuple[list[list[float]], list[list[float]]]] = {
    "mean": (
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        [
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
        ],
    ),
    "sum": (
        [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]],
        [[-0.25, -0.5, 1.5, 3.5], [-0.25, -0.5, 1.5, 3.5], [-0.25, -0.5, 1.5, 3.5]],
    ),
    "fixed": (
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        [
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
        ],
    ),
    "rlw": (
        [
            [-2.6228802853750466, 1.0, 1.0],
            [5.397561910517844, 0.9999999999999999, 0.9999999999999999],
            [0.2212086545897063, 1.0000000000000002, 1.0000000000000002],
        ],
        [
            [0.6474136712227216, -1.5441392383159194, 0.6716289998006629, 2.4869295717156983],
            [0.5616401516296998, -1.3058722997825671, 0.5581490526237479, 2.286489282241318],
            [-0.43044863752261486, -0.1020302359464308, 1.1371496649501058, 0.8896470142963955],
        ],
    ),
    "uw": (
        [
            [1.0, 1.0, 1.0],
            [0.9701495018415343, 0.995024916973589, 0.995024916973589],
            [0.9258130649055563, 0.9938597799514318, 0.9938597799514318],
        ],
        [
            [-0.125, -0.25, 0.75, 1.75],
            [-0.11628110462536506, -0.252462541356374, 0.7350247506071039, 1.7575126248532795],
            [-0.10441916357139633, -0.2619617009390616, 0.7226673085570153, 1.7760842310209939],
        ],
    ),
    "dwa": (
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        [
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
        ],
    ),
    "famo": (
        [[-0.6666666555555558, 1.0, 1.0], [-1.0377183650133204, 1.0, 1.0], [-1.0127992619574782, 1.0, 1.0]],
        [
            [0.21428571285714287, -0.14285714571428565, -0.14285713642857156, 1.357142857857143],
            [0.16674673450101649, -0.11100407830411035, -0.08362891947521195, 1.3055470514625145],
            [0.15330329864136558, -0.17500334392282813, 0.022097271958130382, 1.334304253270118],
        ],
    ),
    "imtll": (
        [
            [2.0, 2.0, 2.0],
            [1.9982002699909964, 1.9997000449984994, 1.9997000449984994],
            [1.995515491035146, 1.9996246917582274, 1.9996246917582274],
        ],
        [
            [-0.25, -0.5, 1.5, 3.5],
            [-0.2494750562481245, -0.5001499325022514, 1.4991000449985004, 3.5004500224992485],
            [-0.248757418340331, -0.5007256860675481, 1.4983521557160284, 3.5015601054420733],
        ],
    ),
    "stch": (
        [
            [-1.0, 1.5, 1.5],
            [-1.8421052631578947, 1.776315789473684, 1.776315789473684],
            [-2.184873949579832, 2.0168067226890756, 2.0168067226890756],
        ],
        [
            [0.75, -0.5, -0.5, 4.75],
            [0.6666666666666667, -0.44444444444444464, -0.3333333333333335, 5.222222222222222],
            [0.6050420168067228, -0.6386554621848739, 0.01680672268907557, 5.172268907563025],
        ],
    ),
    "gls": (
        [
            [-0.707106781186547, 1.0606601717798212, 1.0606601717798212],
            [-1.1355499479153375, 1.0949945926326472, 1.0949945926326472],
            [-1.1917080461366751, 1.1000381964338537, 1.1000381964338537],
        ],
        [
            [0.24999999999999997, -0.16666666666666669, -0.16666666666666663, 1.5833333333333333],
            [0.18820720577620564, -0.12547147051747032, -0.09410360288810282, 1.474289778580278],
            [0.16963023701264435, -0.17905413906890233, 0.004711951028129047, 1.4501029289067027],
        ],
    ),
    "dbmtl": (
        [
            [0.012948316867805953, 0.16882471388293008, 0.16882471388293008],
            [0.027838884436273248, 0.36297313937350784, 0.36297313937350784],
            [0.04355259596923289, 0.5678539930666288, 0.5678539930666288],
        ],
        [
            [-0.04470146365015, 0.06195899160016735, 0.07744393387560039, 0.47931676746675167],
            [-0.08989962220278837, 0.124606426313113, 0.15574837125620283, 0.9639592869006982],
            [-0.13349962909257757, 0.18503872453926673, 0.2312840600805237, 1.4314654477874873],
        ],
    ),
    "gradnorm": (
        [[1.0, 1.0, 1.0], [0.9950000000099468, 1.0, 1.0], [0.990000000019891, 0.9999999999999999, 0.9999999999999999]],
        [
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08311103701383632, -0.16622207402633554, 0.4989996665606339, 1.1665555185061243],
            [-0.0828886665708583, -0.16577733313904203, 0.4979989995656027, 1.1664443332838412],
        ],
    ),
    "pcgrad": (
        [
            [0.2923976608187129, 1.9005847953216375, 1.9005847953216375],
            [0.2923976608187129, 1.9005847953216375, 1.9005847953216375],
            [0.2923976608187129, 1.9005847953216375, 1.9005847953216375],
        ],
        [
            [-0.3468824087245138, 0.06529951003635209, 0.8419155998103366, 1.5772364469732891],
            [-0.3468824087245138, 0.06529951003635209, 0.8419155998103366, 1.5772364469732891],
            [-0.3712225383278013, 0.18478741899794532, 0.7500869290342972, 1.521917970602181],
        ],
    ),
    "cagrad": (
        [
            [0.29896787522225843, 1.002844238090987, 1.002844238090987],
            [0.29896787522225843, 1.002844238090987, 1.002844238090987],
            [0.29896787522225843, 1.002844238090987, 1.002844238090987],
        ],
        [
            [-0.24515996927461287, 0.1865301949836662, 0.44746790448509977, 1.2431325047851365],
            [-0.24515996927461287, 0.1865301949836662, 0.44746790448509977, 1.2431325047851365],
            [-0.24515996927461287, 0.1865301949836662, 0.44746790448509977, 1.2431325047851365],
        ],
    ),
    "cagrad_fast": (
        [
            [0.29896787522225843, 1.002844238090987, 1.002844238090987],
            [0.29896787522225843, 1.002844238090987, 1.002844238090987],
            [0.29896787522225843, 1.002844238090987, 1.002844238090987],
        ],
        [
            [-0.24515996927461287, 0.1865301949836662, 0.44746790448509977, 1.2431325047851365],
            [-0.24515996927461287, 0.1865301949836662, 0.44746790448509977, 1.2431325047851365],
            [-0.24515996927461287, 0.1865301949836662, 0.44746790448509977, 1.2431325047851365],
        ],
    ),
    "mgda": (
        [[4.440892098500626e-16, 1.0, 1.0], [4.440892098500626e-16, 1.0, 1.0], [4.440892098500626e-16, 1.0, 1.0]],
        [
            [-0.2699553792761527, 0.48934060485870096, 0.08539910758552316, 0.6488596926127913],
            [-0.2699553792761527, 0.48934060485870096, 0.08539910758552316, 0.6488596926127913],
            [-0.2699553792761527, 0.48934060485870096, 0.08539910758552316, 0.6488596926127913],
        ],
    ),
    "imtlg": (
        [[0.0766968306220206, 1.0, 1.0], [0.0766968306220206, 1.0, 1.0], [0.0766968306220206, 1.0, 1.0]],
        [
            [-0.28210889531363215, 0.3456621830228586, 0.28557381102525736, 0.7258132133020556],
            [-0.28210889531363215, 0.3456621830228586, 0.28557381102525736, 0.7258132133020556],
            [-0.28210889531363215, 0.3456621830228586, 0.28557381102525736, 0.7258132133020556],
        ],
    ),
    "graddrop": (
        [[-2.0, 1.0, 1.0], [-2.0, 1.0, 1.0], [3.0, 1.0, 1.0]],
        [
            [-0.5, -0.6666666666666666, 0.8333333333333334, -0.16666666666666666],
            [-0.5, -0.6666666666666666, 0.8333333333333334, 1.3333333333333333],
            [-0.5, 0.5, 0.8333333333333334, 1.3333333333333333],
        ],
    ),
    "nashmtl": (
        [
            [0.05415326964997469, 0.7060691975246538, 0.7060691975246538],
            [0.05415326964997469, 0.7060691975246538, 0.7060691975246538],
            [0.05415326964997469, 0.7060691975246538, 0.7060691975246538],
        ],
        [
            [-0.26022584205535415, 0.29268551404883003, 0.31524069778353914, 0.8644310287428959],
            [-0.26022584205535415, 0.29268551404883003, 0.31524069778353914, 0.8644310287428959],
            [-0.26022584205535415, 0.29268551404883003, 0.31524069778353914, 0.8644310287428959],
        ],
    ),
    "alignedmtl": (
        [
            [0.21327874596866891, 0.9673329837557125, 0.9673329837557125],
            [0.21327874596866891, 0.9673329837557125, 0.9673329837557125],
            [0.21327874596866891, 0.9673329837557125, 0.9673329837557125],
        ],
        [
            [-0.17080095054571945, 0.19271767880118518, 0.20908711501443544, 0.5933116546871156],
            [-0.17080095054571945, 0.19271767880118518, 0.20908711501443544, 0.5933116546871156],
            [-0.17080095054571945, 0.19271767880118518, 0.20908711501443544, 0.5933116546871156],
        ],
    ),
    "upgrad": (
        [
            [0.2923976608187129, 1.9005847953216375, 1.9005847953216375],
            [0.2923976608187129, 1.9005847953216375, 1.9005847953216375],
            [0.2923976608187129, 1.9005847953216375, 1.9005847953216375],
        ],
        [
            [-0.37669018992855907, 0.15273566823488416, 0.795713538944067, 1.4947682523087644],
            [-0.37669018992855907, 0.15273566823488416, 0.795713538944067, 1.4947682523087644],
            [-0.37669018992855907, 0.15273566823488416, 0.795713538944067, 1.4947682523087644],
        ],
    ),
    "dualproj": (
        [
            [0.5555555555555554, 1.1111111111111112, 1.1111111111111112],
            [0.5555555555555554, 1.1111111111111112, 1.1111111111111112],
            [0.5555555555555554, 1.1111111111111112, 1.1111111111111112],
        ],
        [
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
        ],
    ),
    "con_fig": (
        [
            [0.07940448790396992, 1.035303379031312, 1.035303379031312],
            [0.07940448790396992, 1.035303379031312, 1.035303379031312],
            [0.07940448790396992, 1.035303379031312, 1.035303379031312],
        ],
        [
            [-0.3338340258815074, 0.4090399135597029, 0.3379342395953142, 0.858892261320729],
            [-0.3338340258815074, 0.4090399135597029, 0.3379342395953142, 0.858892261320729],
            [-0.3338340258815074, 0.4090399135597029, 0.3379342395953142, 0.858892261320729],
        ],
    ),
    "gradvac": (
        [
            [0.2923976608187129, 1.9005847953216375, 1.9005847953216375],
            [0.5032702180261404, 1.6322015406940027, 1.6322015406940027],
            [0.6622673286093996, 1.4298415817698553, 1.4298415817698553],
        ],
        [
            [-0.3712225383278015, 0.18478741899794543, 0.7500869290342974, 1.521917970602181],
            [-0.222253636046922, -0.0022968734089510723, 0.6354732603372448, 1.4170467875140877],
            [-0.14920806566631822, -0.09173161277122893, 0.5724350601865142, 1.3279447951005028],
        ],
    ),
    "fairgrad": (
        [
            [0.03127367981882134, 0.7908171505090336, 0.7908171505090336],
            [0.03127367981882134, 0.7908171505090336, 0.7908171505090336],
            [0.03127367981882134, 0.7908171505090336, 0.7908171505090336],
        ],
        [
            [-0.42396817207080484, 0.5999891299537414, 0.35057210531522587, 1.2186488587441082],
            [-0.42396817207080484, 0.5999891299537414, 0.35057210531522587, 1.2186488587441082],
            [-0.42396817207080484, 0.5999891299537414, 0.35057210531522587, 1.2186488587441082],
        ],
    ),
    "sdmgrad": (
        [
            [4.846153846153845, 0.9999999999999999, 0.9999999999999999],
            [4.846153846153845, 0.9999999999999999, 0.9999999999999999],
            [4.846153846153845, 0.9999999999999999, 0.9999999999999999],
        ],
        [
            [0.17307692307692307, 0.34615384615384615, -0.6538461538461539, 1.0384615384615383],
            [-0.7507501708668257, 0.6101044444234884, 0.9298574357717014, 0.24660974365261068],
            [0.17307692307692307, 0.34615384615384615, -0.6538461538461539, 1.0384615384615383],
        ],
    ),
    "modo": (
        [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0], [-4.0, 1.0, 1.0]],
        [
            [-0.48229166666666673, 0.48541666666666666, 0.5281250000000001, 0.5052083333333334],
            [-0.2318828125000001, 0.297359375, 0.24085156250000006, 0.7890234374999999],
            [-0.3278704622395833, 0.4691806380208333, 0.22941892578125, 0.6210130533854168],
        ],
    ),
    "excessmtl": (
        [[1.0, 1.0, 1.0], [1.000000000027621, 1.0, 1.0], [1.0000000000376452, 1.0, 1.0]],
        [
            [-0.08333333333333336, -0.16666666666666666, 0.49999999999999994, 1.1666666666666667],
            [-0.08333333330918287, -0.16666666660446525, 0.49999999987438165, 1.166666666646338],
            [-0.08333333328259952, -0.16666666652432263, 0.49999999972187975, 1.1666666666170293],
        ],
    ),
    "crmogm": (
        [[4.440892098500626e-16, 1.0, 1.0], [4.440892098500626e-16, 1.0, 1.0], [4.440892098500626e-16, 1.0, 1.0]],
        [
            [-0.2699553792761527, 0.48934060485870096, 0.08539910758552316, 0.6488596926127913],
            [-0.26995537927615254, 0.48934060485870096, 0.08539910758552283, 0.6488596926127914],
            [-0.26995537927615254, 0.48934060485870096, 0.08539910758552283, 0.6488596926127914],
        ],
    ),
    "moco": (
        [[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0], [-4.0, 1.0, 1.0]],
        [
            [-0.48229166666666673, 0.48541666666666666, 0.5281250000000001, 0.5052083333333334],
            [-0.2318828125000001, 0.297359375, 0.24085156250000006, 0.7890234374999999],
            [-0.3278704622395833, 0.4691806380208333, 0.22941892578125, 0.6210130533854168],
        ],
    ),
}


def pinned_outputs(name: str, jac_rows: list[list[float]], loss_rows: list[list[float]]) -> list[list[float]]:
    jac = torch.tensor(jac_rows, dtype=F64)
    comb = build(name, jac.shape[0])
    outs = []
    for row in loss_rows:
        losses = torch.tensor(row, dtype=F64)
        outs.append(run(comb, jac, losses).tolist())
        if comb.needs_losses_after_step:
            comb.after_step(0.95 * losses)
    return outs


#: torchjd 0.18.0 ``tests/unit/aggregation/test_values.py`` on J_A (atol 1e-4 there), in our scales
TORCHJD_VALUES = {
    "pcgrad": ([0.5848, 3.8012, 3.8012], 1 / 2),  # torchjd sums
    "mgda": ([0.0, 1.0, 1.0], 1.0),
    "imtlg": ([0.0767, 1.0, 1.0], 1.0),
    "nashmtl": ([0.0542, 0.7061, 0.7061], 1.0),
}


@pytest.mark.parametrize("name", list(TORCHJD_VALUES))
def test_torchjd_published_values(name: str) -> None:
    values, factor = TORCHJD_VALUES[name]
    d = run(build(name, 2), torch.tensor(J_A, dtype=F64))
    np.testing.assert_allclose(d.tolist(), [factor * v for v in values], atol=1e-4)


def test_torchjd_published_cagrad_value() -> None:
    d = run(build("cagrad", 2, c=0.5), torch.tensor(J_A, dtype=F64)) * (1 + 0.5**2)  # torchjd: no rescale
    np.testing.assert_allclose(d.tolist(), [0.1835, 1.2041, 1.2041], atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_pinned_values(name: str) -> None:
    assert name in PINNED, f"no pinned values for {name}"
    expected_a, expected_b = PINNED[name]
    np.testing.assert_allclose(pinned_outputs(name, J_A, L_A), expected_a, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pinned_outputs(name, J_B, L_B), expected_b, rtol=1e-9, atol=1e-12)


BLOCK_NAMES = [n for n in GRAD_NAMES if build(n, 2).accepts_blocks]


def test_every_gradient_combiner_accepts_blocks() -> None:
    assert BLOCK_NAMES == GRAD_NAMES


@pytest.mark.parametrize("name", BLOCK_NAMES)
@pytest.mark.parametrize("k", [1, 3, 10])
def test_blocks_give_the_matrix_result_split(name: str, k: int) -> None:
    """``G`` as column blocks (what the agent passes, no copy) gives the direction of ``G`` whole, split alike."""
    whole, split = build(name, k, seed=4), build(name, k, seed=4)
    sizes = [7, 1, 40000, 12]  # one block over GRAM_BLOCK columns
    for call in range(2):  # twice: stateful methods (GradNorm, Nash-MTL warm start) use their state the second time
        jac = normal(k, sum(sizes), seed=call).float()
        losses = torch.linspace(1.0, 2.0, k) + call
        expected = whole(jac, losses)
        parts = split(list(jac.split(sizes, dim=1)), losses)
        assert isinstance(parts, list) and [p.shape[0] for p in parts] == sizes
        # float32 Gramians summed in another order: equal up to rounding, relative to the direction's size
        scale = expected.abs().max().item()
        torch.testing.assert_close(torch.cat(parts), expected, rtol=1e-4, atol=1e-4 * scale)
        for key, value in whole.stats_tensors.items():
            torch.testing.assert_close(split.stats_tensors[key], value, rtol=1e-4, atol=1e-6)


def test_blocks_refused_by_a_combiner_that_needs_the_matrix() -> None:
    class WholeMatrix(Combiner):
        requires_grads = True

        def forward(self, grads, losses):
            return grads.mean(0)

    with pytest.raises(ValueError, match="needs grads as one"):
        WholeMatrix(2)([torch.ones(2, 3), torch.ones(2, 4)], torch.ones(2))


@pytest.mark.parametrize("name", BLOCK_NAMES)
def test_non_finite_in_a_block_names_the_task(name: str) -> None:
    comb = build(name, 3)
    blocks = [torch.randn(3, 5, dtype=F64), torch.randn(3, 4, dtype=F64)]
    blocks[1][1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=rf"combiner '{comb}'.*task 1"):
        comb(blocks, torch.ones(3, dtype=F64))
