"""Every command in the README's code blocks runs as written, or is checked as far as it can be without days of
training; the README's run-directory layout and TensorBoard keys are what a run writes.

Each command is one of:

- **run**: executed as written (``mtrl ...`` in-process through :func:`mtrl.cli.main`) in a folder holding a toy run
  as ``runs/<run_name>``, exit code 0;
- **checked**: long work (MT10 training, a sweep of 2M-step runs) is parsed and validated exactly as the command
  would be (``mtrl train``: :func:`mtrl.cli.train_args` and :func:`mtrl.train.check_config`; ``mtrl sweep``: the
  same command with ``--dry-run``, which checks every run's config), nothing is trained; ``mtrl bench`` runs every
  part the command names on 3x16 networks (``--hidden 16``);
- **elsewhere**: a command another test or CI runs (named in :data:`ELSEWHERE`).

A README command that fits none of them fails the test: a new command gets a way to be checked when it is added.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from toyruns import TINY

from mtrl.cli import main, train_args
from mtrl.config import from_flat
from mtrl.train import check_config, train

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

ELSEWHERE = {
    "bash scripts/install.sh": ".ci/run installs with it",
    "python -m pytest -q": "this suite",
    "python -m pytest -m slow": "the slow tests, off by default",
    "python scripts/mutants.py": "minutes of test runs on mutated copies; run by hand (its mutants are pinned below)",
    "ray start --head --port 6379": "tests/integration/test_sweep_ray.py starts a real head (on 127.0.0.1)",
    "ray start --address HEAD_IP:6379": "a second machine; tests/integration/test_sweep_ray.py uses one head",
    "mtrl sweep configs/sweeps/mt10_mean_vs_pcgrad.yaml --backend ray --address HEAD_IP:6379": (
        "tests/integration/test_sweep_ray.py runs a sweep on a real cluster; the spec is checked below"
    ),
    "tensorboard --logdir runs": "tests/integration/test_tensorboard.py asks a real TensorBoard server",
}

RUN_AS_WRITTEN = re.compile(r"^mtrl (train --help|evaluate runs/|record runs/|compare runs/$)")


def readme_commands() -> list[str]:
    """The command lines of the README's ``bash`` code blocks, comments removed."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("  #")[0].split(" # ")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A folder holding one toy run as ``runs/<name>`` (4 tasks named reach-0..reach-3, as the default run)."""
    work = tmp_path_factory.mktemp("readme")
    run = train(from_flat({**TINY, "run_dir": str(work / "runs")}), progress=False)
    return work, run.name


def test_the_readme_shows_commands() -> None:
    commands = readme_commands()
    assert len(commands) >= 20 and "mtrl train" in commands


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command(command: str, workdir: tuple[Path, str], monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    work, name = workdir
    if command in ELSEWHERE:
        return
    argv = shlex.split(command.replace("<run_name>", name))
    assert argv[0] == "mtrl", f"README command not checked by this test: {command!r}; give it a way to be checked"
    if RUN_AS_WRITTEN.match(command):
        monkeypatch.chdir(work)
        code = main(argv[1:])
        captured = capsys.readouterr()
        assert code == 0, f"{command}: exit {code}\n{captured.err[-2000:]}"
        return
    monkeypatch.chdir(work if "runs/<run_name>" in command else ROOT)
    if argv[1] == "train":
        cfg, run, _ = train_args(argv[2:])
        check_config(cfg)
        assert (run is not None) == ("--resume" in argv)
    elif argv[1] == "sweep":
        code = main([*argv[1:], "--dry-run"] if "--dry-run" not in argv else argv[1:])
        assert code == 0, capsys.readouterr().err
    elif argv[1] == "compare":  # over a sweep's runs, which this test does not train: the options parse
        from mtrl.compare import CompareArgs
        from mtrl.config import parse

        parse(CompareArgs, argv[2:], prog="mtrl compare", flags=True, hyphens=True)
    elif argv[1] == "bench":  # every part the command names, on 3x16 networks (seconds instead of a minute)
        monkeypatch.chdir(work)
        code = main([*argv[1:], "--hidden", "16"])
        assert code == 0, capsys.readouterr().err
    else:
        pytest.fail(f"README command not checked by this test: {command!r}")


def test_readme_run_directory_layout_and_keys_are_what_a_run_writes(workdir: tuple[Path, str]) -> None:
    """The files the README's layout names exist in a real run, and every TensorBoard key family its table names
    is written (and the run writes no family the table leaves out)."""
    from tbparse import SummaryReader

    work, name = workdir
    run = work / "runs" / name
    text = README.read_text()
    layout = text[text.index("## Where results go") : text.index("| TensorBoard key |")]
    for entry in ("config.yaml", "command.txt", "meta.yaml", "events.out.tfevents.", "checkpoints/latest"):
        assert entry in layout
    assert (run / "config.yaml").is_file() and (run / "command.txt").is_file() and (run / "meta.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert re.fullmatch(r"step_\d{10}", latest) and "checkpoints/step_<step>/" in layout
    assert {p.name for p in (run / "checkpoints" / latest).iterdir()} == {"checkpoint.pt", "buffer.pt"}
    assert len([p for p in (run / "checkpoints").iterdir() if p.is_dir()]) == 2  # "the newest two units are kept"
    meta = yaml.safe_load((run / "meta.yaml").read_text())
    for key in ("git_commit", "git_dirty", "versions", "seed", "wall_clock_s", "final_step", "final_success"):
        assert key in meta, key
    assert re.fullmatch(r"toy__mean__s1__\d{8}-\d{6}", name)  # {benchmark}__{combiner}__s{seed}__{timestamp}

    table = text[text.index("| TensorBoard key |") : text.index("Steps are vector-env steps")]
    keys = [row.split("|")[1] for row in table.splitlines()[2:] if row.startswith("|")]  # the first column
    documented = [k for cell in keys for k in re.findall(r"`([a-z_]+(?:/[a-z_<>]+)*)`", cell)]
    tags = set(SummaryReader(str(run)).scalars.tag)

    def family(tag: str) -> str:
        return re.sub(r"reach-\d", "<task>", tag)

    written = {family(t) for t in tags}
    optional = {"train/alpha/shared", "losses/critic_grad_norm", "losses/actor_grad_norm"}  # other settings' keys
    missing = [d for d in documented if d not in written and not d.startswith("mto/") and d not in optional]
    assert not missing, f"documented but not written by a run: {missing}"
    undocumented = [w for w in written if w not in documented and not w.startswith("mto/")]
    assert not undocumented, f"written by a run but not in the README's table: {undocumented}"


def test_every_mutant_of_scripts_mutants_still_finds_its_line() -> None:
    """The README promises the mutation check works: each planted line still exists exactly once where it points."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("mutants", ROOT / "scripts" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    assert len(module.MUTANTS) >= 12
    for m in module.MUTANTS:
        assert (ROOT / m.file).read_text().count(m.old) == 1, m.name
        assert all((ROOT / t).is_file() for t in m.tests), m.name
