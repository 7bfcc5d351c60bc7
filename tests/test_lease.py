"""Abandoned jobs: a client that stops watching (Ctrl-C, shutdown without waiting) leaves a job the CLI calls abandoned."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.lease import expired
from burstmap.storage.local import LocalStorage

from .conftest import TEST_SECRET, subprocess_env

CLIENT = """
import sys, time, burstmap

def slow(x):
    time.sleep(0.3)
    return x * 10

ex = burstmap.Executor(storage=sys.argv[1], backend={"name": "local", "workers": 2}, progress=False)
first, second = ex.map(slow, range(30)), ex.map(slow, range(30))
print(first[0].job_id, second[0].job_id, flush=True)
first[0].result()
print("started", flush=True)
burstmap.get_all_results(first + second)
"""


def cli(store, *args):
    return subprocess.run([sys.executable, "-m", "burstmap.cli", "--store", str(store), *args], capture_output=True,
                          text=True, timeout=120, env=subprocess_env(BURSTMAP_SECRET_KEY=TEST_SECRET))


def test_ctrl_c_exits_quietly_and_leaves_abandoned_jobs_that_resume(tmp_path):
    store = tmp_path / "store"
    (tmp_path / "client.py").write_text(CLIENT)
    client = subprocess.Popen([sys.executable, str(tmp_path / "client.py"), str(store)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=subprocess_env(BURSTMAP_SECRET_KEY=TEST_SECRET))
    first, second = client.stdout.readline().split()
    assert client.stdout.readline() == "started\n"
    client.send_signal(signal.SIGINT)
    out, err = client.communicate(timeout=120)
    assert client.returncode == -signal.SIGINT
    lines = err.splitlines()
    assert len(lines) == 2 and "Traceback" not in err, err
    assert lines[0].startswith(f"burstmap: interrupted; job {first} has ")
    assert lines[0].endswith(f"calls unfinished: finish it with burstmap.attach('{first}', resume=True)")

    listing = {line.split()[0]: line.split()[-1] for line in cli(store, "jobs").stdout.splitlines()[1:]}
    assert listing == {first: "abandoned", second: "abandoned"}
    follow = cli(store, "status", second, "--follow", "--interval", "0.05")
    assert follow.returncode == 1
    assert follow.stderr.strip().endswith(f"job {second} is abandoned: its client stopped watching with 30 calls "
                                          f"unfinished; finish it with burstmap.attach('{second}', resume=True)")
    cleaned = cli(store, "clean", second, "--yes")
    assert cleaned.returncode == 0 and cleaned.stdout == "deleted 1 job(s)\n"

    with burstmap.Executor(storage=LocalStorage(store), backend=LocalBackend(workers=2), secret_key=TEST_SECRET,
                           progress=False) as ex:
        assert burstmap.get_all_results(ex.attach(first, resume=True)) == [x * 10 for x in range(30)]
    assert [line.split()[0] for line in cli(store, "jobs").stdout.splitlines()[1:]] == [first]


def test_a_watched_job_holds_its_lease_and_one_left_behind_loses_it(tmp_path):
    storage = LocalStorage(tmp_path)
    ex = burstmap.Executor(storage=storage, backend=LocalBackend(workers=1), secret_key=TEST_SECRET, progress=False)
    futures = ex.map(time.sleep, [0.5] * 4)
    layout = futures[0].layout
    while expired(storage, layout) is None:  # the watcher writes it on its first poll
        time.sleep(0.01)
    assert expired(storage, layout) is False
    ex.shutdown(wait=False)
    assert expired(storage, layout) is True
