"""The ``burstmap`` console command, run in a subprocess against real jobs in a directory store."""

from __future__ import annotations

import csv
import io
import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from burstmap.job import Layout
from burstmap.storage.local import LocalStorage

from .real_jobs import FAILING, N_CALLS, PRINTING, SECRET, SLOW, new_executor, square, unstarted_job, wait_done

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def executor(store: Path) -> Iterator:
    ex = new_executor(store)
    yield ex
    ex.shutdown()


@pytest.fixture(scope="module")
def job(executor) -> str:
    """A finished job of ten calls: one failed, one printed, one slow."""
    return wait_done(executor.map(square, range(N_CALLS)))[0].job_id


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment where no user config, cache or key is read."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BURSTMAP_")}
    for name in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        (tmp_path / name).mkdir()
        clean[name] = str(tmp_path / name)
    return {**clean, "PYTHONPATH": str(ROOT), "BURSTMAP_SECRET_KEY": SECRET}


def cli(env: dict[str, str], store: Path | None, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m burstmap.cli [--store file://STORE] ARGS``."""
    head = ["--store", f"file://{store}"] if store else []
    return subprocess.run([sys.executable, "-m", "burstmap.cli", *head, *args], env=env, input=input,
                          capture_output=True, text=True, timeout=60)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_help_lists_every_command_and_a_bad_command_is_a_usage_error(env):
    proc = cli(env, None, "--help")
    assert proc.returncode == 0
    for command in ("clean", "config", "jobs", "logs", "plot", "results", "stats", "status"):
        assert f"  {command} " in proc.stdout
    assert cli(env, None, "no-such-command").returncode == 2
    assert cli(env, None, "status").returncode == 2


def test_jobs_lists_counts_from_the_configured_store(env, store, job):
    proc = cli({**env, "BURSTMAP_STORAGE_PATH": str(store)}, None, "jobs")
    assert proc.returncode == 0, proc.stderr
    row = next(line.split() for line in proc.stdout.splitlines() if line.startswith(job))
    assert row[1] == "tests.real_jobs.square"
    assert row[2:6] == [str(N_CALLS - 1), "1", "0", "0"]


def test_store_given_as_a_path(env, store, job):
    proc = subprocess.run([sys.executable, "-m", "burstmap.cli", "--store", str(store), "status", job], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"{N_CALLS} calls" in proc.stdout


def test_store_given_as_an_s3_url_keeps_the_configured_endpoint(env, tmp_path, moto_server):
    bucket = f"cli-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    config = tmp_path / "config.yaml"
    config.write_text(f"storage: {{name: s3, bucket: another, endpoint_url: '{moto_server}', region: us-east-1}}\n")
    proc = cli({**env, "BURSTMAP_CONFIG": str(config), "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing"}, None, "--store", f"s3://{bucket}", "jobs")
    assert proc.returncode == 0, proc.stderr
    assert "no jobs under prefix 'burstmap'" in proc.stderr


def test_jobs_under_another_prefix_finds_none(env, store, job):
    proc = cli(env, store, "--prefix", "elsewhere", "jobs")
    assert proc.returncode == 0
    assert job not in proc.stdout
    assert "no jobs under prefix 'elsewhere'" in proc.stderr


def test_status_counts_calls_by_state(env, store, job):
    proc = cli(env, store, "status", job)
    assert proc.returncode == 0, proc.stderr
    counts = dict(line.split() for line in proc.stdout.splitlines()[1:])
    assert counts == {"ok": str(N_CALLS - 1), "error": "1", "pending": "0"}


def test_status_follow_waits_for_a_running_job(env, store, executor):
    futures = executor.map(square, [0, 1, 2, 4])
    proc = cli(env, store, "status", futures[0].job_id, "--follow", "--interval", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert "4/4" in proc.stderr and "done=4" in proc.stderr
    counts = dict(line.split() for line in proc.stdout.splitlines()[1:])
    assert counts == {"ok": "4", "pending": "0"}
    assert all(f.done() for f in futures)


def test_results_prints_each_call_and_fails_when_a_call_failed(env, store, job):
    proc = cli(env, store, "results", job)
    assert assert_one_line_error(proc) == f"Error: 1 of {N_CALLS} calls failed"
    lines = proc.stdout.splitlines()
    assert len(lines) == N_CALLS
    assert lines[4] == "4\tok\t16"
    assert lines[FAILING] == f"{FAILING}\terror\tValueError: three is bad"


def test_results_out_writes_a_pickle_of_the_results(env, store, job, tmp_path):
    out = tmp_path / "results.pickle"
    assert cli(env, store, "results", job, "--out", str(out)).returncode == 1
    results = pickle.loads(out.read_bytes())
    assert [r for i, r in enumerate(results) if i != FAILING] == [x * x for x in range(N_CALLS) if x != FAILING]
    assert isinstance(results[FAILING], ValueError)


def test_results_with_another_secret_key_are_rejected(env, store, job):
    proc = cli({**env, "BURSTMAP_SECRET_KEY": "wrong-key"}, store, "results", job)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "failed HMAC verification" in proc.stderr and "another secret key" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_results_whose_records_another_key_signed_say_so(env, tmp_path):
    from burstmap.job import Manifest

    with new_executor(tmp_path) as ex:
        job_id = wait_done(ex.map(abs, range(5)))[0].job_id
    layout = Layout("burstmap", job_id)
    storage = LocalStorage(tmp_path)
    manifest = Manifest.decode(storage.get(layout.manifest), SECRET.encode(), job_id)
    storage.put(layout.manifest, manifest.encode(b"another-key"))  # as if workers had signed with SECRET
    proc = cli({**env, "BURSTMAP_SECRET_KEY": "another-key"}, tmp_path, "results", job_id)
    assert assert_one_line_error(proc) == ("Error: 5 of 5 calls could not be verified: wrong key? (their records "
                                           "fail HMAC verification: signed with another secret key, or altered)")


def test_logs_of_one_call_and_of_every_call(env, store, job):
    one = cli(env, store, "logs", job, str(PRINTING))
    assert one.returncode == 0
    assert one.stdout == f"hello from {PRINTING}\n"
    every = cli(env, store, "logs", job)
    assert every.returncode == 0
    assert f"--- call {PRINTING} (ok," in every.stdout
    assert f"--- call {FAILING} (error," in every.stdout and "ValueError: three is bad" in every.stdout
    assert "--- call 0 " not in every.stdout
    assert cli(env, store, "logs", job, str(N_CALLS)).returncode == 2


def test_stats_summary_names_the_straggler(env, store, job):
    proc = cli(env, store, "stats", job)
    assert proc.returncode == 0, proc.stderr
    assert f"{N_CALLS - 1} ok, 1 failed, 0 pending, 0 corrupt" in proc.stdout
    stragglers = [line for line in proc.stdout.splitlines() if line.startswith("straggler")]
    assert [line.split()[2] for line in stragglers] == [f"{SLOW}:"]


def test_stats_csv_has_one_row_per_call(env, store, job):
    proc = cli(env, store, "stats", job, "--csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [int(r["call_id"]) for r in rows] == list(range(N_CALLS))
    assert rows[FAILING]["state"] == "error" and rows[FAILING]["error"] == "builtins.ValueError"
    assert all(float(r["queue_wait"]) >= 0 and int(r["peak_rss"]) > 0 for r in rows)
    assert float(rows[SLOW]["compute"]) >= 1.0


def test_plot_writes_a_png(env, store, job, tmp_path):
    out = tmp_path / "job.png"
    proc = cli(env, store, "plot", job, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli(env, store, "plot", job).returncode == 2


def test_unknown_job_tells_how_to_list_jobs(env, store):
    for command in ("status", "results", "logs", "stats", "plot -o x.png", "clean --yes"):
        line = assert_one_line_error(cli(env, store, *command.split(), "no-such-job"))
        assert "no job 'no-such-job'" in line and "burstmap jobs" in line


def test_a_corrupt_status_record_is_counted_not_a_traceback(env, store, executor):
    job = wait_done(executor.map(square, [0, 1, 2]))[0].job_id
    LocalStorage(store).put(Layout("burstmap", job).status(1), b"garbage, not a record")
    status = cli(env, store, "status", job)
    assert status.returncode == 0, status.stderr
    assert "corrupt   1" in status.stdout and "ok        2" in status.stdout
    stats = cli(env, store, "stats", job)
    assert stats.returncode == 0 and "2 ok, 0 failed, 0 pending, 1 corrupt" in stats.stdout
    results = cli(env, store, "results", job)
    assert_one_line_error(results)
    assert results.stdout.splitlines()[1].startswith("1\tcorrupt\t")
    summary = Layout("burstmap", job).summary
    while not LocalStorage(store).exists(summary):  # the client stores it just after the last future finishes
        time.sleep(0.01)
    LocalStorage(store).delete([summary])  # `jobs` trusts a finished job's summary; without one it counts records
    jobs = cli(env, store, "jobs")
    assert next(line.split() for line in jobs.stdout.splitlines() if line.startswith(job))[2:6] == ["2", "0", "0", "1"]


def test_clean_asks_then_deletes_a_finished_job(env, store, executor):
    job = wait_done(executor.map(square, [0, 1]))[0].job_id
    storage, layout = LocalStorage(store), Layout("burstmap", job)
    refused = cli(env, store, "clean", job, input="n\n")
    assert refused.returncode == 1 and storage.exists(layout.manifest)
    proc = cli(env, store, "clean", job, input="y\n")
    assert proc.returncode == 0, proc.stderr
    assert not storage.exists(layout.manifest) and list(storage.list(layout.root)) == []
    assert not (store / layout.root).exists()  # no empty folders left behind
    assert cli(env, store, "clean").returncode == 2
    assert cli(env, store, "clean", job, "--all").returncode == 2


def test_clean_refuses_a_running_job_unless_forced(env, store):
    storage = LocalStorage(store)
    manifest = unstarted_job(storage, "running-0000", time.time())
    line = assert_one_line_error(cli(env, store, "clean", "running-0000", "--yes"))
    assert "still running" in line and storage.exists(manifest.layout.manifest)
    assert cli(env, store, "clean", "running-0000", "--yes", "--force").returncode == 0
    assert not storage.exists(manifest.layout.manifest)


def test_clean_older_than_keeps_recent_jobs(env, store, job):
    storage = LocalStorage(store)
    old = unstarted_job(storage, "old-0000", time.time() - 8 * 86400)
    proc = cli(env, store, "clean", "--older-than", "7d", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert not storage.exists(old.layout.manifest)
    assert storage.exists(Layout("burstmap", job).manifest)
    assert cli(env, store, "clean", "--older-than", "soon").returncode == 2


def test_config_show_never_prints_a_secret(env, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("backend: {name: standalone, queue: 'redis://:url-pw-789@localhost:6379/0'}\n"
                      "storage: {name: s3, bucket: b, aws_access_key_id: ak-456}\n")
    proc = cli({**env, "BURSTMAP_CONFIG": str(config), "BURSTMAP_SECRET_KEY": "fake-secret-123",
                "BURSTMAP_STORAGE_AWS_SECRET_ACCESS_KEY": "pw-321"}, None, "config", "show")
    assert proc.returncode == 0, proc.stderr
    for secret in ("fake-secret-123", "pw-321", "url-pw-789", "ak-456"):
        assert secret not in proc.stdout + proc.stderr
    assert "secret_key: '***'" in proc.stdout and "redis://:***@localhost:6379/0" in proc.stdout


def test_config_show_refuses_what_the_executor_would(env, tmp_path):
    config = tmp_path / "config.yaml"
    for text, message in (("backend: {name: local, worker: 4}\n", "backend 'local' has no option(s) worker"),
                          ("storage: s3\n", "storage 's3' needs option 'bucket'"),
                          ("progress: maybe\n", "progress must be auto, true or false")):
        config.write_text(text)
        assert message in assert_one_line_error(cli({**env, "BURSTMAP_CONFIG": str(config)}, None, "config", "show"))


def test_config_init_writes_a_loadable_file_once(env):
    path = Path(env["XDG_CONFIG_HOME"]) / "burstmap" / "config.yaml"
    assert cli(env, None, "config", "init").returncode == 0
    assert path.exists() and "prefix: burstmap" in path.read_text()
    line = assert_one_line_error(cli(env, None, "config", "init"))
    assert "--force" in line
    assert cli(env, None, "config", "init", "--force").returncode == 0
    shown = cli(env, None, "config", "show")
    assert shown.returncode == 0 and f"# {path} (read)" in shown.stdout


def test_replay_runs_one_call_again_and_shows_the_users_traceback(env, store, job):
    before = sorted(p.name for p in (store / Layout("burstmap", job).root).rglob("*"))
    ok = cli(env, store, "replay", job, "2")
    assert ok.returncode == 0 and ok.stdout.strip() == "4"
    failing = cli(env, store, "replay", job, str(FAILING))
    assert failing.returncode == 1
    assert "ValueError: three is bad" in failing.stderr and "Traceback" in failing.stderr
    assert sorted(p.name for p in (store / Layout("burstmap", job).root).rglob("*")) == before
    missing = cli(env, store, "replay", "nope-0000", "0")
    assert missing.returncode == 1 and "burstmap jobs" in missing.stderr


def test_unavailable_optional_command_says_what_to_install(env):
    out = cli(env, None, "--help")
    assert out.returncode == 0
    for name in ("lambda", "replay", "worker", "jobs", "clean"):
        assert f"  {name} " in out.stdout


def test_clean_all_leaves_no_empty_folder(env, tmp_path):
    store = tmp_path / "store"
    with new_executor(store) as ex:
        wait_done(ex.map(abs, range(2500)))
    assert cli(env, store, "clean", "--all", "--yes").returncode == 0
    assert list(store.rglob("*")) == []


def test_stats_shows_the_five_slowest_stragglers_and_counts_the_rest(capsys):
    from burstmap.cli import _print_summary
    from burstmap.stats import summarize

    rows = [{"job_id": "j", "call_id": i, "state": "ok", "end": 10.0, "duration": 1.0 + (i >= 10) * i,
             "compute": 0.5, "queue_wait": 0.0, "worker": "w"} for i in range(-20, 30)]
    _print_summary(summarize(rows, submitted=9.0))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines if line.startswith("straggler ")] == ["29:", "28:", "27:", "26:", "25:"]
    assert lines[-1] == "stragglers   15 more, the slowest shown above (--csv lists every call)"  # of 20
