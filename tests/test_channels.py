"""Channel factors: eigenchannels learnt from speakers' several recordings and removed before enrolling and scoring."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from helpers import one_error_line, run_cli
from scipy.stats import multivariate_normal

from spkver import RunOptions, enroll, find_audio, score_trials, train_ubm, verify
from spkver.backend.scoring import Scorer, SystemsScorer
from spkver.errors import SpkverError
from spkver.gmm.channels import (
    CHANNEL_ITERATIONS,
    ChannelCompensation,
    _canonical,
    _em_step,
    _leading_components,
    _principal_channels,
    _recordings_kept,
    _remove_speakers,
    _training_statistics,
    channel_degrees_of_freedom,
    channel_log_likelihood,
    train_channels,
)
from spkver.gmm.map import adapt_to
from spkver.gmm.model import GMM
from spkver.storage.models import fingerprint, load_model, npz_bytes, save_model

RUN = RunOptions(workers=1)


def test_compensation_of_a_hand_case():
    # One component (mean 0, variance 1), one factor of 2: ten frames at 1 give N = 10 and a centred first-order
    # statistic of 10, so x = 2·10 / (1 + 10·2²) = 20/41, and each frame loses 2x = 40/41.
    gmm = GMM(np.ones(1), np.zeros((1, 1)), np.ones((1, 1)))
    compensation = ChannelCompensation(gmm, np.full((1, 1, 1), 2.0))
    frames = np.ones((10, 1), dtype=np.float32)
    np.testing.assert_allclose(compensation.factors(frames), [20 / 41], rtol=1e-6)
    np.testing.assert_allclose(compensation.compensate(frames), np.full((10, 1), 1 / 41), rtol=1e-5)
    # The standard deviation scales the offset: variance 4 halves the statistic and doubles the step.
    wide = ChannelCompensation(GMM(np.ones(1), np.zeros((1, 1)), np.full((1, 1), 4.0)), np.full((1, 1, 1), 2.0))
    x = 2 * 5 / (1 + 10 * 4)
    np.testing.assert_allclose(wide.compensate(frames), np.full((10, 1), 1 - 2 * 2 * x), rtol=1e-5)


def test_no_channels_or_no_frames_leave_the_frames_as_they_are():
    gmm = GMM(np.ones(1), np.zeros((1, 2)), np.ones((1, 2)))
    frames = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    assert np.array_equal(ChannelCompensation(gmm, np.zeros((1, 2, 0))).compensate(frames), frames)
    assert ChannelCompensation(gmm, np.ones((1, 2, 1))).compensate(frames[:0]).shape == (0, 2)
    with pytest.raises(ValueError, match="does not fit"):
        ChannelCompensation(gmm, np.ones((2, 2, 1)))


def test_recordings_used_and_degrees_of_freedom():
    labels = ["a", "a", "b", "c", "c", "c"]
    assert channel_degrees_of_freedom(labels) == 3  # b alone adds nothing
    assert _recordings_kept(labels, 100) == [0, 1, 3, 4, 5]
    # Within a limit, every speaker keeps recordings in turn; one left alone is dropped.
    assert _recordings_kept(labels, 4) == [0, 1, 3, 4]
    assert _recordings_kept(labels, 3) == [0, 1]


def planted(seed=0, speakers=6, per_speaker=8, frames=400, channel_scale=1.5):
    """Recordings of a 2-component, 4-dimensional world: a speaker offset per speaker, plus a channel offset along
    one known direction that changes from recording to recording."""
    rng = np.random.default_rng(seed)
    means = np.array([[-3.0, 0, 0, 0], [3.0, 0, 0, 0]])
    gmm = GMM(np.full(2, 0.5), means, np.ones((2, 4)))
    direction = np.array([0.0, 1.0, -1.0, 0.0])  # apart from what speakers differ in
    direction /= np.linalg.norm(direction)
    arrays, labels, offsets = [], [], []
    for s in range(speakers):
        speaker = 0.5 * rng.standard_normal(4) * np.array([0, 0, 0, 1.0])  # speakers differ in the last dimension
        for _ in range(per_speaker):
            channel = channel_scale * rng.standard_normal() * direction
            side = rng.integers(2, size=frames)
            arrays.append((means[side] + speaker + channel + rng.standard_normal((frames, 4))).astype(np.float32))
            labels.append(f"s{s}")
            offsets.append(channel)
    return gmm, arrays, labels, direction, np.array(offsets)


def test_the_leading_eigenchannel_is_the_planted_direction_and_compensation_removes_it():
    gmm, arrays, labels, direction, offsets = planted()
    channels = train_channels(gmm, arrays, labels, 3)
    assert channels.shape == (2, 4, 3) and channels.dtype == np.float32
    for component in range(2):
        leading = channels[component, :, 0] / np.linalg.norm(channels[component, :, 0])
        assert abs(leading @ direction) > 0.98
    # Its scale is the channel's spread (1.5 σ).
    assert 1.3 < np.linalg.norm(channels[0, :, 0]) < 1.7
    # With the one factor there is (more would also take a share of what speakers differ in, the price of a
    # rank above the true one).
    compensation = ChannelCompensation(gmm, channels[:, :, :1])
    before = np.array([a.mean(axis=0) for a in arrays])
    after = np.array([compensation.compensate(a).mean(axis=0) for a in arrays])
    assert np.abs(before @ direction - offsets @ direction).max() < 0.2  # what the offsets were
    assert np.abs(after @ direction).std() < 0.15 * np.abs(before @ direction).std()
    # What speakers differ in (the last dimension) is kept.
    np.testing.assert_allclose(after[:, 3], before[:, 3], atol=0.05)


def speaker_free_statistics(arrays, labels, gmm, rank):
    """The EM's inputs for the planted world, first-order statistics in float64, and its principal-component
    start."""
    zeroth, first, speakers = _training_statistics(gmm, arrays, labels, 10 ** 6)
    start = _principal_channels(zeroth, first, speakers, rank, 16.0)
    first = first.astype(np.float64)
    _remove_speakers(zeroth, first, speakers, 16.0)
    return zeroth, first, start


def test_an_em_step_equals_the_formulas_recording_by_recording():
    gmm, arrays, labels, _, _ = planted(frames=60)
    zeroth, first, flat = speaker_free_statistics(arrays, labels, gmm, 3)
    k, d, r = 2, 4, 3
    channels = flat.reshape(k, d, r)
    # Kenny's updates written out: P = I + Σ_k N_k U_kᵀU_k, E[x] = P⁻¹ Σ_k U_kᵀ F_k, E[xxᵀ] = P⁻¹ + E[x]E[x]ᵀ,
    # U_k = (Σ F_k E[x]ᵀ)(Σ N_k E[xxᵀ])⁻¹.
    a, c, g = np.zeros((k, r, r)), np.zeros((k, d, r)), np.zeros((r, r))
    for n_u, f_u in zip(zeroth, first.reshape(-1, k, d)):
        precision = np.eye(r) + sum(n_u[j] * channels[j].T @ channels[j] for j in range(k))
        covariance = np.linalg.inv(precision)
        x = covariance @ sum(channels[j].T @ f_u[j] for j in range(k))
        second = covariance + np.outer(x, x)
        g += second / len(zeroth)
        for j in range(k):
            a[j] += n_u[j] * second
            c[j] += np.outer(f_u[j], x)
    expected = np.stack([c[j] @ np.linalg.inv(a[j]) for j in range(k)])
    np.testing.assert_allclose(_em_step(flat, zeroth, first).reshape(k, d, r), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(_em_step(flat, zeroth, first, len(zeroth)).reshape(k, d, r),
                               expected @ np.linalg.cholesky(g), rtol=1e-6, atol=1e-9)
    # Per degree of freedom: G = Σ E[xxᵀ] / f.
    np.testing.assert_allclose(_em_step(flat, zeroth, first, 40).reshape(k, d, r),
                               expected @ np.linalg.cholesky(g * len(zeroth) / 40), rtol=1e-6, atol=1e-9)
    # A prior of 5 frames: U_k = C_k (A_k + 5·I)⁻¹.
    ridged = np.stack([c[j] @ np.linalg.inv(a[j] + 5.0 * np.eye(r)) for j in range(k)])
    np.testing.assert_allclose(_em_step(flat, zeroth, first, relevance=5.0).reshape(k, d, r), ridged,
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("minimum_divergence", "dtype"), [(False, np.float64), (True, np.float64),
                                                          (True, np.float32)])
def test_em_never_lowers_the_likelihood(minimum_divergence, dtype):
    gmm, arrays, labels, _, _ = planted(frames=40, per_speaker=12)
    zeroth, first, flat = speaker_free_statistics(arrays, labels, gmm, 3)  # a rank above the true one
    first = first.astype(dtype)  # float32 as train_channels holds them: only rounding may go down
    likelihoods = []
    for _ in range(12):
        likelihoods.append(channel_log_likelihood(flat.reshape(2, 4, 3), zeroth, first))
        flat = _em_step(flat, zeroth, first, len(zeroth) if minimum_divergence else None)
    tolerance = 1e-10 if dtype == np.float64 else 1e-6
    assert np.all(np.diff(likelihoods) > -tolerance * abs(likelihoods[0]))
    assert likelihoods[-1] > likelihoods[0] + 1.0


def test_em_with_a_prior_never_lowers_the_likelihood_minus_the_prior_penalty():
    # Where the prior matters (a Gaussian reached by a handful of frames): the MAP step never lowers the
    # penalised likelihood; the ML step, or a prior of another weight, does.
    _, arrays, labels, _, _ = planted(frames=100, per_speaker=6)
    gmm, arrays = rarely_reached(arrays)
    zeroth, first, start = speaker_free_statistics(arrays, labels, gmm, 3)

    def objective_along(relevance):
        flat, values = start, []
        for _ in range(12):
            values.append(channel_log_likelihood(flat.reshape(3, 4, 3), zeroth, first) - 8.0 * np.sum(flat**2))
            flat = _em_step(flat, zeroth, first, relevance=relevance)
        return np.array(values)

    objective = objective_along(16.0)
    assert np.all(np.diff(objective) > -1e-10 * abs(objective[0]))
    assert objective[-1] > objective[0] + 1.0
    for other in (0.0, 32.0):
        assert np.diff(objective_along(other)).min() < -1e-6 * abs(objective[0])


def rarely_reached(arrays):
    """The planted world's mixture with a third, narrow component (σ 0.03) far off, and one frame 10 σ from its
    mean in every seventh recording: a handful of frames that no channel explains."""
    gmm = GMM(np.array([0.49, 0.49, 0.02]), np.array([[-3.0, 0, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 30.0]]),
              np.vstack([np.ones((2, 4)), np.full((1, 4), 1e-3)]))
    rng = np.random.default_rng(5)
    arrays = list(arrays)
    for i in range(0, len(arrays), 7):
        arrays[i] = np.vstack([arrays[i], [0, 0, 0, 30.0] + 0.3 * rng.standard_normal((1, 4))]).astype(np.float32)
    return gmm, arrays


def test_the_prior_keeps_a_rarely_reached_component_from_large_channels():
    # Maximum likelihood fits the handful of far-off frames with channels over ten times the other components';
    # the prior of MAP_RELEVANCE frames shrinks them and leaves the components with thousands of frames as they were.
    _, arrays, labels, _, _ = planted(frames=100, per_speaker=6)
    gmm, arrays = rarely_reached(arrays)
    zeroth, first, flat = speaker_free_statistics(arrays, labels, gmm, 3)
    ml, prior, freedom = flat, flat, channel_degrees_of_freedom(labels)
    for _ in range(CHANNEL_ITERATIONS):
        ml = _em_step(ml, zeroth, first, freedom)
        prior = _em_step(prior, zeroth, first, freedom, relevance=16.0)

    def sizes(flat):  # per component ‖U_k‖ (Frobenius: the same for U_k·Q with Q orthogonal)
        return np.linalg.norm(flat.reshape(3, 4, -1), axis=(1, 2))

    assert sizes(ml)[2] > 8 * sizes(ml)[:2].max()
    assert sizes(prior)[2] < 0.5 * sizes(ml)[2]
    np.testing.assert_allclose(sizes(prior)[:2], sizes(ml)[:2], rtol=0.05)
    # train_channels uses the prior (in float32 statistics, then rotated to orthogonal columns).
    np.testing.assert_allclose(sizes(train_channels(gmm, arrays, labels, 3)), sizes(prior), rtol=1e-3)


def test_the_likelihood_is_the_statistics_gaussian_density_up_to_a_constant():
    # Given the factors x ~ N(0, I), a recording's standardised first-order statistics are Gaussian with
    # covariance N + N U Uᵀ N (N its zeroth-order statistics, each repeated over the D dimensions).
    gmm, arrays, labels, _, _ = planted(frames=60, per_speaker=4)
    zeroth, first, flat = speaker_free_statistics(arrays, labels, gmm, 2)
    other = flat + 0.3 * np.random.default_rng(1).standard_normal(flat.shape)

    def density(u):
        total = 0.0
        for n_u, f_u in zip(zeroth, first):
            counts = np.diag(np.repeat(n_u, 4))
            total += multivariate_normal(np.zeros(8), counts + counts @ u @ u.T @ counts).logpdf(f_u)
        return total

    ours = channel_log_likelihood(flat.reshape(2, 4, 2), zeroth, first)
    theirs = channel_log_likelihood(other.reshape(2, 4, 2), zeroth, first)
    np.testing.assert_allclose(ours - theirs, density(flat) - density(other), rtol=1e-8)


def test_removing_speakers_takes_their_pooled_map_offset_times_each_recordings_counts():
    zeroth = np.array([[2.0], [6.0], [3.0]])
    first = np.array([[4.0], [2.0], [9.0]])
    _remove_speakers(zeroth, first, np.array(["a", "a", "b"], dtype=object), 2.0)
    # Speaker a pools 6 over 8 + 2 counts: an offset of 0.6; b alone, 9 over 3 + 2: 1.8.
    np.testing.assert_allclose(first, [[4 - 2 * 0.6], [2 - 6 * 0.6], [9 - 3 * 1.8]])


def test_em_undoes_the_shrinkage_of_short_recordings_map_offsets():
    # 40 frames a recording, about 20 a component: relevance 16 shrinks each offset to ~55 %, and the principal
    # components with it; EM with minimum divergence recovers the planted spread of 1.5 σ.
    gmm, arrays, labels, direction, _ = planted(frames=40, per_speaker=12)
    principal = train_channels(gmm, arrays, labels, 1, iterations=0)
    refined = train_channels(gmm, arrays, labels, 1)
    assert np.linalg.norm(principal[:, :, 0], axis=1).max() < 0.9
    assert np.all(np.abs(np.linalg.norm(refined[:, :, 0], axis=1) - 1.5) < 0.15)
    for component in range(2):
        assert abs(refined[component, :, 0] @ direction) / np.linalg.norm(refined[component, :, 0]) > 0.99
    # Two recordings a speaker: taking out each speaker's offset leaves half the variation, which the
    # prior's degrees of freedom (recordings minus speakers) restore.
    gmm, arrays, labels, _, _ = planted(frames=400, per_speaker=2, speakers=40)
    assert np.all(np.abs(np.linalg.norm(train_channels(gmm, arrays, labels, 1)[:, :, 0], axis=1) - 1.5) < 0.2)


def test_trained_channels_have_orthogonal_columns_strongest_first():
    gmm, arrays, labels, _, _ = planted()
    for iterations in (0, 3):
        flat = train_channels(gmm, arrays, labels, 3, iterations=iterations).reshape(8, 3).astype(np.float64)
        gram = flat.T @ flat
        np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-5 * gram.max())
        assert np.all(np.diff(np.diag(gram)) < 0)


@pytest.mark.parametrize("shape", [(6, 20), (20, 6)])
def test_leading_components_through_the_smaller_square_matrix_are_the_singular_vectors(shape):
    rng = np.random.default_rng(5)
    rows = (rng.standard_normal(shape) * np.linspace(3.0, 0.5, shape[1])).astype(np.float32)
    values, vectors = _leading_components(rows, 4)
    _, singular, right = np.linalg.svd(rows.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(values, singular[:4] ** 2, rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(vectors * right[:4].T, axis=0)), 1.0, atol=1e-5)  # same up to sign
    # Directions whose variance vanishes are not returned.
    assert len(_leading_components(np.outer(rows[:, 0], np.ones(3)).astype(np.float32), 3)[0]) == 1


def test_canonical_channels_are_the_same_model_with_orthogonal_columns_largest_first():
    rng = np.random.default_rng(3)
    flat = rng.standard_normal((12, 4)) * np.array([0.5, 3.0, 1.0, 2.0])
    canonical = _canonical(flat)
    np.testing.assert_allclose(canonical @ canonical.T, flat @ flat.T, atol=1e-12)
    gram = canonical.T @ canonical
    np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-12)
    assert np.all(np.diff(np.diag(gram)) < 0)


def test_speakers_whose_recordings_do_not_vary_give_no_channel_factors():
    gmm, arrays, labels, _, _ = planted(per_speaker=1)
    copies = [a.copy() for a in arrays for _ in range(3)]
    assert train_channels(gmm, copies, [label for label in labels for _ in range(3)], 4).shape == (2, 4, 0)


def test_rank_is_limited_by_what_the_recordings_can_estimate():
    gmm, arrays, labels, _, _ = planted(speakers=2, per_speaker=2)
    assert train_channels(gmm, arrays, labels, 10).shape[2] <= 2  # 4 recordings of 2 speakers
    with pytest.raises(Exception, match="two or more recordings"):
        train_channels(gmm, arrays[:2], ["a", "b"], 3)


@pytest.fixture(scope="module")
def with_channels(synthetic_corpus):
    """UBMs of the synthetic background with its six speakers' channel factors (4), and without."""
    background = find_audio([synthetic_corpus / "background"])
    labels = [item.path.parent.name for item in background]
    kwargs = dict(n_components=8, iterations=4, run=RUN)
    return (train_ubm(background, labels=labels, channel_factors=4, **kwargs),
            train_ubm(background, **kwargs))


