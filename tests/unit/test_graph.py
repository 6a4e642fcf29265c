"""The captured update (``agent.graph``, :mod:`mtrl.agents.graph`) against the eager update: the same parameters,
optimizer states and logs to float rounding, for every feature it captures; compiled whole with
``torch.compile(fullgraph=True)`` on the CPU (nothing breaks the graph or syncs with the host); checkpoints that
pass between the modes; what it does not capture runs eagerly with one reason.

Tolerances: one update agrees to 1e-6 (the two compute the same formulas in another order); after 20 updates to
2e-4 absolute, since SAC's targets feed rounding differences back (the parameters move by more than 1e-2 meanwhile).
"""

from __future__ import annotations

import pytest
import torch

from mtrl.agents.mtsac import MTSAC
from mtrl.bench import make_agent, make_batch, make_group
from mtrl.buffers import ReplayBatch
from mtrl.mto.base import NonFiniteError

K, BATCH, HIDDEN = 4, 64, 16
CPU = torch.device("cpu")
FEATURES = {
    "one_hot": {},
    "multi_head": {"agent.conditioning": "multi_head"},
    "layer_norm_dropout": {
        "agent.actor.layer_norm": True, "agent.critic.layer_norm": True,
        "agent.actor.dropout": 0.1, "agent.critic.dropout": 0.1,
    },
    "clipping_weight_decay": {
        # the critic's norm above its bound (clipped), the actor's below (left as it is)
        "agent.actor.max_grad_norm": 100.0, "agent.critic.max_grad_norm": 0.5, "agent.actor.weight_decay": 0.01,
        "agent.q_target_clip": True, "agent.q_value_max": 50.0,
    },
    "shared_temperature_alpha_loss": {"agent.temperature": "shared", "agent.alpha_loss": "alpha"},
    "sum": {"combiner": "sum"},
    "fixed": {"combiner": "fixed", "combiner.weights": [0.1, 0.2, 0.3, 0.4]},
}  # fmt: skip


def agent(graph: str, seeds: int = 1, **extra) -> MTSAC:
    """A toy-size agent (a group of seeds 1..N for ``seeds`` > 1); ``graph``: off (eager), eager (the captured
    function uncompiled), compile (fullgraph)."""
    items = {"agent.actor.lr": 1e-3, "agent.critic.lr": 1e-3, **extra}
    name = str(items.pop("combiner", "mean"))
    a = (
        make_agent(name, K, BATCH, CPU, HIDDEN, **items)
        if seeds == 1
        else make_group(name, seeds, K, BATCH, CPU, HIDDEN, **items)
    )
    a.graph_mode = "" if graph == "off" else graph
    return a


def batch(seeds: int = 1, step: int = 0) -> ReplayBatch:
    torch.manual_seed(100 + step)
    data, _ = make_batch(K, BATCH, CPU)
    return ReplayBatch(*(torch.stack([x] * seeds) for x in data)) if seeds > 1 else data


def state(a: MTSAC) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in (("actor", a.actor), ("critic", a.critic), ("target", a.critic_target), ("alpha", a.alpha)):
        out.update({f"{name}.{k}": v.detach().clone() for k, v in module.state_dict().items()})
    for name, part in a.parts.items():
        for i, st in part.optimizers[0].state_dict()["state"].items():
            out.update({f"{name}.adam{i}.{k}": v.clone() for k, v in st.items()})
    return out


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def run(a: MTSAC, updates: int, seeds: int = 1, first: int = 0) -> list[dict]:
    return [a.update(batch(seeds, first + i)) for i in range(updates)]


@pytest.mark.parametrize("feature", list(FEATURES))
def test_the_captured_function_gives_the_eager_update(feature: str) -> None:
    eager, captured = agent("off", **FEATURES[feature]), agent("eager", **FEATURES[feature])
    start = state(eager)
    logs_e, logs_c = run(eager, 1), run(captured, 1)
    assert captured.captured is not None and eager.captured is None
    assert_close(state(eager), state(captured), atol=1e-6)
    assert logs_e[0].keys() == logs_c[0].keys()
    for key in logs_e[0]:
        torch.testing.assert_close(logs_e[0][key], logs_c[0][key], rtol=1e-5, atol=1e-6, msg=key)
    run(eager, 19, first=1), run(captured, 19, first=1)
    assert_close(state(eager), state(captured), atol=2e-4)
    moved = max((state(eager)[k] - start[k]).abs().max().item() for k in start if k.startswith("critic."))
    assert moved > 1e-2  # the agents trained: the tolerance is small against what changed


def test_a_seed_group_is_captured_seed_by_seed() -> None:
    extra = {"agent.critic.max_grad_norm": 0.5, "agent.critic.dropout": 0.1}
    eager, captured = agent("off", seeds=2, **extra), agent("eager", seeds=2, **extra)
    run(eager, 10, seeds=2), run(captured, 10, seeds=2)
    assert_close(state(eager), state(captured), atol=2e-4)


