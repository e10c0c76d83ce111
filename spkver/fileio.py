"""Where spkver meets storage: atomic writes, locks, hashes, file identity, bounded JSON and text lists.

Every file spkver writes goes through :func:`write_atomic` (a temporary file
in the same folder, then a rename), so a crash, a full disk or a read-only
folder leaves the previous file as it was and the user gets one line naming
the file. JSON read from disk (model metadata, calibrations, caches, indexes)
goes through :func:`parse_json`, which bounds its size and nesting.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import tokenize
from pathlib import Path

from spkver.errors import SpkverError

# Metadata, calibrations and indexes are small; a larger file is damage or an attack.
# What numpy's reader of a damaged ``.npy`` header can raise: it parses the header as a Python literal.
NPY_HEADER_ERRORS = (ValueError, SyntaxError, tokenize.TokenError)
MAX_JSON_BYTES = 64 << 20


def os_problem(exc: OSError) -> str:
    """The words of an OS error, without its path (the caller names the file)."""
    return exc.strerror or type(exc).__name__


def write_atomic(path, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    With ``sync`` (models) the data and the folder are fsynced; caches skip
    that, since a damaged cache entry is detected and recomputed.

    Raises
    ------
    SpkverError
        The folder is missing, read-only or full, or ``path`` is a folder; the
        temporary file is removed and any file already at ``path`` is untouched.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise SpkverError(f"cannot write here ({os_problem(exc)})", path) from None
    try:
        _write_file(fd, data, sync)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SpkverError(f"cannot write ({os_problem(exc)})", path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not sync:
        return
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _write_file(fd: int, data: bytes, sync: bool) -> None:
    """Write and close ``fd`` (the step a full disk fails; tests inject ENOSPC here)."""
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def parse_json(text: str | bytes, what: str, path=None):
    """Parse JSON read from a file; anything too large, too deep or malformed is a clean error."""
    if len(text) > MAX_JSON_BYTES:
        raise SpkverError(f"{what} is too large ({len(text)} bytes)", path)
    try:
        return json.loads(text)
    except RecursionError:
        raise SpkverError(f"{what} is nested too deeply", path) from None
    except (ValueError, TypeError) as exc:
        raise SpkverError(f"{what} is not valid JSON ({exc})", path) from None


def read_error(exc: OSError, path, what: str) -> SpkverError:
    """The one-line error for ``exc``, met while reading ``path``, a ``what`` (``"list file"``).

    A missing file is ``no such WHAT``, a folder ``is a folder, not a WHAT``,
    anything else ``cannot read WHAT (the OS's words)``.
    """
    if isinstance(exc, FileNotFoundError):
        return SpkverError(f"no such {what}", path)
    if isinstance(exc, IsADirectoryError):
        article = "an" if what[:1] in "aeiou" else "a"
        return SpkverError(f"is a folder, not {article} {what}", path)
    return SpkverError(f"cannot read {what} ({os_problem(exc)})", path)


@contextlib.contextmanager
def reading(path, what: str):
    """Turn an ``OSError`` raised in the ``with`` block into :func:`read_error`'s error."""
    try:
        yield
    except OSError as exc:
        raise read_error(exc, path, what) from None


def check_file(path, what: str) -> int:
    """The size of the file ``path``, checked for a reader that names no OS error of its own (libsndfile).

    Raises :func:`read_error`'s error for a missing file or a folder; a name
    the OS refuses (too long, a NUL byte) names no file, as for ``Path.exists``.
    """
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        raise read_error(FileNotFoundError(), path, what) from None
    if stat.S_ISDIR(info.st_mode):
        raise read_error(IsADirectoryError(), path, what)
    return info.st_size


def reads_as(read, path) -> bool:
    """Whether ``read(path)`` accepts the file (raises no :class:`SpkverError`): is it of that kind?"""
    try:
        read(path)
    except SpkverError:
        return False
    return True


def read_json(path, what: str):
    """Read and parse a JSON file (see :func:`parse_json`)."""
    path = Path(path)
    with reading(path, what), open(path, "rb") as handle:
        text = handle.read(MAX_JSON_BYTES + 1)
    return parse_json(text, what, path)


@contextlib.contextmanager
def locked(lock_path):
    """Hold an exclusive lock on ``lock_path`` (a file created for it) for the ``with`` block.

    The lock file is never a followed symbolic link (a link planted in a shared
    folder cannot make spkver create or lock a file elsewhere), and it is
    removed when the block ends: whoever locks the file re-checks that the path
    still names it, so a waiting process never holds a lock on a file already
    unlinked.
    """
    import fcntl

    lock_path = Path(lock_path)
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666 & ~_umask())
        except OSError as exc:
            if lock_path.is_symlink():
                raise SpkverError("lock file is a symbolic link; refusing to follow it (remove it)", lock_path) \
                    from None
            raise SpkverError(f"cannot create lock file ({os_problem(exc)})", lock_path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock_path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder before us removed that file: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


def read_text(path, what: str, not_text: str | None = None) -> str:
    """The UTF-8 text of a list file (audio list, ``wav.scp``, trials, scores), or one clean error.

    ``what`` names the file in messages (``"list file"``); ``not_text`` is the
    message for bytes that are not UTF-8 (binary data given as a list, say).
    """
    try:
        with reading(path, what):
            return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpkverError(not_text or f"{what} is not UTF-8 text", path) from None


def numbered_lines(text: str, path):
    """``(number, line)`` of every line of a list file's ``text``, from 1; a NUL byte is an error naming the line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if "\x00" in line:
            raise SpkverError(f"line {number}: contains a NUL byte", path)
        yield number, line


def content_lines(path, what: str, *, not_text: str | None = None, text: str | None = None):
    """``(number, line)`` of a list file's lines that hold something: stripped, blank and ``#`` lines skipped.

    ``text`` is the file's text when it was already read; else it is read
    here (:func:`read_text`, with ``what`` and ``not_text``).
    """
    text = read_text(path, what, not_text) if text is None else text
    for number, raw in numbered_lines(text, path):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


# The first bytes of the files people give by mistake where a model is expected.
_AUDIO_MAGIC = ((b"RIFF", "WAV audio"), (b"RF64", "WAV audio"), (b"fLaC", "FLAC audio"), (b"OggS", "Ogg audio"),
                (b"ID3", "MP3 audio"), (b"FORM", "AIFF audio"), (b".snd", "AU audio"))


def what_file_is(path) -> str:
    """What a file that is not what was expected looks like, from its first bytes, for a message.

    Returns e.g. ``"it is WAV audio"``, ``"it is text: a trials or score file?"``
    or ``"it is binary data"``; ``"it is empty"``, or ``""`` when it cannot be read.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return ""
    if not head:
        return "it is empty"
    for magic, kind in _AUDIO_MAGIC:
        if head.startswith(magic):
            return f"it is {kind}"
    if head[:2] == b"\xff\xfb" or head[:2] == b"\xff\xf3" or head[:2] == b"\xff\xf2":
        return "it is MP3 audio"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single .npy array: a feature file?"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not merely a character cut at the end of the 4 KiB read
            return "it is binary data"
        text = head[: exc.start].decode("utf-8")
    if "\x00" in text:
        return "it is binary data"
    if text.lstrip().startswith("{"):
        return "it is JSON text: a calibration file?"
    return "it is text: a trials, list or score file?"


def refuse_other_kind(path, is_same_kind, what: str) -> None:
    """An output may replace an earlier file of its own kind, never anything else (a model, say)."""
    path = Path(path)
    if path.is_dir():
        raise SpkverError(f"is a folder; give a file name for the {what}", path)
    if path.exists() and path.stat().st_size and not is_same_kind(path):
        raise SpkverError(f"exists and is not a {what}; refusing to replace it (remove it or pick another name)",
                          path)


def file_signature(path) -> list:
    """What says a file is unchanged without reading it: ``[size, mtime_ns, ctime_ns, inode]``.

    ``cp -p``, ``rsync -t`` and ``tar x`` restore a modification time, but no
    tool can set the change time (ctime): any write to the contents moves it.
    Raises OSError when the file cannot be examined.
    """
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def sha256_hex(parts, length: int = 64) -> str:
    """SHA-256 of ``parts`` (each ``str``, UTF-8 encoded, or bytes-like), as the first ``length`` hex digits.

    Every hash spkver keeps (model fingerprints, cache keys, data identities)
    is made here; each caller keeps the length its files have always used.
    """
    import hashlib

    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()[:length]


def array_parts(arrays, dtype=None):
    """What identifies each array for :func:`sha256_hex`: its shape, then its bytes (as ``dtype`` if given)."""
    import numpy as np

    for array in arrays:
        yield str(array.shape)
        yield np.ascontiguousarray(array, dtype=dtype).data


def content_hash(path) -> str:
    """BLAKE2b of a file's bytes (hex), read 1 MiB at a time."""
    import hashlib

    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path) -> str:
    """A cache key for a file's contents: its resolved path and :func:`file_signature`.

    Any change of contents changes the key; a mere copy or move changes it too,
    which costs a recomputation, never a wrong answer.
    """
    path = Path(path)
    try:
        return f"{path.resolve()}|" + "|".join(map(str, file_signature(path)))
    except OSError:
        return str(path)


def folder_usage(path) -> tuple[int, int]:
    """``(files, bytes)`` under the folder ``path`` (0, 0 when it does not exist); links are not followed."""
    files = size = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(folder, name)).st_size
                files += 1
    return files, size


def megabytes(size: int) -> str:
    """A byte count for people: ``12.3 MB``."""
    return f"{size / 1e6:.1f} MB"

