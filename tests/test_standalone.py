"""Stand-alone mode with real worker daemons: deaths, a Redis restart, separate network namespaces,
forged messages, SQS on a moto server, draining and idling."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

import burstmap
from burstmap.backends.standalone import StandaloneBackend
from burstmap.errors import PayloadRejectedError
from burstmap.job import Layout
from burstmap.queues import QueueError, open_queue
from burstmap.storage.local import LocalStorage
from burstmap.storage.redis import RedisStorage
from burstmap.storage.s3 import S3Storage

from .conftest import TEST_SECRET, free_port, start_daemon, stop_process, subprocess_env


def square(x):
    return x * x


def slow_square(x):
    time.sleep(0.05)
    return x * x


def hang_first_time(path):
    """The first run notes its daemon and child, then hangs; a later run returns its daemon's pid."""
    note = Path(path)
    if not note.exists():
        note.write_text(json.dumps([os.getppid(), os.getpid()]))
        time.sleep(60)
    return os.getppid()


def count_runs(args):
    path, seconds = args
    with open(path, "a") as f:
        f.write("run\n")
    time.sleep(seconds)
    return seconds


def touch(path):
    Path(path).write_text("executed")


def until(condition: Callable[[], bool], what: str, limit: float = 60) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def stream_url(redis_url: str, db: int, lease: float = 2) -> str:
    return f"{redis_url.rsplit('/', 1)[0]}/{db}?stream=s-{uuid.uuid4().hex[:8]}&lease={lease}"