def test_a_ubm_learns_channel_factors_from_labelled_audio(with_channels):
    ubm, plain = with_channels
    assert len(ubm.channels) == 2 and plain.channels == ()
    assert {u.shape for u in ubm.channels} == {(8, 124, 4)}
    assert ubm.meta["training"]["channels"] == {"rank": 4, "speakers": 6, "recordings": 30,
                                                  "iterations": CHANNEL_ITERATIONS}
    for a, b in zip(ubm.gmms, plain.gmms):  # the mixtures are the same; the factors come after EM
        assert np.array_equal(a.means, b.means)
    assert ubm.fingerprint != plain.fingerprint == fingerprint(*plain.gmms)


def test_enrollment_and_scores_use_the_compensated_frames(with_channels, synthetic_corpus):
    ubm, _ = with_channels
    speaker = find_audio([synthetic_corpus / "enroll" / "alice"])
    tests = find_audio([synthetic_corpus / "test"])
    model = enroll(ubm, speaker, "alice", run=RUN)
    scores = np.array([s.score for s in verify(ubm, [model], tests, run=RUN)])
    # By hand: each system's frames compensated, MAP from them, the mean of the systems' scores.
    from spkver.features.extraction import extract_all

    enroll_frames = [f for _, f in extract_all(speaker, ubm.feature_config, run=RUN)]
    test_frames = [f for _, f in extract_all(tests, ubm.feature_config, run=RUN)]
    expected = np.zeros(len(tests))
    for gmm, view, channels in zip(ubm.gmms, ubm.feature_config.views, ubm.channels):
        compensation = ChannelCompensation(gmm, channels)
        adapted, _ = adapt_to(gmm, [compensation.compensate(f[:, view]) for f in enroll_frames])
        scorer = Scorer(gmm, [adapted])
        expected += np.array([scorer.scores(compensation.compensate(f[:, view]))[0] for f in test_frames]) / 2
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6)
    plain = SystemsScorer(ubm.gmms, [model.gmms], ubm.feature_config.views)
    assert not np.allclose([plain.scores(f)[0] for f in test_frames], scores)  # compensation does change them


