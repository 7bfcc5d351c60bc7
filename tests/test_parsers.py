"""Every parser of bytes from a store or queue either parses or raises its module's own error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from burstmap.errors import PayloadRejectedError
from burstmap.job import GROUP_MAGIC, RECORD_MAGIC, CallState, Manifest, Record, RecordError, decode_records, encode_records
from burstmap.queues.base import decode_batch, encode_batch

KEY = b"k" * 32
MANIFEST = Manifest("job-1", "pre", "f", (0, 10, 20, 30), 1.0, "host")


@given(st.binary())
def test_any_bytes_as_a_status_object_or_manifest(data):
    for parse, blob in ((decode_records, data), (decode_records, GROUP_MAGIC + data),
                        (Record.decode, RECORD_MAGIC + data), (Manifest.decode, data)):
        try:
            parse(blob)
        except RecordError:
            pass


@given(st.binary())
def test_any_bytes_as_a_queue_message_are_refused(data):
    with pytest.raises(PayloadRejectedError):
        decode_batch(KEY, data)


@given(st.dictionaries(st.text(max_size=8), st.recursive(st.integers() | st.text(max_size=8) | st.none(),
                                                          lambda inner: st.lists(inner, max_size=4), max_leaves=8)))
def test_any_json_behind_any_signature_is_refused(fields):
    with pytest.raises(PayloadRejectedError):
        decode_batch(KEY, b"00" * 32 + b"." + json.dumps(fields).encode())


def test_queue_message_round_trip_and_forgeries():
    blob = encode_batch(KEY, MANIFEST, [1, 2])
    batch = decode_batch(KEY, blob)
    assert [(t.call_id, t.start, t.end) for t in batch.tasks] == [(1, 10, 20), (2, 20, 30)]
    with pytest.raises(PayloadRejectedError):
        decode_batch(b"another key", blob)
    mac, _, body = blob.partition(b".")
    with pytest.raises(PayloadRejectedError):
        decode_batch(KEY, mac + b"." + body.replace(b'"pre"', b'"evil"'))


def test_record_groups_round_trip_and_truncation():
    records = [Record(i, CallState.OK, output=bytes([i]) * i) for i in range(3)]
    blob = encode_records(records)
    assert decode_records(blob) == records
    with pytest.raises(RecordError, match="truncated"):
        decode_records(blob[:-1])
    assert decode_records(records[0].encode()) == records[:1]
