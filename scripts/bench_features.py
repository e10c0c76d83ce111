#!/usr/bin/env python3
"""Feature extraction speed: hours of audio per second, spkver (1 and all workers) vs a plain librosa loop.

    python scripts/bench_features.py [--data ../shared/data] [--files 1000]

Same files, same settings (spkver's defaults: 16 kHz, 25/10 ms, 64 mels,
40 MFCC + Δ + ΔΔ, and YIN pitch over 32 ms frames + Δ + ΔΔ); the librosa loop
is ``librosa.load`` + ``librosa.feature.mfcc`` + ``librosa.yin`` +
``librosa.feature.delta`` per file, the way a script without spkver does it.
spkver also runs its voice-activity detector and mean normalisation, which
the librosa loop does not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocols import DEFAULT_DATA_ROOT  # noqa: E402

from spkver.audio.sources import AudioItem  # noqa: E402
from spkver.features.config import FeatureConfig  # noqa: E402
from spkver.features.extraction import extract_all  # noqa: E402
from spkver.run import RunOptions  # noqa: E402


def librosa_loop(paths, config=FeatureConfig()):
    """The same MFCC and pitch + Δ + ΔΔ as spkver's defaults, from librosa (without spkver's VAD and CMN)."""
    import warnings

    import librosa

    frame = int(config.sample_rate * 0.032)
    for path in paths:
        y, sr = librosa.load(path, sr=config.sample_rate)
        mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=config.n_ceps, n_fft=config.fft_size,
                                    hop_length=config.hop_length, win_length=config.win_length, n_mels=config.n_mels)
        with warnings.catch_warnings():  # librosa asks for two periods of fmin per frame; YIN needs one
            warnings.simplefilter("ignore", UserWarning)
            f0 = librosa.yin(y, fmin=sr / (frame // 2), fmax=400, sr=sr, frame_length=frame,
                             hop_length=config.hop_length)
        static = np.vstack([mfcc, np.log(f0)[None, : mfcc.shape[1]]])
        np.vstack([static, librosa.feature.delta(static), librosa.feature.delta(static, order=2)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    paths = sorted((args.data / "asc" / "dataset").rglob("*.wav"))[: args.files]
    import soundfile as sf

    hours = sum(sf.info(str(p)).duration for p in paths) / 3600
    items = [AudioItem(str(p), p) for p in paths]
    librosa_loop(paths[:5])  # imports and JIT warm-up outside the timing
    rows = []
    start = time.perf_counter()
    librosa_loop(paths)
    rows.append(("librosa loop (1 process)", time.perf_counter() - start))
    for workers in (1, os.cpu_count()):
        start = time.perf_counter()
        extract_all(items, FeatureConfig(), run=RunOptions(workers=workers))
        rows.append((f"spkver, {workers} worker{'s' if workers > 1 else ''}", time.perf_counter() - start))
    print(f"{len(paths)} files, {hours:.3f} hours of 16 kHz audio\n")
    print("| extractor | seconds | audio hours / s | speed-up vs librosa |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {hours / seconds:.3f} | {rows[0][1] / seconds:.1f}x |")


if __name__ == "__main__":
    main()
