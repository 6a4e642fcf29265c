"""Bad input to every subcommand: exit 2, one line on stderr naming the argument, the value and what is allowed, no
traceback, and nothing created or changed (the commands run in an empty working directory that is compared before
and after)."""

from pathlib import Path

import pytest
import yaml
from toyruns import TINY

from mtrl.cli import main
from mtrl.config import from_flat
from mtrl.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    return train(from_flat({**TINY, "run_dir": str(root), "run_name": "ok", "total_steps": 150}), progress=False)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    (tmp_path / "file.txt").write_text("not a directory\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00seed: 1\n")
    (tmp_path / "list.yaml").write_text("- seed: 1\n")
    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump({"set": {"total_steps": 100}, "methods": {"ok": {}, "bad": {"agent.actor.lr": "nan"}}})
    )
    (tmp_path / "dir").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _rejected(capsys, workdir: Path, argv: list[str], *needles: str, run: Path | None = None) -> str:
    before, run_before = _tree(workdir), _tree(run) if run else {}
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (argv, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"mtrl {argv[0]}: error: ") and len(err) < 400, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert _tree(workdir) == before, "a failed command created or changed files"
    if run is not None:
        assert _tree(run) == run_before, "a failed command changed the run"
    return err


@pytest.mark.parametrize(
    "argv,needles",
    [
        # numbers: NaN, inf, out of range, not a number
        (["--agent.actor.lr", "nan"], ["agent.actor.lr: got 'nan', expected a finite number"]),
        (["--agent.critic.lr", "inf"], ["agent.critic.lr: got 'inf', expected a finite number"]),
        (["--seed", "-1"], ["seed: got -1, expected an integer >= 0"]),
        (["--total_steps", "0"], ["total_steps: got 0, expected a positive integer"]),
        (["--agent.tau", "2"], ["agent.tau: got 2.0, expected a number in (0, 1]"]),
        (["--buffer.batch_size", "many"], ["buffer.batch_size: got 'many', expected an integer"]),
        # batch size and capacity against K; combiner options against K and parts
        (["--env.benchmark", "MT10"], ["buffer.batch_size: got 256", "multiple of the number of tasks (10)"]),
        (["--buffer.capacity", "3"], ["buffer.capacity: got 3, expected at least one transition per task (4)"]),
        (["--combiner", "fixed", "--combiner.weights", "0.5", "0.5"], ["combiner.weights: got 2 weights"]),
        (["--combiner", "famo"], ["combine_actor: got true with combiner famo"]),
        (["--combiner", "cagrad", "--combiner.c", "-1"], ["combiner.c: got -1.0"]),
        (["--combiner", "cagrad", "--combiner.k", "3"], ["combiner.k: not an option of combiner 'cagrad'"]),
        (["--combiner", "pcgard"], ["combiner: got 'pcgard'", "did you mean pcgrad?"]),
        # usage
        (["--agent.actr.lr", "1"], ["unknown option --agent.actr.lr; did you mean --agent.actor.lr?"]),
        (["--seed"], ["seed: needs a value"]),
        (["--env.protocol", "new"], ["env.protocol: got 'new', expected one of official, legacy"]),
        (["stray"], ["unexpected argument 'stray'"]),
        # output paths, presets
        (["--run_dir", "file.txt"], ["run_dir: 'file.txt' is a file, expected a directory"]),
        (["--run_dir", "file.txt/runs"], ["'file.txt' is a file"]),
        (["--run_dir", "/proc/runs"], ["run_dir: '/proc/runs' cannot be written"]),
        (["--run_name", "../x"], ["run_name: got '../x'"]),
        (["--config", "binary.yaml"], ["--config: 'binary.yaml' is not UTF-8 text"]),
        (["--config", "list.yaml"], ["--config: 'list.yaml' must be a mapping"]),
        (["--config", "missing.yaml"], ["--config: 'missing.yaml' does not exist"]),
        (["--config", "dir"], ["--config: 'dir' is a directory"]),
        (["--config"], ["--config: needs a value"]),
        (["--device", "tpu"], ["device: got 'tpu', expected one of auto, cpu, cuda"]),
    ],
)
def test_train(capsys, workdir, argv, needles):
    _rejected(capsys, workdir, ["train", "--no-progress", *argv], *needles)


