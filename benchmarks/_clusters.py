"""Real servers on loopback for the benchmarks: a Dask scheduler and workers, redis-server, a moto server,
`burstmap worker` daemons.

Every process is started in a session of its own, so stopping it also sweeps its children (a Dask
worker process under its nanny) by that process group id; a daemon's call-running children lead
sessions of their own and die with it (a parent-death signal).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    """The environment for started processes: this checkout first on the import path."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def spawn(command: Sequence[str], log: str | None = None, **kwargs: object) -> subprocess.Popen:
    """Start ``command`` in a new session (its pid is its process group id), output to ``log`` or nowhere."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **kwargs)
    finally:
        if log:
            out.close()


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``grace`` s, then SIGKILL whatever is left of its process group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_until(ready: Callable[[], bool], procs: Sequence[subprocess.Popen], what: str, timeout: float = 60) -> None:
    """Poll ``ready`` until true; raise if one of ``procs`` exits or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: process {proc.args[:3]} exited with code {proc.returncode}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {timeout:.0f} s")


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (from /proc/<pid>/task/*/children)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(p) for p in f.read().split())
    return kids


def cmdline(pid: int) -> str:
    """A process's command line, spaces for NULs ('' once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class RedisServer:
    """A redis-server on a free loopback port that can be stopped and started again on that port.

    With ``persist`` it keeps an append-only file in ``folder``, so what it held survives a restart.
    """

    def __init__(self, folder: str, persist: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "yes" if persist else "no", "--dir", folder]
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and wait until it answers PING."""
        self._proc = spawn(self._command)
        try:
            wait_until(self._ready, [self._proc], "redis-server")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM it: it writes its append-only file out and exits."""
        if self._proc is not None:
            stop(self._proc)
            self._proc = None

    def _ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")


@contextlib.contextmanager
def redis_server(folder: str, persist: bool = False) -> Iterator[RedisServer]:
    """A started `RedisServer` (database 0 at its ``url``), stopped on the way out."""
    server = RedisServer(folder, persist)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def moto_server(folder: str) -> Iterator[str]:
    """A moto server (S3, IAM, Lambda) on a free loopback port; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], cwd=folder)

    def ready() -> bool:
        with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2) as reply:
            return reply.status == 200

    try:
        wait_until(ready, [proc], "moto server")
        yield endpoint
    finally:
        stop(proc)


@contextlib.contextmanager
def dask_cluster(folder: str, workers: int = 2) -> Iterator[str]:
    """A `dask scheduler` and ``workers`` `dask worker --nworkers 1 --nthreads 1` (with nannies); yields its address."""
    import distributed

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [spawn([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                    "--port", str(port), "--no-dashboard"], cwd=folder, env=env())]
    try:
        for i in range(workers):
            local = os.path.join(folder, f"worker-{i}")
            os.makedirs(local, exist_ok=True)
            procs.append(spawn([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1",
                                "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                                "--local-directory", local], cwd=folder, env=env()))
        wait_until(lambda: _port_open(port), procs, "dask scheduler")
        with distributed.Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            stop(proc)


def _port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def start_daemon(queue: str, store: str, secret: str, log: str, *options: str) -> subprocess.Popen:
    """Start ``python -m burstmap.daemon worker`` with BURSTMAP_SECRET_KEY=``secret``, logging to ``log``."""
    return spawn([sys.executable, "-m", "burstmap.daemon", "worker", "--queue", queue, "--store", store, *options],
                 log=log, env=env(BURSTMAP_SECRET_KEY=secret), cwd=ROOT)
