"""A scikit-learn grid search (SVC on the digits data set, fits of ~0.1 s) run by joblib on burstmap.

The peer is the same search on joblib's default backend (loky) with the same ``n_jobs``, in the same run.
The figure is burstmap's speed relative to it (loky's time over burstmap's; above 1 is faster).
Each side's best of ``--runs`` alternated runs counts; the first run of each starts its workers.
Run: python benchmarks/gridsearch.py [--n-jobs 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import tempfile

import joblib
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import burstmap
import burstmap.joblib  # noqa: F401  (registers the "burstmap" joblib backend)
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

from _common import best_of, report

GRID = {"C": [0.1, 1, 10, 100], "gamma": [1e-2, 1e-3, 1e-4]}


def search(X, y, n_jobs: int) -> GridSearchCV:
    return GridSearchCV(SVC(), GRID, cv=5, n_jobs=n_jobs).fit(X, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    fit = search(X, y, 1).cv_results_["mean_fit_time"].mean()
    ours, peer = [], []
    with tempfile.TemporaryDirectory() as store, burstmap.Executor(
        backend=LocalBackend(workers=args.n_jobs), storage=LocalStorage(store), progress=False
    ) as ex:
        for _ in range(args.runs):  # alternated, so a change in the machine's load falls on both
            with joblib.parallel_config(backend="burstmap", executor=ex):
                ours.append(best_of(1, lambda: search(X, y, args.n_jobs)))
            peer.append(best_of(1, lambda: search(X, y, args.n_jobs)))
    ours, peer = min(ours), min(peer)
    fits = 5 * len(GRID["C"]) * len(GRID["gamma"])
    report("gridsearch", f"{ours:.2f}s for {fits} fits of {fit * 1000:.0f} ms", f"joblib loky n_jobs={args.n_jobs} {peer:.2f}s",
           peer / ours, ">= 0.9x")


if __name__ == "__main__":
    main()
