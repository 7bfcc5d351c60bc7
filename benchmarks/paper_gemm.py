"""The tiled matrix multiply through storage (`examples/gemm.py`) against numpy's one-node matmul, same run.

burstmap multiplies two random n×n matrices stored as tiles, one call (one BLAS thread) per output
tile on W local workers. The peer is numpy's ``a @ b`` of the same n×n matrices in this process with
every BLAS thread: the largest product that fits here is this one (three 8192² float64 matrices
take 1.6 GB of 24 GB), so the peer multiplies exactly what burstmap does. Ratio of GFLOP/s.
Run: python benchmarks/paper_gemm.py [--n 8192] [--tile 2048] [--workers 2] [--plot docs/gemm.png]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import report
from _paper import local_executor, plot_jobs

import gemm  # from examples/, which _paper puts on the path


def numpy_gflops(n: int) -> float:
    """GFLOP/s of one n×n float64 matmul in this process, with every BLAS thread."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n)), rng.random((n, n))
    start = time.perf_counter()
    a @ b
    return 2 * n**3 / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--tile", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-mb", type=float, default=1024, help="memory budget of one worker, MB")
    parser.add_argument("--plot", help="draw the timeline of the multiply into this PNG")
    args = parser.parse_args()
    with local_executor(args.workers) as ex:
        ours = gemm.run(ex, args.n, args.tile, args.worker_mb)
        plot_jobs(ex, args.plot, {"multiply_tile"})
    peer = numpy_gflops(args.n)
    report("gemm", f"{ours['gflops']:.1f} GFLOP/s (n={args.n} in {args.tile}² tiles, {ours['wall']:.1f} s; call "
           f"seconds: compute {ours['compute']:.1f}, storage {ours['io']:.1f})",
           f"numpy a @ b {peer:.1f} GFLOP/s", ours["gflops"] / peer, ">= 0.7x")


if __name__ == "__main__":
    main()
