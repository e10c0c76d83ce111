"""Model files: ``.npz`` arrays plus one JSON metadata entry; never pickle.

A model file holds ``weights``, ``means``, ``variances`` and ``meta`` (a JSON
string) with ``format_version``, ``kind`` (``ubm`` | ``speaker``), the
``feature_config`` and a ``training`` summary; speaker models add
``speaker``, ``relevance``, ``adapt`` and ``ubm_fingerprint``. Files are
written to a temporary name in the same folder, synced, then renamed, so a
crash never leaves a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spkver.errors import SpkverError
from spkver.features import FeatureConfig
from spkver.gmm import GMM

FORMAT_VERSION = 1
KINDS = ("ubm", "speaker")
SPEAKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class Model:
    """A GMM with what is needed to use it: its kind, feature settings and metadata."""

    gmm: GMM
    kind: str
    feature_config: FeatureConfig
    meta: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.gmm)


def fingerprint(gmm: GMM) -> str:
    """SHA-256 of the mixture's arrays (float64, little-endian, in a fixed order)."""
    digest = hashlib.sha256()
    for array in (gmm.weights, gmm.means, gmm.variances):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array, dtype="<f8").tobytes())
    return digest.hexdigest()


def validate_speaker_id(speaker: str) -> str:
    """Return ``speaker`` if it is a safe id, else raise (before any file is touched)."""
    if not isinstance(speaker, str) or not SPEAKER_ID.fullmatch(speaker):
        shown = repr(speaker) if isinstance(speaker, str) and len(speaker) <= 40 else "given"
        raise SpkverError(
            f"speaker id {shown} is not valid: use 1-128 characters from A-Z a-z 0-9 . _ -,"
            " starting with a letter or digit"
        )
    return speaker


def _encode(model: Model) -> bytes:
    meta = dict(model.meta)
    meta.update(
        format_version=FORMAT_VERSION,
        kind=model.kind,
        feature_config=model.feature_config.to_dict(),
    )
    return npz_bytes(model.gmm, meta)


def npz_bytes(gmm: GMM, meta: dict) -> bytes:
    """The arrays of ``gmm`` and ``meta`` (as JSON) in ``.npz`` form, without pickle."""
    arrays = {
        "weights": gmm.weights,
        "means": gmm.means,
        "variances": gmm.variances,
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }
    # Like np.savez, but with fixed zip timestamps: same model, same bytes.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_atomic(path, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    With ``sync`` (models) the data and the folder are fsynced; caches skip
    that, since a damaged cache entry is detected and recomputed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
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


