"""The shuffle sort (`examples/sort.py`) on burstmap against GNU sort on the same records, same run.

burstmap generates the records into its local store, sorts them with a map stage (partition by key
range) and a reduce stage (sort each range), and checks the order and checksum. The peer is GNU
``sort --parallel=W`` (``LC_ALL=C``, byte order) on the same records copied into one file, writing
one sorted file; its output must be byte for byte the concatenation of burstmap's sorted runs.
Throughput is GB over the wall time of the map and reduce stages against GB over sort's wall time.
Run: python benchmarks/paper_sort.py [--gb 1] [--workers 2] [--maps 8] [--reducers 8] [--plot docs/sort.png]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import tempfile
import time

from _common import report
from _paper import local_executor, plot_jobs

import sort  # from examples/, which _paper puts on the path
from burstmap import Scratch


def gnu_sort(space: Scratch, workers: int, folder: str) -> tuple[float, str]:
    """Copy the input objects into one file, time GNU sort on it; return its seconds and its output's md5."""
    source, target = os.path.join(folder, "records"), os.path.join(folder, "sorted")
    with open(source, "wb") as f:
        f.writelines(space.get(name) for name in space.names("input/"))
    start = time.perf_counter()
    subprocess.run(["sort", f"--parallel={workers}", "-T", folder, "-o", target, source], check=True,
                   env={**os.environ, "LC_ALL": "C"})
    seconds = time.perf_counter() - start
    digest = hashlib.md5()
    with open(target, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return seconds, digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="GB of 100-byte records")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--maps", type=int, default=8)
    parser.add_argument("--reducers", type=int, default=8)
    parser.add_argument("--plot", help="draw the timeline of the map and reduce stages into this PNG")
    args = parser.parse_args()
    with local_executor(args.workers) as ex, ex.scratch() as space, tempfile.TemporaryDirectory() as folder:
        ours = sort.run(ex, int(args.gb * 1e9) // sort.RECORD, args.maps, args.reducers, space)
        runs = hashlib.md5()
        for name in space.names("sorted/"):
            runs.update(space.get(name))
        peer, peer_md5 = gnu_sort(space, args.workers, folder)
        plot_jobs(ex, args.plot, {"partition", "sort_partition"})
    if peer_md5 != runs.hexdigest():
        raise SystemExit("GNU sort's output differs from burstmap's sorted runs")
    gb = ours["gb"]
    print(f"burstmap: map stage {ours['map_wall']:.1f} s, reduce stage {ours['reduce_wall']:.1f} s; call seconds: "
          f"read input {ours['read_input']:.1f}, map {ours['map']:.1f}, shuffle {ours['shuffle']:.1f}, "
          f"reduce {ours['reduce']:.1f}")
    report("sort", f"{gb / ours['wall']:.3f} GB/s ({gb:.2f} GB in {ours['wall']:.1f} s)",
           f"GNU sort --parallel={args.workers} {gb / peer:.3f} GB/s ({peer:.1f} s), same bytes out",
           peer / ours["wall"], ">= 1.0x")


if __name__ == "__main__":
    main()
