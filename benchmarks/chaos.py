"""Chaos on every backend: worker processes SIGKILLed, calls that end their own process, a store stopped
mid-job; counts what was lost or wrong.

Each row is one backend under one scenario, each started afresh:

- kill: a job of --calls calls (0.01 s each, worker_retries=5) while a killer SIGKILLs a random victim
  every 50-300 ms, --kills times.
- crash: a job of --calls // 2 such calls, except that every 50th input ends its own process
  (``os._exit(9)``) every time (worker_retries=1): those calls must end as `WorkerDiedError` ("died",
  expected), the others return their input.
- outage: a job of --calls // 2 calls of 0.05 s whose store, a redis-server with append-only
  persistence, is stopped for --down seconds once a fifth of the calls are done, then started again on
  the same port. Local (on a redis store) and standalone only.

Backends:

- local: 2 pool processes, a local store (a redis-server for the outage); victims are the pool's processes.
- dask: a real `dask scheduler` and 2 `dask worker --nworkers 1 --nthreads 1` (each under a nanny,
  which restarts its worker) on loopback, a local store; victims are the worker processes.
- standalone: a redis-server on loopback (queue and store) and 2 `burstmap worker --concurrency 1`
  daemons; victims are the daemons' call-running children (a call killed, e.g. by the OOM killer)
  and the daemons themselves (a machine lost: its message is reclaimed once its lease runs out).
  A killed daemon is started again, as systemd would, so one is always alive or coming back.
- lambda: the Lambda backend through the tests' emulated invoker (tests/lambda_emulator.py): a moto
  server holds the function and the S3 store, each invocation runs the real entry point in a fresh
  process (concurrency 8, 10 calls each); victims are those processes. A lost invocation is seen
  once the function's 4 s timeout and 0.5 s grace have passed. At most --lambda-calls calls.

Prints per row: backend, scenario, calls, kills, down (seconds the store was stopped), results, died
(calls that ended as `WorkerDiedError`), lost (not finished within --deadline), wrong (a result other
than the input, a died call that should have succeeded, a crashing call that did not die),
duplicated (a result that appears twice), reruns (extra attempts in the calls' records), seconds.
The target is 0 lost, 0 wrong, 0 duplicated; the script exits 1 if any row misses it.

Run: python benchmarks/chaos.py [--backends local dask standalone lambda] [--scenarios kill crash outage]
                                [--calls N] [--kills K] [--down S] [--lambda-calls N] [--deadline S]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.errors import WorkerDiedError
from burstmap.storage.local import LocalStorage

from _clusters import (ROOT, RedisServer, children, cmdline, dask_cluster, moto_server, redis_server, start_daemon,
                       stop, wait_until)

SECRET = "chaos-benchmark-secret"
LEASE = 5  # seconds a stand-alone daemon's message stays invisible to others (the tests use 5 too)
CRASH_EVERY = 50  # in the crash scenario, every 50th input ends its own process

Victims = Callable[[], list[int]]


class Rig(NamedTuple):
    """A backend ready for a job: its executor, the pids a killer may SIGKILL, the redis-server holding its
    store (if it is one) and the most calls a job should have on it (``None``: no limit)."""

    executor: burstmap.Executor
    victims: Victims
    redis: RedisServer | None = None
    most_calls: int | None = None


def work(x: int, pause: float) -> int:
    time.sleep(pause)
    return x


def crashes(x: int) -> bool:
    """Whether input ``x`` ends its own process in the crash scenario."""
    return x % CRASH_EVERY == CRASH_EVERY - 1


def work_or_crash(x: int, pause: float) -> int:
    """`work`, except that every 50th input ends its own process, every time (as a segfault in a library would)."""
    if crashes(x):
        os._exit(9)
    return work(x, pause)


@contextlib.contextmanager
def local_backend(folder: str, redis_store: bool = False) -> Iterator[Rig]:
    """The local pool over a local store (or a redis-server one); its victims are its worker processes."""
    from burstmap.storage.redis import RedisStorage

    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(folder, persist=True)) if redis_store else None
        storage = RedisStorage(redis.url) if redis else LocalStorage(os.path.join(folder, "store"))
        ex = burstmap.Executor(backend=LocalBackend(workers=2), storage=storage, secret_key=SECRET, progress=False)
        yield Rig(ex, ex.backend.worker_pids, redis)


@contextlib.contextmanager
def dask_backend(folder: str) -> Iterator[Rig]:
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

        yield Rig(burstmap.Executor(backend=DaskBackend(address=address), storage=LocalStorage(store),
                                    secret_key=SECRET, progress=False), victims)


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
        """The daemons at work and their call-running children (`burstmap.child`), nothing else they started.

        A daemon counts once it has a call-running child: one still starting up holds no message.
        """
        with self._lock:
            daemons = [p.pid for p in self.procs if p.poll() is None]
        pids = []
        for daemon in daemons:
            kids = [k for k in children(daemon) if "from burstmap.child import main" in cmdline(k)]
            if kids:
                pids += [daemon, *kids]
        return pids

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for proc in self.procs:
            stop(proc)


@contextlib.contextmanager
def standalone_backend(folder: str) -> Iterator[Rig]:
    """redis-server (queue and store, append-only) and 2 daemons; victims are the daemons and their call children."""
    from burstmap.backends.standalone import StandaloneBackend
    from burstmap.storage.redis import RedisStorage

    with redis_server(folder, persist=True) as redis:
        queue = f"{redis.url}?stream=chaos&lease={LEASE}"
        log = os.path.join(folder, "daemons.log")
        daemons = Daemons(queue, redis.url, log)
        try:
            def ready() -> bool:
                # each daemon logs "worker <host>:<pid>: N slots on ..." once it checked the queue and store
                with open(log) as f:
                    text = f.read()
                return all(f":{p.pid}: " in text for p in daemons.procs)

            wait_until(ready, daemons.procs, "burstmap worker daemons")
            yield Rig(burstmap.Executor(backend=StandaloneBackend(queue), storage=RedisStorage(redis.url),
                                        secret_key=SECRET, progress=False), daemons.victims, redis)
        finally:
            daemons.close()


def invocations() -> list[int]:
    """The emulated Lambda invocations running now: this process's children that run the entry point."""
    return [k for k in children(os.getpid()) if "burstmap.lambda_handler import handler" in cmdline(k)]


