"""A piece of a stored object that one call reads: a whole object or a byte range of it.

The client only plans pieces (it lists keys and reads sizes); the worker reads the bytes, lazily,
in ranged GETs of ``block_size``. With ``newline_aligned`` a piece owns exactly the lines that *start*
inside its byte range: it skips the partial line it begins in and reads past its end to finish its
last line, so text records are never split and no line is read twice across the pieces of an object.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import KeyNotFoundError, StorageError
from .storage.base import Storage
from .storage.ref import StoreRef

__all__ = ["DataPiece", "BLOCK_SIZE"]

#: Bytes per ranged GET when a piece is read as a stream.
BLOCK_SIZE = 8 * 1024 * 1024
_SEARCH_BLOCK = 64 * 1024  # the first read when looking for a line end; it doubles up to BLOCK_SIZE


@dataclass
class DataPiece:
    """Bytes ``[start, end)`` of the object ``key`` (``size`` bytes long) that one call reads.

    ``storage`` is the store holding the object; ``None`` means the store of the worker running the
    call (the executor's own store). A piece is pickled with a `StoreRef` in place of its store, so
    no credential travels inside the call's input: the worker reopens the store with its own
    (`bind`). ``url`` names the object for people and never carries a password.
    """

    url: str
    key: str
    start: int
    end: int
    size: int
    newline_aligned: bool = True
    storage: Storage | None = field(default=None, repr=False, compare=False)
    _bounds: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)
    _ref: StoreRef | None = field(default=None, init=False, repr=False, compare=False)

    def bind(self, storage: Storage) -> DataPiece:
        """Give an unpickled piece its store, opened with the credentials of ``storage`` (the worker's)."""
        if self.storage is None:
            self.storage = self._ref.open(storage) if self._ref else storage
        return self

    def __getstate__(self) -> dict:
        ref = StoreRef.of(self.storage) if self.storage is not None else None
        state = self.__dict__.copy()
        if ref is not None:
            state.update(storage=None, _ref=ref)
        return state

    def bounds(self) -> tuple[int, int]:
        """The byte range actually read: ``[start, end)``, moved to line ends when newline-aligned."""
        if self._bounds is None:
            lo, hi = self.start, self.end
            if self.newline_aligned:
                lo = 0 if lo == 0 else self._after_newline(lo - 1)
                hi = self.size if hi >= self.size else self._after_newline(hi - 1)
            self._bounds = (lo, max(lo, hi))
        return self._bounds

    def open(self, block_size: int = BLOCK_SIZE) -> io.BufferedReader:
        """A readable binary stream over the piece; it fetches ``block_size`` bytes per request."""
        lo, hi = self.bounds()
        return io.BufferedReader(_RangeReader(self, lo, hi, block_size), buffer_size=block_size)

    def read(self) -> bytes:
        """All bytes of the piece, in one request."""
        lo, hi = self.bounds()
        return self._get(lo, hi)

    def blocks(self, block_size: int = BLOCK_SIZE) -> Iterator[bytes]:
        """Yield the piece's bytes in blocks of ``block_size``, one request each, without copying them again."""
        lo, hi = self.bounds()
        for start in range(lo, hi, block_size):
            yield self._get(start, min(start + block_size, hi))

    def lines(self, encoding: str = "utf-8", errors: str = "strict") -> Iterator[str]:
        """Yield the piece's text lines without their line endings (the encoding must be ASCII-compatible)."""
        with io.TextIOWrapper(self.open(), encoding=encoding, errors=errors) as text:
            for line in text:
                yield line[:-1] if line.endswith("\n") else line

    def __len__(self) -> int:
        lo, hi = self.bounds()
        return hi - lo

    def _after_newline(self, pos: int) -> int:
        """The offset just past the first ``\\n`` at or after ``pos``, or the object's size."""
        block = _SEARCH_BLOCK
        while pos < self.size:
            data = self._get(pos, min(pos + block, self.size))
            found = data.find(b"\n")
            if found >= 0:
                return pos + found + 1
            pos += len(data)
            block = min(2 * block, BLOCK_SIZE)
        return self.size

    def _get(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object; a vanished or shrunk object is an error naming it."""
        if self.storage is None:
            raise StorageError(f"{self.url}: this piece has no store (it is bound when a burstmap worker runs it)")
        try:
            data = self.storage.get_range(self.key, start, end)
        except KeyNotFoundError as e:
            raise KeyNotFoundError(f"data object {self.url} vanished after the job was planned ({e})") from None
        if len(data) != end - start:
            raise StorageError(f"data object {self.url} is shorter than the {self.size} bytes it had "
                               f"when the job was planned (it was changed during the job)")
        return data


class _RangeReader(io.RawIOBase):
    """The raw stream under `DataPiece.open`: one ranged GET per ``readinto``, at most ``block_size``."""

    def __init__(self, piece: DataPiece, lo: int, hi: int, block_size: int) -> None:
        super().__init__()
        self._piece = piece
        self._lo, self._hi = lo, hi
        self._pos = lo
        self._block = block_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos - self._lo

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self._lo, io.SEEK_CUR: self._pos, io.SEEK_END: self._hi}[whence]
        self._pos = min(max(self._lo, base + offset), self._hi)
        return self.tell()

    def readinto(self, buffer: bytearray | memoryview) -> int:
        n = min(len(buffer), self._block, self._hi - self._pos)
        if n <= 0:
            return 0
        data = self._piece._get(self._pos, self._pos + n)
        memoryview(buffer).cast("B")[:n] = data
        self._pos += n
        return n

    def readall(self) -> bytes:
        data = self._piece._get(self._pos, self._hi)
        self._pos = self._hi
        return data
