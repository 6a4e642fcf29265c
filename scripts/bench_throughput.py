"""Throughput benchmark: the same as ``mtrl bench`` (see ``mtrl bench --help``).

python scripts/bench_throughput.py                                   # update-only per combiner + SB3 ratio
python scripts/bench_throughput.py --train --train-benchmarks MT10   # also real training steps/s
python scripts/bench_throughput.py --sizes MT10 --combiners pcgrad --rounds 5 --json out.json
"""

import sys

from mtrl.bench import cli

if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
