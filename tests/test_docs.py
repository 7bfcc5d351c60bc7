"""The runnable example of each integration's page in docs/ runs, and prints what the page says."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TEST_SECRET, subprocess_env

DOCS = Path(__file__).resolve().parent.parent / "docs"


def first_example(page: str) -> str:
    """The first ```python block of a page: the one written to be run as it is."""
    return re.search(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S).group(1)


@pytest.mark.parametrize("page, printed", [
    ("multiprocessing.md", ["[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]", "[0, 1, 4]", "1024 True"]),
    ("joblib.md", ["{'C': 10}"]),
    ("dask.md", ["999000 ['BURST', 'MAP']"]),
    ("cubed.md", ["2000000000.0"]),
    ("nested.md", ["[0, 1, 4, 9]", "26"]),
    ("pywren.md", ["Hello, Ada! (call 0)", "Hello, Alan? (call 1)", "True []"]),
])
def test_example_runs(page, printed, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(first_example(page))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                         env=subprocess_env(BURSTMAP_SECRET_KEY=TEST_SECRET))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == printed
