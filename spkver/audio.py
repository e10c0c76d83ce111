"""Audio input: read any common format as mono float32 at the feature rate.

Inputs are files or folders; lists are one path a line or Kaldi ``wav.scp``
lines (``utt-id path``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spkver.errors import SpkverError
from spkver.fileio import os_problem

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au")


@dataclass(frozen=True)
class AudioItem:
    """One input recording: a key (utterance id, or the path), its path, and where it was named."""

    key: str
    path: Path
    origin: str = ""


def path_exists(path: Path) -> bool:
    """``path.exists()`` that answers False for names the OS refuses (too long, invalid)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def is_audio_file(path: Path) -> bool:
    """Whether ``path`` names a file with a known audio extension."""
    return path.suffix.lower() in AUDIO_EXTENSIONS


def find_audio(paths) -> list[AudioItem]:
    """Expand files and folders (searched recursively, sorted) into audio items.

    Parameters
    ----------
    paths : iterable of str or Path
        Files are taken as they are, whatever their extension; folders
        contribute every file with an audio extension below them.

    Raises
    ------
    SpkverError
        A path does not exist, or a folder holds no audio file.
    """
    items = []
    for raw in paths:
        path = Path(raw)
        if path_exists(path) and path.is_dir():
            try:
                found = sorted(p for p in path.rglob("*") if p.is_file() and is_audio_file(p))
            except OSError as exc:
                raise SpkverError(f"cannot read folder ({os_problem(exc)})", exc.filename or path) from None
            if not found:
                raise SpkverError(
                    f"folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})", path
                )
            items.extend(AudioItem(str(p), p) for p in found)
        elif path_exists(path):
            items.append(AudioItem(str(path), path))
        else:
            raise SpkverError("no such file or folder", path)
    return items


def parse_list_line(line: str, base: Path) -> AudioItem | None:
    """Parse one line of a path list or ``wav.scp``; None for blanks and comments.

    A line is a path, or ``utt-id path``. A line naming an existing file as a
    whole is a path, so paths with spaces work without an utterance id.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.endswith("|"):
        raise ValueError("piped commands are not supported; give a file path")
    whole = base / text
    if path_exists(whole):
        return AudioItem(text, whole)
    fields = text.split(None, 1)
    if len(fields) == 1:
        return AudioItem(text, whole)
    key, rest = fields
    return AudioItem(key, base / rest.strip())


def read_list(list_path) -> list[AudioItem]:
    """Read a list file: one path a line, or Kaldi ``wav.scp`` lines.

    Blank lines and ``#`` comments are skipped; relative paths resolve against
    the list file's folder. Errors name the list and the line number.
    """
    list_path = Path(list_path)
    try:
        text = list_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpkverError("no such list file", list_path) from None
    except UnicodeDecodeError:
        raise SpkverError("is not a text list of audio files (not UTF-8 text: an audio file given as --list?)",
                          list_path) from None
    except OSError as exc:
        raise SpkverError(f"cannot read list ({os_problem(exc)})", list_path) from None
    base = list_path.parent
    items, seen_keys, seen_paths = [], {}, {}
    for number, line in enumerate(text.splitlines(), start=1):
        if "\x00" in line:
            raise SpkverError(f"line {number}: contains a NUL byte", list_path)
        try:
            item = parse_list_line(line, base)
        except ValueError as exc:
            raise SpkverError(f"line {number}: {exc}", list_path) from None
        if item is None:
            continue
        for seen, value, what in ((seen_keys, item.key, "utterance id"), (seen_paths, item.path, "file")):
            if value in seen:
                raise SpkverError(f"line {number}: repeats the {what} of line {seen[value]}", list_path)
            seen[value] = number
        items.append(AudioItem(item.key, item.path, f"{list_path} line {number}"))
    if not items:
        raise SpkverError("list names no audio files", list_path)
    return items


def gather_inputs(paths, list_file=None) -> list[AudioItem]:
    """All audio named on a command line: AUDIO arguments plus ``--list``."""
    items = find_audio(paths)
    if list_file is not None:
        items.extend(read_list(list_file))
    if not items:
        raise SpkverError("no audio given: pass AUDIO files or folders, or --list FILE")
    return items


# Shorter than this, no analysis window fits: refuse rather than score noise.
MIN_DURATION_S = 0.025
# Float files may exceed full scale a little; a million times over (120 dB) is damage, and its
# square would overflow the float32 power spectrum into NaN features.
MAX_SAMPLE = 1e6
RESAMPLE_QUALITY = "HQ"
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
    if not path_exists(path):
        raise SpkverError("no such file", path)
    if path.is_dir():
        raise SpkverError("is a folder, not an audio file", path)
    if os.path.getsize(path) == 0:
        raise SpkverError("empty file (0 bytes)", path)
    try:
        handle = sf.SoundFile(os.fsencode(path))  # bytes: file names that are not UTF-8 open too
    except (RuntimeError, ValueError, TypeError, EOFError) as exc:
        if path.suffix.lower() == ".mp3":
            yield from _checked_total(_librosa_fallback(path, sample_rate), path, sample_rate)
            return
        raise SpkverError(f"not a readable audio file ({_decode_error(exc)})", path) from None
    except OSError as exc:
        raise SpkverError(f"cannot read file ({exc.strerror or exc})", path) from None
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


def resample(signal: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample with soxr's high-quality anti-aliasing filter (the resampler librosa uses)."""
    if orig_rate == target_rate:
        return signal
    import soxr

    return soxr.resample(np.asarray(signal, dtype=np.float32), orig_rate, target_rate,
                         quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


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
