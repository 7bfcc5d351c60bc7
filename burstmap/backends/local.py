"""The local backend: a warm pool of worker processes on this machine, fed calls in batches.

A dispatcher thread hands each idle worker a signed `Batch` over its own pipe. Each worker
publishes which task it is running, and since when, in a small shared array, so the dispatcher
can stop a call that runs past its timeout and knows which call a dead worker was running; it
reports both to `Attempts`, which decides between a re-run and a final record, and queues the
rest of the batch again. Workers die with the client (a parent-death signal), and each leads its
own process group, so children a call started die with it at its timeout. Workers are fresh
interpreters that never import the user's ``__main__`` (`local_process`), so any script works,
guarded or not; a worker that cannot start is replaced after a growing pause, and after a few
failures in a row the pending calls fail with the worker's own error.

A call that runs long (no timeout may stop it) does not hold the batches sent ahead to its worker
while another worker idles: the dispatcher marks them withdrawn in the worker's progress array and
queues them again; the worker skips a withdrawn batch. (In a rare race both run one, which is
harmless: a call may run twice, its record is the same.)

The dispatcher is supervised: an error it cannot handle fails every call it holds, loudly.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any

from ..attempts import OUTAGE_EXIT, Attempts, how_it_ended
from ..errors import BurstmapError, StorageError, WorkerDiedError
from ..job import CHUNK, Batch, CallState, Manifest, Task
from ..storage.base import Storage
from ..versions import mismatch
from ..worker import Handler
from .base import Backend, CallBoard, fail_held
from .local_process import READY, WorkerProcess

__all__ = ["LocalBackend"]

log = logging.getLogger(__name__)
_MAX_BATCH = CHUNK  # a batch of quick calls fills a status chunk: one object
_BATCH_SECONDS = 0.02  # quick calls are batched up to this much work per batch
_DEPTH = 2  # batches sent ahead to each worker, so it never waits for the dispatcher
_GROUP_WINDOW = 0.01  # quick calls' records are stored together if they finish within this many seconds
_STUCK = 1.0  # seconds a call runs before the batches queued behind it on its worker go to idle ones
_STARTUP_TRIES = 3  # workers that die before taking work, in a row, before their calls are failed
_STARTUP_PAUSE = 0.1, 10.0  # the pause before replacing such a worker doubles from the first to the second
_TICK = 0.05
_PR_SET_PDEATHSIG = 1


class LocalBackend(Backend):
    """Runs calls in ``workers`` processes on this machine (default: one per core)."""

    name = "local"
    imports_client_modules = True

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer, not {workers!r}")
        self.workers = workers or os.cpu_count() or 1
        self._pool: _Pool | None = None
        self._lock = threading.Lock()

    def run(self, manifest: Manifest, call_ids: Sequence[int]) -> None:
        with self._lock:
            if self._pool is None or self._pool.broken:
                self._pool = _Pool(self.workers, self.storage, self._key, self.board)
            pool = self._pool
        pool.add(manifest, call_ids)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool:
            pool.close(wait)

    def worker_pids(self) -> list[int]:
        """The process ids of the live workers (for tests and tools that watch them)."""
        pool = self._pool
        return [slot.process.pid for slot in pool.slots] if pool else []

    def __repr__(self) -> str:
        return f"LocalBackend(workers={self.workers})"


class _Slot:
    """One worker process, its pipe, its progress array and the batch it is running."""

    def __init__(self, index: int, process: Any, conn: Connection, progress: Any) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.progress = progress
        self.seq = 0
        self.started = False
        self.batches: dict[int, list[tuple[Manifest, Task]]] = {}

    @property
    def name(self) -> str:
        return f"local-{self.index}"

    def running(self) -> tuple[list[tuple[Manifest, Task]], int, float, int] | None:
        """The batch it runs, the index of the task in it, since when, and how many of its tasks are stored."""
        progress = self.progress
        while True:
            seq, index, start, durable = progress[0], progress[1], progress[2], progress[3]
            if (seq, index, durable) == (progress[0], progress[1], progress[3]):
                break
        batch = self.batches.get(int(seq))
        return (batch, int(index), start, int(durable)) if batch else None

    def stuck(self, now: float) -> bool:
        """Whether its call has run `_STUCK` seconds: nothing more is queued behind it."""
        running = self.running() if self.batches else None
        return running is not None and now - running[2] >= _STUCK

    def unstarted(self, after: int) -> list[tuple[Manifest, Task]]:
        """The tasks of every batch sent after batch ``after``, in order."""
        return [item for seq in sorted(self.batches) if seq > after for item in self.batches[seq]]


class _Pace:
    """How long calls of each recent job take, and so how to batch them.

    Quick calls go in batches of up to ``_MAX_BATCH`` worth ``_BATCH_SECONDS``, two batches ahead
    per worker, so workers never wait for the dispatcher. Calls of a job not yet measured, or slow
    ones, go one at a time and one at most ahead, so no worker holds a queue while another idles.
    """

    def __init__(self) -> None:
        self._jobs: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def record(self, batch: list[tuple[Manifest, Task]], seconds: float) -> None:
        job_id = batch[0][0].job_id
        total, calls = self._jobs.pop(job_id, (0.0, 0))
        self._jobs[job_id] = (total + seconds, calls + len(batch))
        if len(self._jobs) > 64:
            self._jobs.popitem(last=False)

    def batch(self, job_id: str, fair_share: int) -> tuple[int, int]:
        """The size of the next batch of this job, and how many batches a worker may hold."""
        if job_id not in self._jobs:
            return 1, 1
        total, calls = self._jobs[job_id]
        per_call = total / calls
        if per_call >= _BATCH_SECONDS:
            return 1, 1
        return max(1, min(_MAX_BATCH, fair_share, int(_BATCH_SECONDS / max(per_call, 1e-6)))), _DEPTH


class _Queue:
    """Calls waiting for a worker, in order, as runs of one job's calls: a job of a million calls is one
    entry until workers take it, not a million."""

    def __init__(self) -> None:
        self._runs: deque[tuple[Manifest, Sequence[int], dict[int, int] | None]] = deque()  # attempts, if not 1
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, manifest: Manifest, call_ids: Sequence[int]) -> None:
        """Queue calls at their first attempt."""
        self._runs.append((manifest, call_ids, None))
        self._size += len(call_ids)

    def put_back(self, items: Sequence[tuple[Manifest, int, int]]) -> None:
        """Queue ``(manifest, call, attempt)`` items again, in order, ahead of everything else."""
        runs: list[tuple[Manifest, list[int], dict[int, int]]] = []
        for manifest, call_id, attempt in items:
            if not runs or runs[-1][0] is not manifest:
                runs.append((manifest, [], {}))
            runs[-1][1].append(call_id)
            runs[-1][2][call_id] = attempt
        self._runs.extendleft(reversed(runs))
        self._size += len(items)

    def head(self) -> Manifest:
        """The job of the next call."""
        return self._runs[0][0]

    def take(self, size: int) -> tuple[Manifest, Sequence[int], dict[int, int] | None]:
        """Up to ``size`` next calls of one run, with their attempts (None: every one at its first)."""
        manifest, call_ids, attempts = self._runs.popleft()
        if type(call_ids) is range:  # a batch ends at the end of a status chunk, so that its records are one object
            size = min(size, CHUNK - call_ids.start % CHUNK)
        now, rest = call_ids[:size], call_ids[size:]
        if rest:
            self._runs.appendleft((manifest, rest, attempts))
        self._size -= len(now)
        return manifest, now, attempts and {c: attempts[c] for c in now}

    def drain(self) -> list[tuple[Manifest, int, int]]:
        """Every queued ``(manifest, call, attempt)``, leaving the queue empty."""
        items = [(m, c, attempts[c] if attempts else 1) for m, call_ids, attempts in self._runs for c in call_ids]
        self._runs.clear()
        self._size = 0
        return items


class _Pool:
    def __init__(self, size: int, storage: Storage, key: bytes, board: CallBoard) -> None:
        self._storage = storage
        self._key = key
        self._board = board
        self._attempts = Attempts(storage, key, f"local-pool:{os.getpid()}")
        self._pending = _Queue()
        self._lock = threading.Lock()
        self._closed = False
        self.broken: BaseException | None = None
        self._startup_failures = 0
        self._respawn: dict[int, float] = {}  # slot index: when to replace its worker, which failed to start
        self._pace = _Pace()
        self._wake_r, self._wake_w = Pipe(duplex=False)
        self.slots = [self._spawn(i) for i in range(size)]
        self._thread = threading.Thread(target=self._supervised, name="burstmap-local", daemon=True)
        self._thread.start()

    def _spawn(self, index: int) -> _Slot:
        process = WorkerProcess(_worker_setup, (self._storage, self._key, f"local-{index}", os.getpid()))
        return _Slot(index, process, process.conn, process.progress)

    def add(self, manifest: Manifest, call_ids: Sequence[int]) -> None:
        with self._lock:
            if self.broken is None:
                self._pending.append(manifest, call_ids)
                self._wake_w.send_bytes(b"w")
                return
        self._board.fail(manifest.job_id, call_ids, _broken(self.broken))

    def close(self, wait_for_workers: bool) -> None:
        with self._lock:
            self._closed = True
            if self.broken is None:
                self._wake_w.send_bytes(b"w")
        self._thread.join()
        for slot in self.slots:
            slot.conn.close()
            slot.process.join(timeout=5 if wait_for_workers else 0.1)
            _kill_group(slot.process)
            slot.process.close()

    def _supervised(self) -> None:
        """The dispatcher loop; if it fails, every call it holds fails with its error instead of hanging."""
        try:
            self._loop()
        except BaseException as e:
            log.exception("burstmap: the local pool's dispatcher failed; failing the calls it holds")
            with self._lock:
                self.broken = e
                held = [(m, c) for m, c, _ in self._pending.drain()]
            held += [(m, t.call_id) for slot in self.slots for b in slot.batches.values() for m, t in b]
            for slot in self.slots:
                _kill_group(slot.process)
            fail_held(self._board, held, _broken(e))

    def _loop(self) -> None:
        while not self._closed:
            self._respawn_due()
            self._dispatch()
            owners: dict[Any, _Slot] = {}
            for slot in self.slots:
                if slot.index not in self._respawn:
                    owners[slot.conn] = owners[slot.process.sentinel] = slot
            for ready in wait([self._wake_r, *owners], timeout=self._wait_time()):
                if ready is self._wake_r:
                    while self._wake_r.poll():
                        self._wake_r.recv_bytes()
                    continue
                slot = owners[ready]
                if self.slots[slot.index] is not slot or slot.index in self._respawn:
                    continue  # replaced, or to be replaced, since the wait began
                self._on_ready(slot, ready)
            self._check_timeouts()
            self._take_back_queued()

    def _wait_time(self) -> float | None:
        """How long the loop may wait for a message: until a timeout may pass or a worker is due to be replaced."""
        timed = any(b[0][0].timeout for slot in self.slots for b in slot.batches.values())
        queued_behind = any(len(slot.batches) > 1 for slot in self.slots)
        times = [_TICK] if timed or queued_behind else []
        times += [max(0.0, due - time.monotonic()) for due in self._respawn.values()]
        return min(times, default=None)

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for index, due in list(self._respawn.items()):
            if due <= now:
                del self._respawn[index]
                self.slots[index] = self._spawn(index)

    def _on_ready(self, slot: _Slot, ready: Any) -> None:
        try:
            while slot.conn.poll():
                message = slot.conn.recv_bytes()
                if message == READY:
                    slot.started = True
                    self._startup_failures = 0
                else:
                    seq, seconds = message.split()
                    batch = slot.batches.pop(int(seq), None)
                    if batch:  # else it was withdrawn as the worker took it: it ran twice
                        self._pace.record(batch, float(seconds))
            if ready is slot.conn or slot.process.is_alive():
                return
        except (EOFError, OSError):
            pass
        slot.process.join()
        self._worker_died(slot)

    def _dispatch(self) -> None:
        for slot in self.slots:
            batch = self._next_batch(slot)
            if batch is None:
                continue
            slot.seq += 1
            slot.batches[slot.seq] = [(batch[0], task) for task in batch[1].tasks]
            try:
                slot.conn.send_bytes(slot.seq.to_bytes(8, "big") + batch[1].encode(self._key))
            except OSError:
                pass  # the worker just died: its sentinel is ready, and _worker_died queues the batch again

    def _next_batch(self, slot: _Slot) -> tuple[Manifest, Batch] | None:
        """The next batch for a slot that may take one: calls of one job, those cancelled left out."""
        while True:
            with self._lock:
                if not self._pending or not slot.started:
                    return None
                fair_share = len(self._pending) // (2 * len(self.slots))
                size, depth = self._pace.batch(self._pending.head().job_id, fair_share)
                if len(slot.batches) >= depth or slot.batches and slot.stuck(time.time()):
                    return None
                manifest, call_ids, attempts = self._pending.take(size)
            try:
                wanted = self._board.take(manifest.job_id, call_ids)
            except BaseException:
                with self._lock:  # still held: the supervisor fails them with the error
                    self._pending.put_back([(manifest, c, attempts[c] if attempts else 1) for c in call_ids])
                raise
            if wanted:
                return manifest, Batch.of(manifest, wanted, attempts)

    def _check_timeouts(self) -> None:
        now = time.time()
        for slot in self.slots:
            running = slot.running() if slot.batches else None
            if running is None:
                continue
            batch, index, start, durable = running
            manifest, task = batch[index]
            if manifest.timeout and now - start > manifest.timeout:
                _kill_group(slot.process)
                self._settle(manifest, task, lambda: self._attempts.timed_out(
                    task, manifest.timeout, f"its worker {slot.name} (pid {slot.process.pid})", start))
                unstored = batch[durable:index] + batch[index + 1:]
                self._replace(slot, requeue=unstored + slot.unstarted(int(slot.progress[0])))

    def _take_back_queued(self) -> None:
        """Queue again the batches sent ahead to a worker whose call has run `_STUCK` seconds, if another idles."""
        if self._pending or not any(slot.started and not slot.batches for slot in self.slots):
            return
        now = time.time()
        for slot in self.slots:
            current = int(slot.progress[0])
            if not any(seq > current for seq in slot.batches) or not slot.stuck(now):
                continue
            slot.progress[4] = max(slot.batches)
            taken = int(slot.progress[0])  # it may have started one meanwhile: that one stays its own
            behind = [slot.batches.pop(seq) for seq in sorted(slot.batches) if seq > taken]
            with self._lock:
                self._pending.put_back([(m, t.call_id, t.attempt) for batch in behind for m, t in batch])

    def _worker_died(self, slot: _Slot) -> None:
        _kill_group(slot.process)
        if not slot.started:
            self._worker_failed_to_start(slot)
            return
        running = slot.running() if slot.batches else None
        if running is None:
            self._replace(slot, requeue=slot.unstarted(0))
            return
        after = int(slot.progress[0])
        batch, index, start, durable = running
        if index < durable or slot.process.exitcode == OUTAGE_EXIT:
            # It died between calls (after the running call's status was stored), or gave up on an
            # unreachable store: nobody is to blame, the rest of the batch runs again.
            self._replace(slot, requeue=batch[durable:] + slot.unstarted(after))
            return
        manifest, task = batch[index]
        where = f"worker {slot.name} (pid {slot.process.pid}) on {os.uname().nodename}"
        retry = self._settle(manifest, task, lambda: self._attempts.died(
            task, manifest.worker_retries, where, how_it_ended(slot.process.exitcode), start))
        again = [(manifest, retry)] if retry else []
        self._replace(slot, requeue=batch[durable:index] + again + batch[index + 1:] + slot.unstarted(after))

    def _settle(self, manifest: Manifest, task: Task, decide: Any) -> Task | None:
        """Run an `Attempts` decision; if the store cannot take its record, fail the call's future directly."""
        try:
            return decide()
        except StorageError as e:
            log.warning("burstmap: could not record the outcome of call %s/%d: %s", task.job_id, task.call_id, e)
            self._board.fail(manifest.job_id, [task.call_id], e)
            return None

    def _worker_failed_to_start(self, slot: _Slot) -> None:
        """A worker died before it could take work (none was sent to it): start another, but not forever.

        One killed by a signal is simply replaced; one that exits by itself is replaced after a pause
        that doubles each time, and every few such failures in a row fail the pending calls with its error.
        """
        if (slot.process.exitcode or 0) < 0:
            self._replace(slot, requeue=[])
            return
        self._startup_failures += 1
        first, longest = _STARTUP_PAUSE
        pause = min(longest, first * 2 ** (self._startup_failures - 1))
        if self._startup_failures % _STARTUP_TRIES == 0:
            self._fail_pending(WorkerDiedError(
                f"worker processes exit while starting (exit code {slot.process.exitcode}): "
                f"{slot.process.startup_error() or 'they printed no error'}"))
        self._replace(slot, requeue=[], pause=pause)

    def _fail_pending(self, error: BurstmapError) -> None:
        with self._lock:
            held = self._pending.drain()
        for manifest, call_id, attempt in held:
            (task,) = Batch.of(manifest, [call_id], {call_id: attempt}).tasks
            self._settle(manifest, task, lambda: self._attempts.failed([task], error, CallState.DIED))

    def _replace(self, slot: _Slot, requeue: list[tuple[Manifest, Task]], pause: float = 0.0) -> None:
        slot.process.close()
        with self._lock:
            self._pending.put_back([(m, t.call_id, t.attempt) for m, t in requeue])
        if pause:
            self._respawn[slot.index] = time.monotonic() + pause
        else:
            self.slots[slot.index] = self._spawn(slot.index)


