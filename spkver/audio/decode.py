"""Decoding: any common format as mono float32 blocks at the feature rate, checked.

A recording is a file, or the standard output of a command (a piped Kaldi
``wav.scp`` entry), spooled to memory and then to a temporary file; an
utterance is a recording or a stretch of one (a ``segments`` line).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from spkver.audio.resample import resampled_blocks
from spkver.audio.sources import AudioItem
from spkver.errors import SpkverError
from spkver.fileio import check_file, read_error

# Decoding and resampling hold a few blocks at a time, whatever the recording's length.
BLOCK_SECONDS = 20.0

# A command's output beyond this is refused: more than 6 hours of 16-bit stereo at 48 kHz, so a runaway
# command (`yes |`, a wrong file) cannot fill the disk the output is spooled to.
MAX_PIPED_BYTES = 4 << 30

# Kept in memory up to this size, then spooled to a temporary file.
PIPE_SPOOL_BYTES = 64 << 20

# A segment may end this far beyond its recording and is cut at the end (Kaldi's extract-segments
# tolerates the same overshoot, which rounding in segmentation tools produces); further is an error.
SEGMENT_OVERSHOOT_S = 0.5


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


def _check_block(block: np.ndarray, path) -> np.ndarray:
    check_samples(block, path)
    return block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]


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
    yield from iter_item_blocks(AudioItem(str(path), Path(path)), sample_rate, block_seconds=block_seconds, info=info)


def _piped_output(item: AudioItem):
    """The standard output of ``item.command`` (run through the shell in its list's folder), spooled.

    Raises
    ------
    SpkverError
        The command fails to start, exits with a non-zero status, writes
        nothing, or writes more than :data:`MAX_PIPED_BYTES`.
    """
    output = tempfile.SpooledTemporaryFile(max_size=PIPE_SPOOL_BYTES)
    errors = tempfile.TemporaryFile()
    try:
        process = subprocess.Popen(item.command, shell=True, cwd=item.path.parent, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=errors)
    except OSError as exc:
        output.close()
        errors.close()
        raise SpkverError(f"cannot run its command ({exc.strerror or exc})", item.where) from None
    total = 0
    with errors, process:
        assert process.stdout is not None
        while block := process.stdout.read(1 << 20):
            total += len(block)
            if total > MAX_PIPED_BYTES:
                process.kill()
                output.close()
                raise SpkverError(f"its command wrote more than {MAX_PIPED_BYTES >> 30} GiB; refusing it "
                                  f"(command: {item.command})", item.where)
            output.write(block)
        status = process.wait()
        if status != 0 or total == 0:
            errors.seek(0)
            lines = errors.read()[-2000:].decode(errors="replace").strip().splitlines()
            said = f"; it said: {lines[-1].strip()}" if lines else ""
            output.close()
            problem = f"exited with status {status}" if status > 0 else (
                f"was killed by signal {-status}" if status < 0 else "wrote no audio (empty output)")
            raise SpkverError(f"command {problem}{said} (command: {item.command})", item.where)
    output.seek(0)
    return output


@contextlib.contextmanager
def open_recording(item: AudioItem):
    """The recording of ``item`` as an open ``soundfile.SoundFile`` (None: only librosa reads it).

    A piped item's command runs here, once: every segment of the recording
    can be read from the same handle.

    Raises
    ------
    SpkverError
        A missing, empty or unreadable file; a failing command, or output that is not audio.
    """
    import soundfile as sf

    with contextlib.ExitStack() as stack:
        if item.command is not None:
            source = stack.enter_context(_piped_output(item))
        else:
            path = item.path
            if check_file(path, "file") == 0:
                raise SpkverError("empty file (0 bytes)", path)
            source = os.fsencode(path)  # bytes: file names that are not UTF-8 open too
        try:
            handle = sf.SoundFile(source)
        except (RuntimeError, ValueError, TypeError, EOFError) as exc:
            if item.command is None and item.path.suffix.lower() == ".mp3":
                yield None
                return
            what = "its command's output is not" if item.command is not None else "not"
            raise SpkverError(f"{what} a readable audio file ({_decode_error(exc)})", item.where) from None
        except OSError as exc:
            raise read_error(exc, item.path, "file") from None
        with handle:
            yield handle


def _segment_frames(item: AudioItem, rate: int, available: int) -> tuple[int, int]:
    """First and end sample of ``item``'s stretch of a recording of ``available`` samples at ``rate``."""
    first = int(round(item.start * rate))
    if item.end is None:
        last = available
    else:
        last = int(round(item.end * rate))
        if last > available + SEGMENT_OVERSHOOT_S * rate:
            raise SpkverError(f"segment ends at {item.end:g} s, after the end of its recording "
                              f"({available / rate:.2f} s)", item.where)
        last = min(last, available)
    if first >= available:
        raise SpkverError(f"segment starts at {item.start:g} s, after the end of its recording "
                          f"({available / rate:.2f} s)", item.where)
    return first, last


def _stretch_blocks(handle, item: AudioItem, block_frames: int):
    """Native-rate mono blocks of ``item``'s stretch of the open recording ``handle``."""
    first, last = _segment_frames(item, handle.samplerate, handle.frames) if item.segmented else (0, None)
    handle.seek(first)
    remaining = last - first if last is not None else None
    while remaining is None or remaining > 0:
        size = block_frames if remaining is None else min(block_frames, remaining)
        block = handle.read(size, dtype="float32", always_2d=True)
        if len(block) == 0:
            return
        if remaining is not None:
            remaining -= len(block)
        yield _check_block(block, item.where)


def iter_item_blocks(item: AudioItem, sample_rate: int, *, recording=None, block_seconds: float = BLOCK_SECONDS,
                     info: dict | None = None):
    """Yield ``item``'s audio (its stretch of its recording) as mono float32 blocks at ``sample_rate``.

    Parameters
    ----------
    item : AudioItem
        A file, a command's output, or a segment of either.
    sample_rate : int
        Rate of the blocks, in Hz.
    recording : soundfile.SoundFile, optional
        The item's recording already opened by :func:`open_recording` (to
        read several segments from one decoding); else it is opened here.
    block_seconds : float
        Length of the native-rate blocks read at a time.
    info : dict, optional
        Receives ``info["native_rate"]``, the recording's own rate.

    Raises
    ------
    SpkverError
        Unreadable or too short audio, NaN/Inf samples, a failing command, a
        segment outside its recording.
    """
    if recording is None:
        with open_recording(item) as opened:
            yield from iter_item_blocks(item, sample_rate, recording=opened or False, block_seconds=block_seconds,
                                        info=info)
        return
    if recording is False:  # soundfile cannot read it: librosa decodes the whole file, then it is cut
        signal = np.concatenate(list(_librosa_fallback(item.path, sample_rate)))
        if item.segmented:
            first, last = _segment_frames(item, sample_rate, len(signal))
            signal = signal[first:last]
        yield from _checked_total([signal], item.where, sample_rate)
        return
    rate = recording.samplerate
    if info is not None:
        info["native_rate"] = rate
    block_frames = max(1024, int(block_seconds * rate))
    blocks = _stretch_blocks(recording, item, block_frames)
    try:
        yield from _checked_total(resampled_blocks(blocks, rate, sample_rate, block_frames), item.where,
                                  sample_rate)
    except (RuntimeError, EOFError) as exc:
        raise SpkverError(f"audio data is corrupt ({_decode_error(exc)})", item.where) from None


# Shorter than this, no analysis window fits: refuse rather than score noise.
MIN_DURATION_S = 0.025


def _checked_total(blocks, path, sample_rate: int):
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
