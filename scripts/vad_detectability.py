#!/usr/bin/env python3
"""Could any detector find the speech frames spkver's VAD misses in heavy noise?

    python scripts/vad_detectability.py [--seeds 8] [--false-alarms 0.01] [--grow-ms 100]

On the ground truth of ``tests/test_vad.py`` (``spkver.synth.words_with_pauses``,
seeds 0-7), in heavy noise (0 and 5 dB SNR, white and room-like), prints a
markdown table: the spectral VAD's recall and precision (its regions grown by
up to ``--grow-ms``, the default setting unless told), the speech frames it
misses, how many of them 97% recall would need back, and the share of the
missed frames that three reference detectors find at the given rate of false
alarms on noise. Each is told something no real detector knows:

- **told where**: the extent of each run of missed frames (they lie at word
  edges), not what it sounds like. Statistic: the VAD's own evidence
  (``spkver.features.vad.evidence_of_ratios``: the mean over its mel bands of
  ``γ − 1 − ln γ``, ``γ`` the run's mean band power over the noise's), the
  generalised likelihood ratio of an unknown spectrum; its null is
  blocks of the same length of pause frames more than 4 frames from any word.
- **told what, per frame**: each frame's clean power spectrum ``S`` and the
  noise's ``N``, so the Neyman-Pearson statistic of a Gaussian signal in
  Gaussian noise, ``Σ_k |X_k|² (1/N_k − 1/(N_k + S_k)) − ln(1 + S_k/N_k)``; its
  null draws noise periodograms as independent exponentials of mean ``N_k``.
- **told where and what**: the same statistic summed over each run.

The last two nulls treat FFT bins and overlapping frames as independent, which
narrows them: their figures are upper bounds on what those detectors find.
A detector that knows neither where nor what (the VAD's situation) can do no
better than the one told where.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from spkver.features.config import FeatureConfig
from spkver.features.mfcc import analysis_window, frame_signal, spectra_blocks
from spkver.features.vad import evidence_of_ratios, runs, speech_mask
from spkver.synth import speech_frames, words_with_pauses

CONFIG = FeatureConfig(sample_rate=16000)
CONDITIONS = [(5, "room"), (0, "room"), (5, "white"), (0, "white")]
NULL_DRAWS = 1000


def power_spectra(signal) -> np.ndarray:
    """Periodograms of the VAD's analysis frames (centred Hann windows), (n_frames, n_fft // 2 + 1)."""
    frames = frame_signal(signal, CONFIG.fft_size, CONFIG.hop_length) * analysis_window(CONFIG.win_length,
                                                                                          CONFIG.fft_size)
    return np.abs(np.fft.rfft(frames.astype(np.float64), axis=1)) ** 2


def known_spectrum_llr(periodogram, clean, noise):
    """Log-likelihood ratio of a Gaussian signal of power spectrum ``clean`` in noise of spectrum ``noise``."""
    gain = 1.0 / noise - 1.0 / (noise + clean)
    return periodogram @ gain - np.log1p(clean / noise).sum()


def pause_blocks(near_words, length) -> np.ndarray:
    """First frames of the blocks of ``length`` frames that lie wholly in pauses (away from every word)."""
    clear = np.concatenate([[0], np.cumsum(~near_words)])
    firsts = np.arange(max(len(near_words) - length + 1, 0))
    return firsts[clear[firsts + length] - clear[firsts] == length]


def condition(snr_db, noise, seeds, false_alarms, config, rng):
    """The row of one noise condition over ``seeds``, the VAD's settings from ``config``."""
    recalls, precisions = [], []
    missed_total, speech_total = 0, 0
    found_where, found_frame, found_run = 0, 0, 0
    quantile = 1.0 - false_alarms
    for seed in seeds:
        noisy, truth = words_with_pauses(seed, snr_db, noise)
        clean, _ = words_with_pauses(seed, None, noise)  # the same voice, words and pauses without the noise
        spectra = spectra_blocks([noisy], config)
        found = speech_mask(spectra, config)
        speech = speech_frames(truth, CONFIG.hop_length)
        recalls.append((found & speech).sum() / speech.sum())
        precisions.append((found & speech).sum() / max(found.sum(), 1))
        speech_total += speech.sum()

        bands = 10.0 ** (spectra.vad_log_mel.astype(np.float64) / 10.0)
        near_words = np.convolve(speech.astype(float), np.ones(9), mode="same") > 0  # within 4 frames of a word
        band_noise = bands[~near_words].mean(axis=0)
        clean_power = power_spectra(clean)
        noisy_power = power_spectra(noisy)
        noise_power = power_spectra(noisy.astype(np.float64) - clean.astype(np.float64)).mean(axis=0)

        starts, stops, missed = runs(speech & ~found)
        for start, stop in zip(starts[missed], stops[missed]):
            length = stop - start
            missed_total += length
            candidates = pause_blocks(near_words, length)
            if len(candidates):  # else no pause is as long: counted as not found
                picks = rng.choice(candidates, size=min(NULL_DRAWS, len(candidates)), replace=False)
                null = [evidence_of_ratios(bands[p:p + length].mean(axis=0) / band_noise) for p in picks]
                if evidence_of_ratios(bands[start:stop].mean(axis=0) / band_noise) > np.quantile(null, quantile):
                    found_where += length
            run_llr, run_null = 0.0, np.zeros(NULL_DRAWS)
            for i in range(start, stop):
                draws = rng.exponential(1.0, (NULL_DRAWS, len(noise_power))) * noise_power
                frame_null = known_spectrum_llr(draws, clean_power[i], noise_power)
                frame_llr = known_spectrum_llr(noisy_power[i], clean_power[i], noise_power)
                found_frame += frame_llr > np.quantile(frame_null, quantile)
                run_llr, run_null = run_llr + frame_llr, run_null + frame_null
            if run_llr > np.quantile(run_null, quantile):
                found_run += length
    needed = max(0, missed_total - int(0.03 * speech_total))
    share = (lambda n: f"{n / missed_total:.2f}") if missed_total else (lambda n: "-")
    return (f"| {noise} {snr_db} dB | {np.mean(recalls):.3f} / {np.mean(precisions):.3f} | {missed_total} | "
            f"{needed} ({needed / max(missed_total, 1):.2f}) | {share(found_where)} | {share(found_frame)} | "
            f"{share(found_run)} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="voices (seeds 0 to N-1) per condition [8]")
    parser.add_argument("--false-alarms", type=float, default=0.01,
                        help="the reference detectors' rate of false alarms on noise [0.01]")
    parser.add_argument("--grow-ms", type=float, default=CONFIG.vad_grow_ms,
                        help=f"how far the VAD grows its regions (0: not at all) [{CONFIG.vad_grow_ms:g}]")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    config = replace(CONFIG, vad_grow_ms=args.grow_ms)
    print(f"Spectral VAD grown by up to {args.grow_ms:g} ms; missed speech frames found at {args.false_alarms:.0%} "
          f"false alarms, seeds 0-{args.seeds - 1}:\n")
    print("| noise, SNR | VAD recall / precision | missed | needed for 97% (share; pooled over seeds) | told where | "
          "told what, per frame | told where and what |")
    print("|---|---|---|---|---|---|---|")
    for snr_db, noise in CONDITIONS:
        print(condition(snr_db, noise, range(args.seeds), args.false_alarms, config, rng), flush=True)


if __name__ == "__main__":
    main()
