"""Feature store: features on disk, one ``.npy`` per recording plus ``index.json``.

Entries are keyed by the recording's resolved path (and, for a segment of
it, the segment's start and end). An entry is fresh when
the recording's size, modification time, change time and inode are those
stored with it (:func:`spkver.fileio.file_signature`: a content change always
moves the change time, which no copy tool can restore); when they differ, the
file's content hash decides, so a copied or moved corpus is re-hashed rather
than re-extracted, and a file replaced by other content of the same size with
its old modification time is extracted again. The store holds one feature
configuration (its fingerprint is in the index). Arrays are opened
memory-mapped and checked (shape, finite values) before use: training
streams them and never needs them all in RAM.

The output of a command (a piped ``wav.scp`` entry) has no identity to check
without running the command, so its entry, keyed by the command and its
folder, is never taken as fresh: the command runs and the features are
extracted again every time, and the entry only keeps them for training.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from spkver.audio.sources import AudioItem
from spkver.errors import SpkverError, printable
from spkver.features.config import FeatureConfig
from spkver.features.extraction import plausible_features, usable_features
from spkver.fileio import (
    NPY_HEADER_ERRORS,
    content_hash,
    file_signature,
    locked,
    os_problem,
    read_json,
    sha256_hex,
    write_atomic,
)
from spkver.run import RunOptions

INDEX = "index.json"
# What a store writes: an array per entry, the lock, the temporary files of atomic writes, and the index
# (which another run may have just written).
OWN_FILE = re.compile(r"[0-9a-f]{24}\.npy|\.lock|\.(index\.json|[0-9a-f]{24}\.npy)\.[^/]+\.tmp|index\.json")
FORMAT = 1


def default_cache_dir() -> Path | None:
    """``$SPKVER_CACHE_DIR``, else ``$XDG_CACHE_HOME/spkver``, else ``~/.cache/spkver``; None without a home."""
    if os.environ.get("SPKVER_CACHE_DIR"):
        return Path(os.environ["SPKVER_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "spkver"
    try:
        return Path.home() / ".cache" / "spkver"
    except (RuntimeError, KeyError, OSError):  # no $HOME and no passwd entry for this uid
        return None


def usable_cache_dir(path: Path) -> str | None:
    """Why the cache folder ``path`` cannot be used (None when it can): it must be a writable folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".probe-")
        probe.close()
    except FileExistsError:
        return "it is a file, not a folder"
    except OSError as exc:
        return os_problem(exc)
    return None


STORE_PREFIX = "features-"


def cache_store_path(cache_dir, config: FeatureConfig) -> Path:
    """The feature store of ``config`` in a cache folder (one store per feature setting)."""
    return Path(cache_dir) / f"{STORE_PREFIX}{config.fingerprint()}"


