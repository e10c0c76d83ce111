"""Model files: ``.npz`` arrays plus one JSON metadata entry; never pickle.

A model file holds ``weights``, ``means``, ``variances`` and ``meta`` (a JSON
string) with ``format_version``, ``kind`` (``ubm`` | ``speaker``), the
``feature_config`` and a ``training`` summary; speaker models add
``speaker``, ``relevance``, ``adapt`` and ``ubm_fingerprint``. A model of
several systems (``feature_config.norm`` such as ``cmn+warp``) holds the
second system's mixture as ``weights_2``, ``means_2``, ``variances_2``, and
so on, and is format 2; a one-system model is format 1, as before. A UBM with
channel factors (:mod:`spkver.gmm.channels`) holds each system's eigenchannels
as ``channels``, ``channels_2`` ... ((K, D, R) float32) and is format 3. Files are
written to a temporary name in the same folder, synced, then renamed, so a
crash never leaves a partial file under the final name.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spkver.errors import SpkverError, printable
from spkver.features.config import FeatureConfig
from spkver.fileio import (
    NPY_HEADER_ERRORS,
    array_parts,
    parse_json,
    read_error,
    reading,
    sha256_hex,
    what_file_is,
    write_atomic,
)
from spkver.gmm.channels import MAX_CHANNEL_FACTORS, MAX_CHANNEL_MAGNITUDE
from spkver.gmm.em import EMState
from spkver.gmm.model import GMM

FORMAT_VERSION = 3  # 3: UBMs with channel factors; 2: models of several systems
SYSTEMS_FORMAT = 2  # what a model of several systems without channel factors is written as
ONE_SYSTEM_FORMAT = 1  # and a one-system model without them: older spkver reads both
MAX_SYSTEMS = 4
KINDS = ("ubm", "speaker")


@dataclass
class Model:
    """A GMM with what is needed to use it: its kind, feature settings and metadata.

    A model of several systems (``feature_config.views``) holds the first
    system's mixture as ``gmm`` and the others' in ``further``; :attr:`gmms`
    lists them all.
    """

    gmm: GMM
    kind: str
    feature_config: FeatureConfig
    meta: dict = field(default_factory=dict)
    cohort: list | None = None  # UBMs: speech segments of the training audio, (n_i, D) float16, for S-norm
    # Speakers enrolled with an i-vector extractor: one raw i-vector per enrollment recording, (n, R).
    ivectors: np.ndarray | None = None
    # The file it was loaded from (None when built in memory): errors found later, when it is used, can name it.
    source: Path | None = field(default=None, compare=False, repr=False)
    # The mixtures of the systems after the first, one per further view of ``feature_config``.
    further: tuple = ()
    # UBMs: each system's eigenchannels, (K, D, R) float32 (spkver.gmm.channels); () without channel factors.
    channels: tuple = ()
    # (mixtures, their fingerprint): a UBM's is asked once per speaker loaded, and hashing it costs ~10 ms.
    _fingerprint: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.gmms) != len(self.feature_config.views):  # a system left out would be dropped silently
            raise ValueError(f"a model of {len(self.feature_config.views)} systems ({self.feature_config.norm}) "
                             f"needs as many mixtures, not {len(self.gmms)}")
        if self.channels and len(self.channels) != len(self.gmms):
            raise ValueError(f"a model of {len(self.gmms)} systems needs channel factors for each, not "
                             f"{len(self.channels)}")

    @property
    def gmms(self) -> tuple:
        """The mixture of every system, in the order of ``feature_config.views``."""
        return (self.gmm, *self.further)

    @property
    def fingerprint(self) -> str:
        gmms = self.gmms
        if self._fingerprint is None or len(self._fingerprint[0]) != len(gmms) or any(
                a is not b for a, b in zip(self._fingerprint[0], gmms)):
            self._fingerprint = (gmms, fingerprint(*gmms, channels=self.channels))
        return self._fingerprint[1]


def fingerprint(*gmms: GMM, channels=()) -> str:
    """SHA-256 of the mixtures' arrays (float64, little-endian, in a fixed order), and of the channel factors
    when there are some (speakers enrolled on compensated features belong to those); one mixture's as before
    there were several systems."""
    parts = [a for g in gmms for a in (g.weights, g.means, g.variances)] + list(channels)
    return sha256_hex(array_parts(parts, dtype="<f8"))


def _suffix(index: int) -> str:
    """The suffix of system ``index``'s arrays (0-based): none for the first, ``_2``, ``_3`` ... after."""
    return f"_{index + 1}" if index else ""


