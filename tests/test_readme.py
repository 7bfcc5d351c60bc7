"""The README's Python snippets, run as a user would: each saved as a script with no main guard, in a fresh process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import boto3

from .conftest import TEST_SECRET, subprocess_env

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def run_script(tmp_path: Path, text: str, **env: str) -> str:
    """Run ``text`` as ``script.py`` from ``tmp_path`` with a store there; return what it printed."""
    script = tmp_path / "script.py"
    script.write_text(text)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=subprocess_env(BURSTMAP_CONFIG=str(tmp_path / "none.yaml"), BURSTMAP_SECRET_KEY=TEST_SECRET,
                                            BURSTMAP_STORAGE_PATH=str(tmp_path / "store"), **env))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def snippet(start: str) -> str:
    (text,) = [s for s in SNIPPETS if s.startswith(start)]
    return text


def test_the_quick_tour_runs_as_written(tmp_path):
    (tmp_path / "none.yaml").write_text("{}\n")
    printed = run_script(tmp_path, snippet("import burstmap\n"))
    assert printed == f"{[x * x for x in range(1000)]}\n"


def test_mapping_over_data_in_s3_runs_as_written(tmp_path, moto_server):
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket="my-logs")
    for day in range(3):
        lines = "".join(f"2024-06-0{day + 1} {' ERROR ' if i % 7 == 0 else ' INFO '} line {i}\n" for i in range(500))
        s3.put_object(Bucket="my-logs", Key=f"2024/06/0{day + 1}.log", Body=lines.encode())
    (tmp_path / "none.yaml").write_text("{}\n")
    printed = run_script(tmp_path, "import burstmap\nex = burstmap.default_executor()\n" + snippet("def count_errors"),
                         AWS_ENDPOINT_URL=moto_server, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                         AWS_DEFAULT_REGION="us-east-1")
    assert printed == f"{3 * len(range(0, 500, 7))}\n"