@contextlib.contextmanager
def daemons(queue: str, store: str, log: Path, count: int = 2, *options: str,
            netns: str | None = None) -> Iterator[list[subprocess.Popen]]:
    procs = [start_daemon(queue, store, log, *options, netns=netns) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            stop_process(proc)


def executor(queue: str, storage: burstmap.Storage) -> burstmap.Executor:
    return burstmap.Executor(backend=StandaloneBackend(queue), storage=storage, secret_key=TEST_SECRET,
                             progress=False)


def test_a_killed_daemon_call_is_rerun_by_the_other(redis_server, tmp_path):
    queue, store = stream_url(redis_server, 2), f"{redis_server.rsplit('/', 1)[0]}/2"
    note = tmp_path / "first-run"
    with daemons(queue, store, tmp_path / "log") as procs, executor(queue, RedisStorage(store)) as ex:
        future = ex.call_async(hang_first_time, str(note))
        until(note.exists, "the first run to start")
        victim, child = json.loads(note.read_text())
        assert victim in [p.pid for p in procs]
        os.kill(victim, signal.SIGKILL)
        survivor = future.result(timeout=60)
        assert survivor != victim and survivor in [p.pid for p in procs]
        assert future.status["attempt"] == 2
        until(lambda: not Path(f"/proc/{child}").exists(), "the killed daemon's child to die with it", 10)


def test_redis_restart_mid_job_loses_no_call(redis_server, tmp_path):
    binary, port = shutil.which("redis-server"), free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
               "--appendfsync", "always", "--dir", str(tmp_path)]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(lambda: _answers(port), "redis-server to answer", 30)
        return proc

    queue = f"redis://127.0.0.1:{port}/0?stream=calls&lease=3"
    store = f"{redis_server.rsplit('/', 1)[0]}/3"
    server = start()
    try:
        with daemons(queue, store, tmp_path / "log"), executor(queue, RedisStorage(store)) as ex:
            futures = ex.map(slow_square, range(60))
            until(lambda: sum(f.done() for f in futures) >= 5, "the first calls to finish")
            stop_process(server)
            assert not _answers(port)
            server = start()
            assert burstmap.get_all_results(futures, timeout=120) == [x * x for x in range(60)]
    finally:
        stop_process(server)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def worker_namespace() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair; yields (namespace, our address, its address)."""
    tag = uuid.uuid4().hex[:6]
    ns, here, there = f"bm-{tag}", f"bm{tag}a", f"bm{tag}b"
    octet = int(tag[:2], 16) % 200 + 20
    ours, theirs = f"10.{octet}.77.1", f"10.{octet}.77.2"
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", here, "type", "veth", "peer", "name", there],
        ["ip", "link", "set", there, "netns", ns],
        ["ip", "addr", "add", f"{ours}/24", "dev", here],
        ["ip", "link", "set", here, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{theirs}/24", "dev", there],
        ["ip", "netns", "exec", ns, "ip", "link", "set", there, "up"],
        ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield ns, ours, theirs
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_workers_in_another_network_namespace(redis_server, tmp_path):
    session_port = int(redis_server.rsplit(":", 1)[1].split("/")[0])
    with worker_namespace() as (ns, ours, theirs):
        probe = f"import socket; socket.create_connection(('127.0.0.1', {session_port}), timeout=2)"
        isolated = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe], capture_output=True)
        assert isolated.returncode != 0
        port = free_port()
        server = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", ours,
                                   "--requirepass", "netns-pass", "--save", "", "--appendonly", "no",
                                   "--dir", str(tmp_path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"redis://:netns-pass@{ours}:{port}/0"
            until(lambda: _reachable(ours, port), "redis-server on the veth address", 30)
            queue = f"{url}?stream=calls&lease=5"
            with daemons(queue, url, tmp_path / "log", netns=ns), executor(queue, RedisStorage(url)) as ex:
                futures = ex.map(square, range(30))
                assert burstmap.get_all_results(futures, timeout=120) == [x * x for x in range(30)]
                assert {f.status["worker"].rsplit("/", 1)[0] for f in futures} <= _daemon_names(tmp_path / "log")
        finally:
            stop_process(server)


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def _daemon_names(log: Path) -> set[str]:
    return {line.split()[3].rstrip(":") for line in log.read_text().splitlines() if " slots on " in line}


def test_a_client_with_another_key_is_told_its_calls_were_refused_and_nothing_runs(standalone_workers, tmp_path):
    marker = tmp_path / "executed"
    store = RedisStorage(standalone_workers.store)
    with burstmap.Executor(backend=StandaloneBackend(standalone_workers.queue), storage=store,
                           secret_key="another-key", progress=False) as stranger:
        future = stranger.map(touch, [str(marker)])[0]
        with pytest.raises(PayloadRejectedError, match=r"worker '.+' refused it.*BURSTMAP_SECRET_KEY") as info:
            future.result(timeout=60)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_a_replayed_message_never_runs_a_finished_call_again(standalone_workers, tmp_path):
    store = RedisStorage(standalone_workers.store)
    runs = tmp_path / "runs"
    backend = StandaloneBackend(standalone_workers.queue)
    sent, put = [], backend.queue.put
    backend.queue.put = lambda bodies: (sent.extend(bodies), put(bodies))
    with burstmap.Executor(backend=backend, storage=store, secret_key=TEST_SECRET, progress=False) as ex:
        futures = ex.map(count_runs, [(str(runs), 0)] * 2)
        assert burstmap.get_all_results(futures, timeout=60) == [0, 0]
    job_id = futures[0].job_id
    layout = Layout("burstmap", job_id)
    statuses = {key: store.get(key) for key in store.list(layout.status_prefix)}
    queue = open_queue(standalone_workers.queue)
    queue.put(sent)
    until(lambda: standalone_workers.log.read_text().count(f"batch of job {job_id} already has") == len(sent),
          "the replayed messages to be taken")
    assert runs.read_text().count("run") == 2
    assert {key: store.get(key) for key in store.list(layout.status_prefix)} == statuses
    store.delete_prefix(layout.root)
    store.delete([layout.manifest])
    queue.put(sent)
    until(lambda: standalone_workers.log.read_text().count(f"dropped a batch of job {job_id}") == len(sent),
          "the messages of a cleaned job to be dropped")
    assert runs.read_text().count("run") == 2


def test_unreadable_messages_are_refused_unrun(standalone_workers):
    queue = open_queue(standalone_workers.queue)
    queue.put([b"not even json", b"00." + json.dumps({"job": "x", "calls": [[0, 0, 1]]}).encode()])
    until(lambda: standalone_workers.log.read_text().count("refused message") >= 2, "the messages to be refused")


def test_sqs_queue_on_moto_with_a_lease_shorter_than_a_call(moto_server, tmp_path):
    creds = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
    session = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    name, bucket = f"q-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    session.client("sqs", endpoint_url=moto_server).create_queue(QueueName=name)
    session.client("s3", endpoint_url=moto_server).create_bucket(Bucket=bucket)
    queue = f"sqs://{name}?endpoint_url={moto_server}&region=us-east-1&lease=2"
    storage = S3Storage(bucket, endpoint_url=moto_server, region="us-east-1", aws_access_key_id="x",
                        aws_secret_access_key="x")
    runs = tmp_path / "runs"
    env = {**creds, "AWS_ENDPOINT_URL": moto_server}
    with _env(env), daemons(queue, f"s3://{bucket}", tmp_path / "log", 1), executor(queue, storage) as ex:
        assert burstmap.get_all_results(ex.map(square, range(20)), timeout=60) == [x * x for x in range(20)]
        long = ex.call_async(count_runs, (str(runs), 5.0))
        assert long.result(timeout=60) == 5.0
        assert runs.read_text() == "run\n" and long.status["attempt"] == 1


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


def test_unreachable_queue_fails_in_one_line_before_anything_is_stored(tmp_path):
    store = LocalStorage(tmp_path / "store")
    with executor(f"redis://127.0.0.1:{free_port()}/0", store) as ex:
        with pytest.raises(QueueError, match=r"^queue redis at 127\.0\.0\.1:\d+ is not reachable$"):
            ex.map(square, [1, 2])
    assert not list(store.list(""))


def test_no_worker_is_logged_and_calls_wait(redis_server, tmp_path, caplog):
    queue = stream_url(redis_server, 2)
    with executor(queue, LocalStorage(tmp_path)) as ex:
        future = ex.call_async(square, 4)
        assert "1 calls queued" in caplog.text and "0 workers seen" in caplog.text
        assert not future.done()
        ex.shutdown(wait=False)
    with pytest.raises(burstmap.ExecutorShutdownError, match=r"resume=True"):
        future.result(timeout=60)


def test_a_job_is_spread_over_eight_messages_per_daemon_seen(redis_server, tmp_path):
    import redis

    client = redis.Redis.from_url(f"{redis_server.rsplit('/', 1)[0]}/2")
    for seen in (0, 2):
        queue = stream_url(redis_server, 2)
        for name in range(seen):  # a daemon shows as seen once it asks for messages
            daemon_queue = open_queue(queue)
            daemon_queue.consumer = f"daemon-{name}"
            assert daemon_queue.get(1, 0.01) == []
        with executor(queue, LocalStorage(tmp_path / str(seen))) as ex:
            ex.map(square, range(5000))
            ex.shutdown(wait=False)
        assert client.xlen(open_queue(queue).stream) == (8 * seen if seen else 64)


def test_sigterm_drains_the_call_in_flight_and_idle_daemons_exit(redis_server, tmp_path):
    queue, store = stream_url(redis_server, 2), f"{redis_server.rsplit('/', 1)[0]}/2"
    runs = tmp_path / "runs"
    with daemons(queue, store, tmp_path / "log", 1) as (proc,), executor(queue, RedisStorage(store)) as ex:
        future = ex.call_async(count_runs, (str(runs), 1.5))
        until(runs.exists, "the call to start")
        proc.send_signal(signal.SIGTERM)
        assert future.result(timeout=60) == 1.5 and future.status["attempt"] == 1
        assert proc.wait(timeout=30) == 0
    with daemons(queue, store, tmp_path / "idle-log", 1, "--idle-timeout", "0.5") as (idle,):
        assert idle.wait(timeout=30) == 0
    assert "idle for 0.5s, exiting" in (tmp_path / "idle-log").read_text()


def test_daemon_refuses_an_unreachable_store_in_one_line(redis_server, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "burstmap.daemon", "worker", "--queue", stream_url(redis_server, 2),
         "--store", f"redis://127.0.0.1:{free_port()}/0"],
        capture_output=True, text=True, timeout=60, env=subprocess_env(BURSTMAP_SECRET_KEY=TEST_SECRET),
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("Error: redis at 127.0.0.1:")


def test_idle_daemons_are_seen(standalone_workers):
    queue = open_queue(standalone_workers.queue)
    deadline = time.monotonic() + 30
    while queue.workers_seen() < 2:
        assert time.monotonic() < deadline, "the two idle daemons never showed as seen"
        time.sleep(0.05)
    assert queue.workers_seen() == 2
