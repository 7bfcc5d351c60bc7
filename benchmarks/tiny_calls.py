"""No-op calls through the local backend and local store, every result durable, against the best
local pools with 2 workers in the same run: joblib's default (loky) backend with its auto-batching,
`ProcessPoolExecutor.map` with a good chunksize, and with chunksize 1.

Run: python benchmarks/tiny_calls.py [--calls N] [--runs R]
"""

from __future__ import annotations

import argparse
import tempfile
from concurrent.futures import ProcessPoolExecutor

import joblib

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

from _common import best_of, report


def noop(x):
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    items = range(args.calls)

    with ProcessPoolExecutor(2) as pool:
        list(pool.map(noop, range(100)))
        ppe = best_of(args.runs, lambda: list(pool.map(noop, items, chunksize=1)))
        chunked = best_of(args.runs, lambda: list(pool.map(noop, items, chunksize=max(1, args.calls // 64))))

    with joblib.Parallel(n_jobs=2) as parallel:
        parallel(joblib.delayed(noop)(i) for i in range(100))
        loky = best_of(args.runs, lambda: parallel(joblib.delayed(noop)(i) for i in items))

    with tempfile.TemporaryDirectory() as store, burstmap.Executor(
        backend=LocalBackend(workers=2), storage=LocalStorage(store), progress=False
    ) as ex:
        burstmap.get_all_results(ex.map(noop, range(100)))
        ours = best_of(args.runs, lambda: burstmap.get_all_results(ex.map(noop, items)))

    rate = f"{args.calls / ours:,.0f} calls/s"
    report("tiny_calls", rate, f"joblib Parallel(n_jobs=2) {args.calls / loky:,.0f} calls/s", loky / ours, ">= 0.5x")
    report("tiny_calls", rate, f"ProcessPoolExecutor(2) chunksize {max(1, args.calls // 64)} "
           f"{args.calls / chunked:,.0f} calls/s", chunked / ours, "(reference)")
    report("tiny_calls", rate, f"ProcessPoolExecutor(2) chunksize 1 {args.calls / ppe:,.0f} calls/s", ppe / ours,
           ">= 1.0x")


if __name__ == "__main__":
    main()
