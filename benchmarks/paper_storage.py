"""PyWren's storage benchmark on burstmap's stores against direct file IO and raw boto3, same run.

Each of W calls writes one pseudorandom object of ``--mb`` MB and reads it back with an md5 check
(`examples/storage_bandwidth.py`; the peers read in 1 MB blocks, as PyWren's benchmark did). Aggregate MB/s is all bytes written and read over
the span from the first call's start to the last call's end, for:
  local: burstmap's local store against W processes writing and reading the same bytes as files
         in a directory of the same disk;
  s3:    burstmap's S3 store against W processes using raw boto3 (put_object, then get_object read
         in 1 MB blocks) on the same moto server.
Every worker count in ``--workers`` is measured ``--rounds`` times, the two sides taking turns in
swapped order each round, and each side's best round counts; ``--chart`` draws aggregate MB/s per
worker count.
Run: python benchmarks/paper_storage.py [--workers 1,2,4] [--mb 256] [--chart docs/bandwidth.png] [--plot docs/storage.png]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable

import boto3
import numpy as np

from _common import report
from _paper import local_executor, plot_jobs
from storage_throughput import CREDS, moto_server

import storage_bandwidth as bw  # from examples/, which _paper puts on the path
from burstmap.storage.base import Storage
from burstmap.storage.s3 import S3Storage

BLOCK = 1 << 20


def _check(seed: int, data: bytes, digest: str) -> None:
    """Raise if the md5 of what was read back differs from that of what was written."""
    if digest != hashlib.md5(data).hexdigest():
        raise ValueError(f"object {seed} came back changed")


def file_write_read(seed: int, folder: str, mb: int) -> dict[str, float]:
    """The peer of ``write_read`` on plain files: write one file, read it back in 1 MB blocks, check the md5."""
    data = np.random.default_rng(seed).bytes(mb * bw.MB)
    path = os.path.join(folder, f"object-{seed}")
    start = time.time()
    with open(path, "wb") as f:
        f.write(data)
    written = time.time()
    check = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            check.update(block)
    end = time.time()
    _check(seed, data, check.hexdigest())
    os.unlink(path)
    return {"bytes": len(data), "start": start, "written": written, "end": end}


def boto3_write_read(seed: int, endpoint: str, mb: int) -> dict[str, float]:
    """The peer of ``write_read`` on raw boto3: put_object, then get_object read in 1 MB blocks."""
    client = boto3.session.Session(**CREDS).client("s3", endpoint_url=endpoint)
    data = np.random.default_rng(seed).bytes(mb * bw.MB)
    start = time.time()
    client.put_object(Bucket="bench-boto3", Key=f"object-{seed}", Body=data)
    written = time.time()
    check = hashlib.md5()
    body = client.get_object(Bucket="bench-boto3", Key=f"object-{seed}")["Body"]
    while block := body.read(BLOCK):
        check.update(block)
    end = time.time()
    _check(seed, data, check.hexdigest())
    client.delete_object(Bucket="bench-boto3", Key=f"object-{seed}")
    return {"bytes": len(data), "start": start, "written": written, "end": end}


def measure(storage: Storage | None, peer: Callable[[int, str, int], dict[str, float]], target: str, workers: int,
            mb: int, rounds: int, picture: str | None = None) -> tuple[float, float]:
    """Best aggregate MB/s of burstmap's store (a fresh local one if ``None``) and of the peer, ``workers`` processes each."""
    best = {"ours": 0.0, "peer": 0.0}
    with local_executor(workers, storage) as ex, multiprocessing.Pool(workers) as pool:
        pool.map(abs, range(workers))
        sides = {"ours": lambda: bw.run(ex, workers, mb),
                 "peer": lambda: bw.summary(pool.starmap(peer, [(seed, target, mb) for seed in range(workers)]))}
        for round_ in range(rounds):
            for side in ("ours", "peer") if round_ % 2 == 0 else ("peer", "ours"):
                best[side] = max(best[side], sides[side]()["aggregate"])
        plot_jobs(ex, picture, {"write_read"})
    return best["ours"], best["peer"]


def chart(rows: dict[str, dict[int, float]], path: str) -> None:
    """Aggregate MB/s per worker count, one line per store and peer."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    for name, points in rows.items():
        ax.plot(list(points), list(points.values()), marker="o", label=name)
    ax.set_xlabel("workers (processes), one object each")
    ax.set_ylabel("aggregate MB/s (write + read back, md5 checked)")
    ax.set_xticks(sorted({w for points in rows.values() for w in points}))
    ax.legend()
    ax.grid(alpha=0.3)
    figure.savefig(path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure, comma separated")
    parser.add_argument("--mb", type=int, default=256, help="MB per object")
    parser.add_argument("--rounds", type=int, default=2, help="turns per side and worker count")
    parser.add_argument("--chart", help="draw aggregate MB/s per worker count into this PNG")
    parser.add_argument("--plot", help="draw the timeline of the local store's largest job into this PNG")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    rows: dict[str, dict[int, float]] = {n: {} for n in ("burstmap local", "files", "burstmap S3", "boto3")}
    with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="bench-files-") as folder:
        raw = boto3.session.Session(**CREDS).client("s3", endpoint_url=endpoint)
        for bucket in ("bench-boto3", "bench-burstmap"):
            raw.create_bucket(Bucket=bucket)
        s3 = S3Storage("bench-burstmap", endpoint_url=endpoint, region="us-east-1",
                       aws_access_key_id="bench", aws_secret_access_key="bench")
        for w in counts:
            picture = args.plot if w == max(counts) else None
            rows["burstmap local"][w], rows["files"][w] = measure(None, file_write_read, folder, w, args.mb, args.rounds,
                                                                 picture)
            rows["burstmap S3"][w], rows["boto3"][w] = measure(s3, boto3_write_read, endpoint, w, args.mb, args.rounds)
    for w in counts:
        report(f"storage_bandwidth local, {w} workers", f"{rows['burstmap local'][w]:.0f} MB/s",
               f"files {rows['files'][w]:.0f} MB/s", rows["burstmap local"][w] / rows["files"][w], ">= 0.8x")
        report(f"storage_bandwidth S3, {w} workers", f"{rows['burstmap S3'][w]:.0f} MB/s",
               f"boto3 {rows['boto3'][w]:.0f} MB/s", rows["burstmap S3"][w] / rows["boto3"][w], ">= 0.8x")
    if args.chart:
        chart(rows, args.chart)


if __name__ == "__main__":
    main()