@contextlib.contextmanager
def lambda_backend(folder: str, most_calls: int = 200) -> Iterator[Rig]:
    """The Lambda backend, emulated as in the tests on a moto server; victims are the invocations' processes."""
    if ROOT not in sys.path:
        sys.path.append(ROOT)  # the emulated invoker lives with the tests
    from burstmap.backends.aws_lambda import LambdaBackend
    from burstmap.storage.s3 import S3Storage
    from tests.lambda_emulator import REGION, EmulatedInvoker, deploy_function

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", REGION)):
        os.environ.setdefault(name, value)
    with moto_server(folder) as endpoint:
        deploy_function(endpoint, "burstmap-chaos", "chaos")
        invoker = EmulatedInvoker(timeout=4, secret=SECRET, function="burstmap-chaos")
        backend = LambdaBackend(function_name="burstmap-chaos", endpoint_url=endpoint, region=REGION, concurrency=8,
                                calls_per_invoke=10, poll_interval=0.05, grace=0.5, timeout=4, invoker=invoker)
        storage = S3Storage("chaos", endpoint_url=endpoint, region=REGION)
        try:
            yield Rig(burstmap.Executor(backend=backend, storage=storage, secret_key=SECRET, progress=False),
                      invocations, most_calls=most_calls)
        finally:
            for pid in invocations():  # sent before the executor shut down; they would only wait for moto
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            invoker.join()


#: backend name -> context manager of a `Rig` in a scratch folder
Backends = Mapping[str, Callable[[str], contextlib.AbstractContextManager[Rig]]]
BACKENDS: Backends = {"local": local_backend, "dask": dask_backend, "standalone": standalone_backend,
                      "lambda": lambda_backend}


@dataclasses.dataclass
class Tally:
    """What a disturbance did: processes killed, seconds the store was stopped."""

    kills: int = 0
    down: float = 0.0


#: a disturbance: (rig, futures of the job, set once the job is over, its tally) -> None; runs in a thread
Disturbance = Callable[[Rig, list[Any], threading.Event, Tally], None]


def killer(rig: Rig, futures: list[Any], over: threading.Event, tally: Tally, kills: int) -> None:
    """SIGKILL a random victim every 50-300 ms, ``kills`` times or until the job is over."""
    while tally.kills < kills and not over.wait(random.uniform(0.05, 0.3)):
        pids = rig.victims()
        if pids:
            try:
                os.kill(random.choice(pids), signal.SIGKILL)
                tally.kills += 1
            except ProcessLookupError:
                pass


def outage(rig: Rig, futures: list[Any], over: threading.Event, tally: Tally, seconds: float) -> None:
    """Once a fifth of the calls are done, stop the store's redis-server for ``seconds``, then start it again."""
    assert rig.redis is not None, "the outage needs a store on a redis-server"
    while sum(f.done() for f in futures) < len(futures) / 5:
        if over.wait(0.02):
            return
    began = time.monotonic()
    rig.redis.stop()
    try:
        over.wait(seconds)
    finally:
        tally.down = time.monotonic() - began
        rig.redis.start()


def calm(rig: Rig, futures: list[Any], over: threading.Event, tally: Tally) -> None:
    """No disturbance: the calls disturb themselves."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A job (``calls`` calls of ``func(x, pause)``) and what disturbs it, on each of ``backends``."""

    name: str
    backends: Backends
    disturb: Disturbance
    calls: int
    worker_retries: int
    func: Callable[[int, float], int] = work
    pause: float = 0.01

    def expected(self, x: int) -> int | type[WorkerDiedError]:
        """What call ``x`` must end with: its input, or `WorkerDiedError` for a call that crashes every time."""
        return WorkerDiedError if self.func is work_or_crash and crashes(x) else x


