"""The long schema-driven fuzz of the live service: 2,000+ generated requests over every endpoint.

  .venv/bin/python benchmarks/fuzz.py [--per-operation 500] [--seed 1]

Trains small models into a private temporary store and starts `genreg serve` (as
benchmarks/load.py does), then runs tests/fuzzing.py against the OpenAPI document the server
publishes: valid and invalid bodies, checked for 5xx, undeclared status codes or content
types, responses that break the schema, invalid data accepted, and hangs (30 s timeout).
Prints the number of requests per operation and status.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "tests")]

from fuzzing import fuzz  # noqa: E402
from load import start_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-operation", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1, help="0: the suite's derandomized requests")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    proc, base = start_server(args.workers)
    try:
        start = time.perf_counter()
        sent = fuzz(base, args.per_operation, seed=args.seed)
        elapsed = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("| operation | status | requests |\n|---|---|---|")
    for key, count in sorted(sent.items()):
        operation, status = key.rsplit(" ", 1)
        print(f"| {operation} | {status} | {count:,} |")
    print(f"\n{sum(sent.values()):,} requests in {elapsed:.0f} s, every check passed (seed {args.seed})")


if __name__ == "__main__":
    main()
