"""Score fusion: several systems' scores of the same trials → one calibrated log-likelihood ratio.

``llr = w₁·score₁ + … + w_S·score_S + b`` is fitted as a calibration is
(:func:`spkver.backend.calibration.fit_linear_llr`: BOSARIS's prior-weighted
logistic regression, Platt-smoothed labels), of which calibration is the
one-system case; this module holds the fusion's record and its file.

A fusion remembers how each system's development scores were made (their
normalisation, whether they were calibrated, from the score files' headers)
and is applied only to scores made the same way, given in the same order.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spkver.backend.calibration import fit_linear_llr
from spkver.errors import SpkverError, printable
from spkver.fileio import read_json, reads_as, write_atomic

FUSION_KIND = "spkver-fusion"
FUSION_VERSION = 1


@dataclass(frozen=True)
class Fusion:
    """A linear fusion of several systems' scores into calibrated LLRs: ``llr = scores @ weights + offset``.

    Attributes
    ----------
    weights : tuple of float
        One per system, in the order the systems' score files are given.
    offset : float
        Added to the weighted sum.
    p_target : float
        The prior the fusion was optimised for.
    targets, nontargets : int
        The development trials it was learnt on.
    systems : tuple of str
        The systems' names (the stems of their development score files), for messages
        [default: ``system 1``, ``system 2``, …].
    normalisations : tuple of str
        How each system's development scores were normalised, as their score file's header said
        (see :mod:`spkver.backend.scorenorm`) [default: all ``none``].
    calibrated : tuple of bool
        Whether each system's development scores were calibrated LLRs [default: all False].
    source : str or None
        The file it was read from, for messages.
    """

    weights: tuple[float, ...]
    offset: float
    p_target: float
    targets: int = 0
    nontargets: int = 0
    systems: tuple[str, ...] = ()
    normalisations: tuple[str, ...] = ()
    calibrated: tuple[bool, ...] = ()
    source: str | None = field(default=None, compare=False)

    def __post_init__(self):
        count = len(self.weights)
        if count == 0:
            raise ValueError("a fusion needs at least one system")
        # Frozen: the defaults are filled in the one way a frozen dataclass allows.
        defaults = {"weights": tuple(float(w) for w in self.weights),
                    "systems": tuple(self.systems) or tuple(f"system {k + 1}" for k in range(count)),
                    "normalisations": tuple(self.normalisations) or ("none",) * count,
                    "calibrated": tuple(bool(c) for c in self.calibrated) or (False,) * count}
        for name, value in defaults.items():
            if len(value) != count:
                raise ValueError(f"{count} weights but {len(value)} {name}")
            object.__setattr__(self, name, value)
        # A normalisation goes into fused score files' header line: it must be one line of plain text.
        if any(printable(text) != text for text in self.normalisations):
            raise ValueError("a normalisation holds control characters")

    def __call__(self, scores) -> np.ndarray:
        """The fused LLRs of a ``(trials, systems)`` score matrix."""
        matrix = np.asarray(scores, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.weights):
            raise ValueError(f"need a (trials, {len(self.weights)}) score matrix, got shape {matrix.shape}")
        return matrix @ np.asarray(self.weights) + self.offset

    @property
    def normalisation(self) -> str:
        """What a fused score file's header records: the systems' normalisations, each once, joined by ``+``."""
        return " + ".join(dict.fromkeys(self.normalisations))

    def describe_systems(self) -> str:
        return ", ".join(printable(name) for name in self.systems)

    def require_systems(self, count: int) -> None:
        """Refuse a number of score files other than the number of systems fused."""
        if count != len(self.weights):
            given = "1 score file was" if count == 1 else f"{count} score files were"
            raise SpkverError(f"the fusion combines {len(self.weights)} system{'s' if len(self.weights) > 1 else ''} "
                              f"({self.describe_systems()}) but {given} given: give one per system, in the fusion's "
                              "order", self.source)

    def require(self, system: int, normalisation: str, calibrated: bool, path=None) -> None:
        """Refuse scores for ``system`` (0-based) made otherwise than the ones it was learnt on.

        Its weight holds only for scores like its development scores, and
        score files given in another order than the fusion's would swap
        weights: the headers catch that whenever the systems' scores differ.
        """
        name = f"system {system + 1} of {printable(self.source or 'the fusion')} ({printable(self.systems[system])})"
        if normalisation != self.normalisations[system]:
            raise SpkverError(f"{name} was learnt on scores with normalisation '{self.normalisations[system]}', "
                              f"these have '{normalisation}': give each system's scores in the fusion's order, "
                              "made as its development scores were", path)
        if calibrated != self.calibrated[system]:
            raise SpkverError(f"{name} was learnt on {'calibrated LLRs' if self.calibrated[system] else 'raw scores'}, "
                              f"these are {'calibrated LLRs' if calibrated else 'raw scores'}: give each system's "
                              "scores in the fusion's order, made as its development scores were", path)


def fit_fusion(target_scores, nontarget_scores, p_target=0.01, *, systems=(), normalisations=(),
               calibrated=()) -> Fusion:
    """Learn a fusion on a development set by prior-weighted logistic regression.

    Parameters
    ----------
    target_scores, nontarget_scores : array-like, shape (trials, systems)
        Each row holds every system's score of one target (non-target) trial.
    p_target : float
        The prior the LLRs are optimised for, 0.01 by default (NIST SRE).
    systems, normalisations, calibrated : sequences, optional
        One entry per system: see :class:`Fusion`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> tar, non = rng.normal(1, 1, (2000, 2)), rng.normal(-1, 1, (2000, 2))
    >>> fusion = fit_fusion(tar, non, p_target=0.5)  # the true LLR is 2·s₁ + 2·s₂
    >>> [round(w) for w in fusion.weights], round(fusion.offset)
    ([2, 2], 0)
    >>> fusion(np.array([[0.5, 1.0]])).round()  # about 2·0.5 + 2·1
    array([3.])
    """
    tar = np.asarray(target_scores, dtype=np.float64)
    non = np.asarray(nontarget_scores, dtype=np.float64)
    weights, offset = fit_linear_llr(tar, non, p_target)
    return Fusion(tuple(float(w) for w in weights), offset, p_target, len(tar), len(non), tuple(systems),
                  tuple(normalisations), tuple(calibrated))


def fusion_json(fusion: Fusion) -> bytes:
    """The file :func:`save_fusion` writes, as bytes."""
    data = {"kind": FUSION_KIND, "version": FUSION_VERSION, "weights": list(fusion.weights),
            "offset": fusion.offset, "p_target": fusion.p_target, "targets": fusion.targets,
            "nontargets": fusion.nontargets, "systems": list(fusion.systems),
            "normalisations": list(fusion.normalisations), "calibrated": list(fusion.calibrated)}
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()


def save_fusion(path, fusion: Fusion) -> None:
    write_atomic(Path(path), fusion_json(fusion))


def is_fusion_file(path) -> bool:
    """Whether ``path`` holds a fusion written by ``spkver fuse``."""
    return reads_as(load_fusion, path)


def _number(value, name: str) -> float:
    """A finite JSON number (not a boolean, not a string); ValueError naming the field otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        raise ValueError(f"{name} is not finite") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} is not finite")
    return number


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} is not a count")
    return value


