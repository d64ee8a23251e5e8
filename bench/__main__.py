"""`make bench`: every benchmark, each in a fresh process, one table each.

Usage: python -m bench [--quick]   (--quick: small sizes, for a smoke run)
"""

from __future__ import annotations

import subprocess
import sys

FULL = [
    ["bench.gateway"],
    ["bench.gateway", "--api", "responses", "--http-calls", "0"],
    ["bench.jobs"],
    ["bench.oauth"],
    ["bench.throughput"],
    ["bench.cold_start"],
    ["bench.analytics"],
    ["bench.dev_server"],
]
QUICK = [
    ["bench.gateway", "--calls", "200", "--http-calls", "50"],
    ["bench.gateway", "--api", "responses", "--calls", "200", "--http-calls", "0"],
    ["bench.jobs", "--calls", "5", "--quick-calls", "50"],
    ["bench.oauth", "--calls", "50", "--sign-ins", "5"],
    ["bench.throughput", "--completions", "64"],
    ["bench.cold_start", "--repeat", "3"],
    ["bench.analytics", "--messages", "100000", "--small", "25000", "--new", "2000"],
    ["bench.dev_server", "--requests", "50"],
]


def main() -> int:
    plan = QUICK if "--quick" in sys.argv[1:] else FULL
    status = 0
    for command in plan:
        print(f"$ python -m {' '.join(command)}", flush=True)
        status |= subprocess.run([sys.executable, "-m", *command], check=False).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
