"""A queue on Amazon SQS (or any SQS-compatible endpoint) through boto3.

A received message is invisible for ``lease`` seconds (its visibility timeout); the worker holding
it extends that while it runs the calls and deletes the message when they are done.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from .base import Message, Queue, QueueError

__all__ = ["SQSQueue"]

_SEND_BATCH = 10  # the most messages one SendMessageBatch / ReceiveMessage handles


class SQSQueue(Queue):
    """Messages are SQS messages of the existing queue named ``queue``."""

    name = "sqs"

    def __init__(self, queue: str, endpoint_url: str | None = None, region: str | None = None,
                 lease: float = 30.0) -> None:
        if not queue:
            raise ValueError("an SQS queue URL must name the queue: sqs://queue-name")
        if lease < 1:
            raise ValueError(f"lease must be at least 1 second, not {lease!r}")
        self.queue, self.endpoint_url, self.region, self.lease = queue, endpoint_url, region, lease
        self._client: Any = None
        self._url: str | None = None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        where = f"queue SQS {self.queue!r}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        try:
            yield
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            raise QueueError(f"{where} refused: {code or e}") from None
        except BotoCoreError as e:
            raise QueueError(f"{where} is not reachable ({type(e).__name__})") from None

    @property
    def url(self) -> str:
        """The queue's URL, looked up once."""
        if self._url is None:
            self._client = boto3.session.Session(region_name=self.region).client("sqs", endpoint_url=self.endpoint_url)
            with self._errors():
                self._url = self._client.get_queue_url(QueueName=self.queue)["QueueUrl"]
        return self._url

    @property
    def _sqs(self) -> Any:
        """The boto3 client, made (and the queue's URL looked up) on first use."""
        self.url
        return self._client

    def check(self) -> None:
        self.url

    def put(self, bodies: Sequence[bytes]) -> None:
        with self._errors():
            for i in range(0, len(bodies), _SEND_BATCH):
                entries = [{"Id": str(n), "MessageBody": body.decode("ascii")}
                           for n, body in enumerate(bodies[i:i + _SEND_BATCH])]
                failed = self._sqs.send_message_batch(QueueUrl=self.url, Entries=entries).get("Failed")
                if failed:
                    raise QueueError(f"queue SQS {self.queue!r} refused {len(failed)} messages: {failed[0].get('Code')}")

    def get(self, max_messages: int, wait: float) -> list[Message]:
        with self._errors():
            reply = self._sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=max(1, min(max_messages, _SEND_BATCH)),
                WaitTimeSeconds=int(min(20, wait)), VisibilityTimeout=int(self.lease),
            )
        return [Message(m["ReceiptHandle"], m["Body"].encode("ascii", "replace")) for m in reply.get("Messages", ())]

    def ack(self, message: Message) -> None:
        with self._errors():
            self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message.handle)

    def extend(self, messages: Sequence[Message]) -> None:
        with self._errors():
            for i in range(0, len(messages), _SEND_BATCH):
                entries = [{"Id": str(n), "ReceiptHandle": m.handle, "VisibilityTimeout": int(self.lease)}
                           for n, m in enumerate(messages[i:i + _SEND_BATCH])]
                self._sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)

    def __repr__(self) -> str:
        return f"SQSQueue(queue={self.queue!r}, endpoint_url={self.endpoint_url!r})"
