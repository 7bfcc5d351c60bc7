"""Map over data: directories, file URLs, S3 prefixes and Redis keys, chunked by bytes and aligned to lines."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.errors import ConfigError, KeyNotFoundError
from burstmap.partition import is_data_source, parse_size, pieces
from burstmap.piece import DataPiece
from burstmap.storage.local import LocalStorage
from burstmap.storage.redis import RedisStorage
from burstmap.storage.s3 import S3Storage

SECRET = "fake-secret-d0-not-l3ak"
CREDS = {"region": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": SECRET}


def record(name: str, n: int) -> str:
    """Line ``n`` of file ``name``: a known format whose two ends show whether it was split."""
    return f"<{name}|{n}|{'x' * (n * 7 % 53)}>"


def write_records(folder: Path, name: str, count: int, final_newline: bool = True) -> list[str]:
    """Write ``count`` records to ``folder/name``; return them."""
    lines = [record(name, n) for n in range(count)]
    text = "\n".join(lines) + ("\n" if final_newline and lines else "")
    (folder / name).write_text(text)
    return lines


def line_count(folder: Path) -> int:
    """What ``wc -l`` would say summed over the files, plus one for each last line lacking its newline."""
    total = 0
    for file in folder.iterdir():
        data = file.read_bytes()
        total += data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return total


def piece_lines(piece: DataPiece) -> list[str]:
    """The function the workers run: the lines of one piece."""
    return list(piece.lines())


def piece_size(piece: DataPiece) -> tuple[str, int]:
    """The key of a piece and how many bytes its stream yields."""
    with piece.open(block_size=4096) as stream:
        return piece.key, sum(len(block) for block in iter(lambda: stream.read(1000), b""))


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[burstmap.Executor]:
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(tmp_path / "store"),
                           secret_key="k", progress=False) as ex:
        yield ex


@pytest.fixture
def texts(tmp_path: Path) -> tuple[Path, list[str]]:
    """A directory of record files: ordinary, without a final newline, empty, and one huge line."""
    folder = tmp_path / "texts"
    folder.mkdir()
    lines = write_records(folder, "a.txt", 900) + write_records(folder, "b.txt", 401, final_newline=False)
    lines += write_records(folder, "empty.txt", 0)
    long = "<long|0|" + "y" * 5000 + ">"
    (folder / "long.txt").write_text(f"{record('long', 1)}\n{long}\n{record('long', 2)}\n")
    return folder, lines + [record("long", 1), long, record("long", 2)]


def new_bucket(endpoint: str) -> str:
    bucket = f"data-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, **{k: v for k, v in CREDS.items() if k != "region"},
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket


@pytest.mark.parametrize("text, expected", [
    (4096, 4096), ("64MiB", 64 << 20), ("1.5 GB", 1_500_000_000), ("512k", 512 << 10), ("10 B", 10),
])
def test_parse_size(text: int | str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "64 furlongs", "0", "-3MiB", True])
def test_parse_size_refuses_what_is_not_a_size(text: object) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)  # type: ignore[arg-type]


def test_only_strings_paths_and_url_lists_are_data() -> None:
    assert is_data_source("s3://bucket/prefix/") and is_data_source(Path("/tmp"))
    assert is_data_source(["file:///a/b", "s3://bucket/key"])
    assert not is_data_source(["a", "b"]) and not is_data_source([Path("/tmp")]) and not is_data_source([])
    assert not is_data_source(iter(["s3://bucket/key"]))


@pytest.mark.parametrize("chunk", [1, 10, 30, 97, 1000, 1 << 20])
def test_aligned_chunks_hold_every_line_once(tmp_path: Path, chunk: int) -> None:
    """Lines of 10 bytes: chunk sizes of 10 and 30 put boundaries right after newlines, 97 inside lines."""
    lines = [f"line{n:05d}" for n in range(300)]
    (tmp_path / "f").write_text("\n".join(lines) + "\n")
    got = [line for piece in pieces(tmp_path, chunk) for line in piece.lines()]
    assert got == lines


def test_unaligned_chunks_are_exact_byte_ranges(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    (tmp_path / "blob").write_bytes(data)
    parts = pieces(tmp_path / "blob", "999", newline_aligned=False)
    assert len(parts) == 11
    assert b"".join(p.read() for p in parts) == data
    assert parts[3].open().read() == data[2997:3996]


def test_map_over_directory_chunks_text_without_splitting_lines(
        executor: burstmap.Executor, texts: tuple[Path, list[str]]) -> None:
    folder, lines = texts
    futures = executor.map(piece_lines, folder, chunk_size=1000)
    results = burstmap.get_all_results(futures)
    got = [line for chunk in results for line in chunk]
    assert len(futures) > 50
    assert len(got) == line_count(folder)
    assert Counter(got) == Counter(lines)


def test_map_over_file_url_gives_one_call_per_object(
        executor: burstmap.Executor, texts: tuple[Path, list[str]]) -> None:
    folder, _ = texts
    results = burstmap.get_all_results(executor.map(piece_size, f"file://{folder}/"))
    assert results == sorted((f.name, f.stat().st_size) for f in folder.iterdir())


def test_map_over_s3_prefix_of_the_executor_store(moto_server: str, tmp_path: Path) -> None:
    """The executor's own bucket: pieces carry no store, so its secret is in no stored input."""
    store = S3Storage(new_bucket(moto_server), endpoint_url=moto_server, **CREDS)
    lines = write_records(tmp_path, "one", 700) + write_records(tmp_path, "two", 300)
    for name in ("one", "two"):
        store.upload(tmp_path / name, f"input/{name}")
    store.put("other/three", b"not under the prefix\n")
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=store, secret_key="k", progress=False) as ex:
        futures = ex.map(piece_lines, f"s3://{store.bucket}/input/", chunk_size="2KiB")
        got = [line for chunk in burstmap.get_all_results(futures) for line in chunk]
        assert Counter(got) == Counter(lines)
        assert SECRET.encode() not in store.get(futures[0].layout.data)


