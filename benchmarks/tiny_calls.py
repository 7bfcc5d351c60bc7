"""10,000 no-op calls through the local backend and local store vs ProcessPoolExecutor(2).map.

Run: python benchmarks/tiny_calls.py [--calls N] [--runs R]
"""

from __future__ import annotations

import argparse
import tempfile
from concurrent.futures import ProcessPoolExecutor

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

from _common import best_of, report


def noop(x):
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    items = range(args.calls)

    with ProcessPoolExecutor(2) as pool:
        list(pool.map(noop, range(100)))
        ppe = best_of(args.runs, lambda: list(pool.map(noop, items, chunksize=1)))

    with tempfile.TemporaryDirectory() as store, burstmap.Executor(
        backend=LocalBackend(workers=2), storage=LocalStorage(store), progress=False
    ) as ex:
        burstmap.get_all_results(ex.map(noop, range(100)))
        ours = best_of(args.runs, lambda: burstmap.get_all_results(ex.map(noop, items)))

    report("tiny_calls", f"{args.calls / ours:,.0f} calls/s", f"ProcessPoolExecutor(2) {args.calls / ppe:,.0f} calls/s",
           ppe / ours, ">= 1.0x")


if __name__ == "__main__":
    main()
