"""Plant one-line bugs in copies of the package and check that the test suite fails for each (the tests' strength).

Each mutant is one textual replacement in one file of ``mtrl/``, made in a fresh copy of the repository; the tests
named for it run against that copy (``PYTHONPATH`` points at it) in one process. A mutant the tests do not fail on
"survived": the suite does not pin that behaviour. The unmodified copy is run first with the same tests: they must
pass there, or a failure would prove nothing.

    python scripts/mutants.py            # every mutant (about 5 minutes on 2 cores)
    python scripts/mutants.py --list     # what each one plants
    python scripts/mutants.py --only next_obs_wrong_row alpha_wrong_task

Exit code 0 when every mutant was caught, 1 when one survived or the baseline failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


REPLAY = "tests/integration/test_replay_integrity.py"
REGULARIZERS = "tests/unit/test_regularizers.py"
RESUME = "tests/integration/test_resume_state.py"
SUCCESS = "tests/unit/test_success_any_step.py"
INTERVALS = "tests/unit/test_intervals.py"
CRASH = "tests/integration/test_crash_safety.py"
DAMAGED = "tests/integration/test_damaged_runs.py"
GROUPS = "tests/integration/test_seed_groups.py"
GRAPH = "tests/unit/test_graph.py"
SEED_PARTS = "tests/unit/test_seed_group_parts.py"

MUTANTS = [
    Mutant(
        "graph_adam_step_count",
        "captured update: AdamW's step counted twice (bias correction off after the first update)",
        "mtrl/agents/graph.py",
        'st["step"].add_(1.0)',
        'st["step"].add_(2.0)',
        (GRAPH,),
    ),
    Mutant(
        "clip_scales_up",
        "update (eager and captured): gradient clipping also scales small gradients up",
        "mtrl/nets.py",
        "return (max_norm / (total + 1e-6)).clamp(max=1.0), total",
        "return max_norm / (total + 1e-6), total",
        (SEED_PARTS, GRAPH),
    ),
    Mutant(
        "next_obs_wrong_row",
        "replay: the next observation taken from the obs ring",
        "mtrl/buffers.py",
        "next_obs=self.next_obs[seed, task, idx]",
        "next_obs=self.obs[seed, task, idx]",
        (REPLAY,),
    ),
    Mutant(
        "sample_beyond_filled",
        "replay: indices drawn over the whole ring, not the filled part",
        "mtrl/buffers.py",
        "torch.randint(0, self.size, (k, m)",
        "torch.randint(0, self.per_task, (k, m)",
        (REPLAY,),
    ),
    Mutant(
        "done_at_truncation",
        "loop: a time-limit truncation stored as a terminal",
        "mtrl/train.py",
        "res.next_obs.reshape(*shape, -1), res.terminated.reshape(shape),",
        "res.next_obs.reshape(*shape, -1), (res.terminated | res.truncated).reshape(shape),",
        (REPLAY,),
    ),
    Mutant(
        "td_target_ignores_done",
        "update: the TD target bootstraps through terminals",
        "mtrl/agents/mtsac.py",
        "rew + (1.0 - done) * self.gamma",
        "rew + self.gamma",
        (REPLAY,),
    ),
    Mutant(
        "alpha_wrong_task",
        "update: each row gets the next task's temperature",
        "mtrl/agents/mtsac.py",
        "return torch.take_along_dim(log_alpha, task, dim=-1)",
        "return torch.take_along_dim(log_alpha, (task + 1) % log_alpha.shape[-1], dim=-1)",
        (REPLAY,),
    ),
    Mutant(
        "no_grad_clipping",
        "update: gradient clipping never applied",
        "mtrl/agents/mtsac.py",
        "        g.mul_(coef.view(-1, *[1] * (g.dim() - 1)))\n",
        "        pass\n",
        (REGULARIZERS,),
    ),
    Mutant(
        "no_weight_decay",
        "update: weight decay passed as 0",
        "mtrl/agents/mtsac.py",
        "weight_decay=wd,",
        "weight_decay=0.0,",
        (REGULARIZERS,),
    ),
    Mutant(
        "q_target_clip_gamma",
        "update: the Q-target bound with 1 - gamma^2",
        "mtrl/agents/mtsac.py",
        "bound = rew_absmax / (1.0 - self.gamma)",
        "bound = rew_absmax / (1.0 - self.gamma**2)",
        (REGULARIZERS,),
    ),
    Mutant(
        "dropout_when_acting",
        "acting: dropout left on",
        "mtrl/agents/mtsac.py",
        "        self.actor.eval()\n        o = torch.as_tensor(obs",
        "        self.actor.train()\n        o = torch.as_tensor(obs",
        (REGULARIZERS,),
    ),
    Mutant(
        "reward_norm_shifts_mean",
        "replay: normalized rewards also centred",
        "mtrl/buffers.py",
        "rew=rew / scale,",
        "rew=(rew - rew.mean()) / scale,",
        (REGULARIZERS,),
    ),
    Mutant(
        "optimizer_not_restored",
        "resume: optimizer state not restored",
        "mtrl/agents/mtsac.py",
        '                opt.load_state_dict(_seed_stack([st[f"{name}_optimizers"][i] for st in states]))\n',
        "                pass\n",
        (RESUME,),
    ),
    Mutant(
        "loop_rng_not_restored",
        "resume: the loop's generator (warm-up actions) not restored",
        "mtrl/train.py",
        '                m.rng.bit_generator.state = st["numpy_rng"]\n',
        "                pass\n",
        (RESUME,),
    ),
    Mutant(
        "combiner_not_restored",
        "resume: combiner states not restored",
        "mtrl/agents/mtsac.py",
        '                combiner.load_state_dict(st[f"{name}_combiner"])\n',
        "                pass\n",
        (RESUME,),
    ),
    Mutant(
        "success_at_last_step",
        "evaluation: success read at the last step instead of any",
        "mtrl/evaluate.py",
        "ep_success |= res.success",
        "ep_success[:] = res.success",
        (SUCCESS,),
    ),
    Mutant(
        "ci_50_not_95",
        "compare: a 50% interval reported as the 95% one",
        "mtrl/compare/stats.py",
        "np.percentile(stats, [50.0 * (1.0 - size), 50.0 * (1.0 + size)])",
        "np.percentile(stats, [25.0, 75.0])",
        (INTERVALS,),
    ),
    Mutant(
        "iqm_rounds_the_cut",
        "compare: the IQM cut rounded instead of floored",
        "mtrl/compare/stats.py",
        "cut = int(0.25 * arr.size)",
        "cut = round(0.25 * arr.size)",
        (INTERVALS,),
    ),
    Mutant(
        "poi_ties_count_zero",
        "compare: ties count 0 in the probability of improvement",
        "mtrl/compare/stats.py",
        "np.mean((a > b) + 0.5 * (a == b))",
        "np.mean(a > b)",
        (INTERVALS,),
    ),
    Mutant(
        "second_ctrl_c_ignored",
        "signals: a second Ctrl-C does not abort",
        "mtrl/runs/rundir.py",
        "        if received:  # the second one: stop now",
        "        if received and False:",
        (CRASH,),
    ),
    Mutant(
        "save_without_finite_check",
        "signals: a checkpoint written without the deferred finite check",
        "mtrl/train.py",
        "        agent.check_finite()\n        elapsed =",
        "        elapsed =",
        (CRASH,),
    ),
    Mutant(
        "damaged_unit_kept",
        "resume: a damaged newest unit is not set aside",
        "mtrl/runs/resume.py",
        "            checkpoint.set_aside(path)\n",
        "            pass\n",
        (DAMAGED,),
    ),
    Mutant(
        "group_clip_norm",
        "seed group: gradients clipped by the norm over the whole group",
        "mtrl/nets.py",
        "    total = torch.linalg.vector_norm(norms, dim=0)  # [S]",
        "    total = torch.linalg.vector_norm(norms).expand(norms.shape[1])",
        (GROUPS,),
    ),
    Mutant(
        "group_loss_averaged",
        "seed group: the seeds' losses averaged (every seed's gradient shrinks by N)",
        "mtrl/mto/grads.py",
        "        total = (weights * losses).sum()  # seeds",
        "        total = (weights * losses).sum() / weights.shape[0]  # seeds",
        (GROUPS,),
    ),
    Mutant(
        "group_shared_noise_generator",
        "seed group: every seed's noise drawn from the first seed's generator",
        "mtrl/agents/mtsac.py",
        "generator=g, device=self.device) for g in self.generators])",
        "generator=g, device=self.device) for g in [self.generators[0]] * len(self.generators)])",
        (GROUPS,),
    ),
    Mutant(
        "group_shared_replay_generator",
        "seed group: every seed's replay rows drawn from the first seed's generator",
        "mtrl/buffers.py",
        "        for g in self.generators:",
        "        for g in [self.generators[0]] * self.num_seeds:",
        (GROUPS,),
    ),
    Mutant(
        "group_shared_combiner",
        "seed group: one combiner instance (state, generator) for every seed",
        "mtrl/agents/build.py",
        "[build_combiners(c, num_tasks) for c in cfgs]",
        "[build_combiners(cfgs[0], num_tasks)] * len(cfgs)",
        (GROUPS,),
    ),
    Mutant(
        "group_shared_dropout_generator",
        "seed group: every seed's dropout masks from the first seed's generator",
        "mtrl/nets.py",
        "for g in generators]) >= p",
        "for g in generators[:1] * len(generators)]) >= p",
        (GROUPS,),
    ),
    Mutant(
        "group_env_seeds",
        "seed group: every seed's envs reset with the first seed",
        "mtrl/train.py",
        "[s + start for s in seeds]",
        "[seeds[0] + start for s in seeds]",
        (GROUPS,),
    ),
]


def _copy(target: Path) -> None:
    """The repository without git data, caches and the outputs of runs (only at its top: mtrl/compare is code)."""
    top = {".git", ".venv", "runs", "videos", "compare", "gpu_check"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        return skip | (top & set(names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, target, ignore=ignore, dirs_exist_ok=True)


def _pytest(copy: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider", *tests]
    done = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return done.returncode, lines[-1] if lines else done.stderr.strip()[-200:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=None, help="mutant names (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if args.only is None or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"--only: unknown mutant(s) {', '.join(sorted(unknown))}; --list shows them")
    if args.list:
        for m in chosen:
            print(f"{m.name:28s} {m.what}  [{m.file}; {', '.join(m.tests)}]")
        return 0
    with tempfile.TemporaryDirectory(prefix="mtrl-mutants-") as tmp:
        base = Path(tmp) / "base"
        _copy(base)
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        code, tail = _pytest(base, tests)
        print(f"baseline (no mutant): {tail}")
        if code != 0:
            print("the tests fail without a mutant: nothing can be concluded")
            return 1
        survived = 0
        for m in chosen:
            copy = Path(tmp) / m.name
            _copy(copy)
            path = copy / m.file
            text = path.read_text()
            if text.count(m.old) != 1:
                print(f"{m.name}: the line to mutate is not found once in {m.file} (the code moved): update it")
                survived += 1
                continue
            path.write_text(text.replace(m.old, m.new))
            start = time.perf_counter()
            code, tail = _pytest(copy, m.tests)
            caught = code not in (0, 5)  # 5: no tests collected
            survived += not caught
            verdict = "caught" if caught else "SURVIVED"
            print(f"{verdict:8s} {m.name:28s} {time.perf_counter() - start:5.1f} s  {m.what}: {tail}")
            shutil.rmtree(copy)
    print(f"{len(chosen) - survived} of {len(chosen)} mutants caught")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
