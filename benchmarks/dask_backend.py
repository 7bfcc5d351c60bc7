"""No-op calls through burstmap's Dask backend vs what a Dask user would write, on the same warm cluster:
``client.map`` over batches of calls (batched by hand, one task per batch), and one task per call.

The cluster is a LocalCluster of 2 single-threaded worker processes; burstmap uses a local store.
Run: python benchmarks/dask_backend.py [--calls N] [--runs R]
"""

from __future__ import annotations

import argparse
import tempfile

import distributed

import burstmap
from burstmap.backends.dask import DaskBackend
from burstmap.storage.local import LocalStorage

from _common import best_of, report


def noop(x):
    return x


def noop_batch(xs):
    return [noop(x) for x in xs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="calls per hand-made Dask task")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    items = list(range(args.calls))

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        client.gather(client.map(noop, range(100), pure=False))
        raw = best_of(args.runs, lambda: client.gather(client.map(noop, items, pure=False)))
        batches = [items[i:i + args.batch] for i in range(0, len(items), args.batch)]
        batched = best_of(args.runs, lambda: client.gather(client.map(noop_batch, batches, pure=False)))
        with tempfile.TemporaryDirectory() as store, burstmap.Executor(
            backend=DaskBackend(client=client), storage=LocalStorage(store), progress=False
        ) as ex:
            burstmap.get_all_results(ex.map(noop, range(100)))
            ours = best_of(args.runs, lambda: burstmap.get_all_results(ex.map(noop, items)))

    rate = f"{args.calls / ours:,.0f} calls/s ({ours:.2f}s)"
    report("dask_backend", rate, f"client.map of {args.batch}-call batches {args.calls / batched:,.0f} calls/s "
           f"({batched:.2f}s)", ours / batched, "<= 1.2x time")
    report("dask_backend", rate, f"client.map one task per call {args.calls / raw:,.0f} calls/s ({raw:.2f}s)",
           ours / raw, "<= 1.0x time")


if __name__ == "__main__":
    main()
