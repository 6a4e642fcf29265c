"""``mtrl sweep --backend ray`` against a real Ray cluster: a local one with 2 CPUs, reachable from 127.0.0.1 only.

The scenario (``ray_sweep_scenario.py``) starts the cluster, runs a four-run toy sweep through it, kills one run's
training process after its first checkpoint, checks that the sweep reports that run failed, resumes the sweep (the
killed run resumes, the others are skipped), checks every run directory and ``mtrl compare`` over them, and stops
the cluster. It runs in a network namespace of its own with only a loopback interface (``unshare --net``), since Ray
binds some of its ports on every interface of a machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
SCENARIO = Path(__file__).with_name("ray_sweep_scenario.py")


def _namespace_command() -> list[str]:
    """``unshare`` into a new network namespace (as root, or in a user namespace of one's own)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed")
    for cmd in ([unshare, "--net"], [unshare, "--user", "--map-root-user", "--net"]):
        if subprocess.run([*cmd, "true"], capture_output=True).returncode == 0:
            return cmd
    pytest.skip("no network namespace can be made here (neither root nor unprivileged user namespaces)")


def test_ray_sweep_runs_is_resumed_after_a_killed_run_and_compares(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*_namespace_command(), sys.executable, str(SCENARIO), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
