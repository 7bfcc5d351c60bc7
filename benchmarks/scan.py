"""Count the lines of ~1 GiB of text in 64 MiB chunks (local backend, local store) vs `wc -l` on the same files.

Run: python benchmarks/scan.py [--size 1GiB] [--files 8] [--chunk 64MiB] [--runs R]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.partition import parse_size
from burstmap.storage.local import LocalStorage

from _common import best_of, report

_LINE = b"2024-01-01T00:00:00Z host-%03d GET /index.html 200 %06d bytes\n"


def count_lines(piece) -> int:
    return sum(block.count(b"\n") for block in piece.blocks())


def make_data(folder: Path, size: int, files: int) -> None:
    """Write ``files`` text files of ``size`` bytes in all, by repeating one block of log lines."""
    block = b"".join(_LINE % (i % 1000, i) for i in range(16_000))
    per_file = size // files
    for n in range(files):
        with open(folder / f"part-{n:03d}.log", "wb") as f:
            for _ in range(per_file // len(block)):
                f.write(block)
            f.write(block[:per_file % len(block)])


def wc_lines(files: list[Path]) -> int:
    out = subprocess.run(["wc", "-l", *map(str, files)], check=True, capture_output=True, text=True).stdout
    return int(out.split("\n")[-2].split()[0]) if len(files) > 1 else int(out.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--chunk", default="64MiB")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = parse_size(args.size)

    with tempfile.TemporaryDirectory() as tmp, burstmap.Executor(
        backend=LocalBackend(workers=2), storage=LocalStorage(Path(tmp) / "store"), progress=False
    ) as ex:
        data = Path(tmp) / "data"
        data.mkdir()
        make_data(data, size, args.files)
        files = sorted(data.iterdir())
        expected = wc_lines(files)
        counts: list[int] = []
        peer = best_of(args.runs, lambda: wc_lines(files))
        ours = best_of(args.runs, lambda: counts.append(
            sum(burstmap.get_all_results(ex.map(count_lines, data, chunk_size=args.chunk)))))
        if set(counts) != {expected}:
            raise SystemExit(f"line counts differ: burstmap {counts}, wc -l {expected}")

    mib = size / 2**20
    report("scan", f"{mib / ours:,.0f} MiB/s ({expected:,} lines)", f"wc -l {mib / peer:,.0f} MiB/s", peer / ours,
           ">= 0.35x: 2 workers of bytes.count cap it near 0.5x")


if __name__ == "__main__":
    main()
