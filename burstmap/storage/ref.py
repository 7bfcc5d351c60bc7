"""A reference to a store that holds no credential, for stores named inside stored inputs.

A `DataPiece` of an object outside the executor's own store must say where the object is, and it
travels inside the job's data object, which others may read. So it carries this reference (a URL
without password, plus an S3 endpoint and region), and the worker reopens the store with its own
credentials: its own store when the reference names it, a copy of its own S3 store (endpoint and
credentials) for another bucket there, else the URL with boto3's or Redis' defaults.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..redact import redact_url
from .base import Storage
from .patient import Patient
from .url import open_store

__all__ = ["StoreRef"]


@dataclass(frozen=True)
class StoreRef:
    """Where a store is: ``file:///dir/``, ``s3://bucket`` (with endpoint and region) or ``redis://host:port/db``."""

    url: str
    endpoint_url: str | None = None
    region: str | None = None

    @classmethod
    def of(cls, store: Storage) -> StoreRef | None:
        """The reference of a built-in store; ``None`` for another kind, which cannot be reopened from one."""
        store = store.store if isinstance(store, Patient) else store
        if store.name == "local":
            return cls(f"file://{store.path}/")
        if store.name == "s3":
            return cls(f"s3://{store.bucket}", store.endpoint_url, store.region)
        if store.name == "redis":
            return cls(redact_url(store.url))
        return None

    def open(self, own: Storage) -> Storage:
        """The store this names, reached with the credentials of ``own`` (the worker's store) where it can."""
        if StoreRef.of(own) == self:
            return own
        plain: Any = own.store if isinstance(own, Patient) else own
        if self.url.startswith("s3://") and plain.name == "s3" and plain.endpoint_url == self.endpoint_url:
            other = copy.copy(plain)
            other.bucket = self.url[len("s3://"):]
            return other
        options = {"endpoint_url": self.endpoint_url, "region": self.region} if self.url.startswith("s3://") else {}
        return open_store(self.url, **options)[0]
