"""The `Backend` seam: something that transports batches of calls to the one worker handler."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import ClassVar, Protocol

from ..job import Manifest
from ..storage.base import Storage

__all__ = ["Backend", "CallBoard", "NoBoard", "fail_held"]


class CallBoard(Protocol):
    """The client's side of the calls a backend carries: which are still wanted, and failing those it cannot finish."""

    def take(self, job_id: str, call_ids: Sequence[int]) -> Sequence[int]:
        """Mark calls as taken by a worker (their futures leave ``PENDING``); return those not cancelled."""

    def fail(self, job_id: str, call_ids: Sequence[int], error: BaseException) -> None:
        """Finish calls with ``error`` when their outcome cannot reach the store (a loop that cannot go on)."""


class NoBoard:
    """The board of a backend started without an executor (tools, tests): every call is wanted, failures are raised."""

    def take(self, job_id: str, call_ids: Sequence[int]) -> Sequence[int]:
        return call_ids

    def fail(self, job_id: str, call_ids: Sequence[int], error: BaseException) -> None:
        raise error


def fail_held(board: CallBoard, held: Iterable[tuple[Manifest, int]], error: BaseException) -> None:
    """Fail the calls a backend's loop held when it could not go on: one board call per job."""
    by_job: dict[str, list[int]] = {}
    for manifest, call_id in held:
        by_job.setdefault(manifest.job_id, []).append(call_id)
    for job_id, call_ids in by_job.items():
        board.fail(job_id, call_ids, error)


class Backend(ABC):
    """Transports calls to workers. Outcomes are never returned: they land in the store as status records.

    A backend only reports what it saw happen to a delivery (its worker died while call k ran,
    call k passed its deadline, the payload was refused) to `burstmap.attempts.Attempts`, which
    decides between a re-run and a final record. Right before handing calls to a worker it asks
    the board which are still wanted (`CallBoard.take`), so cancelled calls never run.
    """

    name: ClassVar[str]
    #: Whether workers can import the client's own modules (same files, same ``sys.path``), so a
    #: function whose module holds unpicklable state may travel by reference.
    imports_client_modules: ClassVar[bool] = False

    def start(self, storage: Storage, key: bytes, board: CallBoard | None = None) -> None:
        """Bind the backend to the store its workers use, the key that signs payloads and the client's board."""
        self.storage = storage
        self._key = key
        self.board: CallBoard = board or NoBoard()

    @abstractmethod
    def run(self, manifest: Manifest, call_ids: Sequence[int]) -> None:
        """Start running ``call_ids`` of the job; return without waiting for them."""

    def shutdown(self, wait: bool = True) -> None:
        """Stop workers this backend started; it may be started again later."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
