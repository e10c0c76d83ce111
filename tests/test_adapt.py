import numpy as np
import pytest

from spkver.gmm.em import m_step
from spkver.gmm.estep import Statistics, accumulate
from spkver.gmm.map import map_adapt
from spkver.gmm.model import GMM


def ubm_and_data():
    rng = np.random.default_rng(0)
    ubm = GMM(np.array([0.5, 0.5]), np.array([[-2.0, 0.0], [2.0, 0.0]]), np.ones((2, 2)))
    x = rng.normal([2.5, 0.5], 0.8, size=(300, 2))
    return ubm, x, accumulate(ubm, [x], np.float64)


def test_hand_checked_mean_update():
    ubm = GMM(np.array([0.5, 0.5]), np.array([[0.0], [10.0]]), np.ones((2, 1)))
    # 16 frames' worth on component 0 with mean 2: alpha = 16 / (16 + 16) = 0.5.
    stats = Statistics(np.array([16.0, 0.0]), np.array([[32.0], [0.0]]), np.array([[80.0], [0.0]]))
    adapted = map_adapt(ubm, stats, relevance=16)
    np.testing.assert_allclose(adapted.means, [[1.0], [10.0]])
    np.testing.assert_allclose(adapted.variances, ubm.variances)
    full = map_adapt(ubm, stats, relevance=16, adapt="mwv")
    # weights: 0.5 * 16/16 + 0.5 * 0.5 = 0.75 and 0 + 1 * 0.5 = 0.5 -> normalised 0.6, 0.4
    np.testing.assert_allclose(full.weights, [0.6, 0.4])
    # variance: 0.5 * E[x^2]=5 + 0.5 * (1 + 0) - 1^2 = 2
    np.testing.assert_allclose(full.variances, [[2.0], [1.0]])


@pytest.mark.parametrize("mode", ["m", "mw", "mv", "mwv"])
def test_infinite_relevance_gives_the_ubm(mode):
    ubm, _, stats = ubm_and_data()
    adapted = map_adapt(ubm, stats, relevance=np.inf, adapt=mode)
    np.testing.assert_allclose(adapted.means, ubm.means)
    np.testing.assert_allclose(adapted.weights, ubm.weights)
    np.testing.assert_allclose(adapted.variances, ubm.variances)
    big = map_adapt(ubm, stats, relevance=1e12, adapt=mode)
    np.testing.assert_allclose(big.means, ubm.means, atol=1e-8)


def test_zero_relevance_gives_the_ml_estimate():
    ubm, _, stats = ubm_and_data()
    ml, _ = m_step(stats, 1e-10, min_count=0)
    adapted = map_adapt(ubm, stats, relevance=0.0, adapt="mwv")
    np.testing.assert_allclose(adapted.means, ml.means, rtol=1e-9)
    np.testing.assert_allclose(adapted.weights, ml.weights, rtol=1e-9)
    np.testing.assert_allclose(adapted.variances, ml.variances, rtol=1e-7)


def test_unseen_components_keep_ubm_parameters():
    ubm, _, stats = ubm_and_data()
    stats.zeroth[0] = 0.0
    adapted = map_adapt(ubm, stats, relevance=4, adapt="mv")
    np.testing.assert_allclose(adapted.means[0], ubm.means[0])
    np.testing.assert_allclose(adapted.variances[0], ubm.variances[0])


def test_bad_arguments():
    ubm, _, stats = ubm_and_data()
    with pytest.raises(ValueError):
        map_adapt(ubm, stats, adapt="x")
    with pytest.raises(ValueError):
        map_adapt(ubm, stats, relevance=-1)
