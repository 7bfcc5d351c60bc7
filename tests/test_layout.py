"""The store layout: no folder of a directory store grows past a few thousand entries, however many jobs and calls.

A directory with hundreds of thousands of entries makes every listing, creation and deletion in it slow,
so the layout (`burstmap.job.Layout`) shards jobs by their id and nests status chunks. The first tests
check its keys at full scale (a million jobs, ten million calls); the last runs real jobs with the
layout's constants shrunk, so that a handful of jobs and a few hundred calls fill a real store as a
million jobs and ten million calls would, and checks the store folder by folder.
"""

from __future__ import annotations

import os
import pickle
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

import burstmap
from burstmap import job, watcher, worker
from burstmap.attempts import Attempts
from burstmap.backends.base import Backend
from burstmap.cli import main
from burstmap.job import CHUNK, Batch, Layout, finished_calls, new_job_id, read_record
from burstmap.stats import JobSummary, list_jobs
from burstmap.storage.local import LocalStorage
from burstmap.worker import INLINE_LIMIT, Handler

from .conftest import TEST_SECRET

#: The most entries the layout lets one folder hold, for stores of up to a million jobs of ten million calls.
BOUND = 4096


def widest(keys: Iterable[str]) -> int:
    """The most entries (files and sub-folders) of one folder, were ``keys`` files in a directory store."""
    keys = set(keys)
    folders: set[str] = set()
    for key in keys:
        folder = key.rpartition("/")[0]
        while "/" in folder and folder not in folders:
            folders.add(folder)
            folder = folder.rpartition("/")[0]
    entries = Counter(key.rpartition("/")[0] for key in keys) + Counter(f.rpartition("/")[0] for f in folders)
    return max(entries.values())


def test_widest_counts_the_entries_of_the_fullest_folder():
    assert widest(["p/a/1", "p/a/2", "p/b/1", "p/c", "p/a/1"]) == 3
    assert widest(f"p/flat/{i}" for i in range(5000)) == 5000


def test_a_million_jobs_fill_no_folder_past_the_bound():
    rng = random.Random(11)  # ids as random as `new_job_id`'s (96 bits), made quicker than by the OS
    layouts = (Layout("pre", f"{rng.getrandbits(96):024x}") for _ in range(1_000_000))
    assert len(new_job_id()) == len(next(layouts).job_id)
    assert widest(key for layout in layouts for key in (layout.manifest, layout.func)) <= BOUND


