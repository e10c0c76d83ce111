#!/usr/bin/env python3
"""Log-sum-exp: spkver's ``gmm.model.logsumexp_rows`` against ``scipy.special.logsumexp``.

    python scripts/bench_logsumexp.py [--rounds 30]

Times both, interleaved and alternating which goes first each round, on the
arrays spkver reduces: the top-C scores of one scoring chunk, (2048, 5, 1 + S)
for S = 1 (``verify``) and 20 speakers (``score``), and the full (N, K)
log-densities of ``GMM.frame_log_likelihood`` and full scoring (K = 64, 512).
Prints a markdown table with the median time of each and their ratio, and the
largest difference between the two results.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from spkver.gmm.model import logsumexp_rows


def median_seconds(function, array, repeats: int) -> float:
    """Median wall time of ``function(array)`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(array)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    from scipy.special import logsumexp

    rng = np.random.default_rng(0)
    cases = {
        "top-5 chunk, 1 speaker (2048, 5, 2)": rng.normal(-80, 10, size=(2048, 5, 2)),
        "top-5 chunk, 20 speakers (2048, 5, 21)": rng.normal(-80, 10, size=(2048, 5, 21)),
        "full, K = 64 (4096, 64)": rng.normal(-80, 10, size=(4096, 64)),
        "full, K = 512 (2048, 512)": rng.normal(-80, 10, size=(2048, 512)),
    }
    ours = logsumexp_rows

    def theirs(array):
        return logsumexp(array, axis=1)

    print("| array | logsumexp_rows µs | scipy.special.logsumexp µs | scipy / ours | largest difference |")
    print("|---|---|---|---|---|")
    for label, array in cases.items():
        timings: dict = {ours: [], theirs: []}
        for round_ in range(args.rounds):
            order = (ours, theirs) if round_ % 2 == 0 else (theirs, ours)
            for function in order:
                timings[function].append(median_seconds(function, array, 5))
        mine, scipys = np.median(timings[ours]), np.median(timings[theirs])
        difference = np.abs(ours(array) - theirs(array)).max()
        print(f"| {label} | {1e6 * mine:.0f} | {1e6 * scipys:.0f} | {scipys / mine:.2f} | {difference:.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
