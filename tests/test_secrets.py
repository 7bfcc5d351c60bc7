"""Planted secrets (an S3 secret key, a Redis password, the HMAC key) must show up nowhere a person or another reader looks."""

from __future__ import annotations

import logging
import uuid

import boto3
import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.errors import ConfigError

S3_SECRET = "planted-s3-secret-4f1d"
REDIS_PASSWORD = "planted-redis-password-9c2e"
HMAC_KEY = "planted-hmac-key-77ab"
PLANTED = (S3_SECRET, REDIS_PASSWORD, HMAC_KEY)


def assert_clean(text: str | bytes, what: str) -> None:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    for secret in PLANTED:
        assert secret not in text, f"{what} shows a planted secret"


def read_lines(piece):
    return list(piece.lines())


@pytest.fixture
def buckets(moto_server):
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key=S3_SECRET)
    names = [f"secrets-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for name in names:
        s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=names[1], Key="data/a.txt", Body=b"one\ntwo\n")
    return s3, names


def test_no_repr_message_log_or_stored_object_shows_a_secret(buckets, moto_server, caplog):
    s3, (own, other) = buckets
    storage = {"name": "s3", "bucket": own, "endpoint_url": moto_server, "region": "us-east-1",
               "aws_access_key_id": "testing", "aws_secret_access_key": S3_SECRET}
    caplog.set_level(logging.DEBUG, logger="burstmap")
    with burstmap.Executor(backend=LocalBackend(workers=1), storage=storage, secret_key=HMAC_KEY,
                           progress=False) as ex:
        futures = ex.map(read_lines, f"s3://{other}/data/")
        assert burstmap.get_all_results(futures) == [["one", "two"]]
        failed = ex.call_async(int, "not a number")
        with pytest.raises(ValueError) as raised:
            failed.result()
        for shown in (ex, ex.config, ex.storage, ex.backend, futures[0], futures[0].status, raised.value):
            assert_clean(repr(shown) + str(shown), f"{type(shown).__name__}'s repr")
    assert_clean(caplog.text, "the log")
    for key in (o["Key"] for o in s3.list_objects_v2(Bucket=own)["Contents"]):
        assert_clean(s3.get_object(Bucket=own, Key=key)["Body"].read(), f"stored object {key}")


def test_configs_and_their_errors_never_show_a_secret(monkeypatch):
    queue = f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0"
    config = burstmap.config.load_config(backend={"name": "standalone", "queue": queue},
                                         storage={"name": "s3", "bucket": "b", "aws_secret_access_key": S3_SECRET},
                                         secret_key=HMAC_KEY)
    assert_clean(repr(config) + str(config), "the config")
    with pytest.raises(ConfigError) as bad:
        burstmap.config.load_config(storage={"bucket": "b", "aws_secret_access_key": S3_SECRET})
    assert_clean(str(bad.value), "a ConfigError")
    with pytest.raises(ConfigError) as bad:
        burstmap.Executor(storage={"name": "s3", "aws_secret_access_key": S3_SECRET}, secret_key=HMAC_KEY)
    assert_clean(str(bad.value), "a ConfigError")
