"""Every parser of bytes from a store or queue either parses or raises its module's own error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from burstmap.errors import PayloadRejectedError
from burstmap.job import (GROUP_MAGIC, RECORD_MAGIC, Batch, CallState, Manifest, Record, RecordError, decode_records,
                          encode_records)

KEY = b"k" * 32


@given(st.binary())
def test_any_bytes_as_a_status_object_or_manifest(data):
    for parse, blob in ((decode_records, data), (decode_records, GROUP_MAGIC + data),
                        (Record.decode, RECORD_MAGIC + data), (Manifest.decode, data)):
        try:
            parse(blob, KEY, "job-1")
        except (RecordError, PayloadRejectedError):
            pass


@given(st.binary())
def test_any_bytes_as_a_queue_message_are_refused(data):
    with pytest.raises(PayloadRejectedError):
        Batch.decode(KEY, data)


@given(st.dictionaries(st.text(max_size=8), st.recursive(st.integers() | st.text(max_size=8) | st.none(),
                                                          lambda inner: st.lists(inner, max_size=4), max_leaves=8)))
def test_any_json_behind_any_signature_is_refused(fields):
    with pytest.raises(PayloadRejectedError):
        Batch.decode(KEY, b"00" * 32 + b"." + json.dumps(fields).encode())


def test_record_groups_round_trip_and_truncation():
    records = [Record(i, CallState.OK, output=bytes([i]) * i) for i in range(3)]
    blob = encode_records(records, KEY, "job-1")
    assert decode_records(blob, KEY, "job-1") == records
    with pytest.raises(RecordError, match="failed HMAC verification"):
        decode_records(blob[:-1], KEY, "job-1")
    assert decode_records(records[0].encode(KEY, "job-1"), KEY, "job-1") == records[:1]