def test_s_norm_compensates_each_test_recording_once_per_system(with_channels, synthetic_corpus, tmp_path,
                                                                 monkeypatch):
    from spkver.backend.scorenorm import Cohort
    from spkver.storage.speakers import SpeakerStore
    from spkver.storage.trials import read_trials

    ubm, _ = with_channels
    (tmp_path / "models").mkdir()
    store = SpeakerStore(tmp_path / "models")
    save_model(store.path("alice"), enroll(ubm, find_audio([synthetic_corpus / "enroll" / "alice"]), "alice", run=RUN))
    tests = find_audio([synthetic_corpus / "test"])
    (tmp_path / "trials").write_text("".join(f"alice {t.path}\n" for t in tests))
    cohort = Cohort(ubm, frames=ubm.cohort)
    cohort.models(), cohort.z_scores([store.load("alice", ubm)])  # the cohort's own work, done beforehand
    compensated = []
    original = ChannelCompensation.compensate
    monkeypatch.setattr(ChannelCompensation, "compensate", lambda self, frames: compensated.append(len(frames))
                        or original(self, frames))
    scores = score_trials(ubm, store, read_trials(tmp_path / "trials"), norm="s", cohort=cohort, run=RUN)
    assert len(scores) == len(tests) and len(compensated) == 2 * len(tests)  # two systems, once each
    # The same scores as each scorer compensating the frames for itself: S-norm written out.
    monkeypatch.setattr(ChannelCompensation, "compensate", original)
    from spkver.backend.scorenorm import normalise_scores
    from spkver.features.extraction import extract_all

    alice = store.load("alice", ubm)
    trial_scorer = SystemsScorer(ubm.gmms, [alice.gmms], ubm.feature_config.views, 5, ubm.channels)
    t_scorer = SystemsScorer(ubm.gmms, cohort.models(), ubm.feature_config.views, 5, ubm.channels)
    z = cohort.statistics(cohort.z_scores([alice]))
    expected = [normalise_scores(trial_scorer.scores(frames), "s", z,
                                 tuple(v[0] for v in cohort.statistics(t_scorer.scores(frames)[None, :])))[0]
                for _, frames in extract_all(tests, ubm.feature_config, run=RUN)]
    np.testing.assert_allclose([s.score for s in scores], expected, rtol=1e-12)


