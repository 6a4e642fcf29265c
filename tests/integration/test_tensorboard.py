"""What a user sees in TensorBoard: the success rates first, and the HParams table on what differs between runs.

TensorBoard's Time Series tab shows tag groups (the part before the first ``/``) in alphabetical order and the cards
of a group by tag; its HParams table shows the first five hyperparameters (those that differ between runs first)
and the first five metrics (by tag). The second test asks a real TensorBoard server, on 127.0.0.1, what it built.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tbparse import SummaryReader
from toyruns import TINY

from mtrl.config import from_flat, to_flat
from mtrl.runs.tensorboard import write_hparams
from mtrl.train import train


def _time_series_order(tags: list[str]) -> list[str]:
    """Tags in the order of TensorBoard's Time Series tab: groups alphabetically, then tags within a group."""
    return sorted(tags, key=lambda t: (t.split("/", 1)[0], t))


def test_time_series_opens_on_the_final_and_per_task_success(tmp_path: Path) -> None:
    cfg = from_flat({**TINY, "run_dir": str(tmp_path), "run_name": "r"})
    run = train(cfg, progress=False)
    tags = sorted(set(SummaryReader(str(run)).scalars.tag))
    order = _time_series_order(tags)
    tasks = [f"reach-{i}" for i in range(4)]
    assert order[: 2 + len(tasks)] == ["eval/final_success", "eval/success_rate"] + [
        f"eval/success_rate/{t}" for t in tasks
    ]
    groups = list(dict.fromkeys(t.split("/", 1)[0] for t in order))
    assert groups == ["eval", "eval_return", "losses", "train"]  # a `mean` run has no combiner diagnostics (mto/)
    assert {f"train/alpha/{t}" for t in tasks} | {"train/sps", "train/episodic_return"} <= set(tags)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _experiment(logdir: Path) -> dict:
    """The HParams experiment a TensorBoard server on 127.0.0.1 builds from ``logdir``."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/data/plugin/hparams/experiment",
                data=json.dumps({"experimentName": ""}).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    experiment = json.loads(response.read())
                if experiment.get("hparamInfos"):
                    return experiment
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail("TensorBoard did not serve the HParams experiment within 90 s")
            time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_hparams_table_opens_on_what_differs_next_to_the_final_success(tmp_path: Path) -> None:
    """Four runs (two combiners x two seeds, the second with two values of an option, and LayerNorm): the
    hyperparameters that differ come
    first (TensorBoard shows five), bookkeeping keys are not hyperparameters, the final success is the first
    metric."""
    base = to_flat(from_flat({**TINY}))
    runs = [
        ({"combiner": "mean"}, 1, 0.5),
        ({"combiner": "mean"}, 2, 0.25),
        ({"combiner": "cagrad", "combiner.c": 0.4, "agent.actor.layer_norm": True}, 1, 0.75),
        ({"combiner": "cagrad", "combiner.c": 0.2, "agent.actor.layer_norm": True}, 2, 1.0),
    ]
    for i, (method, seed, final) in enumerate(runs):
        flat = {**base, **method, "seed": seed, "run_name": f"run{i}", "run_dir": str(tmp_path)}
        write_hparams(tmp_path / f"run{i}", flat, {"final_success": final}, step=300)
    experiment = _experiment(tmp_path)
    infos = experiment["hparamInfos"]
    differing = [h["name"] for h in infos if h.get("differs")]
    assert sorted(differing) == ["agent.actor.layer_norm", "combiner", "combiner.c", "seed"]
    assert [h["name"] for h in infos[: len(differing)]] == sorted(differing)  # shown first
    names = {h["name"] for h in infos}
    assert not names & {"run_name", "run_dir", "device", "threads", "log_interval", "checkpoint_interval"}
    assert experiment["metricInfos"][0]["name"]["tag"] == "eval/final_success"
