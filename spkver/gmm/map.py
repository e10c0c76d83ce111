"""Relevance-MAP adaptation of a UBM to one speaker (Reynolds, Quatieri, Dunn 2000)."""

from __future__ import annotations

import numpy as np

from spkver.errors import SpkverError
from spkver.gmm.channels import compensations
from spkver.gmm.estep import Statistics, accumulate
from spkver.gmm.model import GMM

ADAPT_MODES = ("m", "mw", "mv", "mwv")
# Means and weights: better than means alone on every protocol, short clips and long recordings
# alike; adapting variances too overfits long enrollments (README, "Defaults and where they come from").
DEFAULT_ADAPT = "mw"
# The largest relevance the commands take: 10^6 frames (nearly three hours of speech) to move a component
# halfway. Far beyond it α = n / (n + r) rounds the model back to its UBM, which check_adapted refuses.
MAX_RELEVANCE = 1e6


def map_adapt(ubm: GMM, stats: Statistics, relevance: float = 16.0, adapt: str = DEFAULT_ADAPT,
              variance_floor=1e-10) -> GMM:
    """Adapt ``ubm`` towards the data summarised by ``stats``.

    With ``n_k`` the speaker's soft count for component k and
    ``α_k = n_k / (n_k + r)``:

    - means: ``μ̂_k = α_k E_k[x] + (1 − α_k) μ_k``
    - weights: ``ŵ_k ∝ α_k n_k / T + (1 − α_k) w_k``
    - variances: ``σ̂²_k = α_k E_k[x²] + (1 − α_k)(σ²_k + μ_k²) − μ̂_k²``

    Parameters
    ----------
    ubm : GMM
        The universal background model.
    stats : Statistics
        The speaker's statistics against ``ubm`` (:func:`spkver.gmm.estep.accumulate`).
    relevance : float
        The relevance factor r, 16 by default (Reynolds 2000); larger stays
        closer to the UBM. ``inf`` returns the UBM, 0 the ML estimate.
    adapt : {"mw", "m", "mv", "mwv"}
        Which parameters to adapt: means, and optionally weights and
        variances; means and weights by default.
    variance_floor : float or array
        Lower bound for adapted variances.
    """
    if adapt not in ADAPT_MODES:
        raise ValueError(f"adapt must be one of {', '.join(ADAPT_MODES)}")
    if relevance < 0:
        raise ValueError("relevance must be non-negative")
    count = stats.zeroth
    seen = count > 0
    safe = np.where(seen, count, 1.0)[:, None]
    if np.isinf(relevance):
        alpha = np.zeros_like(count)
    else:
        alpha = np.where(seen, count / np.maximum(count + relevance, 1e-300), 0.0)
    a = alpha[:, None]
    expected_x = np.where(seen[:, None], stats.first / safe, ubm.means)
    means = a * expected_x + (1 - a) * ubm.means if "m" in adapt else ubm.means.copy()
    weights = ubm.weights.copy()
    if "w" in adapt:
        weights = alpha * count / max(count.sum(), 1e-300) + (1 - alpha) * ubm.weights
        weights /= weights.sum()
    variances = ubm.variances.copy()
    if "v" in adapt:
        expected_x2 = np.where(seen[:, None], stats.second / safe, ubm.variances + ubm.means**2)
        variances = a * expected_x2 + (1 - a) * (ubm.variances + ubm.means**2) - means**2
        variances = np.maximum(variances, variance_floor)
    try:
        return GMM(weights, means, variances)
    except ValueError as exc:  # the mixture's guard: a UBM at the edge of float32, or audio beyond the features' range
        raise SpkverError(f"the adapted model cannot be evaluated ({exc}): the UBM's variances are too small or "
                          "its means too large for this audio") from None


def check_adapted(ubm: GMM, adapted: GMM, stats) -> GMM:
    """The guard on speaker models: one that equals its UBM would score 0 for everyone, so it is refused."""
    if (np.array_equal(adapted.means, ubm.means) and np.array_equal(adapted.weights, ubm.weights)
            and np.array_equal(adapted.variances, ubm.variances)):
        raise SpkverError(f"the enrollment audio did not move the UBM ({stats.n_frames} speech frames, "
                          f"{float(stats.zeroth.sum()):.3g} assigned to components): nothing to tell this speaker "
                          "from anyone else")
    return adapted


def adapt_to(ubm: GMM, arrays, relevance: float = 16.0, adapt: str = DEFAULT_ADAPT,
             compensation=None) -> tuple[GMM, Statistics]:
    """The speaker mixture MAP-adapted from ``ubm`` to feature ``arrays`` (each (n_i, D)), and its statistics.

    Statistics in float64 and one BLAS thread (the same model on any number of
    cores), variances floored at 1% of the UBM's smallest, and the guard of
    :func:`check_adapted`: what ``enroll``, pair trials and T-norm cohorts all make.
    With ``compensation`` (a :class:`~spkver.gmm.channels.ChannelCompensation`),
    each array's channel offset is removed first.
    """
    from spkver.run import single_blas_thread

    with single_blas_thread():
        if compensation is not None:
            arrays = [compensation.compensate(a) for a in arrays]
        stats = accumulate(ubm, arrays, dtype=np.float64)
    floor = ubm.variances.min(axis=0) * 1e-2
    return check_adapted(ubm, map_adapt(ubm, stats, relevance, adapt, variance_floor=floor), stats), stats


def adapt_views(ubms, views, arrays, relevance: float = 16.0, adapt: str = DEFAULT_ADAPT,
                channels=()) -> tuple[tuple, Statistics]:
    """:func:`adapt_to` for a model of several systems: each mixture of ``ubms`` adapted to its columns
    (``views``, slices) of feature ``arrays``, compensated by the system's ``channels`` when given
    (:attr:`~spkver.storage.models.Model.channels`).

    Returns the adapted mixtures, in order, and the first system's statistics
    (every system sees the same frames).
    """
    adapted = [adapt_to(ubm, [a[:, view] for a in arrays], relevance, adapt, compensation)
               for ubm, view, compensation in zip(ubms, views, compensations(ubms, channels), strict=True)]
    return tuple(gmm for gmm, _ in adapted), adapted[0][1]
