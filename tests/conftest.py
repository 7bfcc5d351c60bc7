"""Fixtures that start real servers on loopback: a moto S3 server and a redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

__all__ = [
    "AuthServer", "DaskCluster", "EXECUTORS", "TEST_SECRET", "dask_cluster", "free_port", "moto_server",
    "moto_auth_server", "redis_server", "standalone_workers", "start_daemon", "start_moto", "start_redis",
    "stop_process", "stop_redis", "subprocess_env",
]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    """Poll ``ready`` until it is true; fail with ``what`` if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with code {proc.returncode} before answering")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{what} did not answer within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_moto(env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``python -m moto.server`` on a free loopback port; return it and its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    endpoint = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2) as reply:
            return reply.status == 200

    try:
        _wait_until(ready, proc, "moto server")
    except BaseException:
        _stop(proc)
        raise
    return proc, endpoint


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto S3 server for the whole session; yields its endpoint URL (any credentials work)."""
    proc, endpoint = start_moto()
    try:
        yield endpoint
    finally:
        _stop(proc)


class AuthServer(NamedTuple):
    """A moto server that checks credentials, with one IAM user allowed to use ``bucket``."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    bucket: str


@pytest.fixture(scope="session")
def moto_auth_server() -> Iterator[AuthServer]:
    """A second moto server that checks credentials like AWS: only keys made in its IAM work.

    The IAM user, its key and the bucket are made first; then authentication is switched on
    through moto's ``/moto-api/reset-auth``, so every later request must be signed by that key.
    """
    import boto3

    proc, endpoint = start_moto()
    try:
        session = boto3.session.Session("setup", "setup", region_name="us-east-1")
        iam = session.client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="burstmap")
        iam.put_user_policy(UserName="burstmap", PolicyName="s3", PolicyDocument=_S3_ALL)
        key = iam.create_access_key(UserName="burstmap")["AccessKey"]
        session.client("s3", endpoint_url=endpoint).create_bucket(Bucket="guarded")
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(request, timeout=5).close()
        yield AuthServer(endpoint, key["AccessKeyId"], key["SecretAccessKey"], "guarded")
    finally:
        _stop(proc)


_S3_ALL = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'


def start_redis(port: int, folder: Path, persist: bool = False) -> subprocess.Popen:
    """Start a redis-server on a loopback port (append-only persistence if asked) and wait for it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `apt-get install -y redis-server`")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes" if persist else "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    try:
        _wait_until(ready, proc, "redis-server")
    except BaseException:
        _stop(proc)
        raise
    return proc


stop_redis = _stop


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server on loopback with persistence off; yields its URL (database 0)."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@pytest.fixture(scope="session", autouse=True)
def isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the tests away from the user's own config, secret key and local store."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "BURSTMAP_CONFIG")}
    os.environ["XDG_CONFIG_HOME"] = str(home / "config")
    os.environ["XDG_CACHE_HOME"] = str(home / "cache")
    os.environ.pop("BURSTMAP_CONFIG", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


TEST_SECRET = "test-secret-key-not-for-production"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for processes the tests start: this checkout first on the import path."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


class DaskCluster(NamedTuple):
    """A real Dask scheduler and a `dask worker` command running 2 worker processes under nannies."""

    address: str
    scheduler: subprocess.Popen
    workers: subprocess.Popen


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A scheduler and 2 single-threaded workers on loopback; a killed worker process is restarted."""
    import distributed

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    folder = tmp_path_factory.mktemp("dask")
    env = subprocess_env()
    common = ["--no-dashboard"]
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port), *common],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=folder,
    )
    workers = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "2", "--nthreads", "1",
         "--host", "127.0.0.1", "--local-directory", str(folder), *common],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=folder,
    )
    try:
        with distributed.Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield DaskCluster(address, scheduler, workers)
    finally:
        _stop(workers)
        _stop(scheduler)


def local_executor(request: pytest.FixtureRequest, folder: Path) -> Any:
    """Two warm local worker processes over a local store."""
    import burstmap
    from burstmap.backends.local import LocalBackend
    from burstmap.storage.local import LocalStorage

    return burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(folder),
                             secret_key=TEST_SECRET, progress=False)