@pytest.mark.parametrize(("change", "problem"), [
    (lambda u: np.full_like(u, np.nan), "values not finite or absurdly large"),
    (lambda u: np.full_like(u, 2e3), "values not finite or absurdly large"),
    (lambda u: u[:2], "shape or rank")])
def test_damaged_channel_factors_are_not_written(with_channels, tmp_path, change, problem):
    ubm, _ = with_channels
    damaged = replace(ubm, channels=(ubm.channels[0], change(ubm.channels[1])))
    with pytest.raises(SpkverError, match=f"refusing to write a model that has channel factors that are damaged "
                                          rf"\({problem}\)"):
        save_model(tmp_path / "ubm.npz", damaged)
    assert not (tmp_path / "ubm.npz").exists()


def test_the_summary_counts_the_recordings_learnt_from_and_each_item_keeps_its_speaker(synthetic_corpus):
    # One recording listed again for a seventh speaker (as a wav.scp may name a file twice): that speaker has
    # one recording, so it adds nothing, and its first listing stays its own speaker's.
    background = find_audio([synthetic_corpus / "background"])
    items = [*background, replace(background[0])]
    labels = [item.path.parent.name for item in background] + ["solo"]
    ubm = train_ubm(items, labels=labels, channel_factors=2, n_components=4, iterations=2, run=RUN)
    assert ubm.meta["training"]["channels"] == {"rank": 2, "speakers": 6, "recordings": 30,
                                                  "iterations": CHANNEL_ITERATIONS}


