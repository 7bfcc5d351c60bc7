"""S3Storage against raw boto3 on the same moto server in the same run: MB/s and ops/s, and the ratio.

Both peers do the same work the same way: a few 64 MiB objects put then got one after another,
then many 1 KiB objects put then got through a pool of the same number of threads. The boto3
peer makes the plain calls a user would write (put_object, get_object) on one shared client.
Run: python benchmarks/storage_throughput.py [--big 2] [--small 5000] [--threads 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import boto3
from botocore.config import Config

from burstmap.storage.s3 import S3Storage

__all__ = ["main"]

MiB = 1024 * 1024
CREDS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}


@contextmanager
def moto_server() -> Iterator[str]:
    """Run a moto server on a free loopback port for the duration of the block; yield its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Peer:
    """One way of doing put/get: a name and two callables."""

    def __init__(self, name: str, put: Callable[[str, bytes], object], get: Callable[[str], bytes]) -> None:
        self.name, self.put, self.get = name, put, get


def peers(endpoint: str, threads: int) -> list[Peer]:
    """The burstmap store and the raw boto3 client, each on its own fresh bucket of the same server."""
    raw = boto3.session.Session(**CREDS).client(
        "s3", endpoint_url=endpoint, config=Config(max_pool_connections=threads))
    for bucket in ("bench-burstmap", "bench-boto3"):
        raw.create_bucket(Bucket=bucket)
    store = S3Storage("bench-burstmap", endpoint_url=endpoint, region="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench", max_pool_connections=threads)
    return [
        Peer("burstmap", store.put, store.get),
        Peer("boto3", lambda k, d: raw.put_object(Bucket="bench-boto3", Key=k, Body=d),
             lambda k: raw.get_object(Bucket="bench-boto3", Key=k)["Body"].read()),
    ]


def timed(work: Callable[[], object]) -> float:
    """Seconds that ``work`` takes."""
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def big(peer: Peer, count: int, tag: str) -> dict[str, float]:
    """Seconds to put then to get ``count`` 64 MiB objects, one after another."""
    data = os.urandom(64 * MiB)
    keys = [f"big/{tag}/{i}" for i in range(count)]
    put = timed(lambda: [peer.put(k, data) for k in keys])
    got: list[bytes] = []
    get = timed(lambda: got.extend(peer.get(k) for k in keys))
    assert all(g == data for g in got), f"{peer.name} returned wrong bytes"
    return {"64 MiB put MB/s": put, "64 MiB get MB/s": get}


def small(peer: Peer, count: int, threads: int, tag: str) -> dict[str, float]:
    """Seconds to put then to get ``count`` 1 KiB objects through ``threads`` threads."""
    data = os.urandom(1024)
    keys = [f"small/{tag}/{i:06d}" for i in range(count)]
    with ThreadPoolExecutor(threads) as pool:
        put = timed(lambda: list(pool.map(lambda k: peer.put(k, data), keys)))
        got: list[bytes] = []
        get = timed(lambda: got.extend(pool.map(peer.get, keys)))
    assert got == [data] * count, f"{peer.name} returned wrong bytes"
    return {"1 KiB put ops/s": put, "1 KiB get ops/s": get}


def measure(endpoint: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Rates per peer and metric; the peers take turns, in swapped order every other round."""
    metrics = ("64 MiB put MB/s", "64 MiB get MB/s", "1 KiB put ops/s", "1 KiB get ops/s")
    seconds = {name: dict.fromkeys(metrics, 0.0) for name in ("burstmap", "boto3")}
    both = peers(endpoint, args.threads)
    for peer in both:
        small(peer, 200, args.threads, "warm-up")
    for round_ in range(args.rounds):
        for peer in both if round_ % 2 == 0 else both[::-1]:
            times = {**big(peer, args.big, str(round_)),
                     **small(peer, args.small // args.rounds, args.threads, str(round_))}
            for metric, spent in times.items():
                seconds[peer.name][metric] += spent
    work = {"64 MiB put MB/s": args.big * args.rounds * 64 * MiB / 1e6,
            "64 MiB get MB/s": args.big * args.rounds * 64 * MiB / 1e6,
            "1 KiB put ops/s": args.small // args.rounds * args.rounds,
            "1 KiB get ops/s": args.small // args.rounds * args.rounds}
    return {name: {m: work[m] / s for m, s in spent.items()} for name, spent in seconds.items()}


def main() -> None:
    """Measure both peers and print a table with the burstmap/boto3 ratio per row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=2, help="64 MiB objects per peer per round")
    parser.add_argument("--small", type=int, default=5_000, help="1 KiB objects per peer in all rounds")
    parser.add_argument("--threads", type=int, default=16, help="threads for the small objects")
    parser.add_argument("--rounds", type=int, default=2, help="turns per peer, order swapped each round")
    args = parser.parse_args()
    with moto_server() as endpoint:
        rows = measure(endpoint, args)
    print(f"{'':18}{'burstmap':>12}{'boto3':>12}{'ratio':>8}")
    for metric in rows["burstmap"]:
        ours, theirs = rows["burstmap"][metric], rows["boto3"][metric]
        print(f"{metric:18}{ours:12.1f}{theirs:12.1f}{ours / theirs:8.2f}")


if __name__ == "__main__":
    main()
