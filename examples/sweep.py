"""A parameter sweep: one call per point of a grid of model fits, the embarrassingly parallel job PyWren served.

Each call fits a support vector classifier (scikit-learn's RBF ``SVC``) with one pair of ``C`` and
``gamma`` on the hand-written digits data set that ships with scikit-learn, scored by 3-fold
cross-validation on one thread. The client picks the best point.

Run: python examples/sweep.py [--points 48] [--samples N]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score
from sklearn.svm import SVC

import burstmap


def grid(points: int) -> list[tuple[float, float]]:
    """``points`` (C, gamma) pairs on a log grid, as square as ``points`` allows."""
    cs = np.logspace(-1, 3, max(1, points // int(np.sqrt(points))))
    gammas = np.logspace(-4, -2, int(np.sqrt(points)))
    return [(float(c), float(g)) for c, g in itertools.product(cs, gammas)][:points]


def fit(params: tuple[float, float], samples: int | None = None) -> dict[str, float]:
    """Cross-validate one (C, gamma) point on the digits data (its first ``samples``); return the mean accuracy."""
    c, gamma = params
    x, y = load_digits(return_X_y=True)
    x, y = x[:samples], y[:samples]
    score = cross_val_score(SVC(C=c, gamma=gamma), x, y, cv=3, n_jobs=1).mean()
    return {"C": c, "gamma": gamma, "accuracy": float(score)}


def best(scores: list[dict[str, float]]) -> dict[str, float]:
    """The point with the highest accuracy."""
    return max(scores, key=lambda s: s["accuracy"])


def run(ex: burstmap.Executor, points: int, samples: int | None = None) -> dict[str, float]:
    """Fit the grid on ``ex``; return the best point and the wall time."""
    start = time.perf_counter()
    scores = burstmap.get_all_results(ex.map(fit, grid(points), extra_args=(samples,)))
    return {**best(scores), "wall": time.perf_counter() - start, "fits": len(scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=48, help="grid points (model fits)")
    parser.add_argument("--samples", type=int, default=None, help="use only the first SAMPLES digits (all 1,797)")
    args = parser.parse_args()
    with burstmap.default_executor() as ex:
        f = run(ex, args.points, args.samples)
    print(f"{f['fits']} fits in {f['wall']:.1f} s; best C={f['C']:.3g} gamma={f['gamma']:.3g}: "
          f"accuracy {f['accuracy']:.4f}")


if __name__ == "__main__":
    main()