def system_arrays(gmms) -> dict:
    """The arrays of the systems after the first, as stored: ``weights_2``, ``means_2``, ``variances_2``, ..."""
    return {f"{name}_{i}": getattr(gmm, name) for i, gmm in enumerate(gmms, start=2)
            for name in ("weights", "means", "variances")}


def _encode(model: Model) -> bytes:
    meta = dict(model.meta)
    meta.update(
        format_version=FORMAT_VERSION if model.channels else SYSTEMS_FORMAT if model.further else ONE_SYSTEM_FORMAT,
        kind=model.kind,
        feature_config=model.feature_config.to_dict(),
    )
    extra = system_arrays(model.further)
    extra |= {f"channels{_suffix(i)}": np.asarray(u, dtype=np.float32) for i, u in enumerate(model.channels)}
    if model.cohort:
        extra |= {"cohort_frames": np.concatenate(model.cohort).astype(np.float16),
                 "cohort_lengths": np.array([len(c) for c in model.cohort], dtype=np.int64)}
    if model.ivectors is not None:
        extra["ivectors"] = np.asarray(model.ivectors, dtype=np.float64)
    return npz_bytes(model.gmm, meta, extra)


def npz_bytes(gmm: GMM, meta: dict, extra: dict | None = None) -> bytes:
    """The arrays of ``gmm``, ``meta`` (as JSON) and ``extra`` arrays in ``.npz`` form, without pickle."""
    return archive_bytes({"weights": gmm.weights, "means": gmm.means, "variances": gmm.variances, **(extra or {})},
                         meta)


def archive_bytes(arrays: dict, meta: dict) -> bytes:
    """``arrays`` and ``meta`` (as a JSON string member) in ``.npz`` form, without pickle."""
    arrays = {**arrays, "meta": np.array(json.dumps(meta, sort_keys=True))}
    # Like np.savez, but with fixed zip timestamps: same model, same bytes.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_model(path, model: Model) -> None:
    """Save ``model`` to ``path`` atomically (its arrays checked as :func:`load_model` checks them)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SpkverError("folder does not exist", path.parent)
    problem = _check_systems(model.gmms, model.feature_config)
    if not problem and model.channels and (channels := _channels_problem(model.channels, model.gmms)):
        problem = f"has channel factors that are damaged ({channels})"
    if not problem and model.ivectors is not None and (why := _ivectors_problem(model.ivectors, model.kind,
                                                                                  model.meta)):
        problem = f"has enrollment i-vectors that {why}"
    if problem:
        raise SpkverError(f"refusing to write a model that {problem}", path)
    write_atomic(path, _encode(model))


# What a model file may declare before anything is inflated: a header claiming more is refused.
MAX_COMPONENTS = 1 << 16
MAX_DIM = 4096
MAX_META_CHARS = 1 << 20
MAX_COHORT_FRAMES = 1 << 20
MAX_IVECTORS = 1 << 24  # values of a speaker's enrollment i-vectors
ARRAY_KINDS = "fiu"  # float, signed and unsigned integers: never objects (pickle) or strings (but meta)
# What a damaged, truncated, encrypted or hand-made archive or .npy header can raise while being read.
ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, *NPY_HEADER_ERRORS, TypeError, OverflowError, KeyError,
                  NotImplementedError, RuntimeError, struct.error)


def _member_header(archive, info):
    """``(shape, dtype)`` an ``.npy`` member declares, read from its first bytes only."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"unsupported .npy version {version}")
        shape, _, dtype = readers[version](member, max_header_size=10_000)
        header_bytes = member.tell()
    return shape, dtype, header_bytes


