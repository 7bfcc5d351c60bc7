"""One suite that every store runs (local, local behind `Patient`, s3 on a moto server, redis on redis-server), plus failures."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest

from burstmap.errors import ConfigError, KeyNotFoundError, StorageError
from burstmap.registry import load
from burstmap.storage import Storage, open_store
from burstmap.storage.base import is_permanent
from burstmap.storage.local import LocalStorage
from burstmap.storage.patient import Patient
from burstmap.storage.redis import RedisStorage
from burstmap.storage.s3 import S3Storage

from .conftest import AuthServer, free_port

MiB = 1024 * 1024
SECRET = "fake-secret-d0-not-l3ak"
CREDS = {"region": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": SECRET}


def new_bucket(endpoint: str) -> str:
    """Create an empty bucket with a fresh name on the moto server."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="x").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(params=["local", "patient-local", "s3", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """An empty store of each kind; the s3 one uploads in 5 MiB parts from 5 MiB up."""
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    if request.param == "patient-local":
        return Patient(LocalStorage(tmp_path / "store"))
    if request.param == "s3":
        endpoint = request.getfixturevalue("moto_server")
        return S3Storage(new_bucket(endpoint), endpoint_url=endpoint, multipart_threshold=5 * MiB,
                         multipart_chunksize=5 * MiB, **CREDS)
    url = request.getfixturevalue("redis_server")
    redis_store = RedisStorage(url)
    redis_store.client.flushdb()
    return redis_store


def one_line_error(call, *needles: str) -> StorageError:
    """Run ``call``, expect a one-line `StorageError` naming every needle and never the secret."""
    with pytest.raises(StorageError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message
    assert SECRET not in message
    return info.value


def test_put_get_overwrite(store: Storage) -> None:
    store.put("a/b", b"first")
    store.put("empty", b"")
    assert store.get("a/b") == b"first"
    store.put("a/b", bytes(range(256)))
    assert store.get("a/b") == bytes(range(256))
    assert store.get("empty") == b""


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(0, 10, b"0123456789"), (2, 5, b"234"), (8, 100, b"89"), (9, 10, b"9"),
     (5, 5, b""), (6, 2, b""), (10, 12, b""), (50, 60, b"")],
)
def test_get_range(store: Storage, start: int, end: int, expected: bytes) -> None:
    store.put("digits", b"0123456789")
    assert store.get_range("digits", start, end) == expected


def test_list_prefixes(store: Storage) -> None:
    keys = ["a/b/1", "a/b/2", "a/b/deep/3", "a/bc", "a/c/4", "ab", "g[1]*", "g[1]?x", "g[2]", "g\\x"]
    for key in keys:
        store.put(key, key.encode())
    assert sorted(store.list("")) == sorted(keys)
    assert sorted(store.list("a/b/")) == ["a/b/1", "a/b/2", "a/b/deep/3"]
    assert sorted(store.list("a/b")) == ["a/b/1", "a/b/2", "a/b/deep/3", "a/bc"]
    assert sorted(store.list("a")) == ["a/b/1", "a/b/2", "a/b/deep/3", "a/bc", "a/c/4", "ab"]
    assert sorted(store.list("g[1]")) == ["g[1]*", "g[1]?x"]
    assert sorted(store.list("g[1]*")) == ["g[1]*"]
    assert sorted(store.list("g\\")) == ["g\\x"]
    assert list(store.list("zz")) == []
    assert list(store.list("a/b/1/")) == []


def test_many_keys_list_and_delete_prefix(store: Storage) -> None:
    keys = [f"job/status/{i:05d}" for i in range(1100)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put(k, b"ok"), keys))
    store.put("job/func", b"f")
    assert sorted(store.list("job/status/")) == keys
    store.delete_prefix("job/status/")
    assert list(store.list("job/status/")) == []
    assert list(store.list("job/")) == ["job/func"]


def test_delete(store: Storage) -> None:
    for key in ("x/1", "x/2", "x/3"):
        store.put(key, b"v")
    store.delete(["x/1", "x/3", "x/never-there"])
    assert sorted(store.list("x/")) == ["x/2"]
    assert not store.exists("x/1")
    store.delete([])
    assert store.exists("x/2")


def test_exists_and_size(store: Storage) -> None:
    store.put("blob", b"12345")
    store.put("zero", b"")
    assert store.exists("blob") and store.exists("zero")
    assert store.size("blob") == 5
    assert store.size("zero") == 0
    assert not store.exists("nothing")


@pytest.mark.parametrize("op", ["get", "size", "get_range", "empty_range", "download", "open_read"])
def test_missing_key_is_named(store: Storage, op: str, tmp_path: Path) -> None:
    calls = {
        "get": lambda: store.get("no/such/key"),
        "size": lambda: store.size("no/such/key"),
        "get_range": lambda: store.get_range("no/such/key", 0, 4),
        "empty_range": lambda: store.get_range("no/such/key", 3, 3),
        "download": lambda: store.download("no/such/key", tmp_path / "out"),
        "open_read": lambda: store.open_read("no/such/key"),
    }
    with pytest.raises(KeyNotFoundError, match="no/such/key"):
        calls[op]()
    assert not (tmp_path / "out").exists()


def test_upload_download(store: Storage, tmp_path: Path) -> None:
    data = os.urandom(12 * MiB + 123)
    files = tmp_path / "files"
    files.mkdir()
    source, target = files / "in.bin", files / "out.bin"
    source.write_bytes(data)
    store.upload(source, "files/big")
    assert store.size("files/big") == len(data)
    assert store.get_range("files/big", 6 * MiB, 6 * MiB + 10) == data[6 * MiB:6 * MiB + 10]
    store.download("files/big", target)
    assert target.read_bytes() == data
    assert sorted(p.name for p in files.iterdir()) == ["in.bin", "out.bin"]
    assert list(store.list("files/")) == ["files/big"]


def test_open_write_open_read(store: Storage) -> None:
    data = os.urandom(11 * MiB + 7)
    with store.open_write("streams/big") as f:
        for start in range(0, len(data), 3 * MiB):
            f.write(data[start:start + 3 * MiB])
        assert not store.exists("streams/big")
    with store.open_write("streams/empty"):
        pass
    assert store.size("streams/big") == len(data)
    with store.open_read("streams/big") as f:
        assert f.read(10) == data[:10]
        assert f.read() == data[10:]
    with store.open_read("streams/empty") as f:
        assert f.read() == b""
    assert sorted(store.list("streams/")) == ["streams/big", "streams/empty"]


def test_open_write_stores_nothing_if_the_block_raises(store: Storage) -> None:
    store.put("streams/old", b"old")
    for key in ("streams/old", "streams/new"):
        with pytest.raises(ZeroDivisionError), store.open_write(key) as f:
            f.write(b"partial" * 1000)
            1 / 0
    assert store.get("streams/old") == b"old"
    assert not store.exists("streams/new")
    assert list(store.list("streams/")) == ["streams/old"]


def _put_from_worker(store: Storage) -> str:
    store.put("from/worker", f"pid {os.getpid()}".encode())
    return repr(store)


def test_pickled_store_works(store: Storage) -> None:
    store.put("before", b"1")
    copy = pickle.loads(pickle.dumps(store))
    assert copy.get("before") == b"1"
    copy.put("after", b"2")
    assert store.get("after") == b"2"
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        assert pool.submit(_put_from_worker, store).result(timeout=60) == repr(store)
    assert store.get("from/worker") != f"pid {os.getpid()}".encode()
    assert store.get("from/worker").startswith(b"pid ")


def test_threads_share_one_store(store: Storage) -> None:
    def roundtrip(i: int) -> bytes:
        store.put(f"t/{i}", str(i).encode() * 100)
        return store.get(f"t/{i}")

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(roundtrip, range(64))) == [str(i).encode() * 100 for i in range(64)]


def test_threads_writing_one_key_never_mix(store: Storage) -> None:
    values = [bytes([i]) * (64 * 1024) for i in range(16)]

    def write(value: bytes) -> None:
        for _ in range(8):
            store.put("contended", value)
        with store.open_write("contended") as f:
            f.write(value)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, values))
    assert store.get("contended") in values
    assert list(store.list("")) == ["contended"]


def test_local_temporary_files_are_unique_and_cleaned_up(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    with store.open_write("k") as first, store.open_write("k") as second:
        first.write(b"first")
        second.write(b"second")
        assert len(list(tmp_path.glob("k.*.tmp"))) == 2
    assert store.get("k") == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_local_errors_are_one_line_and_say_whether_waiting_helps(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    store = LocalStorage(tmp_path)
    blocked = one_line_error(lambda: store.put("a-file/key", b"v"), str(tmp_path), "'a-file/key'")
    assert is_permanent(blocked)
    assert is_permanent(one_line_error(lambda: store.get("../outside"), "invalid key"))


def test_registry_finds_each_store() -> None:
    assert load("storage", "s3") is S3Storage
    assert load("storage", "redis") is RedisStorage
    assert load("storage", "local") is LocalStorage


def test_s3_big_put_and_upload_are_multipart(moto_server: str, tmp_path: Path) -> None:
    store = S3Storage(new_bucket(moto_server), endpoint_url=moto_server, multipart_threshold=5 * MiB,
                      multipart_chunksize=5 * MiB, **CREDS)
    data = os.urandom(11 * MiB)
    store.put("put", data)
    (tmp_path / "f").write_bytes(data)
    store.upload(tmp_path / "f", "upload")
    store.put("small", b"x" * 1000)
    etag = lambda key: store.client.head_object(Bucket=store.bucket, Key=key)["ETag"].strip('"')
    assert etag("put").endswith("-3") and etag("upload").endswith("-3")
    assert "-" not in etag("small")
    assert store.get("put") == data


def test_open_store_urls(tmp_path: Path, moto_server: str, redis_server: str,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    local, key = open_store(f"file://{tmp_path}/dir/obj")
    assert isinstance(local, LocalStorage) and local.path == tmp_path / "dir" and key == "obj"
    local.put(key, b"L")
    assert (tmp_path / "dir" / "obj").read_bytes() == b"L"

    bucket = new_bucket(moto_server)
    for name, value in {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    s3, key = open_store(f"s3://{bucket}/jobs/j1/")
    assert isinstance(s3, S3Storage) and s3.bucket == bucket and key == "jobs/j1/"
    s3.put(key + "x", b"S")
    s3.check()
    assert list(s3.list(key)) == ["jobs/j1/x"]

    address = redis_server.removeprefix("redis://").rsplit("/", 1)[0]
    red, key = open_store(f"redis://{address}/3/some/key")
    assert isinstance(red, RedisStorage) and key == "some/key"
    red.put(key, b"R")
    assert RedisStorage(f"redis://{address}/3").get("some/key") == b"R"
    assert not RedisStorage(f"redis://{address}/0").exists("some/key")


def test_open_store_rejects_unknown_urls() -> None:
    with pytest.raises(ConfigError, match="ftp"):
        open_store("ftp://host/key")
    with pytest.raises(ConfigError, match="bucket"):
        open_store("s3:///key")


def test_s3_missing_bucket(moto_server: str) -> None:
    store = S3Storage("no-such-bucket", endpoint_url=moto_server, **CREDS)
    one_line_error(store.check, "no-such-bucket", moto_server, "does not exist")
    error = one_line_error(lambda: store.get("k"), "no-such-bucket")
    assert "'k'" not in str(error) and is_permanent(error)
    assert SECRET not in repr(store)


def test_s3_unreachable_endpoint() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3Storage("bucket-x", endpoint_url=endpoint, retries=1, **CREDS)
    assert not is_permanent(one_line_error(store.check, "bucket-x", endpoint, "unreachable"))
    assert SECRET not in repr(store) and "bucket-x" in repr(store)


def test_s3_bad_credentials(moto_auth_server: AuthServer) -> None:
    server = moto_auth_server
    good = S3Storage(server.bucket, endpoint_url=server.endpoint, region="us-east-1",
                     aws_access_key_id=server.access_key_id, aws_secret_access_key=server.secret_access_key)
    good.check()
    good.put("k", b"v")
    assert good.get("k") == b"v"
    for key_id in ("AKIAUNKNOWNKEY000000", server.access_key_id):
        bad = S3Storage(server.bucket, endpoint_url=server.endpoint, region="us-east-1",
                        aws_access_key_id=key_id, aws_secret_access_key=SECRET)
        assert is_permanent(one_line_error(bad.check, server.bucket, server.endpoint, "credentials"))
        one_line_error(lambda: bad.get("k"), server.bucket, "credentials")
        assert SECRET not in repr(bad)


def test_redis_not_running() -> None:
    address = f"127.0.0.1:{free_port()}"
    store = RedisStorage(f"redis://:{SECRET}@{address}/0")
    assert not is_permanent(one_line_error(store.check, address, "not reachable"))
    one_line_error(lambda: store.get("k"), address)
    assert SECRET not in repr(store) and address in repr(store)


def test_redis_password_refused(redis_server: str) -> None:
    address = redis_server.removeprefix("redis://").rsplit("/", 1)[0]
    store = RedisStorage(f"redis://user:{SECRET}@{address}/0")
    assert is_permanent(one_line_error(store.check, address))
    assert repr(store) == f"RedisStorage(url='redis://user:***@{address}/0')"
