"""Score calibration: raw scores → log-likelihood ratios by prior-weighted logistic regression.

As in the BOSARIS toolkit, ``llr = scale · score + offset`` minimises the
cross-entropy with target and non-target trials weighted by ``P`` and ``1 − P``
(each class normalised by its count), so the result is calibrated for the
application prior ``P``. :func:`fit_linear_llr` fits the general case,
``llr = scores @ weights + offset`` over several systems' scores of the same
trials: calibration is its one-system case, and fusion
(:mod:`spkver.backend.fusion`) the case of several.

The labels are smoothed as Platt (1999) proposed: a target counts as
``(N₊ + 1) / (N₊ + 2)`` target, a non-target as ``1 / (N₋ + 2)``. On a large
development set this changes nothing measurable; on a small or perfectly
separated one it keeps the fit finite and the LLRs as confident as that
much evidence allows (45 targets cannot justify odds of 10¹⁰⁰), where plain
logistic regression drives the scale towards infinity.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from spkver.backend.metrics import nontargets_needed, prior_log_odds
from spkver.backend.scorenorm import parse_normalisation
from spkver.errors import SpkverError
from spkver.fileio import read_json, reads_as, write_atomic

CALIBRATION_KIND = "spkver-calibration"


@dataclass(frozen=True)
class Calibration:
    """An affine map from raw scores to LLRs."""

    scale: float
    offset: float
    p_target: float
    targets: int = 0
    nontargets: int = 0
    normalisation: str = "none"  # of the scores it was fitted on (see spkver.backend.scorenorm)
    source: str | None = field(default=None, compare=False)  # the file it was read from, for errors

    def __call__(self, scores):
        return self.scale * np.asarray(scores, dtype=np.float64) + self.offset

    def require(self, normalisation: str) -> None:
        """Refuse scores normalised otherwise than the ones this was fitted on: its LLRs would be wrong."""
        if normalisation != self.normalisation:
            raise SpkverError(f"calibration was fitted on scores with normalisation '{self.normalisation}', "
                              f"these scores have '{normalisation}': calibrate scores made the same way", self.source)


# Below this many targets (or metrics.nontargets_needed non-targets) a development set says
# little about the tails: warn.
MIN_TARGETS = 50


def _cross_entropy(logit, label):
    """Mean cross-entropy of soft ``label`` against ``sigmoid(logit)``, and its gradient in ``logit``."""
    from scipy.special import expit

    value = (label * np.logaddexp(0, -logit) + (1 - label) * np.logaddexp(0, logit)).mean()
    return value, (expit(logit) - label) / len(logit)


def _objective(params, tar, non, prior):
    """Prior-weighted cross-entropy of ``llr = scores @ params[:-1] + params[-1]``, and its gradient.

    ``tar`` and ``non`` are ``(trials, systems)`` score matrices.
    """
    weights, offset = params[:-1], params[-1]
    shift = prior_log_odds(prior)
    tar_label, non_label = (len(tar) + 1) / (len(tar) + 2), 1 / (len(non) + 2)
    value_tar, grad_tar = _cross_entropy(tar @ weights + offset + shift, tar_label)
    value_non, grad_non = _cross_entropy(non @ weights + offset + shift, non_label)
    grad_weights = prior * grad_tar @ tar + (1 - prior) * grad_non @ non
    grad_offset = prior * grad_tar.sum() + (1 - prior) * grad_non.sum()
    return prior * value_tar + (1 - prior) * value_non, np.append(grad_weights, grad_offset)


def calibration_warnings(target_scores, nontarget_scores, p_target=0.01) -> list[str]:
    """Why a calibration fitted on these scores may not hold on new data (empty when none)."""
    tar, non = np.asarray(target_scores), np.asarray(nontarget_scores)
    warnings = []
    if len(tar) < MIN_TARGETS or len(non) < nontargets_needed(p_target):
        warnings.append(f"small development set ({len(tar)} target, {len(non)} non-target trials; want at least "
                        f"{MIN_TARGETS} and {nontargets_needed(p_target)} for P_target {p_target:g}): "
                        "its LLRs are rough")
    if len(tar) and len(non) and non.max() < tar.min():
        warnings.append("target and non-target scores do not overlap: the fit cannot tell how fast errors grow, "
                        "so LLRs are limited by the number of trials, not by the scores")
    return warnings


def fit_linear_llr(target_scores, nontarget_scores, p_target=0.01) -> tuple[np.ndarray, float]:
    """Fit ``llr = scores @ weights + offset`` by prior-weighted logistic regression (Platt-smoothed labels).

    Parameters
    ----------
    target_scores, nontarget_scores : array-like, shape (trials, systems)
        Each row holds every system's score of one development trial.
    p_target : float
        The prior the LLRs are optimised for.

    Returns
    -------
    weights : ndarray, shape (systems,)
    offset : float
        A system whose scores are all equal carries no evidence and gets weight 0.

    Raises
    ------
    ValueError
        ``p_target`` outside (0, 1), a class without trials, or matrices that
        are not 2-D with the same number of columns.
    """
    from scipy.optimize import minimize  # here: scipy.optimize costs the CLI's start-up

    if not 0 < p_target < 1:
        raise ValueError("p_target must be between 0 and 1")
    tar = np.asarray(target_scores, dtype=np.float64)
    non = np.asarray(nontarget_scores, dtype=np.float64)
    if tar.ndim != 2 or non.ndim != 2 or tar.shape[1] != non.shape[1] or tar.shape[1] == 0:
        raise ValueError("need (trials, systems) score matrices with the same systems")
    if len(tar) == 0 or len(non) == 0:
        raise ValueError("need target and non-target scores to calibrate")
    # Each column is first scaled by a power of two to below 1 in magnitude: that is exact, so the standardised
    # scores below are the same bits as without it, but scores near the largest float no longer overflow the
    # mean and spread.
    _, exponent = np.frexp(np.abs(np.concatenate([tar, non])).max(axis=0))
    tar, non = np.ldexp(tar, -exponent), np.ldexp(non, -exponent)
    centre = 0.5 * (tar.mean(axis=0) + non.mean(axis=0))
    scores = np.concatenate([tar, non])
    constant = scores.min(axis=0) == scores.max(axis=0)  # its std is rounding noise, not always 0
    spread = np.where(constant, 1.0, np.maximum(scores.std(axis=0), np.ldexp(1e-12, -exponent)))

    # Fit on standardised scores for conditioning (systems' scales may differ by orders of magnitude),
    # then map back. A constant column would standardise to rounding noise over its spread: make it 0.
    tar_std, non_std = (tar - centre) / spread, (non - centre) / spread
    tar_std[:, constant], non_std[:, constant] = 0.0, 0.0
    result = minimize(_objective, np.zeros(tar.shape[1] + 1), args=(tar_std, non_std, p_target),
                      jac=True, method="BFGS")
    weights_std, offset_std = result.x[:-1], result.x[-1]
    weights = np.ldexp(weights_std / spread, -exponent)
    return weights, float(offset_std - np.sum(weights_std * centre / spread))


def fit_calibration(target_scores, nontarget_scores, p_target=0.01) -> Calibration:
    """Fit ``scale`` and ``offset`` by prior-weighted logistic regression (:func:`fit_linear_llr`, one system).

    Parameters
    ----------
    target_scores, nontarget_scores : array-like
        Raw scores of a development set's target and non-target trials.
    p_target : float
        The prior the LLRs are optimised for, 0.01 by default (NIST SRE).
    """
    tar = np.asarray(target_scores, dtype=np.float64)
    non = np.asarray(nontarget_scores, dtype=np.float64)
    weights, offset = fit_linear_llr(tar.reshape(-1, 1), non.reshape(-1, 1), p_target)
    return Calibration(float(weights[0]), offset, p_target, len(tar), len(non))


def calibration_json(calibration: Calibration) -> bytes:
    """The file :func:`save_calibration` writes, as bytes."""
    fields = asdict(calibration)
    del fields["source"]
    data = {"kind": CALIBRATION_KIND, "version": 1, **fields}
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode()


def save_calibration(path, calibration: Calibration) -> None:
    write_atomic(Path(path), calibration_json(calibration))


def is_calibration_file(path) -> bool:
    """Whether ``path`` holds a calibration written by ``spkver calibrate``."""
    return reads_as(load_calibration, path)


def load_calibration(path) -> Calibration:
    """Read a calibration file written by ``spkver calibrate``."""
    data = read_json(path, "calibration file")
    if not isinstance(data, dict) or data.get("kind") != CALIBRATION_KIND:
        raise SpkverError("not a spkver calibration file", path)
    try:
        calibration = Calibration(float(data["scale"]), float(data["offset"]), float(data["p_target"]),
                                  int(data.get("targets", 0)), int(data.get("nontargets", 0)),
                                  str(data.get("normalisation", "none")), str(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise SpkverError(f"calibration file lacks a field ({exc})", path) from None
    if not (np.isfinite(calibration.scale) and np.isfinite(calibration.offset) and 0 < calibration.p_target < 1):
        raise SpkverError("calibration file holds invalid numbers", path)
    try:
        parse_normalisation(calibration.normalisation)
    except ValueError as exc:
        raise SpkverError(f"calibration file is damaged ({exc})", path) from None
    return calibration