def read_arrays(path, limits: dict, what: str = "model file") -> dict:
    """The arrays of an ``.npz`` file, each checked against ``limits`` before it is read.

    ``limits`` maps member names to the largest element count they may have
    (``None``: optional member). A member whose declared dtype could hold
    objects, whose declared size exceeds its limit, or whose stored size
    disagrees with its header is refused before any of it is decompressed, so
    a small deflated file cannot expand into gigabytes.

    Raises
    ------
    SpkverError
        Missing, unreadable, not an ``.npz``, too large, or damaged.
    """
    path = Path(path)
    try:
        with reading(path, what):
            archive = zipfile.ZipFile(path)
    except ARCHIVE_ERRORS:
        raise SpkverError(f"not a spkver model file ({what_file_is(path) or 'not an .npz archive'})", path) from None
    arrays = {}
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        for name, (limit, required) in limits.items():
            info = infos.get(f"{name}.npy")
            if info is None:
                if required:
                    raise SpkverError(f"not a spkver model file (no {name} array)", path)
                continue
            try:
                shape, dtype, header_bytes = _member_header(archive, info)
                count = int(np.prod(shape, dtype=object))
                if dtype.hasobject:
                    raise SpkverError("model holds pickled objects; refusing to load it", path)
                if dtype.kind not in ARRAY_KINDS + ("U" if name == "meta" else ""):
                    raise SpkverError(f"not a spkver model file ({name} has dtype {dtype})", path)
                if count > limit:
                    raise SpkverError(f"model is too large ({name} declares {count} values, at most {limit})", path)
                if info.file_size != header_bytes + count * dtype.itemsize:
                    raise SpkverError(f"model file is damaged ({name} is not the size its header says)", path)
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
            except SpkverError:
                raise
            except OSError as exc:
                raise read_error(exc, path, what) from None
            except ARCHIVE_ERRORS as exc:
                raise SpkverError(f"model file is damaged ({name}: {exc})", path) from None
    return arrays


def _model_limits(cohort: bool, systems: int = 1):
    limits = {"weights": (MAX_COMPONENTS, True), "means": (MAX_COMPONENTS * MAX_DIM, True),
              "variances": (MAX_COMPONENTS * MAX_DIM, True), "meta": (1, True)}
    limits |= {f"{name}_{i}": (limits[name][0], False) for i in range(2, systems + 1)
               for name in ("weights", "means", "variances")}
    limits |= {f"channels{_suffix(i)}": (MAX_COMPONENTS * MAX_DIM, False) for i in range(systems)}
    if cohort:
        limits.update(cohort_frames=(MAX_COHORT_FRAMES * MAX_DIM, False), cohort_lengths=(MAX_COHORT_FRAMES, False),
                      ivectors=(MAX_IVECTORS, False))
    return limits


def _meta(arrays, path) -> dict:
    meta_array = arrays["meta"]
    if meta_array.shape != () or meta_array.dtype.kind != "U" or len(str(meta_array.item())) > MAX_META_CHARS:
        raise SpkverError("model metadata is not a JSON string", path)
    meta = parse_json(str(meta_array.item()), "model metadata", path)
    if not isinstance(meta, dict):
        raise SpkverError("model metadata is not a JSON object", path)
    return meta


def _check_systems(gmms, config: FeatureConfig):
    """What is wrong with the mixtures of a model's systems for its feature settings, or None."""
    if len(gmms) != len(config.views):
        return f"has {len(gmms)} mixtures for its {len(config.views)} systems ({config.norm})"
    for gmm in gmms:
        problem = _check_arrays(gmm.weights, gmm.means, gmm.variances)
        if problem:
            return problem
        if gmm.means.shape != gmms[0].means.shape:
            return "has systems of different sizes"
    if gmms[0].dim != config.system_dim:
        return f"has dimension {gmms[0].dim} where its feature settings give {config.system_dim}"
    return None


