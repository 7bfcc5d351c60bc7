"""Every parser of bytes from a store or queue either parses or raises its module's own error."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import given, strategies as st

from burstmap.errors import PayloadRejectedError
from burstmap.job import (GROUP_MAGIC, RECORD_MAGIC, Batch, CallState, Manifest, Record, RecordError, decode_group,
                          decode_records, encode_group, encode_records)

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


def test_a_group_of_quick_calls_keeps_their_plain_results_as_one_list():
    values = [None, True, 2, 3.5, "four", b"five"]
    header = Record(0, CallState.OK, host="h", worker="w", pid=1).header()
    table = {name: [value] * len(values) for name, value in header.items()
             if name not in ("start", "end", "setup", "compute")}
    table["call_id"] = list(range(10, 16))
    ns = [1_700_000_000_000_000_000 + 1000 * i for i in range(len(values))]
    blob = encode_group(table, (ns, [t + 10 for t in ns], [t + 30 for t in ns], [t + 30 for t in ns]), [], values,
                        KEY, "job-1", values=True)
    view = decode_group(blob, KEY, "job-1").view
    assert view.values == values and view.call_ids == range(10, 16)
    records = decode_records(blob, KEY, "job-1")
    assert [pickle.loads(r.output) for r in records] == values and [r.call_id for r in records] == list(range(10, 16))
    assert records[1].setup == pytest.approx(10e-9) and records[1].compute == pytest.approx(20e-9)
    assert records[1].start == pytest.approx(1_700_000_000.000001) and not records[1].log


def test_a_group_in_another_versions_format_is_named_as_such():
    with pytest.raises(RecordError, match=r"another burstmap version's format \(BMG4\)"):
        decode_records(b"BMG4\n" + bytes(40), KEY, "job-1")
