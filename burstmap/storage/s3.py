"""A store in an S3 bucket through boto3: AWS, MinIO, Ceph or any S3-compatible endpoint."""

from __future__ import annotations

import io
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)

from ..errors import KeyNotFoundError, StorageError
from .base import Storage, permanent

__all__ = ["S3Storage"]

MiB = 1024 * 1024
_DELETE_BATCH = 1000  # the most keys one DeleteObjects request accepts
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
#: Client errors that a wait may cure: a timeout, a conflicting operation in progress, throttling.
_PASSING_4XX = {408, 409, 429}
#: Local configuration errors that no wait can cure.
_LASTING = (NoRegionError, PartialCredentialsError, ParamValidationError)
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "ExpiredToken",
    "AccessDenied",
    "403",
}


class S3Storage(Storage):
    """Keys are object keys in ``bucket``; one boto3 client per process, made on first use.

    Credentials not given here come from boto3's usual chain (environment, profile, role).
    Objects from ``multipart_threshold`` up go in parallel parts of ``multipart_chunksize``:
    below ~100 MB (AWS's own guidance) one PUT is cheaper, and measured faster on a local server.
    A failed request is tried ``retries`` more times by botocore (standard mode: throttling and
    server errors too, after a random exponential backoff: with 5 retries up to 31 s in all).
    The secret key is kept for reconnecting but never shown in a repr or an error.
    """

    name = "s3"

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        max_pool_connections: int = 32,
        multipart_threshold: int = 128 * MiB,
        multipart_chunksize: int = 16 * MiB,
        retries: int = 5,
    ) -> None:
        if not bucket:
            raise StorageError("S3 store needs a bucket name")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.aws_access_key_id = aws_access_key_id
        self._secret = aws_secret_access_key
        self.max_pool_connections = max_pool_connections
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.retries = retries
        self._lock = threading.Lock()
        self._client_obj: Any = None
        self._client_pid = 0

    @property
    def client(self) -> Any:
        """The boto3 S3 client of this process, created once and shared by its threads."""
        if self._client_obj is None or self._client_pid != os.getpid():
            with self._lock:
                if self._client_obj is None or self._client_pid != os.getpid():
                    self._client_obj = self._connect()
                    self._client_pid = os.getpid()
        return self._client_obj

    def _connect(self) -> Any:
        session = boto3.session.Session(
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self._secret,
            region_name=self.region,
        )
        config = Config(
            max_pool_connections=self.max_pool_connections,
            retries={"max_attempts": self.retries + 1, "mode": "standard"},
            connect_timeout=10,
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)

    @property
    def _transfer(self) -> TransferConfig:
        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=min(10, self.max_pool_connections),
        )

    def _where(self) -> str:
        endpoint = self.endpoint_url or (self._client_obj.meta.endpoint_url if self._client_obj else "AWS")
        return f"bucket {self.bucket!r} at {endpoint}"

    @contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """Turn botocore's exceptions into burstmap's one-line errors, marking those no wait can cure."""
        try:
            yield
        except ClientError as e:
            raise self._refused(e, key) from None
        except EndpointConnectionError:
            raise StorageError(f"S3 {self._where()}: endpoint is unreachable") from None
        except NoCredentialsError:
            raise permanent(f"S3 {self._where()}: no credentials found") from None
        except _LASTING as e:
            raise permanent(f"S3 {self._where()} cannot be used: {' '.join(str(e).split())}") from None
        except BotoCoreError as e:
            raise StorageError(f"S3 {self._where()} failed: {type(e).__name__}") from None
        except Boto3Error as e:
            if isinstance(e.__context__, ClientError):
                raise self._refused(e.__context__, key) from None
            raise StorageError(f"S3 {self._where()} failed: {type(e).__name__}") from None

    def _refused(self, error: ClientError, key: str | None) -> StorageError:
        """The error for a request S3 answered with an error code; a 4xx other than a throttle is permanent."""
        code = str(error.response.get("Error", {}).get("Code", ""))
        if key is not None and code in _MISSING_KEY:
            return KeyNotFoundError(f"no key {key!r} in S3 {self._where()}")
        if code in {"NoSuchBucket", "404"}:
            return permanent(f"S3 {self._where()} does not exist")
        if code in _BAD_CREDENTIALS:
            who = self.aws_access_key_id or "from the environment"
            return permanent(
                f"S3 {self._where()} refused access key {who} ({code}): wrong credentials or no permission"
            )
        message = f"S3 {self._where()} failed: {code or error}"
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return permanent(message) if 400 <= status < 500 and status not in _PASSING_4XX else StorageError(message)

    def check(self) -> None:
        with self._errors():
            self.client.head_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        with self._errors(key):
            if len(data) >= self.multipart_threshold:
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, key, Config=self._transfer)
            else:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        with self._errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            self.size(key)
            return b""
        with self._errors(key):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") != "InvalidRange":
                    raise
                self.size(key)
                return b""
            return body["Body"].read()

    def size(self, key: str) -> int:
        with self._errors(key):
            return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]

    def list(self, prefix: str) -> Iterator[str]:
        with self._errors():
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", ()):
                    yield obj["Key"]

    def delete(self, keys: Iterable[str]) -> None:
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == _DELETE_BATCH:
                self._delete_batch(batch)
                batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, keys: list[str]) -> None:
        with self._errors():
            objects = [{"Key": key} for key in keys]
            reply = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        errors = reply.get("Errors", [])
        if errors:
            first = errors[0]
            raise StorageError(
                f"S3 {self._where()} did not delete {len(errors)} keys, "
                f"e.g. {first.get('Key')!r}: {first.get('Code')}"
            )

    def upload(self, path: str | os.PathLike, key: str) -> None:
        with self._errors(key):
            self.client.upload_file(os.fspath(path), self.bucket, key, Config=self._transfer)

    def download(self, key: str, path: str | os.PathLike) -> None:
        with self._errors(key):
            self.client.download_file(self.bucket, key, os.fspath(path), Config=self._transfer)

    open_write = Storage.spooled_write

    def open_read(self, key: str) -> BinaryIO:
        """Download into a temporary file (in parallel ranged parts) and return it at its start: little memory."""
        f = tempfile.TemporaryFile(prefix="burstmap-")
        try:
            with self._errors(key):
                self.client.download_fileobj(self.bucket, key, f, Config=self._transfer)
        except BaseException:
            f.close()
            raise
        f.seek(0)
        return f

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_client_obj"] = None
        state["_client_pid"] = 0
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"