def _broken(error: BaseException) -> BurstmapError:
    return BurstmapError(f"the local backend's dispatcher failed ({type(error).__name__}: {error}); "
                         "the calls it held were not run")


def _kill_group(process: Any) -> None:
    """Kill a worker and every process its calls started (it leads its own process group)."""
    if process.pid is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.kill()
    process.join()


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _worker_setup(storage: Storage, key: bytes, worker: str, parent: int) -> Callable[[Connection, Any], None]:
    """Set up a worker process (its own process group, dies with the client); return its serving loop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setpgrp()
    _die_with_parent(parent)
    return functools.partial(_serve, Handler(storage, key, worker, group_window=_GROUP_WINDOW), key)


def _serve(handler: Handler, key: bytes, conn: Connection, progress: Any) -> None:
    """A worker process: run batches from the pipe until it closes."""

    def on_start(index: int) -> None:
        progress[2] = time.time()
        progress[1] = index

    def on_durable(count: int) -> None:
        progress[3] = count

    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        seq, batch = int.from_bytes(message[:8], "big"), Batch.decode(key, message[8:])
        began = progress[2] = time.time()
        progress[3], progress[1], progress[0] = 0, 0, seq
        if seq <= progress[4]:
            continue  # withdrawn while queued here: another worker runs it
        try:
            refusal = mismatch(batch.versions)
            if refusal:
                Attempts(handler.storage, key, handler.worker).rejected(list(batch.tasks), refusal)
            else:
                handler.run(batch.tasks, on_start, on_durable)
        except StorageError:
            os._exit(OUTAGE_EXIT)
        try:
            conn.send_bytes(b"%d %.6f" % (seq, time.time() - began))
        except OSError:
            return
