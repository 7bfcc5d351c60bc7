"""Object stores behind one `Storage` interface."""

from .base import Storage
from .patient import Patient
from .url import open_store

__all__ = ["Patient", "Storage", "open_store"]
