"""mtrl: multi-task SAC with pluggable multi-task optimization combiners on Meta-World MT10/MT50."""

import os

# torch's OpenMP threads spin-wait between parallel regions by default. When anything else wants the cores (env or
# evaluation worker processes, sweep workers, other jobs) the spinning threads take turns away from the working
# ones: an MT10 update measured 1.8 s instead of 0.2 s beside one busy process on a 2-core machine, and no
# measurable difference on an idle one (scripts/bench_throughput.py; README "Benchmarks"). Sleeping waits avoid
# it. Set before torch is imported (libgomp reads it once); an explicit OMP_WAIT_POLICY is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
