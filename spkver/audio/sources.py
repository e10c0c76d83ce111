"""Audio sources: files, folders and lists of recordings, as :class:`AudioItem`.

Inputs are files or folders; lists are one path a line or Kaldi ``wav.scp``
lines (``utt-id path``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spkver.errors import SpkverError
from spkver.fileio import numbered_lines, os_problem, read_text

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
    text = read_text(list_path, "list file",
                     "is not a text list of audio files (not UTF-8 text: an audio file given as --list?)")
    base = list_path.parent
    items, seen_keys, seen_paths = [], {}, {}
    for number, line in numbered_lines(text, list_path):
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


