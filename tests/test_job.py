"""Status records, manifests and batches: they round-trip signed, and a change to any byte is refused."""

from __future__ import annotations

import json

import pytest

from burstmap.errors import PayloadRejectedError
from burstmap.job import Batch, CallState, Layout, Manifest, Record, RecordError, decode_records, new_job_id

KEY = b"k" * 32


def test_record_round_trip():
    record = Record(7, CallState.ERROR, attempt=2, start=1.0, end=2.5, host="h", worker="w", pid=3,
                    error={"type": "ValueError", "message": "m", "traceback": "t"}, log=b"printed\n",
                    output=b"\x00\x01result")
    back = Record.decode(record.encode(KEY, "job-1"), KEY, "job-1")
    assert back == record and back.duration == 1.5


def test_a_status_header_flipped_from_error_to_ok_is_refused():
    blob = Record(3, CallState.ERROR, error={"type": "ValueError", "message": "m", "traceback": ""}).encode(KEY, "j")
    forged = blob.replace(b'"state": "error"', b'"state": "ok"   ')
    assert forged != blob
    with pytest.raises(RecordError, match="failed HMAC verification"):
        decode_records(forged, KEY, "j")
    with pytest.raises(RecordError):
        decode_records(blob, KEY, "another-job")


def test_a_refusal_signed_with_another_key_names_the_worker_and_the_likely_cause():
    blob = Record(4, CallState.REJECTED, worker="host:77/0").encode(b"the worker's own key", "j")
    with pytest.raises(PayloadRejectedError, match=r"worker 'host:77/0' refused it.*BURSTMAP_SECRET_KEY"):
        decode_records(blob, KEY, "j")


def test_manifest_round_trip_and_ranges():
    manifest = Manifest("job-1", "pre", "mod.f", ((0, 0), (2, 10), (3, 25)), 1.0, "host", timeout=5.0)
    back = Manifest.decode(manifest.encode(KEY), KEY, "job-1")
    assert back == manifest and back.n_calls == 3
    assert [back.data_range(i) for i in range(3)] == [(0, 10), (0, 10), (10, 25)]


def test_a_manifest_edited_or_moved_to_another_job_is_refused():
    blob = Manifest("job-1", "pre", "mod.f", ((0, 0), (2, 25)), 1.0, "host").encode(KEY)
    for forged, job_id in ((blob.replace(b"[[0, 0], [2, 25]]", b"[[0, 0], [3, 25]]"), "job-1"),
                           (blob.replace(b'"job-1"', b'"job-2"'), "job-2"), (blob, "job-2")):
        with pytest.raises(RecordError, match="failed HMAC verification"):
            Manifest.decode(forged, KEY, job_id)


def test_batch_round_trip_and_forgeries():
    manifest = Manifest("job-1", "pre", "f", ((0, 0), (2, 20), (3, 30)), 1.0, "host", timeout=3.0, worker_retries=1)
    batch = Batch.of(manifest, [1, 2], {2: 3})
    back = Batch.decode(KEY, batch.encode(KEY))
    assert back == batch
    assert [(t.call_id, t.start, t.end, t.attempt) for t in back.tasks] == [(1, 0, 20, 1), (2, 20, 30, 3)]
    with pytest.raises(PayloadRejectedError):
        Batch.decode(b"another key", batch.encode(KEY))
    with pytest.raises(PayloadRejectedError):
        Batch.decode(KEY, batch.encode(KEY).replace(b'"pre"', b'"evil"'))
    assert Batch.peek(batch.encode(b"another key")).job_id == "job-1"


def test_a_batch_encodes_runs_of_calls_not_each_call():
    manifest = Manifest("job-1", "pre", "f", ((0, 0), (1000, 20), (1500, 30)), 1.0, "host")
    batch = Batch.of(manifest, [*range(0, 1200), 1300], {7: 2})
    body = json.loads(batch.encode(KEY).partition(b".")[2])
    assert body["calls"] == [[0, 7, 0, 20, 1], [7, 1, 0, 20, 2], [8, 992, 0, 20, 1], [1000, 200, 20, 30, 1],
                             [1300, 1, 20, 30, 1]]
    assert Batch.decode(KEY, batch.encode(KEY)) == batch
    assert [t.call_id for t in Batch.peek(batch.encode(KEY)).tasks] == [*range(0, 1200), 1300]


def test_job_ids_carry_96_random_bits():
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 24 and int(i, 16) >= 0 for i in ids)


def test_layout_groups_statuses_by_thousand_and_chunks_by_thousand_again():
    layout = Layout("pre", "0123abcd")
    assert layout.status(1234) == "pre/jobs/012/0123abcd/status/0/1/01234"
    assert layout.status(12_345_678) == "pre/jobs/012/0123abcd/status/12/345/12345678"
    assert layout.status(1234).startswith(layout.status_chunk(1))
    assert layout.out(12_345_678) == "pre/jobs/012/0123abcd/out/12/345/12345678"
    assert layout.manifest == "pre/manifests/012/0123abcd.json"
