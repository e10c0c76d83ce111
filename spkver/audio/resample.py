"""Resampling with soxr's high-quality filter, whole signals or streams of blocks."""

from __future__ import annotations

import numpy as np

RESAMPLE_QUALITY = "HQ"


def resampled_blocks(blocks, orig_rate: int, target_rate: int, block_frames: int = 0):
    """Resample a stream of mono blocks; the concatenation equals :func:`resample` of the whole.

    soxr's streaming resampler keeps only its filter state between blocks, so
    memory stays bounded whatever the two rates (a header claiming 2 MHz costs
    no more than 48 kHz).
    """
    if orig_rate == target_rate:
        yield from blocks
        return
    import soxr

    stream = soxr.ResampleStream(orig_rate, target_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    for block in blocks:
        out = stream.resample_chunk(np.asarray(block, dtype=np.float32), last=False)
        if len(out):
            yield out
    yield stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def resample(signal: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample with soxr's high-quality anti-aliasing filter (the resampler librosa uses)."""
    if orig_rate == target_rate:
        return signal
    import soxr

    return soxr.resample(np.asarray(signal, dtype=np.float32), orig_rate, target_rate,
                         quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)
