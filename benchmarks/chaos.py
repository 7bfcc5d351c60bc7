"""A 1,000-call job while a killer SIGKILLs random worker processes 10 times; counts what was lost.

Prints: backend, calls, kills, results, lost, duplicated. The target is 0 lost and 0 duplicated.
Run: python benchmarks/chaos.py [--calls N] [--kills K]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage


def work(x: int) -> int:
    time.sleep(0.01)
    return x


def local_backend(folder: str) -> tuple[burstmap.Executor, Callable[[], list[int]]]:
    """The local pool; its victims are its worker processes."""
    ex = burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(folder), progress=False)
    return ex, ex.backend.worker_pids


#: backend name -> factory of (executor, function listing the pids a killer may SIGKILL)
BACKENDS = {"local": local_backend}


def killer(victims: Callable[[], list[int]], kills: int, done: threading.Event, count: list[int]) -> None:
    """SIGKILL a random victim every 50-300 ms, ``kills`` times or until the job is done."""
    while count[0] < kills and not done.wait(random.uniform(0.05, 0.3)):
        pids = victims()
        if pids:
            try:
                os.kill(random.choice(pids), signal.SIGKILL)
                count[0] += 1
            except ProcessLookupError:
                pass


def run(name: str, calls: int, kills: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        ex, victims = BACKENDS[name](folder)
        with ex:
            burstmap.get_all_results(ex.map(work, range(4)))
            done, count = threading.Event(), [0]
            thread = threading.Thread(target=killer, args=(victims, kills, done, count))
            futures = ex.map(work, range(calls), max_retries=5)
            thread.start()
            results = burstmap.get_all_results(futures, return_exceptions=True)
            done.set()
            thread.join()
    lost = sum(1 for i, r in enumerate(results) if r != i)
    duplicated = sum(n - 1 for n in collections.Counter(r for r in results if isinstance(r, int)).values() if n > 1)
    print(f"{name:>10} {calls:>6} {count[0]:>6} {len(results):>8} {lost:>5} {duplicated:>11}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--backends", nargs="*", default=sorted(BACKENDS))
    args = parser.parse_args()
    print(f"{'backend':>10} {'calls':>6} {'kills':>6} {'results':>8} {'lost':>5} {'duplicated':>11}")
    for name in args.backends:
        run(name, args.calls, args.kills)


if __name__ == "__main__":
    main()