def test_a_ubm_with_channel_factors_round_trips_as_format_3(with_channels, tmp_path):
    ubm, plain = with_channels
    save_model(tmp_path / "ubm.npz", ubm)
    save_model(tmp_path / "plain.npz", plain)
    loaded = load_model(tmp_path / "ubm.npz", "ubm")
    assert loaded.meta["format_version"] == 3 and loaded.fingerprint == ubm.fingerprint
    assert all(np.array_equal(a, b) for a, b in zip(loaded.channels, ubm.channels))
    assert load_model(tmp_path / "plain.npz").meta["format_version"] == 2


def test_speakers_enrolled_without_the_factors_are_refused_by_a_ubm_with_them(with_channels, synthetic_corpus,
                                                                             tmp_path):
    ubm, plain = with_channels
    save_model(tmp_path / "ubm.npz", ubm)
    save_model(tmp_path / "plain.npz", plain)
    assert run_cli("enroll", "--ubm", tmp_path / "plain.npz", "--models", tmp_path / "models", "--speaker", "alice",
                   synthetic_corpus / "enroll" / "alice").exit_code == 0
    result = run_cli("verify", "--ubm", tmp_path / "ubm.npz", "--models", tmp_path / "models", "--speaker", "alice",
                     synthetic_corpus / "test" / "alice")
    one_error_line(result, "alice")


