"""burstmap's first example: a Monte Carlo estimate of pi over 200 parallel calls, then a reduce."""

import random

import burstmap


def darts(seed: int, throws: int = 20_000) -> int:
    """Throw darts at the unit square; count those inside the quarter circle."""
    rng = random.Random(seed)
    return sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(throws))


if __name__ == "__main__":
    ex = burstmap.default_executor()
    futures = ex.map(darts, range(200))
    hits = burstmap.get_all_results(futures)
    print(f"pi is about {4 * sum(hits) / (200 * 20_000):.4f} ({len(futures)} calls, job {futures[0].job_id})")
    total = ex.map_reduce(darts, range(50), sum).result()
    print(f"map_reduce: {total} hits in 50 calls")
    ex.shutdown()
