"""A full disk under the local store: one-line errors, no temporary files left, and a wait that ends when space is freed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from burstmap.errors import StorageError
from burstmap.storage.local import LocalStorage
from burstmap.storage.patient import Patient

from .test_outage import Waiting

KiB = 1024
FULL = "No space left on device"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test alone."""
    folder = tmp_path / "disk"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def files_under(folder: Path) -> list[str]:
    """Every file under ``folder``, temporary ones included, relative to it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def full_disk_error(call) -> str:
    """Run ``call``, expect a one-line `StorageError` that says the disk is full."""
    with pytest.raises(StorageError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and FULL in message
    return message


def test_put_too_large_is_one_line_and_leaves_no_temporary_file(disk: Path) -> None:
    store = LocalStorage(disk)
    message = full_disk_error(lambda: store.put("job/big", os.urandom(2048 * KiB)))
    assert str(disk) in message and "job/big" in message
    assert files_under(disk) == []


def test_open_write_too_large_is_one_line_and_leaves_no_temporary_file(disk: Path) -> None:
    store = LocalStorage(disk)
    store.put("job/old", b"old")

    def stream() -> None:
        with store.open_write("job/old") as f:
            for _ in range(32):
                f.write(os.urandom(64 * KiB))

    full_disk_error(stream)
    assert files_under(disk) == ["job/old"]
    assert store.get("job/old") == b"old"


def test_writes_succeed_once_space_is_freed(disk: Path) -> None:
    store = LocalStorage(disk)
    store.put("filler", bytes(800 * KiB))
    full_disk_error(lambda: store.put("next", bytes(400 * KiB)))
    store.delete(["filler"])
    store.put("next", bytes(400 * KiB))
    with store.open_write("streamed") as f:
        f.write(bytes(400 * KiB))
    assert files_under(disk) == ["next", "streamed"]


def test_patient_store_waits_until_space_is_freed(disk: Path) -> None:
    store = LocalStorage(disk)
    store.put("filler", bytes(800 * KiB))
    data = os.urandom(600 * KiB)
    with Waiting(1, rounds=3) as waiting, ThreadPoolExecutor(1) as pool:
        put = pool.submit(Patient(LocalStorage(disk), limit=30).put, "result", data)
        assert waiting.all.wait(timeout=30)
        assert not put.done()
        store.delete(["filler"])
        put.result(timeout=30)
    assert store.get("result") == data
    assert files_under(disk) == ["result"]


def test_patient_store_gives_up_in_one_line_when_space_never_comes(disk: Path) -> None:
    store = Patient(LocalStorage(disk), limit=0.5)
    message = full_disk_error(lambda: store.put("result", bytes(2048 * KiB)))
    assert message.startswith(f"store LocalStorage(path='{disk}') unreachable for over 0.5s: ")
    assert files_under(disk) == []


def fill_then_return(folders: tuple[str, str]) -> int:
    """Fill the disk the store is on, note elsewhere that it did, then return: its status cannot be written yet."""
    disk, notes = folders
    with open(os.path.join(disk, "filler"), "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4 * KiB)
        except OSError:
            pass
    Path(notes, "filled").write_text("")
    return 42


def test_a_job_on_a_full_disk_is_one_line_leaves_nothing_and_is_not_listed(disk: Path) -> None:
    import burstmap
    from burstmap.backends.local import LocalBackend
    from burstmap.stats import list_jobs

    from .conftest import TEST_SECRET

    with burstmap.Executor(backend=LocalBackend(workers=1), storage=LocalStorage(disk / "store"),
                           secret_key=TEST_SECRET, progress=False, outage_limit=0.5) as ex:
        full_disk_error(lambda: ex.map(len, [os.urandom(2048 * KiB)]))
        assert [p for p in files_under(disk) if ".tmp" in p] == []
        assert list_jobs(ex.storage, TEST_SECRET.encode(), "burstmap") == []
        notes = disk.parent / "notes"
        notes.mkdir()
        future = ex.map(fill_then_return, [(str(disk), str(notes))])[0]
        while not (notes / "filled").exists():
            assert not future.done(), future.exception()
        assert not future.done()
        (disk / "filler").unlink()
        assert future.result(timeout=120) == 42
