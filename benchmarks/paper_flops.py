"""PyWren's FLOPS benchmark on burstmap against the same multiplies in plain processes, same run.

Both sides run `examples/flops.py`'s ``multiply`` (one BLAS thread per call) for the same seeds on
the same number of processes: burstmap's local backend, and a ``multiprocessing`` pool. The ratio
is of effective GFLOP/s (all flops over the wall time from submitting to the last result); each side
runs ``--rounds`` times, taking turns, and its best round counts.
Run: python benchmarks/paper_flops.py [--workers 2] [--calls 4] [--n 2048] [--loops 6] [--plot docs/flops.png]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

from _common import report
from _paper import local_executor, plot_jobs

import flops  # from examples/, which _paper puts on the path


def peer(pool: multiprocessing.pool.Pool, calls: int, n: int, loops: int) -> dict[str, float]:
    """The same calls on a plain process pool."""
    start = time.perf_counter()
    results = pool.starmap(flops.multiply, [(seed, n, loops) for seed in range(calls)])
    return flops.summary(results, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--loops", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plot", help="write the timeline of burstmap's rounds to this PNG")
    args = parser.parse_args()
    ours, theirs = [], []
    with local_executor(args.workers) as ex, multiprocessing.Pool(args.workers) as pool:
        pool.map(abs, range(args.workers))
        for _ in range(args.rounds):
            ours.append(flops.run(ex, args.calls, args.n, args.loops))
            theirs.append(peer(pool, args.calls, args.n, args.loops))
        plot_jobs(ex, args.plot, {"multiply"})
    best, peer_best = (max(r, key=lambda f: f["effective_gflops"]) for r in (ours, theirs))
    report("flops", f"{best['effective_gflops']:.1f} GFLOP/s effective, {best['peak_gflops']:.1f} peak "
           f"({best['tflop']:.2f} TFLOP in {best['wall']:.1f} s)",
           f"multiprocessing.Pool({args.workers}) {peer_best['effective_gflops']:.1f} effective, "
           f"{peer_best['peak_gflops']:.1f} peak", best["effective_gflops"] / peer_best["effective_gflops"], ">= 0.95x")


if __name__ == "__main__":
    main()
