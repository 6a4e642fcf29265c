"""Compare finished runs: final success per seed, IQM with bootstrap CIs, probability of improvement, cost.

``mtrl compare RUNS...`` reads run directories written by ``mtrl train`` (``config.yaml``, ``meta.yaml`` and
TensorBoard event files) and writes ``success_curves.png``, ``iqm.png`` and ``summary.md``.

Rules it enforces (see ``references/mtrl-protocols.md`` §9-10):

- final success of a run = mean of its evaluations of ``eval/success_rate`` in the last 10% of its steps (at least
  its last evaluation; :func:`mtrl.runs.scalars.final_success`), never the max over training;
- runs from different settings (benchmark, protocol, reward version, episode length, step budget, evaluation
  schedule) are never pooled: each setting is compared on its own and the set-apart runs are listed with the reason;
- per-seed values are always shown next to the IQM, so bimodal seeds (some never learn) stay visible.

The package reads top to bottom in the order of the work:

- :mod:`~mtrl.compare.reading`: find run directories and read each one once;
- :mod:`~mtrl.compare.stats`: IQM, probability of improvement, bootstrap CIs (rliable's estimators);
- :mod:`~mtrl.compare.methods`: settings that are never pooled, and a readable label for each method;
- :mod:`~mtrl.compare.aggregate`: runs grouped by setting and method, seeds summarised;
- :mod:`~mtrl.compare.plots` and :mod:`~mtrl.compare.report`: the figures and ``summary.md``;
- :mod:`~mtrl.compare.study`: a study's arms, each method against the best and the plain unitary variant, the
  verdicts and ``study.md``;
- :mod:`~mtrl.compare.cli`: :func:`compare` (all of the above, writing the files) and ``mtrl compare``.
"""

from mtrl.compare.aggregate import Comparison, MethodResult, SettingResult
from mtrl.compare.cli import CompareArgs, cli, compare
from mtrl.compare.methods import describe_setting, differing_keys, method_labels
from mtrl.compare.reading import CompareError, Run, SetApart, find_runs, load_run
from mtrl.compare.stats import bootstrap_ci, iqm, mean_curve_ci, probability_of_improvement

__all__ = [
    "CompareArgs",
    "CompareError",
    "Comparison",
    "MethodResult",
    "Run",
    "SetApart",
    "SettingResult",
    "bootstrap_ci",
    "cli",
    "compare",
    "describe_setting",
    "differing_keys",
    "find_runs",
    "iqm",
    "load_run",
    "mean_curve_ci",
    "method_labels",
    "probability_of_improvement",
]
