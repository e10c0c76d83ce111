"""Audio input: read any common format as mono float32 at the feature rate.

Inputs are files or folders; lists are one path a line or Kaldi ``wav.scp``
lines (``utt-id path``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spkver.errors import SpkverError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au")


@dataclass(frozen=True)
class AudioItem:
    """One input recording: a key (utterance id, or the path) and its path."""

    key: str
    path: Path


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
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_audio_file(p))
            if not found:
                raise SpkverError(
                    f"folder holds no audio files ({', '.join(AUDIO_EXTENSIONS)})", path
                )
            items.extend(AudioItem(str(p), p) for p in found)
        elif path.exists():
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
    if whole.exists():
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
    except (OSError, UnicodeDecodeError) as exc:
        raise SpkverError(f"cannot read list: {exc}", list_path) from None
    base = list_path.parent
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if "\x00" in line:
            raise SpkverError(f"line {number}: contains a NUL byte", list_path)
        try:
            item = parse_list_line(line, base)
        except ValueError as exc:
            raise SpkverError(f"line {number}: {exc}", list_path) from None
        if item is not None:
            items.append(item)
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


def _read_raw(path: Path) -> tuple[np.ndarray, int]:
    """Decode ``path`` to (frames × channels) float32 and its sample rate."""
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return data, rate
    except sf.LibsndfileError as exc:
        reason = str(exc).split(":", 1)[-1].strip() or "unknown format"
    except (RuntimeError, ValueError, TypeError, EOFError) as exc:
        # soundfile raises a few kinds on malformed headers.
        reason = str(exc) or type(exc).__name__
    if path.suffix.lower() == ".mp3":
        try:
            import librosa

            data, rate = librosa.load(str(path), sr=None, mono=False, dtype=np.float32)
            return np.atleast_2d(data).T, int(rate)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is bad input
            reason = str(exc) or type(exc).__name__
    raise SpkverError(f"not a readable audio file ({reason})", path)


def resample(signal: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample with a polyphase anti-aliasing filter (``scipy.signal.resample_poly``)."""
    if orig_rate == target_rate:
        return signal
    from scipy.signal import resample_poly

    g = math.gcd(int(orig_rate), int(target_rate))
    out = resample_poly(signal, target_rate // g, orig_rate // g)
    return out.astype(np.float32, copy=False)


def load_audio(path, sample_rate: int) -> np.ndarray:
    """Load a recording as mono float32 at ``sample_rate``.

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
        The file is missing, unreadable, empty, or holds NaN/Inf samples.
    """
    path = Path(path)
    if not path.exists():
        raise SpkverError("no such file", path)
    if path.is_dir():
        raise SpkverError("is a folder, not an audio file", path)
    if os.path.getsize(path) == 0:
        raise SpkverError("empty file (0 bytes)", path)
    data, rate = _read_raw(path)
    if data.shape[0] == 0:
        raise SpkverError("audio holds no samples", path)
    if not np.isfinite(data).all():
        raise SpkverError("audio holds NaN or infinite samples", path)
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(resample(mono, rate, sample_rate), dtype=np.float32)
