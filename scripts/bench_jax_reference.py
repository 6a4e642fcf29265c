"""An MT-SAC update in JAX beside ours, side by side in one process: is JAX faster on this CPU?

The JAX reference implementation (rainx0r/metaworld-algorithms MTSAC) is often quoted as faster than PyTorch on CPU.
This script times the same update in both frameworks, interleaved round by round on the same machine:
MT10 size (K=10, batch 1280, 3x400 MLPs, one-hot task id so obs 39+10, action 4, twin Q, per-task temperature),
one critic step, one actor step, one temperature step and the Polyak update, each jitted in JAX as one function.
It also times one 1280x400 @ 400x400 matmul in each framework, and counts the update's FLOPs.

JAX is not a dependency of mtrl: ``pip install jax`` first (CPU wheel).

    python scripts/bench_jax_reference.py [--rounds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time

# isort: off
import mtrl  # noqa: F401  (first: sets OMP_WAIT_POLICY as in every mtrl process, before torch loads)
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
# isort: on

from mtrl.bench import make_agent, make_batch

K, BATCH, OBS, ACT, HIDDEN = 10, 1280, 39, 4, 400


def jax_update_fn():
    """The jitted JAX update and its initial state and batch (same sizes as ours)."""
    import jax
    import jax.numpy as jnp

    def init_mlp(key, sizes):
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            key, sub = jax.random.split(key)
            layers.append((jax.random.uniform(sub, (a, b), minval=-1, maxval=1) / np.sqrt(a), jnp.zeros(b)))
        return layers

    def mlp(layers, x):
        for w, b in layers[:-1]:
            x = jax.nn.relu(x @ w + b)
        w, b = layers[-1]
        return x @ w + b

    def actor(p, obs, eps):  # tanh-Gaussian with the stable log-det, as mtrl.nets.squash_log_prob
        mu, log_std = jnp.split(mlp(p, obs), 2, axis=-1)
        log_std = jnp.clip(log_std, -20, 2)
        u = mu + jnp.exp(log_std) * eps
        log_det = 2 * (np.log(2) - u - jax.nn.softplus(-2 * u))
        return jnp.tanh(u), (-0.5 * eps**2 - log_std - 0.5 * np.log(2 * np.pi) - log_det).sum(-1)

    def twin_q(p, obs, act):  # p stacked over the two critics
        x = jnp.concatenate([obs, act], -1)
        return jax.vmap(lambda one: mlp(one, x)[:, 0])(p)

    def adam(p, g, m, v, t, lr=3e-4):
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        step = lambda p, m, v: p - lr * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8)  # noqa: E731
        return jax.tree.map(step, p, m, v), m, v

    @jax.jit
    def update(state, batch, key):
        pa, pc, pt, log_alpha, (cm, cv, am, av, lm, lv), t = state
        obs, act, rew, next_obs, done, task = batch
        k1, k2 = jax.random.split(key)
        eps, next_eps = jax.random.normal(k1, (BATCH, ACT)), jax.random.normal(k2, (BATCH, ACT))

        def actor_loss(p):
            action, logp = actor(p, obs, eps)
            return (jnp.exp(log_alpha)[task] * logp - twin_q(pc_new, obs, action).min(0)).mean(), logp

        alpha = jnp.exp(log_alpha)[task]
        next_action, next_logp = actor(pa, next_obs, next_eps)
        y = rew + (1 - done) * 0.99 * (twin_q(pt, next_obs, next_action).min(0) - alpha * next_logp)
        critic_grad = jax.grad(lambda p: 0.5 * ((twin_q(p, obs, act) - y) ** 2).sum(0).mean())(pc)
        pc_new, cm, cv = adam(pc, critic_grad, cm, cv, t)
        actor_grad, logp = jax.grad(actor_loss, has_aux=True)(pa)
        pa, am, av = adam(pa, actor_grad, am, av, t)
        alpha_grad = jax.grad(lambda la: (-la[task] * (jax.lax.stop_gradient(logp) - ACT)).mean())(log_alpha)
        log_alpha, lm, lv = adam(log_alpha, alpha_grad, lm, lv, t)
        pt = jax.tree.map(lambda target, online: target + 0.005 * (online - target), pt, pc_new)
        return (pa, pc_new, pt, log_alpha, (cm, cv, am, av, lm, lv), t + 1)

    key = jax.random.PRNGKey(0)
    pa = init_mlp(key, [OBS + K, HIDDEN, HIDDEN, HIDDEN, 2 * ACT])
    pc = jax.vmap(lambda k: init_mlp(k, [OBS + K + ACT, HIDDEN, HIDDEN, HIDDEN, 1]))(jax.random.split(key, 2))
    log_alpha = jnp.zeros(K)
    zeros = lambda p: jax.tree.map(jnp.zeros_like, p)  # noqa: E731
    state = (pa, pc, pc, log_alpha, (zeros(pc), zeros(pc), zeros(pa), zeros(pa), zeros(log_alpha), zeros(log_alpha)), 1)
    rng = np.random.default_rng(0)
    task = np.repeat(np.arange(K), BATCH // K)
    one_hot = np.eye(K, dtype=np.float32)[task]
    obs = np.concatenate([rng.normal(size=(BATCH, OBS)).astype(np.float32), one_hot], 1)
    next_obs = np.concatenate([rng.normal(size=(BATCH, OBS)).astype(np.float32), one_hot], 1)
    batch = tuple(
        jnp.asarray(x)
        for x in (obs, rng.uniform(-1, 1, (BATCH, ACT)).astype(np.float32), rng.normal(size=BATCH).astype(np.float32),
                  next_obs, np.zeros(BATCH, np.float32), task)
    )  # fmt: skip
    return update, state, batch


def measure(which: str, rounds: int) -> dict[str, float]:
    """Median seconds of one update and of one 1280x400 @ 400x400 matmul, in one framework."""
    x, w = np.random.default_rng(0).normal(size=(2, BATCH, HIDDEN)).astype(np.float32)
    w = w[:HIDDEN]
    if which == "jax":
        import jax
        import jax.numpy as jnp

        update, state, jbatch = jax_update_fn()
        jx, jw = jnp.asarray(x), jnp.asarray(w)
        jmm = jax.jit(lambda a, b: a @ b)

        def run_update() -> None:
            nonlocal state
            state = update(state, jbatch, jax.random.PRNGKey(0))
            jax.block_until_ready(state)

        def run_matmul() -> None:
            jmm(jx, jw).block_until_ready()
    else:
        agent = make_agent("mean", K, BATCH, torch.device("cpu"))
        batch, noise = make_batch(K, BATCH, torch.device("cpu"))
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)

        def run_update() -> None:
            agent.update(batch, noise=noise)

        def run_matmul() -> None:
            tx @ tw

    out = {}
    for name, fn, reps in (("update", run_update, 1), ("matmul", run_matmul, 20)):
        times = []
        for r in range(rounds + 2):  # the first two compile and warm up
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            if r >= 2:
                times.append((time.perf_counter() - t0) / reps)
        out[name] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="timed updates per process (median)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating process pairs (jax, torch, jax, ...)")
    parser.add_argument("--only", choices=["jax", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args.only, args.rounds)))
        return
    if importlib.util.find_spec("jax") is None:
        sys.exit("bench_jax_reference: JAX is not installed; run 'pip install jax' first")
    # Separate processes: JAX's and torch's CPU thread pools in one process fight over the cores.
    results: dict[str, list[dict[str, float]]] = {"jax": [], "torch": []}
    for _ in range(args.repeats):
        for which in results:
            cmd = [sys.executable, __file__, "--only", which, "--rounds", str(args.rounds)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[which].append(json.loads(line))
    med = {w: {k: statistics.median(r[k] for r in rs) for k in ("update", "matmul")} for w, rs in results.items()}
    agent = make_agent("mean", K, BATCH, torch.device("cpu"))
    batch, noise = make_batch(K, BATCH, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        agent.update(batch, noise=noise)
    gflop, mm_gflop = counter.get_total_flops() / 1e9, 2 * BATCH * HIDDEN * HIDDEN / 1e9
    print(f"MT10-size MT-SAC update, {gflop:.1f} GFLOP; medians of {args.repeats} alternating process pairs")
    print(f"  {'':<6}{'ms/update':>10}{'updates/s':>11}{'update GFLOP/s':>16}{'matmul GFLOP/s':>16}")
    for which in ("jax", "torch"):
        u, m = med[which]["update"], med[which]["matmul"]
        print(f"  {which:<6}{1000 * u:>10.1f}{1 / u:>11.2f}{gflop / u:>16.0f}{mm_gflop / m:>16.0f}")
    print(f"  torch speed-up over jax (update): {med['jax']['update'] / med['torch']['update']:.2f}x")


if __name__ == "__main__":
    main()