def test_the_update_compiles_whole_with_fullgraph_and_matches_eager() -> None:
    """torch.compile(fullgraph=True) raises on any graph break: compiling at all is the proof that nothing in the
    update syncs with the host. Multi-head, LayerNorm, dropout and clipping at once, a group of two seeds."""
    extra = {
        "agent.conditioning": "multi_head", "agent.actor.layer_norm": True, "agent.critic.dropout": 0.1,
        "agent.critic.max_grad_norm": 0.5,
    }  # fmt: skip
    eager, compiled = agent("off", seeds=2, **extra), agent("compile", seeds=2, **extra)
    run(eager, 12, seeds=2), run(compiled, 12, seeds=2)
    assert compiled.captured is not None and compiled.captured.mode == "compile"
    assert_close(state(eager), state(compiled), atol=2e-4)


@pytest.mark.parametrize("first, then", [("eager", "off"), ("off", "eager")])
def test_checkpoints_pass_between_captured_and_eager(first: str, then: str) -> None:
    """Five updates in one mode, the state through a checkpoint into the other mode, five more: the same as ten
    eager updates. Loading into a captured agent rebuilds its function on the loaded optimizer state."""
    reference = agent("off")
    run(reference, 10)
    a = agent(first)
    run(a, 5)
    saved = a.state_dicts()
    b = agent(then)
    run(b, 2, first=50)  # state of its own first, replaced by the load
    b.load_state_dicts(saved)
    assert b.captured is None
    run(b, 5, first=5)
    assert_close(state(reference), state(b), atol=2e-4)


def test_a_non_finite_loss_in_the_captured_update_is_raised_at_check_finite() -> None:
    a = agent("eager")
    data = batch()
    bad = ReplayBatch(*data[:2], data.rew.clone().fill_(float("nan")), *data[3:])
    a.update(bad)
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        a.check_finite()
    a.check_finite()  # the record is cleared by the raise


@pytest.mark.parametrize(
    "extra, reason",
    [
        ({"combiner": "pcgrad"}, "the gradient-space combiner 'pcgrad' of the critic is not captured yet"),
        ({"combiner": "famo", "combine_actor": False}, "the loss-space combiner 'famo"),
        ({"agent.schedule": "alternating"}, "the alternating schedule"),
        ({"buffer.kind": "uniform"}, "the uniform replay"),
    ],
)
def test_what_is_not_captured_runs_eagerly_with_one_reason(extra: dict, reason: str) -> None:
    a = make_agent(str(extra.pop("combiner", "mean")), K, BATCH, CPU, HIDDEN, **{"agent.graph": "on", **extra})
    assert a.graph_mode == "" and a.graph_note.startswith("agent.graph: the update runs eagerly: ")
    assert reason in a.graph_note and "\n" not in a.graph_note
    a.update(batch())
    assert a.captured is None


def test_auto_captures_on_a_cpu_only_for_long_runs() -> None:
    from mtrl.agents.build import make_agent as from_config
    from mtrl.config import from_flat

    def mode(**flat) -> str:
        cfg = from_flat({"env.toy_tasks": K, "buffer.batch_size": BATCH, **flat})
        return from_config(cfg, 39, 4, K, CPU).graph_mode

    assert mode() == ""  # the toy default: 1,500 steps
    assert mode(total_steps=60_000, warmup_steps=5_000) == "compile"
    assert mode(total_steps=60_000, warmup_steps=20_000) == ""  # 40,000 updates
    assert mode(total_steps=60_000, **{"agent.graph": "off"}) == ""
    assert mode(**{"agent.graph": "on"}) == "compile"


@pytest.mark.device
def test_the_captured_update_on_the_device_matches_eager(device: torch.device) -> None:
    """On CUDA, agent.graph on replays CUDA graphs (torch.compile reduce-overhead); on a CPU it compiles. Either way
    twelve updates give eager's parameters and optimizer states to float rounding, dropout and clipping on."""
    if device.type == "cpu":
        pytest.skip("on a CPU: test_the_update_compiles_whole_with_fullgraph_and_matches_eager")
    extra = {"agent.critic.dropout": 0.1, "agent.critic.max_grad_norm": 0.5, "agent.actor.layer_norm": True}
    eager = make_agent("mean", K, BATCH, device, HIDDEN, **{"agent.graph": "off", **extra})
    captured = make_agent("mean", K, BATCH, device, HIDDEN, **{"agent.graph": "on", **extra})
    assert captured.graph_mode == ("cudagraph" if device.type == "cuda" else "compile")
    for i in range(12):
        data = ReplayBatch(*(x.to(device) for x in batch(step=i)))
        eager.update(data), captured.update(data)
    assert_close(state(eager), state(captured), atol=2e-4)
