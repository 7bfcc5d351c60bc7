"""A 1,000-call job while a killer SIGKILLs random worker processes 10 times; counts what was lost.

Prints: backend, calls, kills, results, lost, duplicated, reruns, seconds. The target is 0 lost and 0
duplicated; the script exits 1 if any backend misses it.

- local: the pool's worker processes are the victims.
- dask: a real `dask scheduler` and 2 `dask worker --nworkers 1 --nthreads 1` (each under a nanny,
  which restarts its worker) on loopback, a local store; victims are the worker processes.
- standalone: a redis-server on loopback (queue and store) and 2 `burstmap worker --concurrency 1`
  daemons; victims are the daemons' call-running children (a call killed, e.g. by the OOM killer)
  and the daemons themselves (a machine lost: its message is reclaimed once its lease runs out).
  A killed daemon is started again, as systemd would, so one is always alive or coming back.

Run: python benchmarks/chaos.py [--calls N] [--kills K] [--backends local dask standalone]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

from _clusters import children, cmdline, dask_cluster, redis_server, start_daemon, stop, wait_until

SECRET = "chaos-benchmark-secret"
LEASE = 5  # seconds a stand-alone daemon's message stays invisible to others (the tests use 5 too)

Victims = Callable[[], list[int]]


def work(x: int) -> int:
    time.sleep(0.01)
    return x


@contextlib.contextmanager
def local_backend(folder: str) -> Iterator[tuple[burstmap.Executor, Victims]]:
    """The local pool; its victims are its worker processes."""
    ex = burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(folder), progress=False)
    yield ex, ex.backend.worker_pids


@contextlib.contextmanager
def dask_backend(folder: str) -> Iterator[tuple[burstmap.Executor, Victims]]:
    """A real scheduler and 2 single-threaded workers with nannies; victims are the worker processes."""
    import distributed
    from burstmap.backends.dask import DaskBackend

    store = os.path.join(folder, "store")
    with dask_cluster(folder) as address, distributed.Client(address, timeout=30) as spy:
        def victims() -> list[int]:
            # asked afresh each time: a nanny replaces a killed worker with a new process
            try:
                pids = spy.run(os.getpid, on_error="ignore")
            except Exception:
                return []
            return [p for p in pids.values() if isinstance(p, int)]

        yield burstmap.Executor(backend=DaskBackend(address=address), storage=LocalStorage(store),
                                secret_key=SECRET, progress=False), victims


class Daemons:
    """`burstmap worker` daemons kept running: a supervisor thread starts a killed one again."""

    def __init__(self, queue: str, store: str, log: str, count: int = 2) -> None:
        self.queue, self.store, self.log = queue, store, log
        self.procs: list[subprocess.Popen] = []
        try:
            for _ in range(count):
                self.procs.append(self._start())
        except BaseException:
            for proc in self.procs:
                stop(proc)
            raise
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="daemon-supervisor", daemon=True)
        self._thread.start()

    def _start(self) -> subprocess.Popen:
        return start_daemon(self.queue, self.store, SECRET, self.log, "--concurrency", "1")

    def _supervise(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                for i, proc in enumerate(self.procs):
                    if proc.poll() is not None and not self._stop.is_set():
                        stop(proc)  # sweep what is left of its process group
                        self.procs[i] = self._start()

    def victims(self) -> list[int]:
        """The daemons at work and their call-running children (not multiprocessing's resource tracker).

        A daemon counts once it has a call-running child: one still starting up holds no message.
        """
        with self._lock:
            daemons = [p.pid for p in self.procs if p.poll() is None]
        pids = []
        for daemon in daemons:
            kids = [k for k in children(daemon) if "spawn_main" in cmdline(k)]
            if kids:
                pids += [daemon, *kids]
        return pids

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for proc in self.procs:
            stop(proc)


@contextlib.contextmanager
def standalone_backend(folder: str) -> Iterator[tuple[burstmap.Executor, Victims]]:
    """redis-server (queue and store) and 2 daemons; victims are the daemons and their call children."""
    from burstmap.backends.standalone import StandaloneBackend
    from burstmap.storage.redis import RedisStorage

    with redis_server(folder) as url:
        queue = f"{url}?stream=chaos&lease={LEASE}"
        log = os.path.join(folder, "daemons.log")
        daemons = Daemons(queue, url, log)
        try:
            def ready() -> bool:
                # each daemon logs "worker <host>:<pid>: N slots on ..." once it checked the queue and store
                with open(log) as f:
                    text = f.read()
                return all(f":{p.pid}: " in text for p in daemons.procs)

            wait_until(ready, daemons.procs, "burstmap worker daemons")
            yield burstmap.Executor(backend=StandaloneBackend(queue), storage=RedisStorage(url),
                                    secret_key=SECRET, progress=False), daemons.victims
        finally:
            daemons.close()


#: backend name -> context manager of (executor, function listing the pids a killer may SIGKILL)
BACKENDS = {"local": local_backend, "dask": dask_backend, "standalone": standalone_backend}


def killer(victims: Victims, kills: int, done: threading.Event, count: list[int]) -> None:
    """SIGKILL a random victim every 50-300 ms, ``kills`` times or until the job is done."""
    while count[0] < kills and not done.wait(random.uniform(0.05, 0.3)):
        pids = victims()
        if pids:
            try:
                os.kill(random.choice(pids), signal.SIGKILL)
                count[0] += 1
            except ProcessLookupError:
                pass


class Unfinished:
    """Stands in the results for a call with no status when the deadline passed."""

    def __repr__(self) -> str:
        return "<unfinished>"


COLUMNS = (f"{'backend':>10} {'calls':>6} {'kills':>6} {'results':>8} {'lost':>5} {'duplicated':>11} {'reruns':>7} "
           f"{'seconds':>8}")


def run(name: str, calls: int, kills: int, deadline: float) -> bool:
    """Run one backend's chaos job; print its row; return whether nothing was lost or duplicated.

    ``reruns`` counts the extra attempts the calls' records show (a call killed and run again).
    """
    with tempfile.TemporaryDirectory() as folder, BACKENDS[name](folder) as (ex, victims), ex:
        burstmap.get_all_results(ex.map(work, range(4)))
        done, count = threading.Event(), [0]
        thread = threading.Thread(target=killer, args=(victims, kills, done, count))
        start = time.perf_counter()
        futures = ex.map(work, range(calls), worker_retries=5)
        thread.start()
        try:
            burstmap.wait(futures, burstmap.ALL_COMPLETED, timeout=deadline, progress=False)
        finally:
            done.set()
            thread.join()
        seconds = time.perf_counter() - start
        results = [(f.exception() or f.result()) if f.done() else Unfinished() for f in futures]
        reruns = sum(f.status["attempt"] - 1 for f in futures if f.done() and f.status)
    lost = sum(1 for i, r in enumerate(results) if r != i)
    duplicated = sum(n - 1 for n in collections.Counter(r for r in results if isinstance(r, int)).values() if n > 1)
    print(f"{name:>10} {calls:>6} {count[0]:>6} {len(results):>8} {lost:>5} {duplicated:>11} {reruns:>7} "
          f"{seconds:>8.1f}", flush=True)
    if lost:
        wrong = [(i, r) for i, r in enumerate(results) if r != i]
        kinds = collections.Counter(type(r).__name__ for _, r in wrong)
        print(f"{name:>10} lost calls by kind: {dict(kinds)}; first: call {wrong[0][0]} -> {wrong[0][1]!r}",
              file=sys.stderr, flush=True)
    return not lost and not duplicated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds to wait for a backend's job; calls still unfinished then count as lost")
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=sorted(BACKENDS))
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers and workers started here are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(COLUMNS, flush=True)
    ok = True
    for name in args.backends:
        try:
            ok &= run(name, args.calls, args.kills, args.deadline)
        except Exception:
            traceback.print_exc()
            print(f"{name:>10} failed: see the traceback above", flush=True)
            ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
