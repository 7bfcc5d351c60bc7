"""Never lose a result, never run a stranger's code: retries, re-attach after client death,
replay, refused payloads and secrets kept out of everything stored."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
from hypothesis import given, strategies as st

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.errors import PayloadRejectedError
from burstmap.job import Layout, Manifest
from burstmap.serialize import dumps_calls, dumps_function, loads, seal
from burstmap.storage.local import LocalStorage
from burstmap.storage.s3 import S3Storage

from .conftest import TEST_SECRET


def flaky(args):
    """Fail with ConnectionError until it has been called ``failures`` times, counting in a file."""
    path, failures = args
    counter = Path(path)
    count = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(count))
    if count <= failures:
        raise ConnectionError(f"flaky call {count}")
    return count


def test_exceptions_are_not_retried_by_default(executor, tmp_path):
    future = executor.call_async(flaky, (str(tmp_path / "n"), 1))
    with pytest.raises(ConnectionError):
        future.result(timeout=60)
    assert (tmp_path / "n").read_text() == "1"


def test_retries_opt_in_per_map_with_backoff(executor, tmp_path):
    futures = executor.map(flaky, [(str(tmp_path / "a"), 2)], retries=3, retry_on=(ConnectionError,))
    assert futures[0].result(timeout=60) == 3
    assert futures[0].logs().count("burstmap: retry") == 2
    others = executor.map(flaky, [(str(tmp_path / "b"), 2)], retries=3, retry_on=(KeyError,))
    with pytest.raises(ConnectionError, match="flaky call 1"):
        others[0].result(timeout=60)


CLIENT = """
import sys, time, burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

def slow(x):
    time.sleep(0.2)
    return x * 10

ex = burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(sys.argv[1]), secret_key=sys.argv[2])
futures = ex.map(slow, range(20))
print(futures[0].job_id, flush=True)
time.sleep(600)
"""


def test_client_killed_mid_job_then_a_new_process_resumes_it(tmp_path):
    store = tmp_path / "store"
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(store), TEST_SECRET], stdout=subprocess.PIPE,
                              text=True)
    job_id = client.stdout.readline().strip()
    statuses = Layout("burstmap", job_id).status_prefix
    deadline = time.monotonic() + 60
    while not any(LocalStorage(store).list(statuses)):
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.01)
    client.send_signal(signal.SIGKILL)
    client.wait()
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(store),
                           secret_key=TEST_SECRET) as ex:
        futures = ex.attach(job_id, resume=True)
        assert burstmap.get_all_results(futures, timeout=120) == [x * 10 for x in range(20)]


def halve(x):
    if x == 0:
        raise ZeroDivisionError("no halving zero here")
    return x / 2


def test_replay_runs_one_call_here_and_writes_nothing(executor):
    futures = executor.map(halve, [4, 0])
    burstmap.get_all_results(futures, return_exceptions=True)
    while not executor.storage.exists(futures[0].layout.summary):  # stored by the client just after the futures end
        time.sleep(0.01)
    before = {key: executor.storage.get(key) for key in executor.storage.list(futures[0].layout.root)}
    assert executor.replay(futures[0].job_id, 0) == 2
    with pytest.raises(ZeroDivisionError, match="no halving zero"):
        executor.replay(futures[0].job_id, 1)
    after = {key: executor.storage.get(key) for key in executor.storage.list(futures[0].layout.root)}
    assert after == before
    with pytest.raises(burstmap.JobNotFoundError, match="burstmap jobs"):
        executor.replay("no-such-job", 0)


class LeavesAMark:
    """Unpickling this creates a file: proof that a payload was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_payload_signed_with_another_key_is_refused_and_never_unpickled(tmp_path):
    store = LocalStorage(tmp_path / "store")
    mark = tmp_path / "unpickled"
    forged_key = b"an attacker's key"
    job_id = "forged-0001"
    data, blocks = dumps_calls([((LeavesAMark(str(mark)),), {})], forged_key, job_id)
    manifest = Manifest(job_id, "burstmap", "evil", tuple(blocks), time.time(), "elsewhere")
    store.put(manifest.layout.manifest, manifest.encode(TEST_SECRET.encode()))
    store.put(manifest.layout.func, seal(forged_key, f"{job_id}/func", dumps_function(print)))
    store.put(manifest.layout.data, data)
    with burstmap.Executor(backend=LocalBackend(workers=1), storage=store, secret_key=TEST_SECRET) as ex:
        futures = ex.attach(job_id, resume=True)
        with pytest.raises(PayloadRejectedError, match="failed HMAC verification"):
            futures[0].result(timeout=60)
        assert futures[0].status["state"] == "rejected"
    assert not mark.exists()


@given(st.binary())
def test_any_bytes_as_a_payload_are_refused_without_unpickling(blob):
    with pytest.raises(PayloadRejectedError):
        loads(b"k" * 32, "job/data/0", blob)


def test_secrets_never_reach_the_store_or_messages(moto_server, tmp_path):
    aws_secret = "AWS-SECRET-" + uuid.uuid4().hex
    hmac_secret = "HMAC-SECRET-" + uuid.uuid4().hex
    bucket = f"secrets-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="x").create_bucket(Bucket=bucket)
    store = S3Storage(bucket, endpoint_url=moto_server, region="us-east-1", aws_access_key_id="AKIDTEST",
                      aws_secret_access_key=aws_secret)
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=store, secret_key=hmac_secret) as ex:
        futures = ex.map(halve, [2, 0, 6])
        results = burstmap.get_all_results(futures, return_exceptions=True)
        texts = [repr(ex), repr(ex.config), repr(store), str(results[1]), str(results[1].__cause__),
                 *(f.logs() for f in futures), *(repr(f.status) for f in futures)]
        stored = [store.get(key) for key in store.list("")]
    assert len(stored) >= 6
    for secret in (aws_secret, hmac_secret):
        assert not any(secret.encode() in blob for blob in stored)
        assert not any(secret in text for text in texts)
