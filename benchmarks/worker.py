"""Runs one benchmark program in a fresh process: ``python -m benchmarks.worker NAME PLAN ARGS``.

The orchestrator starts one process per measurement so that no program inherits another's
threads, connections or heap. The result is printed as one JSON line.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from benchmarks import outbox, raw, rivals, yard
from benchmarks.common import Plan


def main() -> None:
    logging.basicConfig(level=getattr(logging, os.environ.get("EVENTYARD_BENCH_LOG_LEVEL", "WARNING")))
    name, plan, args = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    program = {**raw.PROGRAMS, **rivals.PROGRAMS, **yard.PROGRAMS, **outbox.PROGRAMS}[name]
    result = program(Plan(**plan), **args)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
