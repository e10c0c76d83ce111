"""i-vector back-end files and T-matrix checkpoints: ``.npz`` arrays plus one JSON metadata entry; never pickle.

A back-end file holds ``matrix`` (T: float32, as :func:`spkver.api.train_ivector` makes it; float64
when it is not exactly float32, so the file holds the extractor its fingerprint names), ``mean``, optionally
``projection`` and the PLDA's ``plda_mean``, ``plda_transform`` and
``plda_psi``; its metadata names the kind (``ivector``), the
``ubm_fingerprint`` of the UBM it was trained on, the
``extractor_fingerprint`` that enrolled speakers refer to, and a training
summary. Writes are atomic (:func:`spkver.fileio.write_atomic`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spkver.errors import SpkverError
from spkver.fileio import write_atomic
from spkver.ivector.backend import IvectorBackend
from spkver.ivector.extractor import TotalVariability, TrainingState
from spkver.ivector.plda import PLDA
from spkver.storage.models import (
    Model,
    _meta,
    archive_bytes,
    checkpoint_history,
    read_arrays,
    read_checkpoint,
)

BACKEND_KIND = "ivector"
BACKEND_FORMAT = 1  # its own numbering: UBM files of several systems (format 2) did not change back-ends
MAX_MATRIX = 1 << 28  # values of T: 1 GiB as float32 (2048 components × 120 dimensions × 1000)
MAX_RANK = 4096


def _limits(checkpoint: bool) -> dict:
    square = (MAX_RANK * MAX_RANK, False)
    limits = {"matrix": (MAX_MATRIX, True), "meta": (1, True)}
    if not checkpoint:
        # Only the metadata is required here: a UBM or speaker model given as a back-end is then refused
        # by its kind, not as "no matrix array"; load_backend requires the back-end's arrays itself.
        limits.update(matrix=(MAX_MATRIX, False), mean=(MAX_RANK, False), projection=square,
                      plda_mean=(MAX_RANK, False), plda_transform=square, plda_psi=(MAX_RANK, False))
    return limits


def save_backend(path, backend: IvectorBackend, ubm: Model, training: dict) -> None:
    """Write ``backend`` (trained on ``ubm``) to ``path`` atomically."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SpkverError("folder does not exist", path.parent)
    matrix = backend.tv.matrix
    # float32 halves the file; a matrix that float32 would change is kept as it is, so that the file holds the
    # extractor its extractor_fingerprint (and the speakers enrolled with this back-end) name.
    single = matrix.astype(np.float32)
    arrays = {"matrix": single if np.array_equal(single, matrix) else matrix, "mean": backend.mean}
    if backend.projection is not None:
        arrays["projection"] = backend.projection
    if backend.plda is not None:
        arrays.update(plda_mean=backend.plda.mean, plda_transform=backend.plda.transform, plda_psi=backend.plda.psi)
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise SpkverError("refusing to write an i-vector back-end that holds NaN or infinite values", path)
    meta = {"kind": BACKEND_KIND, "format_version": BACKEND_FORMAT, "ubm_fingerprint": ubm.fingerprint,
            "components": backend.tv.n_components, "dim": backend.tv.dim, "rank": backend.tv.rank,
            "scoring": backend.scoring, "extractor_fingerprint": backend.extractor_fingerprint,
            "training": training}
    write_atomic(path, archive_bytes(arrays, meta))


