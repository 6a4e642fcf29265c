from pathlib import Path

import pytest

from mtrl.config import ConfigError, TrainConfig, dump_yaml, flatten, from_flat, help_rows, load_yaml, to_flat
from mtrl.mto import COMBINERS

PRESETS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_presets_exist():
    assert len(PRESETS) >= 4


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_parses_and_names_its_source(preset):
    cfg = from_flat(load_yaml(preset))
    assert isinstance(cfg, TrainConfig)
    assert preset.read_text().startswith("#"), "each preset opens with a comment naming its source"


def test_flat_round_trip_is_identity():
    cfg = from_flat({"agent.actor.layer_norm": "true", "seed": "3", "env.benchmark": "MT10", "total_steps": "1e6"})
    assert cfg.total_steps == 1_000_000 and cfg.agent.actor.layer_norm and cfg.seed == 3
    assert from_flat(to_flat(cfg)) == cfg
    import yaml

    assert from_flat(yaml.safe_load(dump_yaml(cfg))) == cfg


def test_nested_yaml_is_flattened():
    assert flatten({"agent": {"actor": {"lr": 1}}, "seed": 2}) == {"agent.actor.lr": 1, "seed": 2}


@pytest.mark.parametrize(
    "items,message",
    [
        ({"nope": 1}, "unknown config key 'nope'"),
        ({"agent.actr.lr": 1}, "unknown config key 'agent.actr.lr'"),
        ({"total_steps": "many"}, "total_steps: got 'many', expected an int"),
        ({"total_steps": -5}, "total_steps: got -5, expected a positive integer"),
        ({"agent.actor.dropout": 1.5}, "agent.actor.dropout: got 1.5"),
        ({"env.protocol": "new"}, "env.protocol: got 'new', expected one of official, legacy"),
        ({"env.benchmark": "MT11"}, "env.benchmark: got 'MT11'"),
        ({"combiner": "nope"}, "combiner: got 'nope', expected one of"),
        ({"combiner": "famo"}, "combiner: famo needs losses bounded below"),
        ({"combiner": "fixed", "combiner.weights": [1, -1]}, "combiner.weights"),
        ({"agent.actor.layer_norm": "maybe"}, "expected true or false"),
        ({"env": 3}, "env: is a section"),
        ({"agent": 3}, "agent.kind: got 3, expected one of mtsac, single_task"),
        ({"eval_mode": "later"}, "eval_mode: got 'later', expected one of auto, sync, async"),
        ({"eval_mode": "async", "agent": "single_task"}, "eval_mode: got 'async' with agent.kind single_task"),
        ({"env.vector_strategy": "threads"}, "env.vector_strategy: got 'threads', expected one of auto, sync, async"),
    ],
)
def test_bad_values_give_one_line_errors_naming_the_field(items, message):
    with pytest.raises(ConfigError) as info:
        from_flat(items)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_presets_leave_eval_mode_and_vector_strategy_to_the_machine():
    for preset in PRESETS:
        items = load_yaml(preset)
        cfg = from_flat(items)
        assert cfg.eval_mode == items.get("eval_mode", "auto"), preset.name
        assert cfg.env.vector_strategy == items.get("env.vector_strategy", "auto"), preset.name


def test_combiner_is_a_tagged_union():
    cfg = from_flat({"combiner": "mean"})
    assert type(cfg.combiner) is COMBINERS["mean"]
    assert to_flat(cfg)["combiner"] == "mean"


def test_help_has_a_docstring_for_every_field():
    rows = help_rows()
    assert {r[0] for r in rows} >= {"seed", "env.benchmark", "agent.actor.weight_decay", "buffer.reward_norm"}
    missing = [key for key, _, doc in rows if not doc.strip()]
    assert not missing, f"fields without a docstring: {missing}"


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_builds_its_combiner_for_its_benchmark(preset):
    cfg = from_flat(load_yaml(preset))
    combiner = cfg.combiner.build(cfg.env.num_tasks)
    assert combiner.num_tasks == cfg.env.num_tasks