@pytest.mark.parametrize("damage", ["shape", "nan", "huge", "speaker", "format 2", "one system", "rank 0"])
def test_damaged_channel_factors_are_refused(with_channels, tmp_path, damage):
    ubm, _ = with_channels
    meta = {"format_version": 3, "kind": "ubm", "feature_config": ubm.feature_config.to_dict()}
    extra = {"weights_2": ubm.gmms[1].weights, "means_2": ubm.gmms[1].means, "variances_2": ubm.gmms[1].variances,
             "channels": ubm.channels[0], "channels_2": ubm.channels[1]}
    if damage == "shape":
        extra["channels_2"] = ubm.channels[1][:4]
    elif damage == "nan":
        extra["channels"] = np.full_like(ubm.channels[0], np.nan)
    elif damage == "huge":  # finite in float64, infinite in float32; or finite but singular for scoring
        extra["channels"] = np.full(ubm.channels[0].shape, 1e300)
        extra["channels_2"] = np.full_like(ubm.channels[1], 1e30)
    elif damage == "speaker":
        meta.update(kind="speaker", speaker="x", ubm_fingerprint="0")
    elif damage == "format 2":
        meta["format_version"] = 2
    elif damage == "one system":
        del extra["channels_2"]
    else:
        extra["channels"] = extra["channels_2"] = ubm.channels[0][:, :, :0]
    (tmp_path / "bad.npz").write_bytes(npz_bytes(ubm.gmm, meta, extra))
    one_error_line(run_cli("info", tmp_path / "bad.npz"), "bad.npz", "channel factors are damaged")


