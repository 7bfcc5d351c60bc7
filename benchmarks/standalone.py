"""5,000 no-op calls via 2 stand-alone worker daemons on Redis vs the local backend (2 workers).

Starts its own redis-server on loopback and two `burstmap worker` daemons; both executors use a
Redis store on that server, so the difference is the queue and the daemons.
Run: python benchmarks/standalone.py [--calls N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.backends.standalone import StandaloneBackend
from burstmap.storage.redis import RedisStorage

from _common import best_of, report

SECRET = "benchmark-secret"


def noop(x):
    return x


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(folder: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", folder], stdout=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)


def timed(ex: burstmap.Executor, calls: int, runs: int) -> float:
    burstmap.get_all_results(ex.map(noop, range(100)))
    return best_of(runs, lambda: burstmap.get_all_results(ex.map(noop, range(calls))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "BURSTMAP_SECRET_KEY": SECRET, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as folder:
        redis, url = start_redis(folder)
        queue = f"{url}?stream=bench"
        workers = [subprocess.Popen([sys.executable, "-m", "burstmap.daemon", "worker", "--queue", queue,
                                     "--store", url], env=env, stdout=subprocess.DEVNULL) for _ in range(2)]
        try:
            with burstmap.Executor(backend=StandaloneBackend(queue), storage=RedisStorage(url), secret_key=SECRET,
                                   progress=False) as ex:
                ours = timed(ex, args.calls, args.runs)
            with burstmap.Executor(backend=LocalBackend(workers=2), storage=RedisStorage(url), secret_key=SECRET,
                                   progress=False) as ex:
                local = timed(ex, args.calls, args.runs)
        finally:
            for proc in [*workers, redis]:
                proc.terminate()
                proc.wait()
    report("standalone", f"{args.calls / ours:,.0f} calls/s ({ours:.2f}s)",
           f"local backend {args.calls / local:,.0f} calls/s ({local:.2f}s)", ours / local, "time ratio, lower is better")


if __name__ == "__main__":
    main()
