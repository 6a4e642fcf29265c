import numpy as np
import pytest
import torch

from mtrl.buffers import MultiTaskReplay


def _fill(buf: MultiTaskReplay, steps: int, k: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for t in range(steps):
        obs = np.full((k, 3), t, dtype=np.float32) + np.arange(k)[:, None] * 1000  # encodes (task, step)
        buf.add(obs, rng.uniform(-1, 1, (k, 2)), rng.normal(size=k) * (1 + np.arange(k)), obs + 1, np.zeros(k))


def test_stratified_batches_are_balanced_and_task_major():
    k, batch = 5, 40
    buf = MultiTaskReplay(k, 3, 2, capacity=500, batch_size=batch, seed=0)
    _fill(buf, 30, k)
    b = buf.sample()
    assert b.obs.shape == (batch, 3)
    assert torch.equal(b.task, torch.arange(k).repeat_interleave(batch // k))
    # every row's observation was stored for its own task
    assert torch.equal((b.obs[:, 0] // 1000).long(), b.task)


def test_uniform_mode_covers_all_tasks_with_varying_counts():
    k = 4
    buf = MultiTaskReplay(k, 3, 2, capacity=400, batch_size=64, kind="uniform", seed=1)
    _fill(buf, 50, k)
    counts = torch.stack([torch.bincount(buf.sample().task, minlength=k) for _ in range(20)])
    assert counts.sum(1).eq(64).all() and (counts > 0).all()
    assert counts.float().std(0).gt(0).any()  # not stratified


def test_wraparound_keeps_the_newest_transitions():
    k, cap = 2, 20  # 10 per task
    buf = MultiTaskReplay(k, 3, 2, capacity=cap, batch_size=2, seed=0)
    _fill(buf, 25, k)
    assert buf.size == 10 and len(buf) == 20 and buf.pos == 5
    steps = sorted(buf.obs[0, 0, :, 0].tolist())  # [seed, task, slot, obs]
    assert steps == list(range(15, 25))


def test_sampling_is_seeded():
    a = MultiTaskReplay(3, 3, 2, capacity=300, batch_size=30, seed=7)
    b = MultiTaskReplay(3, 3, 2, capacity=300, batch_size=30, seed=7)
    _fill(a, 40, 3)
    _fill(b, 40, 3)
    for x, y in zip(a.sample(), b.sample()):
        assert torch.equal(x, y)
    c = MultiTaskReplay(3, 3, 2, capacity=300, batch_size=30, seed=8)
    _fill(c, 40, 3)
    assert not torch.equal(a.sample().obs, c.sample().obs)


def test_reward_normalization_divides_by_per_task_std_without_mean_shift():
    k = 3
    buf = MultiTaskReplay(k, 3, 2, capacity=3000, batch_size=30, reward_norm=True, seed=0)
    rng = np.random.default_rng(0)
    rewards = rng.normal(5.0, 1.0, (400, k)) * np.array([1.0, 10.0, 0.1])
    for r in rewards:
        buf.add(np.zeros((k, 3)), np.zeros((k, 2)), r, np.zeros((k, 3)), np.zeros(k))
    expected_std = rewards.std(axis=0, ddof=1)
    assert np.allclose(buf.reward_std().numpy(), expected_std, rtol=1e-4)
    b = buf.sample()
    stored = torch.as_tensor(rewards, dtype=torch.float32).T  # [K, T]
    # every sampled reward equals a stored reward of its task divided by that task's std
    for r, t in zip(b.rew.tolist(), b.task.tolist()):
        assert np.isclose(stored[t] / expected_std[t], r, rtol=1e-4).any()
    assert b.rew.mean() > 1.0  # no mean shift: rewards around 5 sigma stay positive


def test_state_dict_round_trip():
    buf = MultiTaskReplay(2, 3, 2, capacity=40, batch_size=4, reward_norm=True, seed=3)
    _fill(buf, 25, 2)
    other = MultiTaskReplay(2, 3, 2, capacity=40, batch_size=4, reward_norm=True, seed=99)
    other.load_state_dict(buf.state_dict())
    for x, y in zip(buf.sample(), other.sample()):
        assert torch.equal(x, y)


def test_bad_sizes_are_reported():
    with pytest.raises(ValueError, match="multiple of the number of tasks"):
        MultiTaskReplay(3, 3, 2, capacity=300, batch_size=32)
    with pytest.raises(ValueError, match="one slot per task"):
        MultiTaskReplay(10, 3, 2, capacity=5, batch_size=10)


def test_saved_replay_holds_only_the_filled_rows():
    """A 1M-transition MT10 ring after 20 steps saves about 20 rows per task, not the pre-allocated ring (336 MB)."""
    import io

    buf = MultiTaskReplay(10, 39, 4, 1_000_000, 1280)
    for i in range(20):
        buf.add(np.full((10, 39), i), np.zeros((10, 4)), np.zeros(10), np.full((10, 39), i + 1), np.zeros(10))
    out = io.BytesIO()
    torch.save(buf.state_dict(), out)
    rows = 20 * 10 * (39 + 4 + 1 + 39 + 1) * 4  # float32 bytes of the filled rows
    assert rows < out.tell() < rows + 200_000  # plus generator state and pickling overhead
    out.seek(0)
    again = MultiTaskReplay(10, 39, 4, 1_000_000, 1280)
    again.load_state_dict(torch.load(out, weights_only=False))
    assert again.size == 20 and torch.equal(again.obs[:, :20], buf.obs[:, :20])
