"""Lambda, emulated for the tests: each invoke runs the exact entry point in a fresh process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import boto3

from burstmap.job import Layout, finished_calls
from burstmap.storage.s3 import S3Storage

__all__ = ["EmulatedInvoker", "deploy_function", "HMAC_KEY", "REGION", "FUNCTION"]

ROOT = Path(__file__).resolve().parents[1]
HMAC_KEY = "test-hmac-key-0123456789abcdef"
REGION = "us-east-1"
FUNCTION = "burstmap-test"


# A Lambda runtime in miniature: build the context object Lambda passes, then call the entry point.
_RUNTIME = r"""
import json, sys, time, uuid
sys.path[:0] = json.loads(sys.argv[4])
import burstmap
if sys.argv[3]:
    burstmap.__version__ = sys.argv[3]
from burstmap.lambda_handler import handler

class Context:
    function_name = "burstmap-test"
    memory_limit_in_mb = sys.argv[2]  # a string, as in Lambda's Python runtime
    aws_request_id = str(uuid.uuid4())

    def __init__(self, timeout):
        self._deadline = time.time() + timeout

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.time()) * 1000))

event = json.loads(sys.stdin.buffer.read())
context = Context(float(sys.argv[1]))
sys.stdout.write("ready\n")
sys.stdout.flush()
handler(event, context)
"""


class EmulatedInvoker:
    """Invokes like Lambda's ``InvocationType='Event'``: returns at once, runs the event in a fresh
    process, and kills that process when the function's timeout has passed.

    With ``path``, the process is as bare as Lambda's: ``python -I -S`` (no site-packages, no
    environment's paths, nothing installed) with only those folders on its import path, e.g. an
    unpacked deployment package as ``/var/task``.
    """

    def __init__(self, timeout: float, memory_mb: int = 512, deployed_version: str = "",
                 storage: S3Storage | None = None, secret: str = HMAC_KEY, function: str = FUNCTION,
                 path: list[Path] | None = None) -> None:
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.deployed_version = deployed_version
        self.payloads: list[bytes] = []
        self.storage = storage
        self.most_outstanding = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.python = [sys.executable, "-I", "-S"] if path is not None else [sys.executable]
        self.path = json.dumps([str(folder) for folder in path or []])
        self.cwd = path[0] if path else None
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BURSTMAP_SECRET_KEY": secret,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "role-credentials",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_LAMBDA_FUNCTION_NAME": function,
        }

    def invoke(self, payload: bytes) -> None:
        with self._lock:
            if self.storage is not None:
                self.most_outstanding = max(self.most_outstanding, self._outstanding(payload))
            self.payloads.append(payload)
        proc = subprocess.Popen(
            [*self.python, "-c", _RUNTIME, str(self.timeout), str(self.memory_mb), self.deployed_version, self.path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env, cwd=self.cwd,
        )
        proc.stdin.write(payload)
        proc.stdin.close()
        thread = threading.Thread(target=self._reap, args=(proc,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _reap(self, proc: subprocess.Popen) -> None:
        proc.stdout.readline()  # the timeout counts from the handler's start, as on Lambda
        try:
            proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    def _outstanding(self, payload: bytes) -> int:
        """Invocations sent earlier that still miss a status, plus this one."""
        prefix, job_id, _ = _batch(payload)
        sent = [{c for first, n, *_ in _batch(p)[2] for c in range(first, first + n)} for p in self.payloads]
        done = finished_calls(self.storage, Layout(prefix, job_id), set().union(*sent))
        return 1 + sum(1 for calls in sent if calls - done)

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def calls(self) -> list[list[int]]:
        """``[call_id, start, end, attempt]`` of every call sent, in the order sent."""
        return [[c, start, end, attempt] for p in self.payloads for first, n, start, end, attempt in _batch(p)[2]
                for c in range(first, first + n)]


def _batch(payload: bytes) -> tuple[str, str, list[list[int]]]:
    """What the signed batch of an event holds, read without its key: prefix, job id and runs of calls."""
    body = json.loads(json.loads(payload)["batch"].partition(".")[2])
    return body["prefix"], body["job"], body["calls"]


def deploy_function(endpoint: str, name: str, bucket: str) -> None:
    """Create a bucket, a role and a (placeholder) function in a moto server, as a deploy would."""
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=bucket)
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION)
    role = iam.create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("index.py", "def handler(event, context): pass\n")
    boto3.client("lambda", endpoint_url=endpoint, region_name=REGION).create_function(
        FunctionName=name, Runtime="python3.12", Role=role, Handler="index.handler",
        Code={"ZipFile": code.getvalue()}, Timeout=5, MemorySize=512,
    )
