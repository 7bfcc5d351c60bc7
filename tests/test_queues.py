"""The suite every `Queue` passes, against real servers: a redis-server and an SQS API on a moto server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import boto3
import pytest

from burstmap.queues import Queue, QueueError, open_queue

LEASE = 1.0  # SQS's shortest visibility timeout


@pytest.fixture(params=["redis", "sqs"])
def queue(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Queue]:
    """A new, empty queue of each kind, with a one-second lease."""
    name = f"q-{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        server = request.getfixturevalue("redis_server").rsplit("/", 1)[0]
        yield open_queue(f"{server}/3?stream={name}&lease={LEASE}")
        return
    endpoint = request.getfixturevalue("moto_server")
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(variable, "testing")
    boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1").create_queue(QueueName=name)
    yield open_queue(f"sqs://{name}?endpoint_url={endpoint}&region=us-east-1&lease={LEASE}")


def take(queue: Queue, count: int, within: float = 10.0) -> list:
    """Take messages until ``count`` arrived or ``within`` seconds passed, polling as a worker does."""
    taken: list = []
    deadline = time.monotonic() + within
    while len(taken) < count and time.monotonic() < deadline:
        taken += queue.get(count - len(taken), LEASE / 2)
    return taken


def test_messages_arrive_whole_and_once_each(queue):
    bodies = [f"message {i}".encode() for i in range(12)]
    queue.check()
    queue.put(bodies)
    taken = take(queue, len(bodies))
    assert sorted(m.body for m in taken) == sorted(bodies)
    for message in taken:
        queue.ack(message)
    assert queue.get(1, 2 * LEASE) == []


def test_a_message_not_acknowledged_comes_back_after_its_lease(queue):
    queue.put([b"held by a worker that died"])
    (first,) = take(queue, 1)
    (again,) = take(queue, 1)
    assert again.body == first.body
    queue.ack(again)
    assert queue.get(1, 2 * LEASE) == []


def test_extending_an_acknowledged_or_empty_set_is_harmless(queue):
    queue.extend([])
    queue.put([b"one"])
    (message,) = take(queue, 1)
    queue.ack(message)
    queue.extend([message])
    assert queue.get(1, 2 * LEASE) == []


def test_an_unreachable_queue_is_one_line():
    with pytest.raises(QueueError) as info:
        open_queue("redis://127.0.0.1:1/0?stream=nowhere").check()
    assert "\n" not in str(info.value)