def test_map_over_list_of_s3_keys_in_two_buckets(moto_server: str) -> None:
    """A URL of another bucket reaches it with the executor store's endpoint and credentials."""
    store = S3Storage(new_bucket(moto_server), endpoint_url=moto_server, **CREDS)
    other = S3Storage(new_bucket(moto_server), endpoint_url=moto_server, **CREDS)
    store.put("k1", b"a\nbb\n")
    other.put("dir/k2", b"ccc\n")
    urls = [f"s3://{store.bucket}/k1", f"s3://{other.bucket}/dir/k2"]
    parts = pieces(urls, storage=store)
    assert parts[0].storage is None and parts[1].storage.bucket == other.bucket
    assert SECRET not in repr(parts[1]) and SECRET not in repr(parts[1].storage)
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=store, secret_key="k", progress=False) as ex:
        assert burstmap.get_all_results(ex.map(piece_lines, urls)) == [["a", "bb"], ["ccc"]]


def test_map_over_redis_prefix_from_a_local_executor(executor: burstmap.Executor, redis_server: str) -> None:
    """A store other than the executor's travels inside each piece and reconnects in the worker."""
    prefix = f"data-{uuid.uuid4().hex[:8]}/"
    RedisStorage(redis_server).put(prefix + "r", "".join(f"{record('r', n)}\n" for n in range(50)).encode())
    futures = executor.map(piece_lines, f"{redis_server}/{prefix}", chunk_size=128)
    got = [line for chunk in burstmap.get_all_results(futures) for line in chunk]
    assert got == [record("r", n) for n in range(50)]


def test_a_vanished_object_fails_only_its_call(executor: burstmap.Executor, tmp_path: Path) -> None:
    folder = tmp_path / "vanish"
    folder.mkdir()
    for name in ("a", "b", "c"):
        write_records(folder, name, 20)
    planned = pieces(folder, 100)
    (folder / "b").unlink()
    futures = executor.map(piece_lines, planned)
    outcomes = burstmap.get_all_results(futures, return_exceptions=True)
    failed = [(p.key, o) for p, o in zip(planned, outcomes) if isinstance(o, BaseException)]
    assert {key for key, _ in failed} == {"b"}
    assert all(isinstance(error, KeyNotFoundError) and f"{folder}/b" in str(error) for _, error in failed)
    done = [line for o in outcomes if not isinstance(o, BaseException) for line in o]
    assert Counter(done) == Counter(record(n, i) for n in "ac" for i in range(20))


def test_an_empty_prefix_is_an_error_naming_it(tmp_path: Path, moto_server: str) -> None:
    store = S3Storage(new_bucket(moto_server), endpoint_url=moto_server, **CREDS)
    with pytest.raises(KeyNotFoundError, match="nothing-here"):
        pieces(f"s3://{store.bucket}/nothing-here/", storage=store)


def test_chunk_size_without_data_is_refused(executor: burstmap.Executor) -> None:
    with pytest.raises(ConfigError, match="chunk_size"):
        executor.map(piece_lines, range(3), chunk_size="1MiB")