def _check_arrays(weights, means, variances):
    if means.ndim != 2 or weights.shape != means.shape[:1] or variances.shape != means.shape:
        return "has arrays of inconsistent shapes"
    if means.shape[0] < 1 or means.shape[1] < 1:
        return "has no components"
    if not all(np.isfinite(a).all() for a in (weights, means, variances)):
        return "holds NaN or infinite values"
    if (variances <= 0).any() or (weights < 0).any() or abs(weights.sum() - 1) > 1e-6:
        return "has invalid weights or variances"
    return None


def read_kind(path) -> str | None:
    """The ``kind`` a spkver ``.npz`` file declares (``ubm``, ``speaker``, ``ivector`` ...), None if it declares
    none; only its metadata is read. Raises SpkverError for a file that is not a readable ``.npz``."""
    meta = _meta(read_arrays(path, {"meta": (1, True)}), Path(path))
    kind = meta.get("kind")
    return kind if isinstance(kind, str) else None


def load_model(path, kind: str | None = None) -> Model:
    """Load and validate a model file; ``kind`` demands ``ubm`` or ``speaker``.

    Raises
    ------
    SpkverError
        Missing, unreadable, truncated or corrupted file, pickled content,
        declared arrays too large, unknown or newer format, wrong kind,
        inconsistent or non-finite arrays, or metadata of the wrong types.
    """
    path = Path(path)
    meta = _meta(read_arrays(path, {"meta": (1, True)}), path)  # first: it says which arrays to read
    version = meta.get("format_version")
    if type(version) is not int or version < 1:
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
    if not isinstance(meta.get("feature_config"), dict):
        raise SpkverError("model has no feature settings", path)
    try:
        config = FeatureConfig.from_dict(meta["feature_config"])
    except (ValueError, TypeError) as exc:
        raise SpkverError(f"model has invalid feature settings ({exc})", path) from None
    if len(config.views) > MAX_SYSTEMS:
        raise SpkverError(f"model declares {len(config.views)} systems, at most {MAX_SYSTEMS}", path)
    if len(config.views) > 1 and version < 2:
        raise SpkverError(f"model of {len(config.views)} systems claims format {version}, which holds one", path)
    arrays = read_arrays(path, _model_limits(cohort=True, systems=len(config.views)))
    suffixes = [""] + [f"_{i}" for i in range(2, len(config.views) + 1)]
    gmms = []
    for suffix in suffixes:
        if any(f"{n}{suffix}" not in arrays for n in ("weights", "means", "variances")):
            raise SpkverError(f"model has no mixture for system {suffix[1:]} of its {len(config.views)} "
                              f"({config.norm})", path)
        parts = [np.asarray(arrays[f"{n}{suffix}"], dtype=np.float64) for n in ("weights", "means", "variances")]
        problem = _check_arrays(*parts)
        if problem:
            raise SpkverError(f"model {problem}", path)
        try:
            gmms.append(GMM(*parts))
        except ValueError as exc:  # what the mixture itself refuses (variances too small to invert)
            raise SpkverError(f"model is invalid ({exc})", path) from None
    problem = _check_systems(gmms, config)
    if problem:
        raise SpkverError(f"model {problem}", path)
    if meta["kind"] == "speaker":
        if not isinstance(meta.get("ubm_fingerprint"), str):
            raise SpkverError("speaker model has no UBM fingerprint", path)
        if not isinstance(meta.get("speaker"), str):
            raise SpkverError("speaker model has no speaker id", path)
    if not isinstance(meta.get("training", {}), dict):
        raise SpkverError("model's training summary is not an object", path)
    cohort = None
    if "cohort_frames" in arrays or "cohort_lengths" in arrays:
        cohort = _cohort_segments(arrays.get("cohort_frames"), arrays.get("cohort_lengths"), config.dim, path)
    ivectors = arrays.get("ivectors")
    if ivectors is not None:
        ivectors = np.asarray(ivectors, dtype=np.float64)
        if _ivectors_problem(ivectors, meta["kind"], meta):
            raise SpkverError("model's enrollment i-vectors are damaged", path)
    channels = _channels(arrays, gmms, meta["kind"], version, path)
    return Model(gmms[0], meta["kind"], config, meta, cohort, ivectors, source=path, further=tuple(gmms[1:]),
                 channels=channels)


