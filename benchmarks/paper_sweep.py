"""The parameter sweep (`examples/sweep.py`) on burstmap against joblib with the same workers, same run.

Both run the same grid of ``fit`` calls (an RBF SVC cross-validated on scikit-learn's digits) on W
processes: burstmap's local backend and joblib's default (loky) process pool. Both pools are warmed
first (scikit-learn imported in every worker). Ratio of fits per second; each side runs ``--rounds``
times, taking turns, and its best round counts.
Run: python benchmarks/paper_sweep.py [--points 48] [--workers 2] [--rounds 2] [--plot docs/sweep.png]
"""

from __future__ import annotations

import argparse
import time

from joblib import Parallel, delayed

import burstmap
from _common import report
from _paper import local_executor, plot_jobs

import sweep  # from examples/, which _paper puts on the path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plot", help="draw the timeline of burstmap's rounds into this PNG")
    args = parser.parse_args()
    ours, theirs = [], []
    warm = [(1.0, 0.001)] * args.workers
    with local_executor(args.workers) as ex, Parallel(n_jobs=args.workers) as parallel:
        burstmap.get_all_results(ex.map(sweep.fit, warm, extra_args=(100,)))
        parallel(delayed(sweep.fit)(p, 100) for p in warm)
        for _ in range(args.rounds):
            ours.append(sweep.run(ex, args.points))
            start = time.perf_counter()
            scores = parallel(delayed(sweep.fit)(p) for p in sweep.grid(args.points))
            theirs.append(time.perf_counter() - start)
            assert sweep.best(scores)["accuracy"] == ours[-1]["accuracy"], "joblib and burstmap disagree"
        plot_jobs(ex, args.plot, {"fit"})
    best, peer = min(r["wall"] for r in ours), min(theirs)
    report("sweep", f"{args.points / best:.2f} fits/s ({args.points} fits in {best:.1f} s, best accuracy "
           f"{ours[0]['accuracy']:.4f})", f"joblib n_jobs={args.workers} {args.points / peer:.2f} fits/s ({peer:.1f} s)",
           peer / best, ">= 0.95x")


if __name__ == "__main__":
    main()
