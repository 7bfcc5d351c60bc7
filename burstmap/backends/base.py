"""The `Backend` seam: something that runs call ids of a job through the worker handler."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from ..job import Manifest
from ..storage.base import Storage

__all__ = ["Backend"]


class Backend(ABC):
    """Runs calls somewhere. Outcomes are never returned: they land in the store as status records.

    A backend re-runs calls whose worker died (up to the job's ``max_retries``) and records a
    ``died`` or ``timeout`` status itself when a call cannot finish.
    """

    name: ClassVar[str]

    def start(self, storage: Storage, key: bytes) -> None:
        """Bind the backend to the store its workers use and the key that signs payloads."""
        self.storage = storage
        self._key = key

    @abstractmethod
    def run(self, manifest: Manifest, call_ids: Sequence[int]) -> None:
        """Start running ``call_ids`` of the job; return without waiting for them."""

    def shutdown(self, wait: bool = True) -> None:
        """Stop workers this backend started; it may be started again later."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