def _channels(arrays, gmms, kind: str, version: int, path) -> tuple:
    """The stored eigenchannels of each system, checked; () when the file has none."""
    stored = [arrays.get(f"channels{_suffix(i)}") for i in range(len(gmms))]
    if all(u is None for u in stored):
        return ()
    if kind != "ubm" or version < 3 or any(u is None for u in stored):
        raise SpkverError("model's channel factors are damaged (missing for a system, or in a file that cannot "
                          "hold them)", path)
    problem = _channels_problem(stored, gmms)
    if problem:
        raise SpkverError(f"model's channel factors are damaged ({problem})", path)
    return tuple(np.asarray(u, dtype=np.float32) for u in stored)


def _ivectors_problem(ivectors, kind: str, meta) -> str | None:
    """What makes a speaker's enrollment i-vectors unusable, or None (the one check of loading and saving)."""
    ivectors = np.asarray(ivectors)
    if kind != "speaker" or not isinstance(meta.get("ivector_extractor"), str):
        return "belong to no speaker model of an i-vector back-end"
    if ivectors.dtype.kind not in "fiu" or ivectors.ndim != 2 or len(ivectors) < 1:
        return "are not a table of vectors"
    if not np.isfinite(ivectors).all():
        return "are not finite (the i-vector back-end is damaged or absurd)"
    return None


def _channels_problem(channels, gmms) -> str | None:
    """What is wrong with the eigenchannels of each system, or None: the one check of loading and saving."""
    channels = [np.asarray(u) for u in channels]
    if len(channels) != len(gmms):
        return "missing for a system"
    ranks = {u.shape[-1] if u.ndim == 3 else -1 for u in channels}
    for gmm, u in zip(gmms, channels):
        if u.dtype.kind != "f" or u.ndim != 3 or u.shape[:2] != gmm.means.shape or len(ranks) != 1 \
                or not 1 <= u.shape[2] <= MAX_CHANNEL_FACTORS:
            return "shape or rank"
        with np.errstate(over="ignore"):
            u = u.astype(np.float32)  # as stored: a float64 beyond float32's range becomes inf
        # In units of the Gaussians' standard deviations: anything near this bound is not a channel.
        if not np.isfinite(u).all() or np.abs(u).max() > MAX_CHANNEL_MAGNITUDE:
            return "values not finite or absurdly large"
    return None


def _cohort_segments(frames, lengths, dim, path) -> list:
    """The stored cohort as a list of (n_i, dim) float16 segments, checked."""
    if (frames is None or lengths is None or frames.dtype != np.float16 or frames.ndim != 2
            or frames.shape[1] != dim or lengths.ndim != 1
            or lengths.dtype.kind not in "iu" or (lengths < 1).any() or int(lengths.sum()) != len(frames)
            or not np.isfinite(frames).all()):
        raise SpkverError("model's stored cohort is damaged", path)
    return np.split(frames, np.cumsum(lengths)[:-1])


@dataclass
class UBMCheckpoint:
    """What a UBM checkpoint holds: the mixtures of the systems already trained with their training
    summaries, and the EM state (:class:`spkver.gmm.em.EMState`) of the one being trained."""

    trained: tuple
    summaries: tuple
    state: EMState

    @property
    def step(self) -> int:
        return self.state.step


def system_summary(norm: str, result, max_iterations: int) -> dict:
    """The training summary of one system (a :class:`spkver.gmm.em.TrainingResult` of at most
    ``max_iterations``), as models and checkpoints store it."""
    return {"norm": norm, "iterations": len(result.history) - 1, "max_iterations": max_iterations,
            "converged": result.converged, "average_log_likelihood": result.history[-1],
            "log_likelihood_history": result.history, "reseeded_components": result.reseeded}


