"""A TeraSort-style shuffle sort through storage: BSP with stateless calls, as in PyWren's paper.

1. ``generate``: each call writes ``records`` 100-byte records (a random 10-byte printable key, 89
   printable bytes, a newline, like ``gensort -a``) as one input object, and returns their checksum.
2. map (``partition``): each call reads one input object and writes one object per reducer holding
   its records whose keys fall in that reducer's key range (``shuffle/<reducer>/<mapper>``).
3. reduce (``sort_partition``): each call reads every mapper's object for its range, sorts the
   records by key and writes one sorted run (``sorted/<reducer>``). Runs in reducer order are the
   whole data set in order.
4. ``check_run``: each call checks its run is in key order and returns its first and last key, count
   and checksum; the client checks the runs follow each other and the checksums add up.

The client waits for each stage before starting the next (the barrier of BSP).
Run: python examples/sort.py [--gb 1] [--maps 8] [--reducers 8]
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

import numpy as np

import burstmap

RECORD, KEY = 100, 10
_PRINTABLE = (32, 127)  # keys and values are printable ASCII: ' ' to '~'
_MIX = np.random.default_rng(14).integers(1, 2**63, size=RECORD // 4, dtype=np.uint64)


def checksum(records: np.ndarray) -> int:
    """An order-independent checksum: the sum over records of a (nonlinear) 64-bit hash of each."""
    h = records.view("<u4").astype(np.uint64) @ _MIX
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    return int(h.sum(dtype=np.uint64))


def split_keys(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each record's key as two integers that sort as the key does: its first 8 bytes and last 2."""
    high = np.ascontiguousarray(records[:, :8]).view(">u8").ravel()
    low = records[:, 8].astype(np.uint16) << 8 | records[:, 9]
    return high, low


def generate(m: int, space: burstmap.Scratch, records: int) -> int:
    """Write input object ``m`` of random records; return its checksum."""
    data = np.random.default_rng(m).integers(*_PRINTABLE, size=(records, RECORD), dtype=np.uint8)
    data[:, -1] = ord("\n")
    space.put(f"input/{m:05d}", data.tobytes())
    return checksum(data)


def partition(m: int, space: burstmap.Scratch, reducers: int) -> dict[str, float]:
    """Map task: split input object ``m`` by key range into one object per reducer; return its time split."""
    t0 = time.perf_counter()
    records = np.frombuffer(space.get(f"input/{m:05d}"), np.uint8).reshape(-1, RECORD)
    t1 = time.perf_counter()
    span = _PRINTABLE[1] - _PRINTABLE[0]
    prefix = (records[:, 0] - _PRINTABLE[0]).astype(np.uint32) * span + (records[:, 1] - _PRINTABLE[0])
    bucket = (prefix * reducers // (span * span)).astype(np.uint16)
    grouped = records[np.argsort(bucket, kind="stable")]
    edges = np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=reducers))])
    t2 = time.perf_counter()
    for r in range(reducers):
        space.put(f"shuffle/{r:05d}/{m:05d}", grouped[edges[r]:edges[r + 1]].tobytes())
    return {"read": t1 - t0, "partition": t2 - t1, "write": time.perf_counter() - t2}


def sort_partition(r: int, space: burstmap.Scratch) -> dict[str, float]:
    """Reduce task: read every mapper's records for key range ``r``, sort them, write the sorted run."""
    t0 = time.perf_counter()
    data = b"".join(space.get(name) for name in space.names(f"shuffle/{r:05d}/"))
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD)
    t1 = time.perf_counter()
    high, low = split_keys(records)
    order = np.argsort(high)
    if np.any(high[order][1:] == high[order][:-1]):  # keys sharing 8 bytes (rare): order by all 10
        order = np.lexsort((low, high))
    run = records[order].tobytes()
    t2 = time.perf_counter()
    space.put(f"sorted/{r:05d}", run)
    return {"read": t1 - t0, "sort": t2 - t1, "write": time.perf_counter() - t2}


