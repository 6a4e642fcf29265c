"""A four-run toy sweep on a real local Ray cluster, one run killed and the sweep resumed, then ``mtrl compare``.

Run by ``test_sweep_ray.py`` inside a network namespace of its own that has only the loopback interface, so the
cluster (which binds some ports on every interface) is reachable from 127.0.0.1 only. Usage::

    python ray_sweep_scenario.py WORKDIR

Every step is checked here; a failed check raises ``AssertionError`` with what was seen (exit code 1).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import yaml

RUN = {
    "total_steps": 200,
    "warmup_steps": 50,
    "eval_interval": 100,
    "eval_episodes": 2,
    "log_interval": 50,
    "checkpoint_interval": 50,
    "agent.actor.hidden_dim": 32,
    "agent.critic.hidden_dim": 32,
    "buffer.batch_size": 32,
    "env.max_episode_steps": 20,
    "env.toy_tasks": 2,
    "device": "cpu",
}
KILLED = "mean__s1"


def loopback_up() -> None:
    """Bring up ``lo`` in this (new, empty) network namespace: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, request)[:18])[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 0x1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mtrl(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtrl", *args], capture_output=True, text=True, **kwargs)


def train_pids(run_name: str) -> list[int]:
    """PIDs of the ``mtrl train`` processes of one sweep run (its command line holds ``--run_name=<name>``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and b"train" in argv and f"--run_name={run_name}".encode() in argv:
            pids.append(int(proc.name))
    return pids


def start_cluster(work: Path, port: int) -> subprocess.Popen[bytes]:
    """``ray start --head --block`` on 127.0.0.1 with 2 CPUs; returns once the head answers."""
    temp = Path(f"/tmp/mtrl-ray-{os.getpid()}")  # short: Ray's unix sockets live under it
    head = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],  # fmt: skip
        stdout=open(work / "ray.log", "w"),  # noqa: SIM115 - the process holds it
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while True:
        probe = subprocess.run(["ray", "status", f"--address=127.0.0.1:{port}"], capture_output=True, text=True)
        if probe.returncode == 0 and "CPU" in probe.stdout:
            return head
        assert head.poll() is None, f"ray start exited with {head.returncode}: {(work / 'ray.log').read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"the Ray head did not come up in 90 s: {probe.stderr[-1000:]}"
        time.sleep(0.5)


def stop_cluster(head: subprocess.Popen[bytes]) -> None:
    """Stop this cluster only (``ray stop`` would stop every Ray instance of the machine)."""
    head.send_signal(signal.SIGTERM)  # ray start --block stops the processes it started
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)  # anything of the session that is left
    except ProcessLookupError:
        pass


def main(work: Path) -> None:
    loopback_up()
    sweep_dir = work / "sweep"
    spec = work / "spec.yaml"
    methods = {"mean": {"combiner": "mean"}, "pcgrad": {"combiner": "pcgrad"}}
    spec.write_text(yaml.safe_dump({"set": RUN, "methods": methods, "seeds": [1, 2], "run_dir": str(sweep_dir)}))
    port = free_port()
    head = start_cluster(work, port)
    try:
        address = f"127.0.0.1:{port}"
        sweep = [sys.executable, "-m", "mtrl", "sweep", str(spec), "--backend", "ray", "--address", address]
        sweep += ["--workers", "2"]  # threads 1 per run: two runs at a time on the 2-CPU cluster
        first = subprocess.Popen(sweep, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work)
        latest = sweep_dir / KILLED / "checkpoints" / "latest"
        deadline = time.monotonic() + 120
        while not latest.is_file():
            assert first.poll() is None, f"the sweep ended before {KILLED} checkpointed: {first.communicate()}"
            assert time.monotonic() < deadline, f"{KILLED} wrote no checkpoint in 120 s"
            time.sleep(0.01)
        pids = train_pids(KILLED)
        assert pids, f"no running train process of {KILLED}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        out, err = first.communicate(timeout=300)
        assert first.returncode == 1, (first.returncode, out, err)
        table = {line.split()[0]: line.split()[1:] for line in out.splitlines() if "__s" in line}
        assert table[KILLED][0] == "failed", out
        assert all(table[f"{m}__s{s}"][0] == "started" for m in methods for s in (1, 2) if f"{m}__s{s}" != KILLED)
        saved = (sweep_dir / KILLED / "checkpoints" / "latest").read_text().strip()
        assert int(saved.removeprefix("step_")) < RUN["total_steps"], saved  # killed before its end

        dry = mtrl("sweep", str(spec), "--dry-run", cwd=work)
        plan = {line.split()[0]: line.split()[1] for line in dry.stdout.splitlines() if "__s" in line}
        assert plan == {f"{m}__s{s}": ("resume" if f"{m}__s{s}" == KILLED else "done") for m in methods for s in (1, 2)}
        second = subprocess.run(sweep, capture_output=True, text=True, cwd=work, timeout=300)
        assert second.returncode == 0, (second.stdout, second.stderr)
        assert "resumed" in next(line for line in second.stdout.splitlines() if line.startswith(KILLED))

        for m in methods:
            for seed in (1, 2):
                run = sweep_dir / f"{m}__s{seed}"
                config = yaml.safe_load((run / "config.yaml").read_text())
                meta = yaml.safe_load((run / "meta.yaml").read_text())
                assert config["seed"] == seed and config["combiner"] == m, config
                assert meta["final_step"] == RUN["total_steps"] and "final_success" in meta, (run, meta)
                unit = (run / "checkpoints" / "latest").read_text().strip()
                assert unit == f"step_{RUN['total_steps']:010d}", (run, unit)

        report = mtrl("compare", str(sweep_dir), "--out", str(work / "compare"), "--reps", "200", cwd=work)
        assert report.returncode == 0, report.stderr
        summary = (work / "compare" / "summary.md").read_text()
        assert "4 runs, 2 methods" in summary, summary
        assert "| `mean` | 2 |" in summary and "| `pcgrad` | 2 |" in summary, summary
        assert "set apart" not in report.stdout, report.stdout
    finally:
        stop_cluster(head)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