def test_train_cuda_without_a_gpu_is_the_devices_fault(capsys, workdir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _rejected(capsys, workdir, ["train", "--device", "cuda"], "device: got 'cuda', but torch sees no CUDA device")


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["file.txt"], ["cannot read", "file.txt"]),
        (["dir"], ["'dir' holds no checkpoint"]),
        (["missing"], ["'missing' does not exist"]),
        ([], ["checkpoint: needs a value"]),
    ],
)
def test_evaluate_paths(capsys, workdir, argv, needles):
    _rejected(capsys, workdir, ["evaluate", *argv], *needles)


@pytest.mark.parametrize(
    "extra,needles",
    [
        (["--device", "tpu"], ["--device: got 'tpu', expected cpu, cuda or cuda:N"]),
        (["--episodes", "-1"], ["--episodes: got -1"]),
        (["--eval-goals", "new"], ["eval-goals: got 'new', expected one of run, train, fresh"]),
        (["--seed", "x"], ["seed: got 'x', expected an integer"]),
    ],
)
def test_evaluate_options(capsys, workdir, run, extra, needles):
    _rejected(capsys, workdir, ["evaluate", str(run), *extra], *needles, run=run)


def test_evaluate_cuda_without_a_gpu_is_the_devices_fault(capsys, workdir, run):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    err = _rejected(capsys, workdir, ["evaluate", str(run), "--device", "cuda"], "--device: got 'cuda'", run=run)
    assert "checkpoint" not in err  # the device's fault, not the checkpoint's


@pytest.mark.parametrize(
    "extra,needles",
    [
        (["--fps", "0"], ["--fps: got 0, expected an integer from 1 to 240"]),
        (["--fps", "-5"], ["--fps: got -5"]),
        (["--episodes", "0"], ["--episodes: got 0"]),
        (["--out", "file.txt"], ["--out: 'file.txt' is a file, expected a directory"]),
        (["--tasks", "reach-9"], ["--tasks: unknown task 'reach-9'"]),
    ],
)
def test_record(capsys, workdir, run, extra, needles):
    _rejected(capsys, workdir, ["record", str(run), *extra], *needles, run=run)


@pytest.mark.parametrize(
    "argv,needles",
    [
        ([], ["give at least one run directory"]),
        (["missing"], ["path 'missing' does not exist"]),
        (["dir", "--out", "file.txt"], ["--out: 'file.txt' is a file, expected a directory"]),
        (["dir", "--final-window", "0"], ["--final-window: got 0.0, expected a fraction in (0, 1]"]),
        (["dir", "--reps", "nan"], ["reps: got 'nan', expected an integer"]),
        (["dir", "--last-n", "3"], ["--last-n: renamed; use --final-window FRACTION"]),
    ],
)
def test_compare(capsys, workdir, argv, needles):
    _rejected(capsys, workdir, ["compare", *argv], *needles)


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["--json", "dir"], ["--json: 'dir' is a directory, expected a file"]),
        (["--json", "file.txt/b.json"], ["'file.txt' is a file"]),
        (["--rounds", "0"], ["--rounds: got 0"]),
        (["--combiners", "pcgard"], ["--combiners: got 'pcgard'"]),
    ],
)
def test_bench(capsys, workdir, argv, needles):
    _rejected(capsys, workdir, ["bench", *argv], *needles)


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["spec.yaml"], ["bad__s1: agent.actor.lr: got 'nan', expected a finite number"]),  # checked before any run
        (["missing.yaml"], ["spec: 'missing.yaml' does not exist"]),
        (["spec.yaml", "--workers", "0"], ["--workers: got 0"]),
        ([], ["spec: needs a value"]),
    ],
)
def test_sweep(capsys, workdir, argv, needles):
    _rejected(capsys, workdir, ["sweep", *argv], *needles)


@pytest.mark.parametrize("argv", [[], ["train"], ["bench"]])
def test_help_piped_into_a_reader_that_stops_early_ends_quietly(argv):
    """`mtrl train --help | head -1`: no BrokenPipeError traceback, the conventional SIGPIPE status 141."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "mtrl", *argv, "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before the help text is written (Python takes a second to start)
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read().decode()
    assert "Traceback" not in stderr and code == 141, (code, stderr)
