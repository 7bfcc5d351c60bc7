"""PyWren's storage benchmark: every call writes one pseudorandom object and reads it back, checking its md5.

Each call makes ``mb`` MB of pseudorandom bytes (not timed), writes them as one object of a scratch
folder in the executor's store, reads the object back with one GET and checks its md5 (PyWren
streamed its one GET in 1 MB blocks; ``space.open_read`` would download an S3 object in parallel
ranged parts, which a moto server serves far slower than one GET: see docs/paper.md). It returns
how long the write and the read took; the job reports MB/s per call and in aggregate (all bytes over
the span from the first call's start to the last call's end). PyWren saw about 30–40 MB/s per worker
and 60–80 GB/s in aggregate on S3 with thousands of workers.

Run: python examples/storage_bandwidth.py [--calls 2] [--mb 256]
"""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np

import burstmap

MB = 1_000_000


def write_read(seed: int, space: burstmap.Scratch, mb: int) -> dict[str, float]:
    """Write ``mb`` MB of pseudorandom bytes as one object, read it back with one GET, check the md5."""
    data = np.random.default_rng(seed).bytes(mb * MB)
    digest = hashlib.md5(data).hexdigest()
    name = f"bandwidth/{seed}"
    start = time.time()
    space.put(name, data)
    written = time.time()
    check = hashlib.md5(space.get(name)).hexdigest()
    end = time.time()
    if check != digest:
        raise ValueError(f"object {name} came back with md5 {check}, not {digest}")
    return {"bytes": len(data), "start": start, "written": written, "end": end}


def summary(results: list[dict[str, float]]) -> dict[str, float]:
    """Per-call and aggregate MB/s of the writes and the reads."""
    total = sum(r["bytes"] for r in results) / MB
    writes = [r["bytes"] / MB / (r["written"] - r["start"]) for r in results]
    reads = [r["bytes"] / MB / (r["end"] - r["written"]) for r in results]
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"mb": total, "write_per_call": float(np.mean(writes)), "read_per_call": float(np.mean(reads)),
            "aggregate": 2 * total / span}


def run(ex: burstmap.Executor, calls: int, mb: int) -> dict[str, float]:
    """Run the storage job on ``ex`` in a scratch folder deleted afterwards; return its figures."""
    with ex.scratch() as space:
        return summary(burstmap.get_all_results(ex.map(write_read, range(calls), extra_args=(space, mb))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2, help="calls, each with its own object")
    parser.add_argument("--mb", type=int, default=256, help="MB per object (PyWren: 1000)")
    args = parser.parse_args()
    with burstmap.default_executor() as ex:
        f = run(ex, args.calls, args.mb)
    print(f"{f['mb']:.0f} MB written and read back: per call write {f['write_per_call']:.0f} MB/s, "
          f"read {f['read_per_call']:.0f} MB/s; aggregate (write + read) {f['aggregate']:.0f} MB/s")


if __name__ == "__main__":
    main()
