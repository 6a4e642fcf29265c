from pathlib import Path

import pytest
from docs_helper import field_docs

from mtrl.config import ConfigError, TrainConfig, dump_yaml, flatten, from_flat, load_yaml, option_keys, to_flat
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
        ({"nope": 1}, "unknown option --nope"),
        ({"agent.actr.lr": 1}, "unknown option --agent.actr.lr; did you mean --agent.actor.lr?"),
        ({"total_steps": "many"}, "total_steps: got 'many', expected an integer"),
        ({"total_steps": 1.5}, "total_steps: got '1.5', expected an integer"),
        ({"total_steps": -5}, "total_steps: got -5, expected a positive integer"),
        ({"seed": -1}, "seed: got -1, expected an integer >= 0"),
        ({"agent.actor.lr": "nan"}, "agent.actor.lr: got 'nan', expected a finite number"),
        ({"agent.critic.lr": "inf"}, "agent.critic.lr: got 'inf', expected a finite number"),
        ({"agent.critic.lr": 0}, "agent.critic.lr: got 0.0, expected a number > 0"),
        ({"agent.actor.weight_decay": -1e-3}, "agent.actor.weight_decay: got -0.001, expected a number >= 0"),
        ({"agent.actor.dropout": 1.5}, "agent.actor.dropout: got 1.5"),
        ({"agent.gamma": 1.0}, "agent.gamma: got 1.0, expected a number in [0, 1)"),
        ({"env.protocol": "new"}, "env.protocol: got 'new', expected one of official, legacy"),
        ({"env.benchmark": "MT11"}, "env.benchmark: got 'MT11'"),
        ({"env.benchmark": "MT1-reach-v9"}, "unknown Meta-World task 'reach-v9'"),
        ({"env.benchmark": "MT10"}, "buffer.batch_size: got 256, expected a multiple of the number of tasks (10)"),
        ({"env.benchmark": "MT10", "buffer.batch_size": 1280, "buffer.capacity": 5}, "buffer.capacity: got 5"),
        ({"combiner": "nope"}, "combiner: got 'nope', expected one of"),
        ({"combiner": "pcgard"}, "did you mean pcgrad?"),
        ({"combiner": "famo"}, "combine_actor: got true with combiner famo"),
        ({"combiner": "fixed", "combiner.weights": [1, -1]}, "combiner.weights"),
        ({"combiner": "fixed", "combiner.weights": [0.5, 0.5]}, "combiner.weights: got 2 weights, expected 4"),
        ({"combiner.c": 0.5}, "combiner.c: not an option of combiner 'mean'"),
        ({"agent.actor.layer_norm": "maybe"}, "expected true or false"),
        ({"env": 3}, "env: is a section"),
        ({"agent": 3}, "agent.kind: got '3', expected one of mtsac, single_task"),
        ({"eval_mode": "later"}, "eval_mode: got 'later', expected one of auto, sync, async"),
        ({"eval_mode": "async", "agent": "single_task"}, "eval_mode: got 'async' with agent.kind single_task"),
        ({"env.vector_strategy": "threads"}, "env.vector_strategy: got 'threads', expected one of auto, sync, async"),
        ({"run_name": "a/b"}, "run_name: got 'a/b', expected a plain name"),
        ({"run_dir": f"{__file__}/runs"}, "cannot be created: '"),
        ({"run_dir": "/proc/runs"}, "run_dir: '/proc/runs' cannot be written: '/proc' is not writable"),
        ({"run_dir": __file__}, "is a file, expected a directory"),
    ],
)
def test_bad_values_give_one_line_errors_naming_the_field(items, message):
    from mtrl.train import check_config

    with pytest.raises(ConfigError) as info:
        check_config(from_flat(items))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_presets_leave_eval_mode_and_vector_strategy_to_the_machine():
    for preset in PRESETS:
        items = load_yaml(preset)
        assert "eval_mode" not in items and "env.vector_strategy" not in items, preset.name
        cfg = from_flat(items)
        assert (cfg.eval_mode, cfg.env.vector_strategy) == ("auto", "auto"), preset.name


def test_combiner_is_a_tagged_union():
    cfg = from_flat({"combiner": "mean"})
    assert type(cfg.combiner) is COMBINERS["mean"]
    assert to_flat(cfg)["combiner"] == "mean"