def cached_stores(cache_dir) -> list[Path]:
    """The feature stores in a cache folder: ``features-*`` folders holding an ``index.json``.

    Nothing else in the folder counts as the cache, so clearing it can never
    remove files spkver did not make.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    return sorted(p for p in cache_dir.glob(f"{STORE_PREFIX}*")
                  if p.is_dir() and not p.is_symlink() and (p / INDEX).is_file())


def as_item(source) -> AudioItem:
    """``source`` as an :class:`AudioItem`: items as they are, a path as the whole file."""
    return source if isinstance(source, AudioItem) else AudioItem(str(source), Path(source))


class FeatureStore:
    """A folder of per-recording feature arrays for one :class:`FeatureConfig`.

    Parameters
    ----------
    root : Path
        The store's folder (created when features are first written).
    config : FeatureConfig, optional
        Required to create a store; must match an existing store's config.
    """

    def __init__(self, root, config: FeatureConfig | None = None):
        self.root = Path(root)
        self._dirty = False  # entries changed in memory and not yet in the index
        self._hashes: dict[tuple, str] = {}  # content hashes made in this run, by (file, signature)
        index = self._read_index()
        if index is None:
            if config is None:
                raise SpkverError("not a feature store (no index.json)", self.root)
            self.check_new_folder(self.root)
            self.config, self.entries = config, {}
        else:
            try:
                stored = FeatureConfig.from_dict(index["feature_config"])
            except (KeyError, TypeError, ValueError) as exc:
                raise SpkverError(f"feature store index is damaged ({exc})", self.root) from None
            if config is not None and stored != config:
                raise SpkverError("feature store holds features of other settings; use another folder", self.root)
            self.config, self.entries = stored, dict(index.get("entries", {}))

    def _read_index(self):
        path = self.root / INDEX
        if not self.exists(self.root):
            return None
        if not path.is_file():  # a folder, or a link to nothing: refused before any extraction
            raise SpkverError("feature store index is not a readable file", path)
        index = read_json(path, "feature store index")
        version = index.get("format") if isinstance(index, dict) else None
        if type(version) is int and version > FORMAT:
            raise SpkverError(f"feature store format {version} is newer than this spkver reads ({FORMAT}); "
                              "upgrade spkver", path)
        entries = index.get("entries", {}) if isinstance(index, dict) else None
        if version != FORMAT or not isinstance(entries, dict) \
                or not all(isinstance(e, dict) and isinstance(e.get("source"), str) for e in entries.values()):
            raise SpkverError("not a spkver feature store index (or a damaged one)", path)
        return index

    @staticmethod
    def check_new_folder(root) -> None:
        """Refuse to start a store in ``root`` unless it is new, empty, or holds only a store's own files (a run
        killed before its first index): a store is never scattered among a user's files."""
        root = Path(root)
        if root.is_symlink() and not root.exists():
            raise SpkverError("is a link to nothing, not a feature store folder", root)
        if root.exists() and not root.is_dir():
            raise SpkverError("is a file, not a feature store folder", root)
        try:
            foreign = sorted(p.name for p in root.iterdir()
                             if not (OWN_FILE.fullmatch(p.name) and p.is_file() and not p.is_symlink())) \
                if root.is_dir() else []
        except OSError as exc:
            raise SpkverError(f"cannot read the folder ({os_problem(exc)})", root) from None
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise SpkverError(f"folder holds other files ({printable(foreign[0])}{more}) and no feature store "
                              "(no index.json); give a new or empty folder", root)

    @staticmethod
    def exists(root) -> bool:
        """Whether ``root`` holds a feature store index, readable or not (a damaged one is refused on opening)."""
        index = Path(root) / INDEX
        return index.exists() or index.is_symlink()

    @staticmethod
    def source(item) -> str:
        """What an entry of ``item`` (an AudioItem or a path) holds, in words: the resolved path (and
        segment), or the command and its folder."""
        item = as_item(item)
        if item.command is not None:
            return f"command in {item.path.parent.resolve()}: {item.command}"
        source = str(item.path.resolve())
        return f"{source} from {item.start!r} s to {item.end!r} s" if item.segmented else source

    @classmethod
    def key(cls, item) -> str:
        """The entry of ``item``: a whole file keeps the key of its path, as in stores of earlier versions."""
        return sha256_hex([cls.source(item)], 24)

    def file(self, key: str) -> Path:
        """The ``.npy`` file of entry ``key``."""
        return self.root / f"{key}.npy"

    def _ordered_keys(self):
        """Entry keys in a fixed order (by source path), so training data order is stable."""
        return [key for key, _ in sorted(self.entries.items(), key=lambda kv: kv[1].get("source", ""))]

    def open(self, key: str):
        """The memory-mapped array of entry ``key``, or None when missing or damaged.

        This is where stored features enter: the shape must be the index's, the
        dtype float32, and every value finite and plausible (read a block at a time).
        """
        try:
            array = np.load(self.file(key), mmap_mode="r", allow_pickle=False)
        except (OSError, *NPY_HEADER_ERRORS):
            return None
        entry = self.entries.get(key, {})
        if array.dtype != np.float32 or array.ndim != 2 or array.shape != (entry.get("frames"), self.config.dim):
            return None
        for start in range(0, len(array), 1 << 16):
            if not plausible_features(array[start : start + (1 << 16)]):
                return None
        return array

    def fresh(self, item):
        """The stored features of ``item`` (an AudioItem or a path) if they are up to date, else None (see the
        module's rule)."""
        item = as_item(item)
        key = self.key(item)
        entry = self.entries.get(key)
        if entry is None or item.command is not None:
            return None
        path = item.path
        try:
            signature = file_signature(path)
            if entry.get("signature") != signature:
                if entry.get("blake2b") != self._content_hash(path, signature):
                    return None
                entry["signature"] = signature  # same bytes, copied or moved: remember the new signature
                self._dirty = True
        except OSError:
            return None
        return self.open(key)

    def put(self, item, frames: np.ndarray):
        """Store the features of ``item`` (an AudioItem or a path; array file first, index entry after)."""
        item = as_item(item)
        self.root.mkdir(parents=True, exist_ok=True)
        key = self.key(item)
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(frames, dtype=np.float32), allow_pickle=False)
        entry: dict = {"source": self.source(item), "frames": int(len(frames))}
        if item.command is None:
            # the signature before hashing: a write meanwhile makes the entry stale, not wrong
            entry.update(signature=file_signature(item.path))
        write_atomic(self.file(key), buffer.getvalue(), sync=False)
        if item.command is None:
            entry.update(blake2b=self._content_hash(item.path, entry["signature"]))
        self.entries[key] = entry

    def _content_hash(self, path, signature) -> str:
        """:func:`~spkver.fileio.content_hash` of ``path``, once per file and signature in this run: the
        many segments of one recording share it."""
        memo = (str(Path(path).resolve()), tuple(signature))
        if memo not in self._hashes:
            self._hashes[memo] = content_hash(path)
        return self._hashes[memo]

    def save_index(self):
        """Merge this process's entries into the index on disk, under a lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        with locked(self.root / ".lock"):
            on_disk = {}
            with contextlib.suppress(SpkverError):
                on_disk = (self._read_index() or {}).get("entries", {})
            on_disk.update(self.entries)
            self.entries = on_disk
            index = {"format": FORMAT, "feature_config": self.config.to_dict(),
                     "config_fingerprint": self.config.fingerprint(), "entries": on_disk}
            write_atomic(self.root / INDEX, json.dumps(index, sort_keys=True).encode(), sync=False)

    def arrays(self):
        """All stored arrays, memory-mapped, in a fixed order (by source path)."""
        out = []
        for key in self._ordered_keys():
            array = self.open(key)
            if array is None:
                raise SpkverError(f"feature store entry of {self.entries[key].get('source')} is missing or damaged; "
                                  "run spkver extract again", self.root)
            out.append(array)
        if not out:
            raise SpkverError("feature store is empty", self.root)
        return out

    def paths(self):
        """The ``.npy`` files behind :meth:`arrays`, in the same order."""
        return [self.file(key) for key in self._ordered_keys()]

    def fingerprint(self) -> str:
        """Identity of the stored data: config and every entry's source, size, time and length."""
        text = json.dumps([self.config.fingerprint(), sorted(self.entries.items())], sort_keys=True)
        return sha256_hex([text], 20)

    def extract(self, items, *, run: RunOptions = RunOptions()):
        """Bring the store up to date for ``items``; return ``[(item, memory-mapped features)]``.

        Files whose entry is fresh are not read again; the others are
        extracted in parallel and written as they arrive.
        """
        ready = {}
        todo = []
        for item in items:
            frames = self.fresh(item)
            if frames is None:
                todo.append(item)
            else:
                ready[self.key(item)] = frames
        good = usable_features(todo, self.config, run=run)
        try:
            for done, (item, frames) in enumerate(good, start=1):
                self.put(item, frames)
                ready[self.key(item)] = self.open(self.key(item))
                if done % 1000 == 0:
                    self.save_index()
        finally:
            if todo or self._dirty:
                self.save_index()
        kept = [(item, ready[self.key(item)]) for item in items if self.key(item) in ready]
        if not kept:
            raise SpkverError("no usable audio: every input was skipped")
        return kept
