"""Object stores behind one `Storage` interface."""

from .base import Storage
from .url import open_store

__all__ = ["Storage", "open_store"]