def _is_system_summary(summary) -> bool:
    """Whether a checkpoint's ``summary`` of a trained system has :func:`system_summary`'s keys and types."""
    if not isinstance(summary, dict) or set(summary) != {"norm", "iterations", "max_iterations", "converged",
                                                         "average_log_likelihood", "log_likelihood_history",
                                                         "reseeded_components"}:
        return False
    history = summary["log_likelihood_history"]
    return (isinstance(summary["norm"], str) and type(summary["iterations"]) is int
            and type(summary["max_iterations"]) is int and 0 <= summary["iterations"] <= summary["max_iterations"]
            and type(summary["converged"]) is bool and type(summary["reseeded_components"]) is int
            and isinstance(history, list) and len(history) == summary["iterations"] + 1
            and all(type(v) in (int, float) and math.isfinite(v) for v in history)
            and history[-1] == summary["average_log_likelihood"])


def _trained_names(i: int) -> tuple:
    return tuple(f"trained_{i}_{name}" for name in ("weights", "means", "variances"))


def save_checkpoint(path, state, identity: dict, trained=(), summaries=()) -> None:
    """Write an EM checkpoint (:class:`spkver.gmm.em.EMState`) atomically, with the mixtures of the systems
    ``trained`` before this one (a UBM of several systems) and their training ``summaries`` (dicts).

    ``identity`` names what the run was given (its training data and settings),
    so that a resumed run can say which of them differ.
    """
    meta = {"kind": "checkpoint", "format_version": FORMAT_VERSION, "identity": identity,
            "history": state.history, "step": state.step, "reseeded": state.reseeded,
            "rng_state": state.rng_state, "systems_trained": len(trained), "trained_summaries": list(summaries)}
    extra = {name: getattr(gmm, field) for i, gmm in enumerate(trained)
             for name, field in zip(_trained_names(i), ("weights", "means", "variances"))}
    write_atomic(path, npz_bytes(state.gmm, meta, extra))


def load_checkpoint(path, identity: dict) -> UBMCheckpoint | None:
    """The :class:`UBMCheckpoint` saved at ``path`` by a run with the same ``identity``; None when there is no file.

    Raises SpkverError for a damaged checkpoint (a resumed run never starts from
    broken parameters) and for one of a run with other data or settings, naming
    what differs.
    """
    def state(arrays, meta):
        gmm = GMM(arrays["weights"], arrays["means"], arrays["variances"])
        reseeded, n_trained = meta["reseeded"], meta.get("systems_trained", 0)
        if type(reseeded) is not int or not isinstance(meta["rng_state"], dict):
            raise ValueError("re-seeded count or random state is invalid")
        summaries = meta.get("trained_summaries", [])
        if (type(n_trained) is not int or not 0 <= n_trained < MAX_SYSTEMS or not isinstance(summaries, list)
                or len(summaries) != n_trained or not all(_is_system_summary(x) for x in summaries)):
            raise ValueError("the systems trained are not recorded consistently")
        trained = []
        for i in range(n_trained):
            parts = [np.asarray(arrays[name], dtype=np.float64) for name in _trained_names(i)]
            if _check_arrays(*parts) or parts[1].shape != gmm.means.shape:
                raise ValueError(f"trained system {i + 1} is invalid")
            trained.append(GMM(*parts))
        state = EMState(gmm, checkpoint_history(meta), meta["step"], reseeded, meta["rng_state"])
        return UBMCheckpoint(tuple(trained), tuple(summaries), state)

    limits = _model_limits(cohort=False) | {name: (MAX_COMPONENTS * MAX_DIM, False)
                                            for i in range(MAX_SYSTEMS - 1) for name in _trained_names(i)}
    return read_checkpoint(path, identity, limits, "checkpoint", "an EM checkpoint", state)