def test_the_cli_learns_them_from_speaker_folders_or_utt2spk_and_says_so(synthetic_corpus, tmp_path):
    background = synthetic_corpus / "background"
    result = run_cli("train-ubm", "-o", tmp_path / "ubm.npz", "--components", 8, "--iterations", 2, "--workers", 1,
                     "--per-folder", background)
    assert result.exit_code == 0, result.stderr
    assert "channel factors: 20 per system, from 6 speakers" in result.stderr
    assert ", 20 channel factors," in result.stderr
    info = run_cli("info", tmp_path / "ubm.npz")
    assert "format 3" in info.stdout
    assert "channel factors: 20 per system (learnt from 6 speakers, 30 recordings, " \
           f"{CHANNEL_ITERATIONS} EM iterations)" in info.stdout
    # A Kaldi data folder's utt2spk names the speakers too; wav.scp's order is kept.
    data = tmp_path / "data"
    data.mkdir()
    files = sorted(background.rglob("*.wav"))
    (data / "wav.scp").write_text("".join(f"{f.stem} {f}\n" for f in files))
    (data / "utt2spk").write_text("".join(f"{f.stem} {f.parent.name}\n" for f in files))
    result = run_cli("train-ubm", "-o", tmp_path / "kaldi.npz", "--components", 8, "--iterations", 2, "--workers", 1,
                     "--data-dir", data, "--channel-factors", 3)
    assert result.exit_code == 0, result.stderr
    assert load_model(tmp_path / "kaldi.npz").channels[0].shape[2] == 3
    # Plain folders name no speakers: none by default, and asking for them is an error.
    result = run_cli("train-ubm", "-o", tmp_path / "plain.npz", "--components", 8, "--iterations", 2, "--workers", 1,
                     background)
    assert result.exit_code == 0 and load_model(tmp_path / "plain.npz").channels == ()
    result = run_cli("train-ubm", "-o", tmp_path / "asked.npz", "--components", 8, "--iterations", 2, "--workers", 1,
                     "--channel-factors", 3, background)
    one_error_line(result, "channel factors need the speaker of every recording; give --data-dir")
    assert not (tmp_path / "asked.npz").exists()
    # Nor does a feature store; the message says so rather than naming options --features refuses.
    assert run_cli("-q", "extract", "-o", tmp_path / "feats", "--workers", 1, *files[:6]).exit_code == 0
    result = run_cli("train-ubm", "-o", tmp_path / "store.npz", "--components", 4, "--iterations", 2, "--workers", 1,
                     "--channel-factors", 3, "--features", tmp_path / "feats")
    one_error_line(result, "a --features store names none: train from the audio with --data-dir")
    result = run_cli("train-ubm", "-o", tmp_path / "none.npz", "--components", 8, "--iterations", 2, "--workers", 1,
                     "--channel-factors", 0, "--per-folder", background)
    assert result.exit_code == 0 and load_model(tmp_path / "none.npz").channels == ()


def test_impossible_channel_factors_are_refused_before_em(synthetic_corpus, tmp_path):
    background = synthetic_corpus / "background"
    result = run_cli("train-ubm", "-o", tmp_path / "u.npz", "--components", 8, "--iterations", 2, "--workers", 1,
                     "--channel-factors", 401, "--per-folder", background)
    one_error_line(result, "--channel-factors 401 is more than 400")
    singles = tmp_path / "singles"
    for folder in sorted(background.iterdir())[:3]:
        (singles / folder.name).mkdir(parents=True)
        first = sorted(folder.glob("*.wav"))[0]
        (singles / folder.name / first.name).write_bytes(first.read_bytes())
    result = run_cli("train-ubm", "-o", tmp_path / "u.npz", "--components", 8, "--iterations", 2, "--workers", 1,
                     "--channel-factors", 3, "--per-folder", singles)
    one_error_line(result, "two or more recordings")
    assert "EM iteration" not in result.stderr and not (tmp_path / "u.npz.checkpoint.npz").exists()
