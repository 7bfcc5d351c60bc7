"""Status records and manifests: they round-trip, and anything else raises `RecordError`."""

from __future__ import annotations


from burstmap.job import CallState, Layout, Manifest, Record


def test_record_round_trip():
    record = Record(7, CallState.ERROR, attempt=2, start=1.0, end=2.5, host="h", worker="w", pid=3,
                    error={"type": "ValueError", "message": "m", "traceback": "t"}, log=b"printed\n",
                    output=b"\x00\x01result")
    back = Record.decode(record.encode())
    assert back == record and back.duration == 1.5


def test_manifest_round_trip_and_ranges():
    manifest = Manifest("job-1", "pre", "mod.f", (0, 10, 25), 1.0, "host", timeout=5.0)
    back = Manifest.decode(manifest.encode())
    assert back == manifest and back.n_calls == 2 and back.data_range(1) == (10, 25)


def test_layout_groups_statuses_by_thousand():
    layout = Layout("pre", "job")
    assert layout.status(1234) == "pre/jobs/job/status/1/01234"
    assert layout.status(1234).startswith(layout.status_chunk(1))