def test_every_field_has_a_docstring_and_help_shows_it(capsys):
    import dataclasses

    from mtrl.cli import main
    from mtrl.config import AgentConfig, BufferConfig, EnvConfig, NetConfig

    for cls in (TrainConfig, EnvConfig, NetConfig, AgentConfig, BufferConfig, *COMBINERS.values()):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for key in ("--seed", "--env.benchmark", "--agent.actor.weight_decay", "--buffer.reward_norm", "combiner:cagrad"):
        assert key in out, key
    assert "Decoupled weight decay (AdamW); 0 = plain Adam." in out  # from the field's docstring
    assert main(["train", "--combiner", "cagrad", "--help"]) == 0
    sub = " ".join(capsys.readouterr().out.split())
    assert "--combiner.c FLOAT" in sub and "Radius of the ball around the mean gradient" in sub
    assert {"combiner.c", "combiner.weights", "agent.actor.lr"} <= set(option_keys(TrainConfig))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_passes_the_full_check(preset):
    from mtrl.train import check_config

    cfg = from_flat(load_yaml(preset))
    k = check_config(cfg)
    assert cfg.combiner.build(k).num_tasks == k == {"MT10": 10, "MT50": 50}.get(cfg.env.benchmark, 1)


def test_presets_inherit_through_base(tmp_path):
    (tmp_path / "a.yaml").write_text("# a\nseed: 3\ntotal_steps: 100\nagent.actor.lr: 0.001\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("# b\nbase: ../a.yaml\ntotal_steps: 200\n")
    (tmp_path / "c.yaml").write_text("# c\nbase: sub/b.yaml\nseed: 4\n")
    cfg = from_flat(load_yaml(tmp_path / "c.yaml"))
    assert (cfg.seed, cfg.total_steps, cfg.agent.actor.lr) == (4, 200, 0.001)
    (tmp_path / "loop.yaml").write_text("base: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_yaml(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="base: 'nowhere.yaml' of .* does not exist"):
        load_yaml(tmp_path / "orphan.yaml")


def test_per_combiner_presets_hold_only_their_differences():
    for preset in PRESETS:
        if preset.name.startswith(("mt10_", "mt50_")) and preset.name not in ("mt10_unitary.yaml", "mt10_legacy.yaml"):
            keys = [line for line in preset.read_text().splitlines() if line and not line.startswith("#")]
            assert keys[0].startswith("base: ") and len(keys) <= 8, preset.name


def test_reference_presets_carry_the_reference_settings():
    ref = from_flat(load_yaml(Path(__file__).parents[2] / "configs" / "mt10_pcgrad.yaml"))  # via mt10_unitary
    assert (ref.agent.adam_eps, ref.agent.actor.init, ref.agent.critic.init) == (1e-5, "he_uniform", "he_uniform")
    assert (ref.agent.actor.max_grad_norm, ref.agent.critic.max_grad_norm, ref.agent.q_value_max) == (1.0, 1.0, 5000)
    legacy = from_flat(load_yaml(Path(__file__).parents[2] / "configs" / "mt10_legacy.yaml"))
    assert (legacy.agent.log_std, legacy.agent.alpha_loss, legacy.agent.actor.init) == ("tanh", "alpha", "xavier")
    assert legacy.agent.actor.max_grad_norm == 0 and legacy.buffer.kind == "uniform"


@pytest.mark.parametrize(
    "bench,k",
    [
        ("toy", 4),
        ("MT10", 10),
        ("MT50", 50),
        ("MT1-push-v3", 1),
        ("reach-v3,push-v3,window-open-v3", 3),
        ("push-v3", 1),
    ],
)
def test_benchmark_task_counts(bench, k):
    from mtrl.train import check_config

    assert check_config(from_flat({"env.benchmark": bench, "buffer.batch_size": 600})) == k  # 600: a multiple of K


@pytest.mark.parametrize(
    "bench,message",
    [
        ("reach-v3,reach-v3", "task 'reach-v3' is listed twice"),
        ("reach-v3,,push-v3", "env.benchmark: got 'reach-v3,,push-v3'"),
        ("MT1-", "env.benchmark: got 'MT1-'"),
        ("reach,push", "env.benchmark: got 'reach,push'"),
    ],
)
def test_bad_benchmarks(bench, message):
    from mtrl.train import check_config

    with pytest.raises(ConfigError, match=message):
        check_config(from_flat({"env.benchmark": bench}))


@pytest.mark.parametrize("command", ["train", "evaluate", "compare", "sweep", "bench"])
def test_help_fits_the_terminal_width(command, capsys, monkeypatch):
    """--help wraps at the terminal's width (an error message is kept on one line by widening tyro's terminal; the
    help text must not be)."""
    from mtrl.cli import main

    monkeypatch.setenv("COLUMNS", "100")
    assert main([command, "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    body = [line for line in lines[1:] if line.strip()]  # the usage line lists every combiner: tyro's, not wrapped
    assert body and max(len(line) for line in body) <= 120, max(body, key=len)