def save_model(path, model: Model) -> None:
    """Save ``model`` to ``path`` atomically."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SpkverError("folder does not exist", path.parent)
    try:
        write_atomic(path, _encode(model))
    except OSError as exc:
        raise SpkverError(f"cannot write model: {exc.strerror or exc}", path) from None


def _check_arrays(weights, means, variances):
    if means.ndim != 2 or weights.shape != means.shape[:1] or variances.shape != means.shape:
        return "arrays have inconsistent shapes"
    if means.shape[0] < 1 or means.shape[1] < 1:
        return "model has no components"
    if not all(np.isfinite(a).all() for a in (weights, means, variances)):
        return "model holds NaN or infinite values"
    if (variances <= 0).any() or (weights < 0).any() or abs(weights.sum() - 1) > 1e-6:
        return "model has invalid weights or variances"
    return None


def load_model(path, kind: str | None = None) -> Model:
    """Load and validate a model file; ``kind`` demands ``ubm`` or ``speaker``.

    Raises
    ------
    SpkverError
        Missing, truncated or corrupted file, pickled content, unknown or
        newer format, wrong kind, or inconsistent arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise SpkverError("no such model file", path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            missing = {"weights", "means", "variances", "meta"} - names
            if missing:
                raise SpkverError(f"not a spkver model (missing {', '.join(sorted(missing))})", path)
            weights, means, variances = (
                np.asarray(archive[n], dtype=np.float64) for n in ("weights", "means", "variances")
            )
            meta_array = archive["meta"]
    except SpkverError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise SpkverError("model holds pickled objects; refusing to load it", path) from None
        raise SpkverError(f"not a valid model file ({exc})", path) from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        raise SpkverError(f"not a valid model file (truncated or corrupted: {exc})", path) from None
    try:
        meta = json.loads(str(meta_array.item()) if meta_array.shape == () else "")
        if not isinstance(meta, dict):
            raise ValueError("metadata is not an object")
    except (ValueError, TypeError):
        raise SpkverError("model metadata is not valid JSON", path) from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise SpkverError("model has no valid format version", path)
    if version > FORMAT_VERSION:
        raise SpkverError(
            f"model format {version} is newer than this spkver reads ({FORMAT_VERSION}); upgrade spkver",
            path,
        )
    if meta.get("kind") not in KINDS:
        raise SpkverError("model kind is missing or unknown", path)
    if kind is not None and meta["kind"] != kind:
        raise SpkverError(f"is a {meta['kind']} model, expected a {kind} model", path)
    problem = _check_arrays(weights, means, variances)
    if problem:
        raise SpkverError(problem, path)
    try:
        config = FeatureConfig.from_dict(meta.get("feature_config") or {})
    except (ValueError, TypeError) as exc:
        raise SpkverError(f"model has invalid feature settings ({exc})", path) from None
    if config.dim != means.shape[1]:
        raise SpkverError(
            f"model dimension {means.shape[1]} does not match its feature settings ({config.dim})", path
        )
    if meta["kind"] == "speaker" and not isinstance(meta.get("ubm_fingerprint"), str):
        raise SpkverError("speaker model has no UBM fingerprint", path)
    return Model(GMM(weights, means, variances), meta["kind"], config, meta)


class SpeakerStore:
    """A folder of speaker models, ``DIR/<speaker>.npz``."""

    def __init__(self, root):
        self.root = Path(root)

    def path(self, speaker: str) -> Path:
        return self.root / f"{validate_speaker_id(speaker)}.npz"

    def exists(self, speaker: str) -> bool:
        return self.path(speaker).is_file()

    def speakers(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.npz") if SPEAKER_ID.fullmatch(p.stem))

    def load(self, speaker: str, ubm: Model | None = None) -> Model:
        """Load a speaker; with ``ubm``, refuse one adapted from a different UBM."""
        path = self.path(speaker)
        if not path.is_file():
            raise SpkverError(f"speaker {speaker!r} is not enrolled (no {path.name})", self.root)
        model = load_model(path, kind="speaker")
        if ubm is not None and model.meta["ubm_fingerprint"] != ubm.fingerprint:
            raise SpkverError("speaker model was adapted from a different UBM; re-enroll it", path)
        return model

    @contextlib.contextmanager
    def locked(self, speaker: str):
        """Hold an exclusive lock on one speaker while it is written."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / f".{validate_speaker_id(speaker)}.lock"
        with open(lock_path, "a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def save_checkpoint(path, state, identity: str) -> None:
    """Write an EM checkpoint (:class:`spkver.gmm.EMState`) atomically."""
    meta = {"kind": "checkpoint", "format_version": FORMAT_VERSION, "identity": identity,
            "history": state.history, "step": state.step, "reseeded": state.reseeded,
            "rng_state": state.rng_state}
    write_atomic(path, npz_bytes(state.gmm, meta))


def load_checkpoint(path, identity: str):
    """The EM state saved at ``path`` for the same training ``identity``, else None."""
    from spkver.gmm import EMState

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"].item()))
            gmm = GMM(archive["weights"], archive["means"], archive["variances"])
        if meta.get("kind") != "checkpoint" or meta.get("identity") != identity:
            return None
        return EMState(gmm, list(meta["history"]), int(meta["step"]), int(meta["reseeded"]), meta["rng_state"])
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
