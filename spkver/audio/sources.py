"""Audio sources: files, folders, lists and Kaldi data folders, as :class:`AudioItem`.

Inputs are files or folders; lists are one path a line or Kaldi ``wav.scp``
lines (``utt-id path``, or ``utt-id command |``, whose standard output is the
recording); a Kaldi data folder adds ``segments`` (utterances cut from
recordings) and the speakers of ``utt2spk`` / ``spk2utt``. Relative paths,
and the working folder of commands, are the list's own folder.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path

from spkver.errors import SpkverError
from spkver.fileio import content_lines, file_identity, os_problem

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au")


@dataclass(frozen=True)
class AudioItem:
    """One input utterance: a recording, or a stretch of one.

    Attributes
    ----------
    key : str
        Utterance id, or the path as given.
    path : Path
        The audio file; for a piped item, the list that names the command.
    origin : str
        Where the item was named (``"LIST line N"``), for error messages.
    command : str, optional
        A shell command whose standard output is the recording (a piped Kaldi
        ``wav.scp`` entry), run in ``path``'s folder.
    start, end : float
        The stretch of the recording, in seconds (a Kaldi ``segments`` line);
        ``end`` None is the end of the recording.
    utterance : bool
        The key is an utterance id of a data folder: outputs name the item by it.
    """

    key: str
    path: Path
    origin: str = ""
    command: str | None = None
    start: float = 0.0
    end: float | None = None
    utterance: bool = False

    @property
    def name(self) -> str:
        """How outputs name the item: its utterance id (data folders, piped lines), else its path."""
        return self.key if self.utterance or self.command is not None else str(self.path)

    @property
    def audio(self) -> tuple:
        """What audio the item is (a command's output, or a file; and the stretch of it): items with the
        same ``audio`` need their features extracted once."""
        return self.command, str(self.path), self.start, self.end

    @property
    def where(self) -> str:
        """What an error message about the item's audio names first: its file, or its utterance."""
        return f"utterance {self.key}" if self.command is not None else str(self.path)

    @property
    def segmented(self) -> bool:
        """Whether the item is a stretch of its recording rather than all of it."""
        return bool(self.start) or self.end is not None

    @property
    def recording(self) -> tuple:
        """The recording the item is cut from: items sharing it can be read from one decoding."""
        return self.command, str(self.path)

    def identity(self) -> str | None:
        """A cache key for the item's audio, or None when it has none (the output of a command).

        A file's key is :func:`~spkver.fileio.file_identity` (changes with its
        contents); a segment adds its start and end.
        """
        if self.command is not None:
            return None
        identity = file_identity(self.path)
        if self.segmented:
            identity += f"|segment {self.start!r} {self.end!r}"
        return identity


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


PIPES_REFUSED = ("runs a command (a piped wav.scp entry); pass --allow-pipes to run the commands of this list, "
                 "or give its folder as --data-dir")


def parse_list_line(line: str, list_path: Path, allow_pipes: bool = False) -> AudioItem | None:
    """Parse one line of a path list or ``wav.scp``; None for blanks and comments.

    A line is a path, ``utt-id path``, or ``utt-id command |`` (refused unless
    ``allow_pipes``). A line naming an existing file as a whole is a path, so
    paths with spaces work without an utterance id.

    Raises
    ------
    ValueError
        A piped line without an utterance id or command, or one not allowed.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    base = list_path.parent
    if text.endswith("|"):
        fields = text[:-1].split(None, 1)
        if len(fields) < 2:
            raise ValueError("a piped command needs an utterance id first: 'utt-id command |'")
        if not allow_pipes:
            raise ValueError(PIPES_REFUSED)
        return AudioItem(fields[0], list_path, command=fields[1].strip())  # runs in the list's folder
    whole = base / text
    if path_exists(whole):
        return AudioItem(text, whole)
    fields = text.split(None, 1)
    if len(fields) == 1:
        return AudioItem(text, whole)
    key, rest = fields
    return AudioItem(key, base / rest.strip())


def list_lines(list_path: Path, what: str):
    """``(number, line)`` of the lines of a list file that hold something (:func:`~spkver.fileio.content_lines`)."""
    return content_lines(list_path, what,
                         not_text=f"is not a text {what} (not UTF-8 text: an audio file given as a list?)")


def read_list(list_path, *, allow_pipes: bool = False) -> list[AudioItem]:
    """Read a list file: one path a line, or Kaldi ``wav.scp`` lines.

    Parameters
    ----------
    list_path : str or Path
        Blank lines and ``#`` comments are skipped; relative paths resolve
        against the list file's folder.
    allow_pipes : bool
        Accept ``utt-id command |`` lines, whose command runs through the
        shell when the audio is read (a list can run any command: only for
        lists you trust).

    Returns
    -------
    list of AudioItem

    Raises
    ------
    SpkverError
        A missing or binary list, a repeated utterance id or file, a piped
        line without ``allow_pipes``, or no entry; messages name the line.
    """
    list_path = Path(list_path)
    items, seen_keys, seen_paths = [], {}, {}
    for number, line in list_lines(list_path, "list file"):
        try:
            item = parse_list_line(line, list_path, allow_pipes)
        except ValueError as exc:
            raise SpkverError(f"line {number}: {exc}", list_path) from None
        if item is None:
            continue
        for seen, value, what in ((seen_keys, item.key, "utterance id"), (seen_paths, item.command or item.path,
                                                                            "file")):
            if value in seen:
                raise SpkverError(f"line {number}: repeats the {what} of line {seen[value]}", list_path)
            seen[value] = number
        items.append(replace(item, origin=f"{list_path} line {number}"))
    if not items:
        raise SpkverError("list names no audio files", list_path)
    return items


@dataclass(frozen=True)
class DataDir:
    """A Kaldi data folder read and checked: its utterances and, when known, their speakers.

    Attributes
    ----------
    root : Path
    items : list of AudioItem
        One per utterance (a ``wav.scp`` line, or a ``segments`` line when the
        folder has one), in file order, named by utterance id.
    speakers : dict of str to list of str
        Speaker id to utterance ids (from ``spk2utt``, else ``utt2spk``, in
        file order); empty when the folder has neither.
    """

    root: Path
    items: list
    speakers: dict

    @functools.cached_property
    def _by_key(self) -> dict[str, AudioItem]:
        return {item.key: item for item in self.items}

    def items_of(self, speaker: str) -> list[AudioItem]:
        """The utterances of one speaker."""
        return [self._by_key[key] for key in self.speakers[speaker]]


def _id_fields(path: Path, count: int | None, usage: str):
    """``(number, fields, line)`` of a Kaldi table: at least two fields (exactly ``count`` if given), ids unique."""
    seen: dict[str, int] = {}
    for number, line in list_lines(path, "Kaldi table"):
        fields = line.split()
        if len(fields) < 2 or (count is not None and len(fields) != count):
            raise SpkverError(f"line {number}: expected '{usage}'", path)
        if fields[0] in seen:
            raise SpkverError(f"line {number}: repeats the id {fields[0]!r} of line {seen[fields[0]]}", path)
        seen[fields[0]] = number
        yield number, fields, line


def _seconds(text: str, what: str, number: int, path: Path) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SpkverError(f"line {number}: {what} {text!r} is not a number of seconds", path) from None
    if not math.isfinite(value):
        raise SpkverError(f"line {number}: {what} {text!r} is not a number of seconds", path)
    return value


def _segments(path: Path, recordings: dict) -> list[AudioItem]:
    """The utterances of a ``segments`` file: ``seg-id rec-id start end`` (seconds; end -1: to the end)."""
    items = []
    for number, (seg, rec, start_text, end_text), _ in _id_fields(path, 4, "segment-id recording-id start end"):
        if rec not in recordings:
            raise SpkverError(f"line {number}: recording id {rec!r} is not in wav.scp", path)
        start = _seconds(start_text, "start", number, path)
        end = _seconds(end_text, "end", number, path)
        if start < 0:
            raise SpkverError(f"line {number}: start {start_text} is negative", path)
        if end == -1:
            end_at = None
        elif end <= start:
            raise SpkverError(f"line {number}: end {end_text} is not after start {start_text}", path)
        else:
            end_at = end
        items.append(replace(recordings[rec], key=seg, start=start, end=end_at, origin=f"{path} line {number}"))
    return items


def _speakers(root: Path, keys: list[str]) -> dict[str, list[str]]:
    """Speaker to utterances from ``spk2utt`` and/or ``utt2spk``, checked against each other and ``keys``."""
    utt2spk_path, spk2utt_path = root / "utt2spk", root / "spk2utt"
    known = set(keys)
    speaker_of: dict[str, tuple[str, int]] = {}
    if utt2spk_path.is_file():
        for number, fields, _ in _id_fields(utt2spk_path, 2, "utterance-id speaker-id"):
            if fields[0] not in known:
                raise SpkverError(f"line {number}: utterance {fields[0]!r} is not in "
                                  f"{'segments' if (root / 'segments').is_file() else 'wav.scp'}", utt2spk_path)
            speaker_of[fields[0]] = (fields[1], number)
    speakers: dict[str, list[str]] = {}
    if spk2utt_path.is_file():
        listed: dict[str, int] = {}
        for number, (speaker, *utterances), _ in _id_fields(spk2utt_path, None, "speaker-id utterance-id..."):
            for utt in utterances:
                if utt in listed:
                    raise SpkverError(f"line {number}: utterance {utt!r} is listed again (first on line "
                                      f"{listed[utt]})", spk2utt_path)
                listed[utt] = number
                if utt not in known:
                    raise SpkverError(f"line {number}: utterance {utt!r} is not in the data folder's utterances",
                                      spk2utt_path)
                if speaker_of and speaker_of.get(utt, (speaker,))[0] != speaker:
                    spoken_by = (f"speaker {speaker_of[utt][0]!r} in utt2spk line {speaker_of[utt][1]}"
                                 if utt in speaker_of else "no speaker in utt2spk")
                    raise SpkverError(f"line {number}: utterance {utt!r} of speaker {speaker!r} has {spoken_by}",
                                      spk2utt_path)
            speakers[speaker] = utterances
        if speaker_of and set(speaker_of) != set(listed):
            utt = next(u for u in speaker_of if u not in listed)
            raise SpkverError(f"line {speaker_of[utt][1]}: utterance {utt!r} is not in spk2utt", utt2spk_path)
    else:
        for utt, (speaker, _) in speaker_of.items():
            speakers.setdefault(speaker, []).append(utt)
    if speakers:
        covered = {utt for utterances in speakers.values() for utt in utterances}
        missing = [key for key in keys if key not in covered]
        if missing:
            table = utt2spk_path if utt2spk_path.is_file() else spk2utt_path
            raise SpkverError(f"utterance {missing[0]!r} has no speaker ({len(missing)} utterances have none)", table)
    return speakers


def read_data_dir(root) -> DataDir:
    """Read a Kaldi data folder: ``wav.scp``, and optional ``segments``, ``utt2spk``, ``spk2utt``.

    ``wav.scp`` lines are ``recording-id path`` or ``recording-id command |``
    (the command's standard output is the recording, as in Kaldi; commands
    run through the shell in the data folder, as do relative paths).

    Parameters
    ----------
    root : str or Path
        The folder.

    Returns
    -------
    DataDir

    Raises
    ------
    SpkverError
        A missing folder or ``wav.scp``; a repeated id; a segment whose
        recording is not in ``wav.scp``, that starts after it ends, or whose
        times are not numbers; ``utt2spk`` and ``spk2utt`` that disagree, name
        unknown utterances, or leave one without a speaker. Messages name the
        file and line.
    """
    root = Path(root)
    if not root.is_dir():
        raise SpkverError("no such data folder" if not path_exists(root) else "is not a folder (--data-dir takes a "
                          "Kaldi data folder holding wav.scp)", root)
    scp = root / "wav.scp"
    if not scp.is_file():
        raise SpkverError("data folder has no wav.scp", root)
    recordings: dict[str, AudioItem] = {}
    for number, fields, line in _id_fields(scp, None, "recording-id path, or recording-id command |"):
        rest = line.strip()[len(fields[0]):].strip()
        if rest.endswith("|"):
            item = AudioItem(fields[0], scp, command=rest[:-1].strip())
        else:
            path = Path(rest)
            item = AudioItem(fields[0], path if path.is_absolute() else root / path)
        recordings[fields[0]] = replace(item, origin=f"{scp} line {number}", utterance=True)
    if not recordings:
        raise SpkverError("wav.scp names no recordings", scp)
    segments = root / "segments"
    items = _segments(segments, recordings) if segments.is_file() else list(recordings.values())
    if not items:
        raise SpkverError("segments names no utterances", segments)
    return DataDir(root, items, _speakers(root, [item.key for item in items]))


def gather_inputs(paths, list_files=(), data_dir=None, *, allow_pipes: bool = False) -> list[AudioItem]:
    """All audio named on a command line: AUDIO arguments, each ``--list`` (a path, or several) and ``--data-dir``."""
    items = find_audio(paths)
    if isinstance(list_files, (str, Path)):
        list_files = [list_files]
    for list_file in list_files or ():
        items.extend(read_list(list_file, allow_pipes=allow_pipes))
    if data_dir is not None:
        items.extend(read_data_dir(data_dir).items)
    if not items:
        raise SpkverError("no audio given: pass AUDIO files or folders, --list FILE or --data-dir DIR")
    return items
