"""5,000 no-op calls through burstmap's Dask backend vs raw client.map + client.gather, same warm cluster.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    items = list(range(args.calls))

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        client.gather(client.map(noop, range(100), pure=False))
        raw = best_of(args.runs, lambda: client.gather(client.map(noop, items, pure=False)))
        with tempfile.TemporaryDirectory() as store, burstmap.Executor(
            backend=DaskBackend(client=client), storage=LocalStorage(store), progress=False
        ) as ex:
            burstmap.get_all_results(ex.map(noop, range(100)))
            ours = best_of(args.runs, lambda: burstmap.get_all_results(ex.map(noop, items)))

    report("dask_backend", f"{args.calls / ours:,.0f} calls/s ({ours:.2f}s)",
           f"client.map {args.calls / raw:,.0f} calls/s ({raw:.2f}s)", ours / raw, "<= 1.2x time")


if __name__ == "__main__":
    main()
