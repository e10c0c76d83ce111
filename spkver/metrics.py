"""Detection metrics: DET points, equal error rate, minimum detection cost."""

from __future__ import annotations

import numpy as np


def det_points(target_scores, nontarget_scores):
    """Miss and false-alarm rates at every distinct threshold.

    A trial is accepted when its score is at least the threshold. Thresholds
    run over the distinct scores in increasing order, then above them all,
    so tied scores move together and the curve goes from (0, 1) to (1, 0).

    Returns
    -------
    p_miss, p_fa : numpy.ndarray
        Non-decreasing and non-increasing respectively.
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
    return np.append(p_miss, 1.0), np.append(p_fa, 0.0)


def eer(target_scores, nontarget_scores) -> float:
    """Equal error rate: where the (linearly interpolated) DET curve meets P_miss = P_fa."""
    p_miss, p_fa = det_points(target_scores, nontarget_scores)
    i = int(np.argmax(p_miss >= p_fa))
    if i == 0:
        return float(p_fa[0])
    m0, f0, m1, f1 = p_miss[i - 1], p_fa[i - 1], p_miss[i], p_fa[i]
    t = (f0 - m0) / ((f0 - m0) - (f1 - m1))
    return float(m0 + t * (m1 - m0))


def min_dcf(target_scores, nontarget_scores, p_target=0.01, c_miss=1.0, c_fa=1.0) -> float:
    """Minimum normalised detection cost over all thresholds (NIST SRE).

    ``DCF = C_miss P_target P_miss + C_fa (1 − P_target) P_fa``, divided by
    the cost of the better trivial system, ``min(C_miss P_target, C_fa (1 − P_target))``.
    """
    p_miss, p_fa = det_points(target_scores, nontarget_scores)
    cost = c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa
    return float(cost.min() / min(c_miss * p_target, c_fa * (1 - p_target)))
