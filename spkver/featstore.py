"""Feature store: features on disk, one ``.npy`` per recording plus ``index.json``.

Entries are keyed by the recording's resolved path and checked against its
size and modification time, and the store holds one feature configuration
(its fingerprint is in the index), so re-runs skip unchanged files. Arrays
are opened memory-mapped: training streams them and never needs them all in
RAM.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from spkver.corpus import usable_features
from spkver.errors import SpkverError
from spkver.features import FeatureConfig
from spkver.models import write_atomic

INDEX = "index.json"
FORMAT = 1


def default_cache_dir() -> Path:
    """``$SPKVER_CACHE_DIR``, else ``$XDG_CACHE_HOME/spkver``, else ``~/.cache/spkver``."""
    if os.environ.get("SPKVER_CACHE_DIR"):
        return Path(os.environ["SPKVER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spkver"


def _source_stat(path: Path):
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


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
        index = self._read_index()
        if index is None:
            if config is None:
                raise SpkverError("not a feature store (no index.json)", self.root)
            self.config, self.entries = config, {}
        else:
            try:
                stored = FeatureConfig.from_dict(index["feature_config"])
            except (KeyError, TypeError, ValueError) as exc:
                raise SpkverError(f"feature store index is damaged ({exc})", self.root) from None
            if config is not None and stored != config:
                raise SpkverError("feature store holds features of other settings; use another folder",
                                  self.root)
            self.config, self.entries = stored, dict(index.get("entries", {}))

    def _read_index(self):
        path = self.root / INDEX
        if not path.is_file():
            return None
        try:
            index = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SpkverError(f"feature store index is damaged ({exc})", path) from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise SpkverError("not a spkver feature store index", path)
        return index

    @staticmethod
    def key(path: Path) -> str:
        return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:24]

    def file(self, key: str) -> Path:
        """The ``.npy`` file of entry ``key``."""
        return self.root / f"{key}.npy"

    def _ordered_keys(self):
        """Entry keys in a fixed order (by source path), so training data order is stable."""
        return [key for key, _ in sorted(self.entries.items(), key=lambda kv: kv[1].get("source", ""))]

    def open(self, key: str):
        """The memory-mapped array of entry ``key``, or None when missing or damaged."""
        try:
            array = np.load(self.file(key), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        entry = self.entries.get(key, {})
        if array.ndim != 2 or array.shape != (entry.get("frames"), self.config.dim):
            return None
        return array

    def fresh(self, path: Path):
        """The stored features of ``path`` if they are up to date, else None."""
        key = self.key(path)
        entry = self.entries.get(key)
        try:
            current = list(_source_stat(Path(path)))
        except OSError:
            return None
        if entry is None or [entry.get("size"), entry.get("mtime_ns")] != current:
            return None
        return self.open(key)

    def put(self, path: Path, frames: np.ndarray):
        """Store the features of ``path`` (array file first, index entry after)."""
        self.root.mkdir(parents=True, exist_ok=True)
        key = self.key(path)
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(frames, dtype=np.float32), allow_pickle=False)
        write_atomic(self.file(key), buffer.getvalue(), sync=False)
        size, mtime = _source_stat(Path(path))
        self.entries[key] = {"source": str(Path(path).resolve()), "size": size, "mtime_ns": mtime,
                             "frames": int(len(frames))}

    def save_index(self):
        """Merge this process's entries into the index on disk, under a lock."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
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
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def extract(self, items, workers=None, skip_bad=False, on_skip=None, progress=None, on_note=None):
        """Bring the store up to date for ``items``; return ``[(item, memory-mapped features)]``.

        Files whose entry is fresh are not read again; the others are
        extracted in parallel and written as they arrive.
        """
        ready = {}
        todo = []
        for item in items:
            frames = self.fresh(item.path)
            if frames is None:
                todo.append(item)
            else:
                ready[str(item.path)] = frames
        good = usable_features(todo, self.config, workers, skip_bad, on_skip, progress, on_note)
        try:
            for done, (item, frames) in enumerate(good, start=1):
                self.put(item.path, frames)
                ready[str(item.path)] = self.open(self.key(item.path))
                if done % 1000 == 0:
                    self.save_index()
        finally:
            if todo:
                self.save_index()
        kept = [(item, ready[str(item.path)]) for item in items if str(item.path) in ready]
        if not kept:
            raise SpkverError("no usable audio: every input was skipped")
        return kept
