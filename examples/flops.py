"""PyWren's FLOPS benchmark: every call multiplies two random n×n float64 matrices ``loops`` times.

PyWren ran 12 multiplies of 4096×4096 per Lambda (about 1.65 TFLOP per task) on thousands of
workers. Here the size, the loop count and the number of calls are options. Each call uses one
BLAS thread, as a Lambda worker has about one core. Peak GFLOP/s counts only the time the calls
were multiplying (from the first call's first multiply to the last call's last); effective GFLOP/s
counts the job's whole wall time, with setup and stragglers.

Run: python examples/flops.py [--calls 4] [--n 2048] [--loops 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import burstmap


def multiply(seed: int, n: int, loops: int) -> dict[str, float]:
    """Multiply random n×n matrices ``loops`` times on one thread; return the flops and when they ran."""
    rng = np.random.default_rng(seed)
    a, b = rng.random((n, n)), rng.random((n, n))
    with threadpool_limits(1, user_api="blas"):
        start = time.time()
        for _ in range(loops):
            c = a @ b
        end = time.time()
    j = seed % n
    assert np.isclose(c[0, j], a[0] @ b[:, j]), "matmul gave a wrong result"
    return {"flops": 2.0 * n**3 * loops, "start": start, "end": end}


def summary(results: list[dict[str, float]], wall: float) -> dict[str, float]:
    """Peak GFLOP/s (while calls multiplied) and effective GFLOP/s (over the whole wall time)."""
    flops = sum(r["flops"] for r in results)
    busy = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"tflop": flops / 1e12, "peak_gflops": flops / busy / 1e9, "effective_gflops": flops / wall / 1e9,
            "wall": wall}


def run(ex: burstmap.Executor, calls: int, n: int, loops: int) -> dict[str, float]:
    """Run the FLOPS job on ``ex``; return its figures."""
    start = time.perf_counter()
    results = burstmap.get_all_results(ex.map(multiply, range(calls), extra_args=(n, loops)))
    return summary(results, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4, help="calls (PyWren: one per worker)")
    parser.add_argument("--n", type=int, default=2048, help="matrix size (PyWren: 4096)")
    parser.add_argument("--loops", type=int, default=6, help="multiplies per call (PyWren: 12)")
    args = parser.parse_args()
    with burstmap.default_executor() as ex:
        figures = run(ex, args.calls, args.n, args.loops)
    print(f"{figures['tflop']:.2f} TFLOP in {figures['wall']:.1f} s: peak {figures['peak_gflops']:.1f} GFLOP/s, "
          f"effective {figures['effective_gflops']:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
