"""Decoding: any common format as mono float32 blocks at the feature rate, checked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spkver.audio.resample import resampled_blocks
from spkver.errors import SpkverError
from spkver.fileio import check_file, read_error

# Decoding and resampling hold a few blocks at a time, whatever the recording's length.
BLOCK_SECONDS = 20.0


def _decode_error(exc) -> str:
    text = str(exc).split(":", 1)[-1].strip() if ":" in str(exc) else str(exc)
    return text or type(exc).__name__


def _librosa_fallback(path: Path, sample_rate: int):
    """Formats libsndfile cannot read (some MP3 files): librosa/audioread, whole file."""
    try:
        import warnings

        import librosa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns when falling back to audioread
            data, _ = librosa.load(str(path), sr=sample_rate, mono=True, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
        raise SpkverError(f"not a readable audio file ({_decode_error(exc)})", path) from None
    yield check_samples(data, path)


# Float files may exceed full scale a little; a million times over (120 dB) is damage, and its
# square would overflow the float32 power spectrum into NaN features.
MAX_SAMPLE = 1e6


def check_samples(samples: np.ndarray, path) -> np.ndarray:
    """The one guard on decoded audio: finite samples, at most 120 dB above full scale."""
    if not np.isfinite(samples).all():
        raise SpkverError("audio holds NaN or infinite samples", path)
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak > MAX_SAMPLE:
        raise SpkverError(f"audio samples are out of range (magnitude up to {peak:.3g}; full scale is 1): "
                          "the file is damaged", path)
    return samples


def _check_block(block: np.ndarray, path: Path) -> np.ndarray:
    check_samples(block, path)
    return block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]


def _native_blocks(handle, path: Path, block_frames: int):
    while True:
        block = handle.read(block_frames, dtype="float32", always_2d=True)
        if len(block) == 0:
            return
        yield _check_block(block, path)


def native_sample_rate(path) -> int | None:
    """The sample rate a recording was made at (from its header), or None when it cannot be read."""
    import soundfile as sf

    try:
        return int(sf.info(os.fsencode(path)).samplerate)
    except Exception:  # noqa: BLE001 - unreadable files are reported when they are decoded
        return None


def iter_audio_blocks(path, sample_rate: int, block_seconds: float = BLOCK_SECONDS, info: dict | None = None):
    """Yield a recording as consecutive mono float32 blocks at ``sample_rate``.

    Memory stays at a few blocks whatever the file's length, rate or channel
    count; the concatenated blocks equal :func:`load_audio`'s result. When
    ``info`` is given, ``info["native_rate"]`` receives the file's own rate.

    Raises
    ------
    SpkverError
        Missing, empty, unreadable or too short file, or NaN/Inf samples.
    """
    import soundfile as sf

    path = Path(path)
    if check_file(path, "file") == 0:
        raise SpkverError("empty file (0 bytes)", path)
    try:
        handle = sf.SoundFile(os.fsencode(path))  # bytes: file names that are not UTF-8 open too
    except (RuntimeError, ValueError, TypeError, EOFError) as exc:
        if path.suffix.lower() == ".mp3":
            yield from _checked_total(_librosa_fallback(path, sample_rate), path, sample_rate)
            return
        raise SpkverError(f"not a readable audio file ({_decode_error(exc)})", path) from None
    except OSError as exc:
        raise read_error(exc, path, "file") from None
    with handle:
        rate = handle.samplerate
        if info is not None:
            info["native_rate"] = rate
        block_frames = max(1024, int(block_seconds * rate))
        blocks = _native_blocks(handle, path, block_frames)
        try:
            yield from _checked_total(resampled_blocks(blocks, rate, sample_rate, block_frames), path,
                                      sample_rate)
        except (RuntimeError, EOFError) as exc:
            raise SpkverError(f"audio data is corrupt ({_decode_error(exc)})", path) from None


# Shorter than this, no analysis window fits: refuse rather than score noise.
MIN_DURATION_S = 0.025


def _checked_total(blocks, path: Path, sample_rate: int):
    total = 0
    for block in blocks:
        total += len(block)
        if len(block):
            yield np.ascontiguousarray(block, dtype=np.float32)
    if total == 0:
        raise SpkverError("audio holds no samples", path)
    if total < MIN_DURATION_S * sample_rate:
        raise SpkverError(
            f"audio is too short ({1000 * total / sample_rate:.0f} ms; need at least "
            f"{1000 * MIN_DURATION_S:.0f} ms)", path)


def load_audio(path, sample_rate: int) -> np.ndarray:
    """Load a whole recording as mono float32 at ``sample_rate``.

    Parameters
    ----------
    path : str or Path
        WAV, FLAC, OGG/Opus, MP3 or any format libsndfile reads; any number
        of channels (averaged to mono), integer or float samples.
    sample_rate : int
        Rate of the returned signal, in Hz.

    Returns
    -------
    numpy.ndarray
        1-D float32 signal, full scale ±1.

    Raises
    ------
    SpkverError
        The file is missing, unreadable, empty, too short, or holds NaN/Inf.
    """
    return np.concatenate(list(iter_audio_blocks(path, sample_rate)))
