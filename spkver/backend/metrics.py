"""Detection metrics: DET points, equal error rate, minimum detection cost."""

from __future__ import annotations

import numpy as np

# minDCF at a prior P rests on the false alarms among the non-targets: with fewer than this many times
# 1/P non-target trials, a handful of them decide it (the rule of thumb of NIST SRE and BOSARIS).
MIN_NONTARGETS_PER_PRIOR = 10


def det_curve(target_scores, nontarget_scores):
    """Miss and false-alarm rates at every distinct threshold, and the thresholds.

    A trial is accepted when its score is at least the threshold. Thresholds
    run over the distinct scores in increasing order, then just above them
    all, so tied scores move together and the curve goes from (0, 1) to (1, 0).

    Returns
    -------
    p_miss, p_fa, thresholds : numpy.ndarray
        Of equal length; ``p_miss`` is non-decreasing and ``p_fa``
        non-increasing; the last threshold is the next float above the
        highest score (everything rejected).
    """
    tar = np.sort(np.asarray(target_scores, dtype=np.float64))
    non = np.sort(np.asarray(nontarget_scores, dtype=np.float64))
    if len(tar) == 0 or len(non) == 0:
        raise ValueError("need at least one target and one non-target score")
    if not (np.isfinite(tar).all() and np.isfinite(non).all()):
        raise ValueError("scores must be finite")
    thresholds = np.unique(np.concatenate([tar, non]))
    p_miss = np.searchsorted(tar, thresholds, side="left") / len(tar)
    p_fa = 1.0 - np.searchsorted(non, thresholds, side="left") / len(non)
    above_all = np.nextafter(thresholds[-1], np.inf)
    return np.append(p_miss, 1.0), np.append(p_fa, 0.0), np.append(thresholds, above_all)


def det_points(target_scores, nontarget_scores):
    """Miss and false-alarm rates at every distinct threshold (:func:`det_curve` without the thresholds)."""
    p_miss, p_fa, _ = det_curve(target_scores, nontarget_scores)
    return p_miss, p_fa


def eer_point(target_scores, nontarget_scores) -> tuple[float, float]:
    """The equal error rate and a threshold that operates at it.

    The EER is where the DET curve, linearly interpolated, meets P_miss =
    P_fa. Of the two DET points around it, the threshold is the one whose
    larger error rate is smaller (the lower threshold on a tie).

    Returns
    -------
    eer : float
    threshold : float
        Accepting scores at least this gives the error rates nearest the EER.
    """
    p_miss, p_fa, thresholds = det_curve(target_scores, nontarget_scores)
    i = int(np.argmax(p_miss >= p_fa))
    if i == 0:
        return float(p_fa[0]), float(thresholds[0])
    m0, f0, m1, f1 = p_miss[i - 1], p_fa[i - 1], p_miss[i], p_fa[i]
    t = (f0 - m0) / ((f0 - m0) - (f1 - m1))
    nearest = i - 1 if f0 <= m1 else i
    return float(m0 + t * (m1 - m0)), float(thresholds[nearest])


def eer(target_scores, nontarget_scores) -> float:
    """Equal error rate: where the (linearly interpolated) DET curve meets P_miss = P_fa."""
    return eer_point(target_scores, nontarget_scores)[0]


def min_dcf_point(target_scores, nontarget_scores, p_target=0.01, c_miss=1.0, c_fa=1.0) -> tuple[float, float]:
    """The minimum normalised detection cost (see :func:`min_dcf`) and the threshold that reaches it.

    Returns
    -------
    min_dcf : float
    threshold : float
        Accepting scores at least this costs ``min_dcf`` (the lowest such threshold).
    """
    p_miss, p_fa, thresholds = det_curve(target_scores, nontarget_scores)
    costs = detection_cost(p_miss, p_fa, p_target, c_miss, c_fa)
    best = int(np.argmin(costs))
    return float(costs[best]), float(thresholds[best])


def min_dcf(target_scores, nontarget_scores, p_target=0.01, c_miss=1.0, c_fa=1.0) -> float:
    """Minimum normalised detection cost over all thresholds (NIST SRE).

    ``DCF = C_miss P_target P_miss + C_fa (1 − P_target) P_fa``, divided by
    the cost of the better trivial system, ``min(C_miss P_target, C_fa (1 − P_target))``.
    """
    return min_dcf_point(target_scores, nontarget_scores, p_target, c_miss, c_fa)[0]


