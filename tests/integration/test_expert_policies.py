"""Meta-World's scripted experts score the same through our env + evaluator as through Meta-World itself.

Each task's expert (``metaworld.policies``) runs (a) through ``make_env(EnvConfig(benchmark), 1, evaluation=True)``
and :func:`mtrl.evaluate.evaluate`, (b) through ``gym.make_vec("Meta-World/<benchmark>", seed=1,
task_select="pseudorandom")`` and Meta-World's own ``metaworld.evaluation.evaluation``; the machinery is
``scripts/expert_check.py`` (its docstring explains the direct path's setup). Experts and MuJoCo are deterministic,
and the direct path's expert sees our float32-rounded observations, so the two paths run the very same episodes:
per task the success rates must be equal, every episode must start from the same observation (goal and object
positions) and its return must agree to float32 precision.

Why this can fail: the first observation of an episode shows its goal, so another goal set, goal cycle or goal
order in our evaluation env fails ``test_same_goals_in_the_same_order``; a success read from the wrong info (the
step that ends an episode reports its success in ``final_info``) changes the success rates; no termination on
success, another episode length or reward changes the returns (an episode's return sums its rewards up to the step
that ends it). ``test_the_check_notices_other_goals`` shows the comparison sees a mere shift of the goal order.

Budget: 50 episodes per task take about 3 minutes per path for MT10 on two cores, so the default suite runs 3
episodes per task in both paths. Our evaluation shuffles each task's goal cycle with sub-env ``k``'s generator seeded
``eval_seed(seed) + k``, Meta-World's MT10 with ``seed`` for every sub-env: here the direct sub-envs' generators are
re-seeded as ours (``align_goal_order``; nothing else changes), so both paths evaluate the same 3 goals per task in
the same order. The full 50 episodes (each goal once, Meta-World's goal order untouched, episodes paired by first
observation) are marked slow: MT10 takes about 6 minutes, MT50 well over an hour on two cores.
"""

from mtrl.envs.gl import ensure_gl_backend

ensure_gl_backend()  # before mujoco is imported (through metaworld)

import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SEED = 1
SHORT_EPISODES = 3


def _load_expert_check() -> ModuleType:
    """``scripts/expert_check.py`` as a module (scripts/ is no package)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "expert_check.py"
    spec = importlib.util.spec_from_file_location("expert_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


ec = _load_expert_check()


@pytest.fixture(scope="module")
def mt10_short() -> tuple:
    """(ours, direct) for MT10, ``SHORT_EPISODES`` episodes per task, the direct path in our goal order."""
    ours = ec.run_ours("MT10", SEED, SHORT_EPISODES, progress=False)
    direct = ec.run_direct("MT10", SEED, SHORT_EPISODES, align_goal_order=True, progress=False)
    return ours, direct


def test_success_rates_agree(mt10_short):
    ours, direct = mt10_short
    np.testing.assert_array_equal(ours.per_task, direct.per_task)
    assert ours.per_task.mean() > 0.5  # the experts do solve the tasks: a check on all-failures would prove little


def test_same_goals_in_the_same_order(mt10_short):
    ours, direct = mt10_short
    np.testing.assert_allclose(ours.starts, direct.starts, rtol=0, atol=ec.START_ATOL)
    assert len({tuple(s[:, -3:].ravel()) for s in ours.starts}) == 10  # goals differ between tasks


def test_episode_returns_agree(mt10_short):
    ours, direct = mt10_short
    np.testing.assert_allclose(ours.returns, direct.returns, rtol=ec.RETURN_RTOL, atol=ec.RETURN_ATOL)
    cmp = ec.compare(ours, direct, paired="in order", check_returns=True)
    assert cmp.ok.all()


def test_the_check_notices_other_goals(mt10_short):
    """The comparison is not blind: the same episodes one goal later (a shifted goal cycle) disagree everywhere."""
    ours, direct = mt10_short
    shifted = ec.PathResult(
        direct.per_task, np.roll(direct.returns, 1, axis=1), np.roll(direct.starts, 1, axis=1), direct.seconds
    )
    cmp = ec.compare(ours, shifted, paired="in order", check_returns=True)
    assert not cmp.same_goals.any() and not cmp.ok.any()


def _full_check(benchmark: str) -> None:
    """50 episodes per task (each goal once), Meta-World's goal order untouched, episodes paired by first obs."""
    episodes = ec.GOALS_PER_TASK
    ours = ec.run_ours(benchmark, SEED, episodes, progress=False)
    direct = ec.run_direct(benchmark, SEED, episodes, align_goal_order=False, progress=False)
    cmp = ec.compare(ours, direct, paired="by first observation", check_returns=True)
    table = ec.format_table(ec.task_names(benchmark), ours, direct, cmp)
    assert cmp.ok.all(), f"our env / evaluator and Meta-World's disagree:\n{table}"


@pytest.mark.slow
def test_mt10_all_goals_in_metaworlds_order():
    _full_check("MT10")


@pytest.mark.slow
def test_mt50_all_goals_in_metaworlds_order():
    _full_check("MT50")
