"""Asynchronous evaluation (``eval_mode: async``): same scalars as in-process evaluation, a worker that never
outlives the trainer, one-line errors when it fails."""

import copy
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from toyruns import TINY

from mtrl.config import AgentConfig, EnvConfig, NetConfig, from_flat
from mtrl.envs import make_env
from mtrl.evaluate import AsyncEvaluator, EvalWorkerError, evaluate
from mtrl.nets import Actor
from mtrl.runs.scalars import read_scalars
from mtrl.train import eval_mode, train

ENV = EnvConfig(max_episode_steps=20)
AGENT = AgentConfig(actor=NetConfig(hidden_dim=32))


def _run(tmp_path: Path, name: str, **extra) -> Path:
    return train(from_flat({**TINY, "run_dir": str(tmp_path), "run_name": name, **extra}), progress=False)


def _actor(cfg: NetConfig = AGENT.actor) -> Actor:
    return Actor(2, 2, ENV.toy_tasks, AGENT.conditioning, cfg).eval()  # the toy env: obs and actions in the plane


def test_async_eval_logs_the_same_values_at_the_same_steps_as_sync(tmp_path):
    sync = read_scalars(_run(tmp_path, "sync", eval_mode="sync"))
    run = _run(tmp_path, "async", eval_mode="async", video_interval=2)  # videos stay in-process
    asynchronous = read_scalars(run)
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert [image.step for image in events.Images("eval/video")] == [300]  # every second evaluation

    def evals(df):
        return df[df.tag.str.startswith(("eval/", "eval_return/"))].reset_index(drop=True)

    expected = evals(sync)
    assert sorted(set(expected.step)) == [150, 300]
    assert {"eval/success_rate", "eval_return/reach-3", "eval/final_success"} <= set(expected.tag)
    returns = expected[expected.tag == "eval_return/reach-0"].value.to_numpy()
    assert returns[0] != returns[1]  # the two snapshots act differently: a mixed-up snapshot would show
    final = expected[expected.tag == "eval/success_rate"].value.to_numpy()[-1]
    assert expected[expected.tag == "eval/final_success"].value.item() == final
    assert evals(asynchronous).equals(expected)
    critic = sync[sync.tag == "losses/critic"].reset_index(drop=True)  # training itself is untouched
    assert asynchronous[asynchronous.tag == "losses/critic"].reset_index(drop=True).equals(critic)


def test_auto_is_async_only_on_meta_world_with_four_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert eval_mode(from_flat({})) == "sync"  # the toy env
    assert eval_mode(from_flat({"env.benchmark": "MT10"})) == "async"
    assert eval_mode(from_flat({"env.benchmark": "MT1-reach-v3", "eval_mode": "sync"})) == "sync"
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert eval_mode(from_flat({"env.benchmark": "MT50"})) == "sync"
    assert eval_mode(from_flat({"eval_mode": "async"})) == "async"


def test_evaluator_matches_evaluate_on_the_same_snapshot():
    actor = _actor()
    snapshot = copy.deepcopy(actor.state_dict())
    with AsyncEvaluator(ENV, AGENT, run_seed=7, episodes=3, seed=1) as evaluator:
        evaluator.submit(10, actor.state_dict())
        with torch.no_grad():
            actor.net.head.bias.add_(0.5)  # trained on after the snapshot: must not reach the worker
        deadline = time.monotonic() + 60
        done = []
        while not done and time.monotonic() < deadline:  # poll never blocks
            done = evaluator.poll()
            time.sleep(0.01)
        assert evaluator.pending == 0 and evaluator.wait() == []
    (step, result), tasks = done[0], torch.arange(ENV.toy_tasks)
    actor.load_state_dict(snapshot)
    with torch.no_grad():
        expected = evaluate(
            lambda o: actor.mode(torch.as_tensor(o), tasks).numpy(), make_env(ENV, 7, evaluation=True), 3, seed=1
        )
    assert step == 10 and result.mean == expected.mean
    np.testing.assert_array_equal(result.returns, expected.returns)


def test_a_dead_worker_raises_a_one_line_error():
    evaluator = AsyncEvaluator(ENV, AGENT, run_seed=0, episodes=1, seed=0)
    try:
        evaluator.submit(5, _actor().state_dict())
        evaluator._process.kill()
        evaluator._process.join()
        with pytest.raises(EvalWorkerError, match=r"died \(exit code -9\) with 1 evaluation\(s\) pending") as info:
            evaluator.poll()  # what the training loop calls every step
        assert "\n" not in str(info.value)
    finally:
        evaluator.close()


def test_a_failing_evaluation_raises_a_one_line_error():
    wrong = _actor(NetConfig(hidden_dim=8)).state_dict()
    with AsyncEvaluator(ENV, AGENT, run_seed=0, episodes=1, seed=0) as evaluator:
        evaluator.submit(5, wrong)
        with pytest.raises(EvalWorkerError, match="evaluation worker failed: RuntimeError: Error") as info:
            evaluator.wait()
    assert "\n" not in str(info.value) and not multiprocessing.active_children()


def test_close_stops_a_busy_worker_at_once():
    evaluator = AsyncEvaluator(ENV, AGENT, run_seed=0, episodes=100_000, seed=0)  # minutes of work
    evaluator.submit(5, _actor().state_dict())
    deadline = time.monotonic() + 60
    while evaluator._in_flight is None and time.monotonic() < deadline:  # until the worker has started on it
        evaluator.poll()
        time.sleep(0.01)
    assert evaluator._in_flight == 5
    start = time.monotonic()
    evaluator.close()
    assert time.monotonic() - start < 5 and evaluator._process.exitcode is not None
    assert not multiprocessing.active_children()


def test_training_that_fails_stops_the_worker(tmp_path, monkeypatch):
    from mtrl.agents.mtsac import MTSAC

    original, calls = MTSAC.update, {"n": 0}

    def update(self, batch, noise=None):
        calls["n"] += 1
        if calls["n"] == 60:  # the update of step 160, after the evaluation at step 150 was submitted
            raise KeyboardInterrupt
        return original(self, batch, noise)

    monkeypatch.setattr(MTSAC, "update", update)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "fail", eval_mode="async")
    assert not multiprocessing.active_children()
    assert (tmp_path / "fail" / "checkpoints" / "latest").is_file()
