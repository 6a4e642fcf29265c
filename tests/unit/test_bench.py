"""``mtrl bench`` at toy sizes: the tables and the JSON hold every measurement, bad input is one line."""

import json

import pytest

from mtrl.cli import main


def test_bench_writes_every_measurement(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", "--sizes", "MT10", "--combiners", "pcgrad", "famo", "--rounds", "1", "--warmup", "0"]
    assert main([*argv, "--sb3-batch", "64", "--hidden", "16", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    by_precision = result["update"]["MT10"]
    assert list(by_precision) == ["fp32", "bf16"]  # side by side by default
    for rows in by_precision.values():
        assert list(rows) == ["mean", "pcgrad", "famo"]
        assert rows["mean"]["ratio"] == 1.0 and rows["pcgrad"]["ratio"] > 0
        assert (rows["pcgrad"]["kind"], rows["famo"]["kind"]) == ("gradient", "loss")
        assert rows["pcgrad"]["updates_per_s"] == pytest.approx(1000 / rows["pcgrad"]["ms"])
        fp32 = by_precision["fp32"]["pcgrad"]["ms"]
        assert rows["pcgrad"]["speedup_over_fp32"] == pytest.approx(fp32 / rows["pcgrad"]["ms"])
    (sb3,) = result["sb3"]
    assert sb3["batch"] == 64 and set(sb3["ours"]) == {"fp32", "bf16"}
    for ours in sb3["ours"].values():
        assert ours["ratio"] == pytest.approx(ours["updates_per_s"] / sb3["sb3_updates_per_s"])
    assert {"avx2", "avx512", "avx512_bf16", "amx", "torch_cpu_capability"} <= set(result["kernels"])
    printed = capsys.readouterr().out
    assert "K=1 vs stable-baselines3 SAC (float32), batch 64" in printed and "<= 1.5x" in printed
    assert "matmul kernels: avx2" in printed and "vs fp32" in printed


def test_bench_alternating_rows_at_a_given_batch(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", "--sizes", "MT10", "--combiners", "--alternating", "1", "3", "5", "--batch", "40"]
    argv += ["--precisions", "fp32", "--sb3-batch", "--rounds", "1", "--warmup", "0", "--hidden", "16"]
    assert main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["update"]["MT10"]["fp32"]
    assert list(rows) == ["mean", "alternating_g1", "alternating_g5"]  # 3 does not divide K = 10
    assert rows["alternating_g1"]["kind"] == "schedule" and rows["alternating_g1"]["ratio"] > 0
    assert result["batches"] == {"MT10": 40}
    assert "MT10 size (K=10, batch 40, 3x16)" in capsys.readouterr().out


def test_bench_seeds_times_groups_against_one_seed_updates(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", "--seeds", "1", "3", "--rounds", "1", "--warmup", "0", "--hidden", "16", "--json", str(out)]
    assert main(argv) == 0
    groups = json.loads(out.read_text())["seed_groups"]
    assert list(groups) == ["mean", "pcgrad"] and list(groups["mean"]) == ["1", "3"]
    for by_n in groups.values():
        for n, row in by_n.items():
            assert row["ratio"] == pytest.approx(row["group_ms"] / (int(n) * row["solo_ms"]))
            assert row["per_seed"] == pytest.approx(row["group_ms"] / row["solo_ms"])
    printed = capsys.readouterr().out
    assert "a group of N seeds against N one-seed updates" in printed and "group / N x 1" in printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0", "2"], "--seeds: got 0 2, expected group sizes >= 1"),
        (["--seeds", "2", "--seeds-combiners", "pcgard"], "--seeds-combiners: got 'pcgard'"),
        (["--combiners", "pcgard"], "--combiners: got 'pcgard', expected some of mean, sum"),
        (["--device", "tpu"], "--device: got 'tpu'"),
        (["--rounds", "0"], "--rounds: got 0, expected a positive integer"),
        (["--sb3-batch", "1"], "--sb3-batch: got [1], expected batch sizes >= 2"),
        (["--rounds", "nan"], "rounds: got 'nan', expected an integer"),
        (["--json", "/proc/b.json"], "--json: '/proc/b.json' cannot be written"),
        (["--json", "/"], "--json: '/' is a directory, expected a file"),
        (["--precisions", "bf16"], "--precisions: got bf16, expected fp32 among them"),
        (["--alternating", "0"], "--alternating: got 0, expected group sizes >= 1"),
        (["--batch", "-1"], "--batch: got -1, expected 0"),
        (["--batch", "20", "--sizes", "MT50"], "--batch: got 20, expected 0 or at least 50"),
    ],
)
def test_bench_bad_input_is_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "b.json"
    assert main(["bench", *args] + ([] if "--json" in args else ["--json", str(out)])) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
