"""One call_async(...).result() round trip on a warm executor vs ProcessPoolExecutor's submit().result().

Run: python benchmarks/latency.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

from _common import report


def noop(x):
    return x


def round_trips(submit, rounds: int) -> float:
    """Median seconds of ``rounds`` sequential submit-and-wait round trips."""
    times = []
    for i in range(rounds):
        start = time.perf_counter()
        submit(i).result()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with ProcessPoolExecutor(2) as pool:
        round_trips(lambda i: pool.submit(noop, i), 20)
        ppe = round_trips(lambda i: pool.submit(noop, i), args.rounds)
    with tempfile.TemporaryDirectory() as store, burstmap.Executor(
        backend=LocalBackend(workers=2), storage=LocalStorage(store), progress=False
    ) as ex:
        round_trips(lambda i: ex.call_async(noop, i), 20)
        ours = round_trips(lambda i: ex.call_async(noop, i), args.rounds)
    report("latency", f"{ours * 1e3:.2f} ms (target <= 5 ms)", f"ProcessPoolExecutor(2) {ppe * 1e3:.2f} ms",
           ours / ppe, "informative: slower than a pool that writes nothing")


if __name__ == "__main__":
    main()