def read_checkpoint(path, identity: dict, limits: dict, kind: str, what: str, make_state):
    """The state ``make_state(arrays, meta)`` of the checkpoint at ``path`` of ``kind``; None when there is no file.

    ``make_state`` raises KeyError, TypeError or ValueError for damaged
    content. Raises SpkverError for a file of another kind, a damaged one (a
    resumed run never starts from broken parameters), or one of a run with
    another ``identity`` (other data or settings, named).
    """
    path = Path(path)
    if not path.is_file():
        return None
    arrays = read_arrays(path, limits, "checkpoint")
    meta = _meta(arrays, path)
    if meta.get("kind") != kind:
        raise SpkverError(f"not {what}", path)
    try:
        state = make_state(arrays, meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise SpkverError(f"checkpoint is damaged ({exc}); delete it, or pass --force to start over", path) from None
    stored = meta.get("identity")
    if stored != identity:
        raise SpkverError(f"is the checkpoint of a run with {identity_differences(stored, identity)}: resume with "
                          "the options it was started with, or pass --force to start over", path)
    return state


def checkpoint_history(meta: dict) -> list:
    """A checkpoint's log-likelihood history, checked with its step (ValueError when invalid)."""
    history = [float(v) for v in meta["history"]]
    step = meta["step"]
    if not (np.isfinite(history).all() and type(step) is int and step >= 0):
        raise ValueError("history or step is invalid")
    return history


def _checkpoint_meta(path) -> dict:
    """A checkpoint's metadata, read alone; empty for an unreadable file."""
    try:
        return _meta(read_arrays(path, {"meta": (1, True)}, "checkpoint"), Path(path))
    except (SpkverError, OSError):
        return {}


def checkpoint_systems_trained(path) -> int:
    """How many systems a UBM checkpoint holds as finished (0 for any other or unreadable file)."""
    meta = _checkpoint_meta(path)
    trained = meta.get("systems_trained")
    return trained if meta.get("kind") == "checkpoint" and type(trained) is int and trained > 0 else 0


def checkpoint_step(path) -> int | None:
    """The iteration a checkpoint (of EM or of T-matrix training) holds the state after; None without a
    readable checkpoint."""
    meta = _checkpoint_meta(path)
    step = meta.get("step")
    return step if meta.get("kind") in ("checkpoint", "tv-checkpoint") and type(step) is int else None


def identity_differences(stored, current: dict) -> str:
    """What differs between two runs' identities, in words (``seed 0 (now 1)``)."""
    if not isinstance(stored, dict):
        return "settings this spkver does not record (an older version)"
    differences = []
    for key, value in current.items():
        if stored.get(key) != value:
            shown = [v for v in (stored.get(key), value) if isinstance(v, (int, float)) or
                     (isinstance(v, str) and len(v) < 16)]  # hashes (of data, of settings) are not shown
            if len(shown) == 2:
                differences.append(f"{key} {printable(str(stored[key]))} (now {value})")
            else:
                differences.append(f"other {key}")
    return ", ".join(differences) or "other settings"


def ubm_checkpoint_writer(path, identity, trained: list, summaries: list, on_note=None):
    """:func:`checkpoint_writer` of a UBM's EM states, each saved with the systems ``trained`` before it
    and their ``summaries`` (lists the caller extends as systems finish: one writer, one warning, per run)."""
    return checkpoint_writer(path, identity, on_note, lambda where, state, what: save_checkpoint(
        where, state, what, trained=tuple(trained), summaries=tuple(summaries)))


def checkpoint_writer(path, identity, on_note=None, save=None):
    """A callback writing each training state to ``path`` (with ``save``, :func:`save_checkpoint` by default);
    when that fails (disk full, read-only), training goes on without checkpoints after one warning, since
    the model itself may still be writable."""
    failed: list[SpkverError] = []
    save = save or save_checkpoint

    def write(state):
        if failed:
            return
        try:
            save(path, state, identity)
        except SpkverError as exc:
            failed.append(exc)
            if on_note:
                on_note(f"{exc}; training goes on without checkpoints (--resume will not be possible)")

    return write
