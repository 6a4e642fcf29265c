"""``scripts/gpu_check.sh --tiny``: the GPU check's four steps in their CPU version, so the script is known to work
before a GPU is at hand."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
ENV = {**os.environ, "PYTHON": sys.executable}  # the interpreter running the suite, not python3 from PATH


def test_gpu_check_tiny_runs_every_step_and_writes_the_table(tmp_path):
    out = tmp_path / "gc"
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env=ENV,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads((out / "gpu_check.json").read_text())
    steps = {row["step"]: row["exit_code"] for row in result["steps"]}
    assert steps == {"device_tests": 0, "bench": 0, "train": 0, "resume": 0, "evaluate": 0, "record": 0}
    assert set(result["bench"]["update"]["MT10"]) == {"fp32", "bf16"}
    assert result["run"]["final_step"] == 200  # trained to 100, resumed to 200
    assert list((out / "videos" / "gpu").glob("reach-1__ep0.mp4"))
    assert "gpu_check on cpu" in res.stdout and "update MT10 bf16" in res.stdout


def test_gpu_check_time_limit_stops_the_running_step_and_still_writes_the_table(tmp_path):
    out = tmp_path / "gc"
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--tiny", "--out", str(out), "--time-limit", "2"],
        capture_output=True, text=True, timeout=120, env=ENV,
    )  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    result = json.loads((out / "gpu_check.json").read_text())
    codes = [row["exit_code"] for row in result["steps"]]
    assert codes == [124] * 6  # the tests stopped at 2 s (pytest alone takes longer), every later step skipped
    assert result["total_seconds"] < 30
    assert "stopped: the step's limit" in (out / "device_tests.log").read_text()