def scenarios(args: argparse.Namespace) -> dict[str, Scenario]:
    """The scenarios, by name, sized by the command line."""
    outage_backends = {"local": functools.partial(local_backend, redis_store=True), "standalone": standalone_backend}
    lambda_sized = {**BACKENDS, "lambda": functools.partial(lambda_backend, most_calls=args.lambda_calls)}
    return {
        "kill": Scenario("kill", lambda_sized, functools.partial(killer, kills=args.kills), args.calls, 5),
        "crash": Scenario("crash", lambda_sized, calm, args.calls // 2, 1, func=work_or_crash),
        "outage": Scenario("outage", outage_backends, functools.partial(outage, seconds=args.down),
                           args.calls // 2, 5, pause=0.05),
    }


class Unfinished:
    """Stands in the results for a call with no status when the deadline passed."""

    def __repr__(self) -> str:
        return "<unfinished>"


class Row(NamedTuple):
    """One backend's figures under one scenario."""

    backend: str
    scenario: str
    calls: int
    kills: int
    down: float
    results: int
    died: int
    lost: int
    wrong: int
    duplicated: int
    reruns: int
    seconds: float

    @property
    def ok(self) -> bool:
        return not (self.lost or self.wrong or self.duplicated)

    def __str__(self) -> str:
        return (f"{self.backend:>10} {self.scenario:>8} {self.calls:>6} {self.kills:>6} {self.down:>5.1f} "
                f"{self.results:>8} {self.died:>5} {self.lost:>5} {self.wrong:>6} {self.duplicated:>11} "
                f"{self.reruns:>7} {self.seconds:>8.1f}")


COLUMNS = (f"{'backend':>10} {'scenario':>8} {'calls':>6} {'kills':>6} {'down':>5} {'results':>8} {'died':>5} "
           f"{'lost':>5} {'wrong':>6} {'duplicated':>11} {'reruns':>7} {'seconds':>8}")


def is_right(result: object, expected: int | type[WorkerDiedError]) -> bool:
    return isinstance(result, expected) if isinstance(expected, type) else result == expected


def run(backend: str, scenario: Scenario, deadline: float) -> Row:
    """Run one backend's job under one scenario; print its row, and the first wrong results to stderr."""
    with tempfile.TemporaryDirectory() as folder, scenario.backends[backend](folder) as rig, rig.executor as ex:
        burstmap.get_all_results(ex.map(work, range(4), extra_args=(0.0,)))
        calls = min(scenario.calls, rig.most_calls or scenario.calls)
        over, tally = threading.Event(), Tally()
        start = time.perf_counter()
        futures = ex.map(scenario.func, range(calls), extra_args=(scenario.pause,),
                         worker_retries=scenario.worker_retries)
        thread = threading.Thread(target=scenario.disturb, args=(rig, futures, over, tally))
        thread.start()
        try:
            burstmap.wait(futures, burstmap.ALL_COMPLETED, timeout=deadline, progress=False)
        finally:
            over.set()
            thread.join()
        seconds = time.perf_counter() - start
        results = [(f.exception() or f.result()) if f.done() else Unfinished() for f in futures]
        reruns = sum(f.status["attempt"] - 1 for f in futures if f.done() and f.status)
        ex.shutdown(wait=False, cancel_futures=True)  # a lost call must not hold the exit up
    wrong = [(x, r) for x, r in enumerate(results)
             if not isinstance(r, Unfinished) and not is_right(r, scenario.expected(x))]
    row = Row(backend, scenario.name, calls, tally.kills, tally.down, len(results),
              died=sum(isinstance(r, WorkerDiedError) for r in results),
              lost=sum(isinstance(r, Unfinished) for r in results), wrong=len(wrong),
              duplicated=sum(n - 1 for n in collections.Counter(r for r in results if isinstance(r, int)).values()
                             if n > 1),
              reruns=reruns, seconds=seconds)
    print(row, flush=True)
    for x, r in wrong[:3]:
        print(f"{backend:>10} {scenario.name:>8} wrong: call {x} -> {r!r}, expected {scenario.expected(x)!r}",
              file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=sorted(BACKENDS))
    parser.add_argument("--scenarios", nargs="*", default=["kill", "crash", "outage"],
                        choices=["crash", "kill", "outage"])
    parser.add_argument("--calls", type=int, default=1000, help="calls of a kill job (a crash or outage job: half)")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--down", type=float, default=10.0, help="seconds the store stays stopped in the outage")
    parser.add_argument("--lambda-calls", type=int, default=200, help="most calls of a job on the Lambda backend")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds to wait for a job; calls still unfinished then count as lost")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers and workers started here are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(COLUMNS, flush=True)
    ok = True
    for scenario in (scenarios(args)[name] for name in args.scenarios):
        for backend in (b for b in args.backends if b in scenario.backends):
            try:
                ok &= run(backend, scenario, args.deadline).ok
            except Exception:
                traceback.print_exc()
                print(f"{backend:>10} {scenario.name:>8} failed: see the traceback above", flush=True)
                ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