def start_daemon(queue: str, store: str, log: Path, *options: str, netns: str | None = None) -> subprocess.Popen:
    """Start ``python -m burstmap.daemon worker`` (in network namespace ``netns`` if given), logging to ``log``."""
    command = [sys.executable, "-m", "burstmap.daemon", "worker", "--queue", queue, "--store", store, *options]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env=subprocess_env(BURSTMAP_SECRET_KEY=TEST_SECRET))


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate a process the tests started, killing it if it does not exit within 10 s."""
    _stop(proc)


class Workers(NamedTuple):
    """Worker daemons taking work from one queue, writing to one store."""

    queue: str
    store: str
    procs: list[subprocess.Popen]
    log: Path


@pytest.fixture(scope="session")
def standalone_workers(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """Two `burstmap worker` daemons (separate processes) on the session's redis: queue and store in db 1."""
    server = redis_server.rsplit("/", 1)[0]
    queue, store = f"{server}/1?stream=suite&lease=5", f"{server}/1"
    log = tmp_path_factory.mktemp("daemons") / "workers.log"
    procs = [start_daemon(queue, store, log) for _ in range(2)]
    try:
        yield Workers(queue, store, procs, log)
    finally:
        for proc in procs:
            _stop(proc)


def standalone_executor(request: pytest.FixtureRequest, folder: Path) -> Any:
    """The stand-alone backend: calls go on a Redis stream, two worker daemons run them, Redis store."""
    import burstmap
    from burstmap.backends.standalone import StandaloneBackend
    from burstmap.storage.redis import RedisStorage

    workers = request.getfixturevalue("standalone_workers")
    return burstmap.Executor(backend=StandaloneBackend(workers.queue), storage=RedisStorage(workers.store),
                             secret_key=TEST_SECRET, progress=False)


def dask_executor(request: pytest.FixtureRequest, folder: Path) -> Any:
    """The Dask backend on the session's real scheduler and 2 worker processes, over a local store."""
    import burstmap
    from burstmap.backends.dask import DaskBackend
    from burstmap.storage.local import LocalStorage

    cluster = request.getfixturevalue("dask_cluster")
    return burstmap.Executor(backend=DaskBackend(address=cluster.address), storage=LocalStorage(folder),
                             secret_key=TEST_SECRET, progress=False)


#: Every backend runs the shared suite in tests/test_backends.py: a backend joins it with one line here.
def lambda_executor(request: pytest.FixtureRequest, folder: Path) -> Any:
    """The Lambda backend: every invoke runs the real entry point in a fresh process, on a moto S3 store."""
    import burstmap
    from burstmap.backends.aws_lambda import LambdaBackend
    from burstmap.storage.s3 import S3Storage

    from .lambda_emulator import REGION, EmulatedInvoker, deploy_function

    endpoint = request.getfixturevalue("moto_server")
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", REGION)):
        os.environ.setdefault(name, value)
    deploy_function(endpoint, "burstmap-suite", "suite-lambda")
    invoker = EmulatedInvoker(timeout=8, secret=TEST_SECRET, function="burstmap-suite")
    backend = LambdaBackend(function_name="burstmap-suite", endpoint_url=endpoint, region=REGION, concurrency=8,
                            calls_per_invoke=10, poll_interval=0.05, grace=0.5, timeout=8, invoker=invoker)
    storage = S3Storage("suite-lambda", endpoint_url=endpoint, region=REGION)
    return burstmap.Executor(backend=backend, storage=storage, secret_key=TEST_SECRET, progress=False)


EXECUTORS: dict[str, Callable[[pytest.FixtureRequest, Path], Any]] = {
    "local": local_executor,
    "lambda": lambda_executor,
    "dask": dask_executor,
    "standalone": standalone_executor,
}


@pytest.fixture(scope="session", params=["local", "dask"])
def near_executor(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A warm local and a warm Dask executor of their own, for the integrations (multiprocessing, joblib, Dask,
    Cubed...), so that choosing among them never stops and restarts the shared `executor`s."""
    ex = EXECUTORS[request.param](request, tmp_path_factory.mktemp(f"near-{request.param}"))
    try:
        yield ex
    finally:
        ex.shutdown()


@pytest.fixture(scope="session", params=sorted(EXECUTORS))
def executor(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A warm executor of each backend, shared by the whole session."""
    ex = EXECUTORS[request.param](request, tmp_path_factory.mktemp(f"store-{request.param}"))
    try:
        yield ex
    finally:
        ex.shutdown()
