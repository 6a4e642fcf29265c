"""mtrl: multi-task SAC with pluggable multi-task optimization combiners on Meta-World MT10/MT50."""

import os

# torch's OpenMP threads spin-wait between parallel regions by default. When anything else wants the cores (env or
# evaluation worker processes, sweep workers, other jobs) the spinning threads take turns away from the working
# ones. scripts/bench_process_settings.py on a 2-core machine, MT10 update: beside one busy process 415 ms spinning
# against 268 ms sleeping (and 1.8 s against 0.2 s under heavier load); idle, 139 against 156 ms (12% slower there,
# within its run-to-run noise). Set before torch is imported (libgomp reads it once); an explicit OMP_WAIT_POLICY is
# kept: OMP_WAIT_POLICY=ACTIVE for a machine that runs nothing else.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