def _list_of(value, kind, name: str) -> list:
    if not isinstance(value, list) or not all(isinstance(item, kind) for item in value):
        raise ValueError(f"{name} is not a list of {'texts' if kind is str else 'true/false'}")
    return value


def load_fusion(path) -> Fusion:
    """Read a fusion file written by ``spkver fuse``.

    Raises
    ------
    SpkverError
        Not a fusion file, another version, a missing field, a number that is
        not finite, or lists whose lengths disagree.
    """
    data = read_json(path, "fusion file")
    if not isinstance(data, dict) or data.get("kind") != FUSION_KIND:
        raise SpkverError("not a spkver fusion file", path)
    if data.get("version") != FUSION_VERSION or isinstance(data.get("version"), bool):
        raise SpkverError(f"fusion file version {printable(data.get('version'))} is not one this spkver reads "
                          f"({FUSION_VERSION})", path)
    try:
        weights = data["weights"]
        if not isinstance(weights, list) or not weights:
            raise ValueError("weights is not a list of numbers")
        systems = _list_of(data["systems"], str, "systems")
        normalisations = _list_of(data["normalisations"], str, "normalisations")
        calibrated = _list_of(data["calibrated"], bool, "calibrated")
        if not len(weights) == len(systems) == len(normalisations) == len(calibrated):
            raise ValueError("weights, systems, normalisations and calibrated differ in length")
        fusion = Fusion(tuple(_number(w, "a weight") for w in weights), _number(data["offset"], "offset"),
                        _number(data["p_target"], "p_target"), _count(data["targets"], "targets"),
                        _count(data["nontargets"], "nontargets"), tuple(systems), tuple(normalisations),
                        tuple(calibrated), str(path))
    except KeyError as exc:
        raise SpkverError(f"fusion file lacks a field ({exc})", path) from None
    except ValueError as exc:
        raise SpkverError(f"fusion file is damaged ({exc})", path) from None
    if not 0 < fusion.p_target < 1:
        raise SpkverError("fusion file is damaged (p_target is not between 0 and 1)", path)
    return fusion
