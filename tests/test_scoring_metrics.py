import numpy as np
import pytest
from sklearn.metrics import roc_curve

from spkver.backend.metrics import det_points, eer, min_dcf
from spkver.backend.scoring import llr_scores
from spkver.gmm.estep import accumulate
from spkver.gmm.map import map_adapt
from spkver.gmm.model import GMM


def test_full_score_is_the_mean_log_likelihood_ratio():
    rng = np.random.default_rng(0)
    ubm = GMM(np.array([0.4, 0.6]), rng.normal(size=(2, 3)), rng.uniform(0.5, 2, (2, 3)))
    x = rng.normal(size=(40, 3))
    spk = map_adapt(ubm, accumulate(ubm, [x[:20]], np.float64), relevance=2)
    expected = np.mean(spk.frame_log_likelihood(x) - ubm.frame_log_likelihood(x))
    assert llr_scores(ubm, [spk], x, top_c=0)[0] == pytest.approx(expected, rel=1e-10)
    # top-C with C = K is the full sum
    assert llr_scores(ubm, [spk], x, top_c=2)[0] == pytest.approx(expected, rel=1e-10)


def test_top_c_is_close_to_full_for_well_separated_components():
    rng = np.random.default_rng(1)
    means = rng.normal(scale=6, size=(32, 4))
    ubm = GMM(np.full(32, 1 / 32), means, np.ones((32, 4)))
    x = means[rng.integers(0, 32, 500)] + rng.normal(size=(500, 4))
    spk = map_adapt(ubm, accumulate(ubm, [x[:250]], np.float64), relevance=8)
    full, fast = llr_scores(ubm, [spk], x[250:], 0)[0], llr_scores(ubm, [spk], x[250:], 5)[0]
    assert fast == pytest.approx(full, abs=0.01)


def test_empty_frames_give_nan():
    ubm = GMM(np.ones(1), np.zeros((1, 2)), np.ones((1, 2)))
    assert np.isnan(llr_scores(ubm, [ubm], np.zeros((0, 2)))).all()


def test_eer_hand_checked_cases():
    assert eer([2, 3, 4], [0, 1]) == 0.0
    assert eer([0, 1], [2, 3]) == 1.0
    # one target below one non-target out of 4 each: the DET steps cross at 0.25
    assert eer([1, 5, 6, 7], [0, 2, 3, 4]) == pytest.approx(0.25)
    # all scores tied: the only threshold gives (0, 1) then (1, 0): EER 0.5
    assert eer([1, 1, 1], [1, 1]) == pytest.approx(0.5)


def test_ties_move_together():
    p_miss, p_fa = det_points([1, 2, 2], [2, 3])
    assert p_miss.tolist() == pytest.approx([0, 1 / 3, 1, 1])
    assert p_fa.tolist() == pytest.approx([1, 1, 0.5, 0])


def test_eer_and_min_dcf_agree_with_independent_computation():
    rng = np.random.default_rng(2)
    tar, non = rng.normal(2, 1, 500), rng.normal(0, 1, 5000)
    labels = np.r_[np.ones(500), np.zeros(5000)]
    fpr, tpr, _ = roc_curve(labels, np.r_[tar, non])
    fnr = 1 - tpr
    i = np.argmin(np.abs(fnr - fpr))
    assert eer(tar, non) == pytest.approx((fnr[i] + fpr[i]) / 2, abs=2e-3)
    brute = min(0.01 * np.mean(tar < t) + 0.99 * np.mean(non >= t) for t in np.r_[tar, non, np.inf])
    assert min_dcf(tar, non, 0.01) == pytest.approx(brute / 0.01, rel=1e-9)
    assert min_dcf(tar, non, 0.01) <= 1.0


def test_metrics_reject_empty_or_nonfinite():
    with pytest.raises(ValueError):
        eer([], [1.0])
    with pytest.raises(ValueError):
        eer([np.nan], [1.0])


@pytest.mark.parametrize("top_c", [0, 3])
def test_scoring_a_subset_of_models_equals_picking_from_all(top_c):
    from spkver.backend.scoring import Scorer

    rng = np.random.default_rng(3)
    ubm = GMM(np.full(8, 1 / 8), rng.normal(scale=3, size=(8, 2)), np.ones((8, 2)))
    x = rng.normal(scale=3, size=(200, 2))
    speakers = [map_adapt(ubm, accumulate(ubm, [x[i::5]], np.float64), relevance=4) for i in range(5)]
    scorer = Scorer(ubm, speakers, top_c)
    everything = scorer.scores(x[:50])
    np.testing.assert_allclose(scorer.scores(x[:50], [3, 1]), everything[[3, 1]], rtol=1e-12)