def check_run(r: int, space: burstmap.Scratch) -> dict[str, Any]:
    """Check sorted run ``r`` is in key order; return its count, checksum and first and last keys."""
    records = np.frombuffer(space.get(f"sorted/{r:05d}"), np.uint8).reshape(-1, RECORD)
    high, low = split_keys(records)
    ordered = (high[1:] > high[:-1]) | ((high[1:] == high[:-1]) & (low[1:] >= low[:-1]))
    if not ordered.all():
        raise ValueError(f"sorted run {r} is out of order at record {int(np.argmin(ordered)) + 1}")
    ends = (records[0, :KEY].tobytes(), records[-1, :KEY].tobytes()) if len(records) else (b"", b"")
    return {"count": len(records), "checksum": checksum(records), "first": ends[0], "last": ends[1]}


def validate(runs: list[dict[str, Any]], expected: int, count: int) -> None:
    """Check the runs follow each other in key order and hold exactly the generated records."""
    keys = [(run["first"], run["last"]) for run in runs if run["count"]]
    if any(a[1] > b[0] for a, b in itertools.pairwise(keys)):
        raise ValueError("sorted runs overlap: the global order is broken")
    if sum(run["count"] for run in runs) != count:
        raise ValueError(f"{sum(run['count'] for run in runs)} records came out of {count}")
    if sum(run["checksum"] for run in runs) % 2**64 != expected % 2**64:
        raise ValueError("the sorted records' checksum differs from the generated records'")


def stage(ex: burstmap.Executor, func: Any, n: int, *args: Any) -> tuple[list, float]:
    """Run one stage of ``n`` calls and wait for all of them (the barrier); return results and wall time."""
    start = time.perf_counter()
    results = burstmap.get_all_results(ex.map(func, range(n), extra_args=args))
    return results, time.perf_counter() - start


def run(ex: burstmap.Executor, records: int, maps: int, reducers: int,
        space: burstmap.Scratch | None = None) -> dict[str, float]:
    """Generate, sort and check ``records`` records on ``ex``; return the time split and throughput.

    ``space`` keeps the input and sorted runs (for a peer to read); by default a scratch folder
    deleted afterwards.
    """
    with ex.scratch() as own:
        space = space or own
        sums, _ = stage(ex, generate, maps, space, records // maps)
        count = records // maps * maps
        mapped, map_wall = stage(ex, partition, maps, space, reducers)
        reduced, reduce_wall = stage(ex, sort_partition, reducers, space)
        runs, _ = stage(ex, check_run, reducers, space)
        validate(runs, sum(sums), count)
    return {
        "gb": count * RECORD / 1e9, "wall": map_wall + reduce_wall, "map_wall": map_wall, "reduce_wall": reduce_wall,
        "map": sum(m["partition"] for m in mapped),
        "shuffle": sum(m["write"] for m in mapped) + sum(r["read"] for r in reduced),
        "reduce": sum(r["sort"] + r["write"] for r in reduced),
        "read_input": sum(m["read"] for m in mapped),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="GB of 100-byte records")
    parser.add_argument("--maps", type=int, default=8, help="map tasks (input objects)")
    parser.add_argument("--reducers", type=int, default=8, help="reduce tasks (key ranges, sorted runs)")
    args = parser.parse_args()
    with burstmap.default_executor() as ex:
        f = run(ex, int(args.gb * 1e9) // RECORD, args.maps, args.reducers)
    print(f"sorted {f['gb']:.2f} GB in {f['wall']:.1f} s ({f['gb'] / f['wall']:.3f} GB/s): map stage "
          f"{f['map_wall']:.1f} s, reduce stage {f['reduce_wall']:.1f} s; call time in map {f['map']:.1f} s, "
          f"shuffle {f['shuffle']:.1f} s, reduce {f['reduce']:.1f} s")


if __name__ == "__main__":
    main()
