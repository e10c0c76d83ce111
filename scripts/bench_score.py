#!/usr/bin/env python3
"""Scoring speed: trials per second, top-C vs full, for M = 512 and 1024 (D = 60).

    python scripts/bench_score.py [--speakers 20] [--files 200]

Each test "file" is 1 s of speech (100 frames) scored against every speaker
model in one pass, as ``spkver score`` does; the UBM and speaker models are
random but shaped like real ones. The accuracy side (EER of top-C vs full)
is in the evaluation runner's table (README).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from spkver.backend.scoring import Scorer
from spkver.gmm.estep import accumulate
from spkver.gmm.map import map_adapt
from spkver.gmm.model import GMM


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=20)
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    d = 60
    print("| M | top-C | trials | seconds | trials/s | speed-up of top-5 |")
    print("|---|---|---|---|---|---|")
    for m in (512, 1024):
        ubm = GMM(np.full(m, 1 / m), rng.normal(scale=2, size=(m, d)), rng.uniform(0.5, 2, size=(m, d)))
        speakers = [map_adapt(ubm, accumulate(ubm, [rng.normal(scale=2, size=(500, d))], np.float64), 16)
                    for _ in range(args.speakers)]
        files = [rng.normal(scale=2, size=(100, d)).astype(np.float32) for _ in range(args.files)]
        timings = {}
        for top_c in (5, 0):
            scorer = Scorer(ubm, speakers, top_c)
            start = time.perf_counter()
            for frames in files:
                scorer.scores(frames)
            timings[top_c] = time.perf_counter() - start
            trials = args.files * args.speakers
            ratio = f"{timings[0] / timings[5]:.1f}x" if top_c == 0 else ""
            print(f"| {m} | {top_c or 'full'} | {trials} | {timings[top_c]:.2f} | {trials / timings[top_c]:.0f} | "
                  f"{ratio} |", flush=True)


if __name__ == "__main__":
    main()
