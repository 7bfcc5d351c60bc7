"""No-op calls end to end at 10k, 100k and 1M calls: calls/s, client peak RSS, store bytes per call.

Each size runs in a fresh process (so its peak RSS is its own) on the local backend (2 workers) and a
local store; the peer is the same job 100 times smaller, scaled up: linear cost means a ratio of 1.0.
With ``--stream N``, a generator of N items also goes through `imap` (results read as they come, none
kept), and `map` over a generator of a tenth as many, stored and started in parts as it is read.
Run: python benchmarks/scale.py [--sizes 10000,100000,1000000] [--stream 10000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from _common import report


def noop(x):
    return x


def one(calls: int) -> dict:
    """Run one job of ``calls`` no-op calls in this process and measure it."""
    import burstmap
    from burstmap.backends.local import LocalBackend
    from burstmap.storage.local import LocalStorage

    with tempfile.TemporaryDirectory() as store:
        with burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(store), progress=False) as ex:
            burstmap.get_all_results(ex.map(noop, range(100)))
            start = time.perf_counter()
            futures = ex.map(noop, range(calls))
            returned = time.perf_counter() - start
            results = burstmap.get_all_results(futures)
            seconds = time.perf_counter() - start
            assert results == list(range(calls))
            job = futures[0].layout.root
        del futures, results
        sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(store, job)) for f in fs]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"calls": calls, "seconds": seconds, "map_returned": returned, "rss": rss,
            "store_bytes": sum(sizes), "objects": len(sizes)}


def streamed(calls: int) -> dict:
    """``imap`` over a generator of ``calls`` items in this process, and a ``map`` over a tenth as many."""
    import burstmap
    from burstmap.backends.local import LocalBackend
    from burstmap.storage.local import LocalStorage

    with tempfile.TemporaryDirectory() as store:
        with burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(store), progress=False) as ex:
            burstmap.get_all_results(ex.map(noop, range(100)))
            start = time.perf_counter()
            total = sum(ex.imap(noop, (i for i in range(calls))))
            seconds = time.perf_counter() - start
            assert total == calls * (calls - 1) // 2
            start = time.perf_counter()
            futures = ex.map(noop, (i for i in range(calls // 10)))
            returned = time.perf_counter() - start
            assert sum(burstmap.get_all_results(futures)) == calls // 10 * (calls // 10 - 1) // 2
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"calls": calls, "seconds": seconds, "rss": rss, "map_returned": returned, "parts": len(futures.job_ids)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--stream", type=int, help="also stream a generator of this many items through imap")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-stream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    if args.one_stream:
        print(json.dumps(streamed(args.one_stream)))
        return
    if args.stream:
        out = subprocess.run([sys.executable, __file__, "--one-stream", str(args.stream)], check=True,
                             capture_output=True, text=True).stdout
        run = json.loads(out.splitlines()[-1])
        print(f"{args.stream:>9,} calls streamed through imap: {run['seconds']:6.2f}s "
              f"({args.stream / run['seconds']:,.0f} calls/s), client peak RSS {run['rss'] / 2**20:,.0f} MB; "
              f"map() over a generator of {args.stream // 10:,} returned after {run['map_returned']:.2f}s "
              f"in {run['parts']} parts")
    runs = []
    for calls in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--one", str(calls)], check=True, capture_output=True,
                             text=True).stdout
        run = json.loads(out.splitlines()[-1])
        runs.append(run)
        print(f"{calls:>9,} calls: {run['seconds']:6.2f}s end to end ({calls / run['seconds']:,.0f} calls/s), "
              f"map() returned after {run['map_returned']:.2f}s, client peak RSS {run['rss'] / 2**20:,.0f} MB, "
              f"store {run['store_bytes'] / calls:.0f} B/call in {run['objects']:,} objects")
    small, big = runs[0], runs[-1]
    scaled = small["seconds"] * big["calls"] / small["calls"]
    report("scale", f"{big['calls']:,} calls in {big['seconds']:.2f}s",
           f"{small['calls']:,} calls scaled x{big['calls'] // small['calls']}: {scaled:.2f}s",
           big["seconds"] / scaled, "<= 1.2x time (linear); 1M calls <= 15 s, peak RSS <= 300 MB")


if __name__ == "__main__":
    main()