def load_backend(path, ubm: Model | None = None) -> tuple[IvectorBackend, dict]:
    """Load and check an i-vector back-end file; with ``ubm``, refuse one trained on another UBM.

    Returns
    -------
    backend : IvectorBackend
    meta : dict

    Raises
    ------
    SpkverError
        Missing, unreadable or damaged file, not an i-vector back-end, newer
        format, arrays of inconsistent shapes or non-finite values, another UBM.
    """
    path = Path(path)
    arrays = read_arrays(path, _limits(checkpoint=False), "i-vector back-end")
    meta = _meta(arrays, path)
    if meta.get("kind") != BACKEND_KIND:
        kind = meta.get("kind")
        raise SpkverError(f"is {'a ' + kind + ' model, not' if isinstance(kind, str) else 'not'} "
                          "an i-vector back-end (made by spkver train-ivector)", path)
    for name in ("matrix", "mean"):
        if name not in arrays:
            raise SpkverError(f"i-vector back-end is damaged (no {name} array)", path)
    version = meta.get("format_version")
    if type(version) is not int or version > BACKEND_FORMAT:
        raise SpkverError("i-vector back-end format is unknown or newer than this spkver reads; upgrade spkver", path)
    if ubm is not None and meta.get("ubm_fingerprint") != ubm.fingerprint:
        raise SpkverError("i-vector back-end was trained on a different UBM; train it again on this one "
                          "(spkver train-ivector)", path)
    try:
        k, d = int(meta["components"]), int(meta["dim"])
        matrix = np.asarray(arrays["matrix"], dtype=np.float64)
        tv = TotalVariability(matrix, k, d)
        r = tv.rank
        mean = np.asarray(arrays["mean"], dtype=np.float64)
        projection = arrays.get("projection")
        out_dim = r if projection is None else projection.shape[1]
        if mean.shape != (r,) or (projection is not None and (projection.ndim != 2 or projection.shape[0] != r)):
            raise ValueError("mean or projection disagree with the rank")
        plda = None
        if "plda_psi" in arrays:
            plda = PLDA(np.asarray(arrays["plda_mean"], dtype=np.float64),
                        np.asarray(arrays["plda_transform"], dtype=np.float64),
                        np.asarray(arrays["plda_psi"], dtype=np.float64))
            if plda.mean.shape != (out_dim,) or plda.transform.shape != (out_dim, out_dim) \
                    or plda.psi.shape != (out_dim,) or (plda.psi < 0).any():
                raise ValueError("PLDA arrays disagree in shape or hold negative variances")
        if ubm is not None and (k, d) != (ubm.gmm.n_components, ubm.gmm.dim):
            raise ValueError("its shape does not fit the UBM")
        values = [mean, plda.transform if plda else mean, projection if projection is not None else mean]
        if not all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in values) or \
                (plda is not None and not (np.isfinite(plda.mean).all() and np.isfinite(plda.psi).all())):
            raise ValueError("it holds NaN or infinite values")
    except (KeyError, TypeError, ValueError) as exc:
        raise SpkverError(f"i-vector back-end is damaged ({exc})", path) from None
    backend = IvectorBackend(tv, mean, None if projection is None else np.asarray(projection, dtype=np.float64), plda)
    if meta.get("extractor_fingerprint") != backend.extractor_fingerprint:
        raise SpkverError("i-vector back-end is damaged (its matrix does not match its fingerprint)", path)
    return backend, meta


def save_tv_checkpoint(path, state: TrainingState, identity: dict) -> None:
    """Write a T-matrix training state atomically (float64: a resumed run continues bit for bit)."""
    meta = {"kind": "tv-checkpoint", "format_version": BACKEND_FORMAT, "identity": identity,
            "history": state.history, "step": state.step,
            "components": state.tv.n_components, "dim": state.tv.dim}
    write_atomic(path, archive_bytes({"matrix": state.tv.matrix}, meta))


def load_tv_checkpoint(path, identity: dict) -> TrainingState | None:
    """The state saved at ``path`` by a run with the same ``identity``; None when there is no file.

    Raises SpkverError for a damaged checkpoint or one of a run with other data or settings (naming what differs).
    """
    def state(arrays, meta):
        tv = TotalVariability(arrays["matrix"], int(meta["components"]), int(meta["dim"]))
        return TrainingState(tv, checkpoint_history(meta), meta["step"])

    return read_checkpoint(path, identity, _limits(checkpoint=True), "tv-checkpoint", "a T-matrix training checkpoint",
                           state)
