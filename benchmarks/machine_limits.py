"""This machine's physical limits, the ceiling for the paper's workloads: GEMM GFLOP/s, memory and disk bandwidth.

- GEMM: numpy float64 matmul on one BLAS thread (one worker's ceiling) and on all of them.
- Memory: copying a 1 GiB numpy array (read + write bytes per second), in one process.
- Disk: writing and reading back a file with O_DIRECT (no page cache) via ``dd``, in the store's folder.
Run: python benchmarks/machine_limits.py [--n 4096] [--gib 1] [--folder /tmp]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time

import numpy as np
from threadpoolctl import threadpool_limits

from _common import best_of


def gemm_gflops(n: int, threads: int | None) -> float:
    """Best GFLOP/s of three n×n float64 matmuls on ``threads`` BLAS threads (all if ``None``)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n)), rng.random((n, n))
    with threadpool_limits(threads, user_api="blas"):
        return 2 * n**3 / best_of(3, lambda: a @ b) / 1e9


def memory_gbs(gib: float) -> float:
    """GB/s moved (read + written) copying a ``gib`` GiB array into another, best of three."""
    source = np.ones(int(gib * 2**30) // 8)
    target = np.empty_like(source)
    return 2 * source.nbytes / best_of(3, lambda: np.copyto(target, source)) / 1e9


def dd_mbs(args: list[str]) -> float:
    """The MB/s that ``dd`` reports."""
    out = subprocess.run(["dd", *args], capture_output=True, text=True, check=True).stderr
    value, unit = re.search(r"([\d.,]+) ([kMG])B/s", out).groups()
    return float(value.replace(",", ".")) * {"k": 1e-3, "M": 1, "G": 1e3}[unit]


def disk_mbs(folder: str, gib: float) -> tuple[float, float]:
    """Write and read MB/s of a ``gib`` GiB file with O_DIRECT in ``folder``."""
    with tempfile.NamedTemporaryFile(dir=folder) as f:
        count = int(gib * 1024)
        write = dd_mbs(["if=/dev/zero", f"of={f.name}", "bs=1M", f"count={count}", "oflag=direct", "conv=fsync"])
        read = dd_mbs([f"if={f.name}", "of=/dev/null", "bs=1M", "iflag=direct"])
    return write, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--folder", default=tempfile.gettempdir())
    args = parser.parse_args()
    start = time.perf_counter()
    one, every = gemm_gflops(args.n, 1), gemm_gflops(args.n, None)
    write, read = disk_mbs(args.folder, args.gib)
    print(f"cores {os.cpu_count()}; GEMM n={args.n}: {one:.1f} GFLOP/s on 1 thread, {every:.1f} on all; "
          f"memory copy {memory_gbs(args.gib):.1f} GB/s; disk (O_DIRECT, {args.folder}) write {write:.0f} MB/s, "
          f"read {read:.0f} MB/s ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
