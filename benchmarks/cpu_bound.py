"""100 calls of ~0.5 s of CPU each on 2 workers: wall time over the ideal (total CPU / 2 workers).

The same calls also run on ProcessPoolExecutor(2) in the same run, as the peer.
Run: python benchmarks/cpu_bound.py [--calls N] [--seconds S]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

from _common import report


def spin(n: int) -> float:
    """Burn CPU for ``n`` loop turns; return the CPU seconds it took."""
    start = time.process_time()
    total = 0
    for i in range(n):
        total += i * i
    return time.process_time() - start


def turns_for(seconds: float) -> int:
    """Calibrate how many loop turns take ``seconds`` of CPU here."""
    probe = 2_000_000
    return int(probe * seconds / spin(probe))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    turns = [turns_for(args.seconds)] * args.calls

    with tempfile.TemporaryDirectory() as store, burstmap.Executor(
        backend=LocalBackend(workers=2), storage=LocalStorage(store), progress=False
    ) as ex:
        burstmap.get_all_results(ex.map(abs, range(4)))
        start = time.perf_counter()
        cpu = burstmap.get_all_results(ex.map(spin, turns))
        ours = time.perf_counter() - start
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(abs, range(4)))
        start = time.perf_counter()
        peer_cpu = list(pool.map(spin, turns))
        peer = time.perf_counter() - start
    ideal, peer_ideal = sum(cpu) / 2, sum(peer_cpu) / 2
    report("cpu_bound", f"wall/ideal {ours / ideal:.3f} ({ours:.1f}s for {ideal:.1f}s of CPU per worker)",
           f"ProcessPoolExecutor(2) wall/ideal {peer / peer_ideal:.3f}", (ours / ideal) / (peer / peer_ideal),
           "burstmap wall/ideal <= 1.03")


if __name__ == "__main__":
    main()