def nontargets_needed(p_target) -> int:
    """Non-target trials below which minDCF or a calibration at ``p_target`` rests on a handful of false alarms."""
    return int(np.ceil(MIN_NONTARGETS_PER_PRIOR / p_target - 1e-9))


def detection_cost(p_miss, p_fa, p_target=0.01, c_miss=1.0, c_fa=1.0):
    """Normalised detection cost of error rates: ``C_miss P P_miss + C_fa (1 − P) P_fa`` over the cost of
    the better trivial system, ``min(C_miss P, C_fa (1 − P))`` (the one DCF formula)."""
    cost = c_miss * p_target * np.asarray(p_miss) + c_fa * (1 - p_target) * np.asarray(p_fa)
    return cost / min(c_miss * p_target, c_fa * (1 - p_target))


def prior_log_odds(p_target) -> float:
    """``log(P / (1 − P))``: the log-odds of a target prior, added to an LLR to give the posterior's log-odds."""
    return float(np.log(p_target / (1 - p_target)))


def posterior_probability(llr, p_target) -> float:
    """P(target | evidence) for a calibrated log-likelihood ratio under the prior ``p_target``.

    ``1 / (1 + exp(-(llr + logit p_target)))``, computed without overflow for any finite ``llr``.
    """
    log_odds = float(llr) + prior_log_odds(p_target)
    if log_odds >= 0:
        return 1.0 / (1.0 + float(np.exp(-log_odds)))
    odds = float(np.exp(log_odds))
    return odds / (1.0 + odds)


def bayes_threshold(p_target=0.01, c_miss=1.0, c_fa=1.0) -> float:
    """Decision threshold on calibrated LLRs: ``log(C_fa (1 − P) / (C_miss P))``."""
    return float(np.log(c_fa * (1 - p_target) / (c_miss * p_target)))


def actual_dcf(target_llrs, nontarget_llrs, p_target=0.01, c_miss=1.0, c_fa=1.0) -> float:
    """Normalised DCF of calibrated LLRs decided at the Bayes threshold."""
    threshold = bayes_threshold(p_target, c_miss, c_fa)
    p_miss = np.mean(np.asarray(target_llrs) < threshold)
    p_fa = np.mean(np.asarray(nontarget_llrs) >= threshold)
    return float(detection_cost(p_miss, p_fa, p_target, c_miss, c_fa))


def cllr(target_llrs, nontarget_llrs) -> float:
    """Log-likelihood-ratio cost in bits (0 perfect, 1 uninformative; Brümmer & du Preez 2006)."""
    tar = np.asarray(target_llrs, dtype=np.float64)
    non = np.asarray(nontarget_llrs, dtype=np.float64)
    return float((np.logaddexp(0, -tar).mean() + np.logaddexp(0, non).mean()) / (2 * np.log(2)))


def pav(values, weights=None) -> np.ndarray:
    """Pool-adjacent-violators: the weighted non-decreasing least-squares fit to ``values``.

    With 0/1 labels in score order this is the monotone estimate of
    P(target | score).
    """
    from scipy.optimize import isotonic_regression  # here: scipy.optimize costs the CLI's start-up

    return isotonic_regression(np.asarray(values, dtype=np.float64), weights=weights).x


def min_cllr(target_scores, nontarget_scores) -> float:
    """Cllr after the best monotone calibration (PAV), the discrimination part of Cllr."""
    tar = np.asarray(target_scores, dtype=np.float64)
    non = np.asarray(nontarget_scores, dtype=np.float64)
    scores = np.concatenate([tar, non])
    labels = np.concatenate([np.ones(len(tar)), np.zeros(len(non))])
    # Tied scores share one posterior: pool them first, then PAV over the groups.
    unique, group = np.unique(scores, return_inverse=True)
    group_count = np.bincount(group).astype(np.float64)
    group_rate = np.bincount(group, labels) / group_count
    posterior = pav(group_rate, group_count)[group]
    with np.errstate(divide="ignore"):
        llr = np.log(posterior) - np.log1p(-posterior) - np.log(len(tar) / len(non))
    return cllr(llr[: len(tar)], llr[len(tar) :])
