"""A blocked matrix multiply through storage, numpywren's idea in small: C = A @ B, one call per tile of C.

A and B (n×n float64) are written as t×t tiles to a scratch folder by one call per tile. Then call
(i, j) reads row i of A's tiles and column j of B's, multiplies and sums them on one BLAS thread,
and writes tile (i, j) of C. No call ever holds more than four tiles, so the matrices may be far
larger than what one worker can hold (``--worker-mb``, the memory budget of one worker, is checked:
the three matrices must exceed it and four tiles must fit). The client checks the result with
Freivalds' test (C x = A (B x) for a random x), reading the tiles one at a time.

Run: python examples/gemm.py [--n 8192] [--tile 2048] [--worker-mb 1024]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import burstmap

MB = 1_000_000


def tile_name(matrix: str, i: int, j: int) -> str:
    """The scratch name of tile (i, j) of ``matrix``."""
    return f"{matrix}/{i:04d}-{j:04d}"


def make_tile(index: int, space: burstmap.Scratch, tiles: int, t: int) -> None:
    """Write tile ``index`` of A (the first tiles² indices) or of B: uniform random numbers."""
    matrix, (i, j) = "AB"[index // tiles**2], divmod(index % tiles**2, tiles)
    space.put(tile_name(matrix, i, j), np.random.default_rng(index).random((t, t)).tobytes())


def read_tile(space: burstmap.Scratch, matrix: str, i: int, j: int, t: int) -> np.ndarray:
    """Tile (i, j) of ``matrix`` as a t×t array (read-only, over the bytes read)."""
    return np.frombuffer(space.get(tile_name(matrix, i, j)), np.float64).reshape(t, t)


def multiply_tile(index: int, space: burstmap.Scratch, tiles: int, t: int) -> dict[str, float]:
    """Compute tile (i, j) of C from row i of A and column j of B; return seconds spent in IO and compute."""
    i, j = divmod(index, tiles)
    c = np.zeros((t, t))
    io = compute = 0.0
    with threadpool_limits(1, user_api="blas"):
        for k in range(tiles):
            t0 = time.perf_counter()
            a, b = read_tile(space, "A", i, k, t), read_tile(space, "B", k, j, t)
            t1 = time.perf_counter()
            c += a @ b
            io, compute = io + t1 - t0, compute + time.perf_counter() - t1
    t0 = time.perf_counter()
    space.put(tile_name("C", i, j), c.tobytes())
    return {"io": io + time.perf_counter() - t0, "compute": compute}


def freivalds(space: burstmap.Scratch, tiles: int, t: int) -> None:
    """Check C = A @ B by comparing C x with A (B x) for a random vector x, one tile in memory at a time."""
    x = np.random.default_rng(0).random(tiles * t)

    def times(matrix: str, v: np.ndarray) -> np.ndarray:
        return np.concatenate([sum(read_tile(space, matrix, i, k, t) @ v[k * t:(k + 1) * t] for k in range(tiles))
                               for i in range(tiles)])

    if not np.allclose(times("C", x), times("A", times("B", x)), rtol=1e-9):
        raise ValueError("C is not A @ B")


def run(ex: burstmap.Executor, n: int, t: int, worker_mb: float) -> dict[str, float]:
    """Multiply two random n×n matrices through storage in t×t tiles on ``ex``; return the figures."""
    if n % t:
        raise ValueError(f"the tile size {t} must divide n = {n}")
    if 3 * n * n * 8 / MB <= worker_mb or 4 * t * t * 8 / MB > worker_mb:
        raise ValueError(f"choose sizes where A, B and C ({3 * n * n * 8 / MB:.0f} MB) exceed one worker's "
                         f"{worker_mb:.0f} MB and four tiles ({4 * t * t * 8 / MB:.0f} MB) fit in it")
    tiles = n // t
    with ex.scratch() as space:
        burstmap.get_all_results(ex.map(make_tile, range(2 * tiles**2), extra_args=(space, tiles, t)))
        start = time.perf_counter()
        calls = burstmap.get_all_results(ex.map(multiply_tile, range(tiles**2), extra_args=(space, tiles, t)))
        wall = time.perf_counter() - start
        freivalds(space, tiles, t)
    return {"gflops": 2 * n**3 / wall / 1e9, "wall": wall, "io": sum(c["io"] for c in calls),
            "compute": sum(c["compute"] for c in calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192, help="matrix size")
    parser.add_argument("--tile", type=int, default=2048, help="tile size (divides n)")
    parser.add_argument("--worker-mb", type=float, default=1024, help="memory budget of one worker, MB")
    args = parser.parse_args()
    with burstmap.default_executor() as ex:
        f = run(ex, args.n, args.tile, args.worker_mb)
    print(f"C = A @ B, n = {args.n}, in {f['wall']:.1f} s: {f['gflops']:.1f} GFLOP/s; call time: compute "
          f"{f['compute']:.1f} s, storage {f['io']:.1f} s")


if __name__ == "__main__":
    main()
