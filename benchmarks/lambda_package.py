"""Cold import of the Lambda package (burstmap's entry point and numpy) from the unpacked zip by a bare
``python -I -S``, as Lambda's cold start does, vs the same imports from this machine's installed packages
(the peer also runs ``site`` and imports this machine's numpy, which may be another version).

Run: python benchmarks/lambda_package.py [--runs N]   (needs PyPI: pip resolves numpy for Lambda)
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from burstmap.deploy import build_bundle
from burstmap.lambda_handler import PYTHON
from burstmap.lambda_package import Platform, install_libraries

from _common import median_of, report

_IMPORTS = "import sys; sys.path[:0] = sys.argv[1:]; import burstmap.lambda_handler, numpy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        start = time.perf_counter()
        platform = Platform(f"python{PYTHON}", "x86_64")
        libraries = install_libraries(None, ["numpy"], platform, root / "libraries")
        bundle = build_bundle(libraries)
        built = time.perf_counter() - start
        install_libraries(None, ["boto3"], platform, root / "runtime")  # what Lambda's runtime provides
        with zipfile.ZipFile(io.BytesIO(bundle.code.zip_bytes)) as archive:
            archive.extractall(root / "task")
        bare = median_of(args.runs, lambda: subprocess.run(
            [sys.executable, "-I", "-S", "-c", _IMPORTS, str(root / "task"), str(root / "runtime")], check=True, cwd=root))
        installed = median_of(args.runs, lambda: subprocess.run([sys.executable, "-c", _IMPORTS], check=True, cwd=root))
    print(f"package: numpy {libraries.versions['numpy']}, {len(bundle.code.files)} files, "
          f"{len(bundle.code.zip_bytes) / 2**20:.1f} MB zipped, resolved and built in {built:.1f} s")
    report("lambda_package cold import", f"{bare * 1000:.0f} ms", f"{installed * 1000:.0f} ms", bare / installed,
           "about 1x: the package layout costs a cold start nothing")


if __name__ == "__main__":
    main()