def test_a_job_of_ten_million_calls_fills_no_folder_past_a_chunk():
    layout, n_calls = Layout("pre", new_job_id()), 10_000_000

    def keys() -> Iterator[str]:
        for chunk in range(n_calls // CHUNK):  # one call of every chunk: every folder of the tree
            yield layout.status(chunk * CHUNK)
            yield layout.out(chunk * CHUNK)
        for call_id in range(n_calls - CHUNK, n_calls):  # every call of one chunk: a full folder
            yield layout.status(call_id)
            yield layout.out(call_id)

    assert widest(keys()) <= CHUNK


def test_the_batches_of_a_job_of_ten_million_calls_fill_no_folder_past_the_bound():
    layout = Layout("pre", new_job_id())
    batches = (Batch("pre", layout.job_id, ()) for _ in range(10_000_000 // 100))  # of 100 calls each
    assert widest(layout.delivery(batch.delivery, 1) for batch in batches) <= BOUND


# ---- real jobs in a real store, with the layout shrunk --------------------------------------------

SMALL_CHUNK, SMALL_SHARD = 10, 1
#: With those: 16 shard folders, chunks of 10 calls; a job's own folder holds its 7 objects and folders.
SMALL_BOUND = 16
N_CALLS, N_JOBS, BATCH = 900, 40, 30


def sized(x: int) -> bytes | int:
    """Every 40th call returns a result too large for its record (stored under ``out/``)."""
    return bytes(INLINE_LIMIT + 1) if x % 40 == 0 else x * x


@pytest.fixture
def small_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 10 calls and 16 shards, in the client and in the in-process workers alike."""
    for module in (job, watcher, worker):
        monkeypatch.setattr(module, "CHUNK", SMALL_CHUNK)
    monkeypatch.setattr(job, "SHARD", SMALL_SHARD)


class InThisProcess(Backend):
    """Runs batches of calls through the one worker handler in a thread of this process, so that the
    worker sees the shrunk layout too: every shipped backend runs calls in processes of their own.
    Each batch is begun as a Dask task's is (`Attempts.begin`), which leaves a delivery marker."""

    name = "in-this-process"

    def start(self, storage, key, board=None) -> None:
        super().start(storage, key, board)
        self._attempts = Attempts(storage, key, "in-this-process")
        self._handler = Handler(storage, key, "in-this-process", group_window=0.01)
        self._thread = ThreadPoolExecutor(1)

    def run(self, manifest, call_ids) -> None:
        call_ids = self.board.take(manifest.job_id, call_ids)
        for i in range(0, len(call_ids), BATCH):
            self._thread.submit(self._run, Batch.of(manifest, call_ids[i:i + BATCH]))

    def _run(self, batch: Batch) -> None:
        try:
            self._handler.run(self._attempts.begin(batch))
        except BaseException as e:  # no call may hang: a batch that cannot run fails its calls
            self.board.fail(batch.job_id, [t.call_id for t in batch.tasks], e)

    def shutdown(self, wait: bool = True) -> None:
        self._thread.shutdown(wait)


def fullest_folder(root: Path) -> tuple[int, str]:
    """The number of entries of the fullest folder under ``root``, and that folder."""
    return max((len(dirs) + len(files), folder) for folder, dirs, files in os.walk(root))


def test_many_jobs_of_many_chunks_keep_every_folder_small_and_still_list_and_clean(small_layout, tmp_path):
    store, key = LocalStorage(tmp_path), TEST_SECRET.encode()
    with burstmap.Executor(backend=InThisProcess(), storage=store, secret_key=TEST_SECRET, progress=False) as ex:
        big = ex.map(sized, range(N_CALLS))
        small = [ex.map(sized, [i])[0] for i in range(N_JOBS)]
        assert burstmap.get_all_results(big + small, timeout=120) == [sized(x) for x in range(N_CALLS)] + [
            sized(i) for i in range(N_JOBS)]
    layout = big[0].layout
    assert len(list(store.list(layout.root + "out/"))) == N_CALLS // 40 + 1
    assert len(list(store.list(layout.root + "deliveries/"))) == N_CALLS // BATCH
    assert finished_calls(store, layout, range(N_CALLS)) == set(range(N_CALLS))
    assert read_record(store, key, layout, 789).output_key is None

    entries, folder = fullest_folder(tmp_path)
    assert entries <= SMALL_BOUND, f"{folder} holds {entries} entries"

    jobs = list_jobs(store, key, layout.prefix)
    assert sorted(j.job_id for j in jobs if isinstance(j, JobSummary)) == sorted({f.job_id for f in big + small})
    assert len(jobs) == N_JOBS + 1 and all(j.counts["ok"] == j.n_calls for j in jobs)

    result = CliRunner().invoke(main, ["--store", f"file://{tmp_path}", "clean", "--all", "--yes"],
                                env={"BURSTMAP_SECRET_KEY": TEST_SECRET})
    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == []


def hundred_kb(x: int) -> bytes:
    return bytes([x % 256]) * 100_000


def test_quick_calls_with_large_results_are_stored_in_groups_of_at_most_8_mib(tmp_path):
    from burstmap.job import Manifest, call_ids_of, decode_records
    from burstmap.serialize import dumps_calls, dumps_function, seal

    store, key = LocalStorage(tmp_path), TEST_SECRET.encode()
    job_id = new_job_id()
    data, blocks = dumps_calls(range(200), key, job_id, items=True)
    manifest = Manifest(job_id, "burstmap", "hundred_kb", tuple(blocks), 0.0, "here")
    store.put(manifest.layout.func, seal(key, f"{job_id}/func", dumps_function(hundred_kb, False)))
    store.put(manifest.layout.data, data)
    Handler(store, key, "here", group_window=3600).run(Batch.of(manifest, range(200)).tasks)  # no group is due early

    objects = [name for name in store.list(manifest.layout.root + "status/")]
    sizes = [len(call_ids_of(name)) for name in objects]
    assert sum(sizes) == 200 and max(sizes) > 1
    assert max(store.size(name) for name in objects) < (8 << 20) + 200_000
    records = [r for name in objects for r in decode_records(store.get(name), key, job_id)]
    assert sorted(r.call_id for r in records) == list(range(200))
    assert all(r.output == pickle.dumps(hundred_kb(r.call_id), protocol=pickle.HIGHEST_PROTOCOL) for r in records)
