"""The i-vector back-end (spkver.ivector): statistics against hand computations, the total-variability EM
(monotone, recovers a known subspace, bit-identical over workers, resumable), extraction against a dense solve,
PLDA against its closed form and direct Gaussian densities, LDA/WCCN, back-end files, and the --ivector commands."""

import io
import json
import shlex
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import one_error_line, run_cli, train_and_enroll
from scipy.linalg import subspace_angles
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from spkver.errors import SpkverError
from spkver.features.config import FeatureConfig
from spkver.gmm.engine import Engine
from spkver.gmm.model import GMM
from spkver.ivector.backend import IvectorBackend, fit_backend
from spkver.ivector.extractor import (
    MAX_SHARDS,
    SHARD_ROWS,
    Accumulators,
    TotalVariability,
    TrainingState,
    batch_size,
    e_step,
    extract_ivectors,
    m_step,
    pack_upper,
    posteriors,
    shards_of,
    train_total_variability,
    unpack_upper,
)
from spkver.ivector.plda import diagonal_form, log_likelihood, train_plda
from spkver.ivector.projection import class_scatter, cosine_scores, lda, length_normalise, wccn
from spkver.ivector.statistics import normalise_statistics, raw_statistics, statistics_rows, utterance_statistics
from spkver.ivector.training import segments_of
from spkver.run import RunOptions
from spkver.storage.ivectors import load_backend, save_backend
from spkver.storage.models import Model, archive_bytes, load_model, save_model

run = run_cli


def random_gmm(rng, k, d):
    return GMM(rng.dirichlet(np.ones(k)), rng.normal(0, 2, (k, d)), rng.uniform(0.5, 2, (k, d)))


def low_rank_statistics(rng, k, d, rank, utterances, mean_count=20.0):
    """Whitened statistics of a known total-variability model: ``F̃_k = N_k T_k w + sqrt(N_k)·ε``."""
    matrix = rng.standard_normal((k * d, rank))
    counts = rng.gamma(2.0, mean_count / 2, size=(utterances, k))
    w = rng.standard_normal((utterances, rank))
    offsets = (w @ matrix.T).reshape(utterances, k, d)
    first = counts[:, :, None] * offsets + np.sqrt(counts)[:, :, None] * rng.standard_normal((utterances, k, d))
    return matrix, np.hstack([counts, first.reshape(utterances, -1)])


def dense_precision(tv, counts):
    """``I + Tᵀ diag(N ⊗ 1_D) T`` built as a full matrix."""
    return np.eye(tv.rank) + tv.matrix.T @ (np.repeat(counts, tv.dim)[:, None] * tv.matrix)


# Baum-Welch statistics ------------------------------------------------------------------------------------------


def gmm_posteriors(gmm, x):
    """Frame posteriors from the Gaussians' log-densities, in float64 numpy (no spkver kernel)."""
    log_densities = np.log(gmm.weights) - 0.5 * (np.log(2 * np.pi * gmm.variances).sum(axis=1)
                                                 + (((x[:, None, :] - gmm.means) ** 2) / gmm.variances).sum(axis=2))
    return np.exp(log_densities - logsumexp(log_densities, axis=1, keepdims=True))


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_raw_statistics_match_a_hand_computation(dtype, rtol):
    rng = np.random.default_rng(0)
    gmm = random_gmm(rng, 5, 3)
    x = rng.normal(0, 2, (5000, 3))  # more frames than a chunk: the sums run over several
    gamma = gmm_posteriors(gmm, x)
    zeroth, first = raw_statistics(gmm, x, dtype)
    np.testing.assert_allclose(zeroth, gamma.sum(axis=0), rtol=rtol)
    np.testing.assert_allclose(first, gamma.T @ x, rtol=rtol, atol=rtol * np.abs(gamma.T @ x).max())


def test_normalised_statistics_are_centred_and_whitened():
    rng = np.random.default_rng(1)
    gmm = random_gmm(rng, 4, 3)
    zeroth, first = rng.uniform(0, 50, (6, 4)), rng.normal(0, 30, (6, 4, 3))
    rows = normalise_statistics(gmm, zeroth, first)
    assert rows.shape == (6, 4 * (1 + 3))
    for u in range(6):
        expected = [(first[u, c] - zeroth[u, c] * gmm.means[c]) / np.sqrt(gmm.variances[c]) for c in range(4)]
        np.testing.assert_allclose(rows[u, :4], zeroth[u], rtol=0)
        np.testing.assert_allclose(rows[u, 4:], np.concatenate(expected), rtol=1e-13, atol=1e-12)


def test_a_one_component_ubm_counts_frames_and_sums_whitened_offsets():
    rng = np.random.default_rng(2)
    gmm = GMM(np.array([1.0]), rng.normal(size=(1, 7)), rng.uniform(0.5, 2, (1, 7)))
    frames = rng.normal(size=(3001, 7)).astype(np.float32)
    row = utterance_statistics(gmm, frames)
    assert row[0] == len(frames)
    expected = ((frames.astype(np.float64) - gmm.means[0]) / np.sqrt(gmm.variances[0])).sum(axis=0)
    np.testing.assert_allclose(row[1:], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_statistics_rows_fill_a_memory_map_and_refuse_non_finite_frames(tmp_path):
    rng = np.random.default_rng(3)
    gmm = random_gmm(rng, 3, 2)
    arrays = [rng.normal(size=(n, 2)).astype(np.float32) for n in (5, 50, 500)]
    out = np.lib.format.open_memmap(tmp_path / "rows.npy", mode="w+", dtype=np.float64, shape=(3, 3 * 3))
    statistics_rows(gmm, arrays, out)
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy"), [utterance_statistics(gmm, a) for a in arrays])
    broken = arrays[1].copy()
    broken[3, 1] = np.inf
    with pytest.raises(SpkverError, match="not finite"):
        utterance_statistics(gmm, broken)


def test_segments_cut_long_recordings_into_equal_pieces_and_cover_every_frame():
    pieces = segments_of([5, 19, 20, 41, 0], 10)
    by_recording = {}
    for index, start, stop in pieces:
        by_recording.setdefault(index, []).append((start, stop))
    assert by_recording[0] == [(0, 5)] and by_recording[1] == [(0, 19)]  # shorter than two segments: whole
    assert by_recording[2] == [(0, 10), (10, 20)]
    assert len(by_recording[3]) == 4 and {b - a for a, b in by_recording[3]} <= {10, 11}
    for spans in by_recording.values():  # contiguous, in order, covering the recording
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert by_recording[3][0][0] == 0 and by_recording[3][-1][1] == 41
    assert segments_of([41], None) == [(0, 0, 41)]


# Extraction ------------------------------------------------------------------------------------------------------


def test_posteriors_match_a_dense_solve_and_the_marginal_likelihood():
    rng = np.random.default_rng(4)
    k, d, r = 4, 3, 5
    tv = TotalVariability(rng.normal(0, 0.3, (k * d, r)), k, d)
    _, rows = low_rank_statistics(rng, k, d, r, 7)
    post = posteriors(tv, rows)
    for u, row in enumerate(rows):
        counts, first = row[:k], row[k:]
        precision = dense_precision(tv, counts)
        np.testing.assert_allclose(post.means[u], np.linalg.solve(precision, tv.matrix.T @ first), rtol=1e-10)
        np.testing.assert_allclose(post.covariances[u], np.linalg.inv(precision), rtol=1e-10, atol=1e-14)
        # ½bᵀL⁻¹b − ½log|L| is the log-density of F̃ under N(0, Ñ + ÑTTᵀÑ), Ñ = diag(N ⊗ 1_D), plus terms
        # free of T (Woodbury): what the EM history measures.
        scale = np.repeat(counts, d)
        covariance = np.diag(scale) + (scale[:, None] * tv.matrix) @ (scale[:, None] * tv.matrix).T
        marginal = multivariate_normal(np.zeros(k * d), covariance).logpdf(first)
        free_of_t = 0.5 * (first**2 / scale).sum() + 0.5 * np.log(scale).sum() + 0.5 * k * d * np.log(2 * np.pi)
        assert post.log_likelihood[u] == pytest.approx(marginal + free_of_t, rel=1e-10, abs=1e-9)


def test_extract_ivectors_is_the_posterior_mean_across_batches():
    rng = np.random.default_rng(5)
    k, d, r = 3, 2, 4
    tv = TotalVariability(rng.standard_normal((k * d, r)), k, d)
    _, rows = low_rank_statistics(rng, k, d, r, batch_size(r) + 37)  # more than one batch
    ivectors = extract_ivectors(tv, rows)
    expected = [np.linalg.solve(dense_precision(tv, row[:k]), tv.matrix.T @ row[k:]) for row in rows]
    np.testing.assert_allclose(ivectors, expected, rtol=1e-9, atol=1e-12)
    assert extract_ivectors(tv, np.zeros((0, k * (1 + d)))).shape == (0, r)


def test_packed_products_hold_each_components_gram_matrix():
    rng = np.random.default_rng(6)
    k, d, r = 5, 3, 4
    tv = TotalVariability(rng.standard_normal((k * d, r)), k, d)
    upper = np.triu_indices(r)
    for component, packed in enumerate(tv.packed_products()):
        block = tv.matrix[component * d:(component + 1) * d]
        np.testing.assert_allclose(packed, (block.T @ block)[upper], rtol=1e-13)


def test_packing_follows_triu_indices_and_unpacking_fills_only_the_upper_triangle():
    rng = np.random.default_rng(16)
    square = rng.standard_normal((3, 5, 5))
    packed = pack_upper(square, np.empty((3, 15)))
    np.testing.assert_array_equal(packed, square[:, np.triu_indices(5)[0], np.triu_indices(5)[1]])
    out = np.full((3, 5, 5), 7.0)
    unpack_upper(packed, out)
    np.testing.assert_array_equal(np.triu(out), np.triu(square))
    np.testing.assert_array_equal(np.tril(out, -1), np.tril(np.full((3, 5, 5), 7.0), -1))


def test_an_unoccupied_component_keeps_its_rows_of_t():
    rng = np.random.default_rng(17)
    k, d, r = 4, 3, 2
    tv = TotalVariability(rng.standard_normal((k * d, r)), k, d)
    _, rows = low_rank_statistics(rng, k, d, r, utterances=40)
    rows[:, 2] = 0.0  # no utterance has frames in component 2
    rows[:, k + 2 * d:k + 3 * d] = 0.0
    updated = m_step(tv, e_step(tv, rows), minimum_divergence=False)
    np.testing.assert_array_equal(updated.matrix[2 * d:3 * d], tv.matrix[2 * d:3 * d])
    assert not np.allclose(updated.matrix[:2 * d], tv.matrix[:2 * d])
    assert np.isfinite(updated.matrix).all()
    # An occupied component whose A_k is not positive definite is invalid statistics, not "no data".
    stats = e_step(tv, rows)
    stats.occupancy_second[1] *= -1.0
    with pytest.raises(SpkverError, match="not valid"):
        m_step(tv, stats)


@pytest.mark.parametrize("utterances", [9, 2 * batch_size(4) + 5])  # one batch; several and a partial one
def test_e_step_sums_the_posterior_moments_of_each_utterance(utterances):
    rng = np.random.default_rng(18)
    k, d, r = 3, 2, 4
    tv = TotalVariability(rng.standard_normal((k * d, r)), k, d)
    _, rows = low_rank_statistics(rng, k, d, r, utterances=utterances)
    post = posteriors(tv, rows)
    second = post.covariances + post.means[:, :, None] * post.means[:, None, :]
    stats = e_step(tv, rows)
    assert isinstance(stats, Accumulators) and stats.utterances == utterances
    for component in range(k):
        np.testing.assert_allclose(unpack_upper(stats.occupancy_second[component][None], np.zeros((1, r, r)))[0],
                                   np.triu(np.einsum("u,uij->ij", rows[:, component], second)), rtol=1e-12)
    np.testing.assert_allclose(stats.first_mean, rows[:, k:].T @ post.means, rtol=1e-12)
    np.testing.assert_allclose(stats.second, second.sum(axis=0), rtol=1e-12)
    assert stats.log_likelihood == pytest.approx(post.log_likelihood.sum(), rel=1e-12)


@pytest.mark.parametrize("rows", [1, SHARD_ROWS - 1, 2 * SHARD_ROWS, 4 * SHARD_ROWS + 1, 5 * SHARD_ROWS + 7,
                                  8 * SHARD_ROWS + 1, 100 * SHARD_ROWS + 3])
def test_em_shards_are_a_power_of_two_of_at_least_shard_rows_each(rows):
    shards = shards_of(rows)
    pieces = [piece for shard in shards for piece in shard]
    assert [a for _, a, _ in pieces] == [0] + [b for _, _, b in pieces[:-1]] and pieces[-1][2] == rows
    sizes = [b - a for _, a, b in pieces]
    assert len(shards) <= MAX_SHARDS and len(shards) & (len(shards) - 1) == 0
    assert len(shards) == 1 or min(sizes) >= SHARD_ROWS
    assert max(sizes) - min(sizes) <= 1


def test_invalid_statistics_and_matrices_are_refused():
    rng = np.random.default_rng(7)
    tv = TotalVariability(rng.standard_normal((6, 2)), 3, 2)
    rows = np.hstack([np.full((1, 3), -1e6), np.zeros((1, 6))])  # negative counts: no valid precision
    nan_rows = np.hstack([np.ones((1, 3)), np.full((1, 6), np.nan)])
    for refused in (rows, nan_rows):
        for use in (posteriors, e_step, extract_ivectors):
            with pytest.raises(SpkverError, match="not valid"):
                use(tv, refused)
    with pytest.raises(ValueError, match="not finite"):
        TotalVariability(np.full((6, 2), np.nan), 3, 2)
    with pytest.raises(ValueError, match="components"):
        TotalVariability(np.ones((5, 2)), 3, 2)


# Total-variability EM -------------------------------------------------------------------------------------------


def misspecified_statistics(rng, k=6, d=3, utterances=300):
    """Statistics a rank-2 model cannot fit: rank-5 offsets with heavy-tailed noise, so EM keeps climbing."""
    matrix = rng.standard_normal((k * d, 5))
    counts = rng.gamma(1.5, 8.0, size=(utterances, k))
    w = rng.standard_t(3, size=(utterances, 5))
    noise = rng.standard_t(4, size=(utterances, k, d))
    first = counts[:, :, None] * (w @ matrix.T).reshape(utterances, k, d) + np.sqrt(counts)[:, :, None] * noise
    return np.hstack([counts, first.reshape(utterances, -1)])


@pytest.mark.parametrize("minimum_divergence", [True, False])
def test_em_objective_increases_every_iteration(minimum_divergence):
    rng = np.random.default_rng(8)
    k, d = 6, 3
    rows = misspecified_statistics(rng, k, d)
    seen = []
    state = train_total_variability(rows, k, d, rank=2, iterations=25, minimum_divergence=minimum_divergence,
                                    on_iteration=lambda step, average, gain: seen.append((step, average, gain)))
    history = np.array(state.history)
    assert len(history) == 26 and [s for s, _, _ in seen] == list(range(26))
    assert [a for _, a, _ in seen] == state.history and seen[0][2] is None
    # Never lower, up to float rounding of sums of ~1e3 per utterance.
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[:-1])), np.diff(history)
    assert history[-1] - history[0] > 1.0  # and it did climb: the check above had something to check
    # The history is the mean of the posteriors' objective, measured again here.
    direct = posteriors(state.tv, rows).log_likelihood.mean()
    assert history[-1] == pytest.approx(direct, rel=1e-12)


@pytest.mark.parametrize("minimum_divergence", [True, False])
def test_a_known_subspace_is_recovered(minimum_divergence):
    rng = np.random.default_rng(9)
    k, d, r, utterances = 8, 4, 3, 1000
    truth, rows = low_rank_statistics(rng, k, d, r, utterances)
    start = train_total_variability(rows, k, d, rank=r, iterations=0)
    state = train_total_variability(rows, k, d, rank=r, iterations=10, minimum_divergence=minimum_divergence)
    # The likelihood depends on T only through TTᵀ (w ↦ Qw for any orthogonal Q), so compare column spaces.
    # Bound: were w known, each row of T_k would be a least-squares fit with error covariance
    # (Σ_u N_uk w_u w_uᵀ)⁻¹ ≈ I / (U·N̄) (U = 1000 utterances, N̄ = 20 frames per component), so the error
    # has entries of s.d. σ ≈ 1/√(U·N̄) = 0.007; the largest principal angle is then about
    # σ·(√(KD − R) + √R) / σ_min(T) ≈ 0.007 · 7.1 / 3.9 ≈ 0.013 rad ≈ 0.7° (σ_min(T) ≈ √(KD) − √R for this
    # Gaussian 32 × 3 T). Posterior uncertainty of w adds little at ~160 frames per utterance; 3° is four
    # times the estimate, while the random start is tens of degrees off.
    expected = np.degrees((np.sqrt(k * d - r) + np.sqrt(r)) / np.sqrt(rows[:, :k].sum(axis=0).min())
                          / np.linalg.svd(truth, compute_uv=False).min())
    assert expected < 1.0  # the estimate above holds for this draw
    assert np.degrees(subspace_angles(truth, start.tv.matrix)).max() > 30
    angles = np.degrees(subspace_angles(truth, state.tv.matrix))
    assert angles.max() < 3.0, angles


@pytest.mark.parametrize("minimum_divergence", [True, False])
def test_one_em_step_equals_a_dense_computation(minimum_divergence):
    from spkver.ivector.extractor import m_step

    rng = np.random.default_rng(23)
    k, d, r = 3, 2, 3
    rows = misspecified_statistics(rng, k, d, utterances=40)
    tv = TotalVariability(rng.normal(0, 0.5, (k * d, r)), k, d)
    stats = e_step(tv, rows)
    # E-step, densely: each utterance's posterior mean and E[wwᵀ].
    means = [np.linalg.solve(dense_precision(tv, row[:k]), tv.matrix.T @ row[k:]) for row in rows]
    seconds = [np.linalg.inv(dense_precision(tv, row[:k])) + np.outer(m, m) for m, row in zip(means, rows)]
    first = sum(np.outer(row[k:], m) for row, m in zip(rows, means))
    prior = sum(seconds) / len(rows)
    new = m_step(tv, stats, minimum_divergence)
    # M-step: T_k A_k = C_k with A_k = Σ_u N_uk E[wwᵀ]_u, C_k the rows of Σ_u F̃_u E[w]ᵀ.
    plain = np.vstack([first[c * d:(c + 1) * d] @ np.linalg.inv(sum(row[c] * s for row, s in zip(rows, seconds)))
                       for c in range(k)])
    if minimum_divergence:
        # The prior's re-estimated covariance P folded into T: the model's covariance T P Tᵀ is kept.
        np.testing.assert_allclose(new.matrix @ new.matrix.T, plain @ prior @ plain.T, rtol=1e-9, atol=1e-12)
    else:
        np.testing.assert_allclose(new.matrix, plain, rtol=1e-9, atol=1e-12)


def test_checkpoint_states_resume_to_the_same_model():
    rng = np.random.default_rng(10)
    k, d = 6, 3
    rows = misspecified_statistics(rng, k, d, utterances=200)
    states = []
    whole = train_total_variability(rows, k, d, rank=3, iterations=6, seed=4, on_checkpoint=states.append)
    assert [s.step for s in states] == [1, 2, 3, 4, 5, 6]
    assert all(s.history == whole.history[:s.step] for s in states)
    assert np.array_equal(states[-1].tv.matrix, whole.tv.matrix)
    resumed = train_total_variability(rows, k, d, rank=3, iterations=6, seed=4,
                                      state=TrainingState(states[2].tv, states[2].history, states[2].step))
    assert np.array_equal(resumed.tv.matrix, whole.tv.matrix) and resumed.history == whole.history
    other_seed = train_total_variability(rows, k, d, rank=3, iterations=6, seed=5)
    assert not np.array_equal(other_seed.tv.matrix, whole.tv.matrix)


def test_the_e_step_is_the_same_in_an_engine_with_workers(monkeypatch):
    from spkver.gmm import engine as engine_module

    monkeypatch.setattr(engine_module, "SPILL_BYTES", 0)  # the pool's accumulators travel through files
    rng = np.random.default_rng(11)
    k, d, r = 4, 3, 3
    rows = misspecified_statistics(rng, k, d, utterances=5 * SHARD_ROWS + 7)
    alone = train_total_variability(rows, k, d, rank=r, iterations=3)
    with Engine([rows], 2, shards=shards_of(len(rows))) as engine:
        assert engine.pool is not None
        pooled = train_total_variability(rows, k, d, rank=r, iterations=3, engine=engine)
    assert np.array_equal(alone.tv.matrix, pooled.tv.matrix) and alone.history == pooled.history
    # Shards are summed in order: one E-step over all rows is the same up to rounding only.
    whole = e_step(alone.tv, rows)
    assert whole.log_likelihood / whole.utterances == pytest.approx(alone.history[-1], rel=1e-12)


# PLDA -----------------------------------------------------------------------------------------------------------


def random_covariance(rng, d, floor):
    a = rng.standard_normal((d, d))
    return a @ a.T + floor * np.eye(d)


def plda_data(rng, d, speakers, per_speaker):
    between, within = random_covariance(rng, d, 1.0), 0.5 * random_covariance(rng, d, 0.5)
    mean = rng.standard_normal(d)
    counts = per_speaker if np.ndim(per_speaker) else [per_speaker] * speakers
    factors = rng.multivariate_normal(np.zeros(d), between, size=speakers)
    x = np.vstack([mean + y + rng.multivariate_normal(np.zeros(d), within, size=n) for y, n in zip(factors, counts)])
    labels = np.repeat([f"s{i}" for i in range(speakers)], counts)
    return x, labels, mean, between, within


def covariances_of(plda):
    """B and W back from the diagonal form: VᵀWV = I and VᵀBV = diag(ψ)."""
    inverse = np.linalg.inv(plda.transform)
    return inverse.T @ np.diag(plda.psi) @ inverse, inverse.T @ inverse


def test_plda_log_likelihood_is_the_block_gaussian_density():
    rng = np.random.default_rng(12)
    d = 3
    x, labels, mean, between, within = plda_data(rng, d, 3, [1, 2, 4])
    expected = 0.0
    for speaker in np.unique(labels):
        members = x[labels == speaker].ravel()
        n = len(members) // d
        covariance = np.kron(np.ones((n, n)), between) + np.kron(np.eye(n), within)
        expected += multivariate_normal(np.tile(mean, n), covariance).logpdf(members)
    assert log_likelihood(x, labels, mean, between, within) == pytest.approx(expected, rel=1e-11)


def test_plda_em_climbs_to_the_closed_form_on_balanced_data():
    rng = np.random.default_rng(13)
    d, speakers, n = 3, 200, 4
    x, labels, _, _, _ = plda_data(rng, d, speakers, n)
    history = []
    plda = train_plda(x, labels, iterations=60, on_iteration=lambda step, value: history.append(value))
    assert len(history) == 61
    assert np.all(np.diff(history) >= -1e-9 * np.abs(np.array(history[:-1]))), np.diff(history)
    assert history[-1] > history[0]
    grouped = x.reshape(speakers, n, d)
    means = grouped.mean(axis=1)
    scatter_within = np.einsum("sni,snj->ij", grouped - means[:, None], grouped - means[:, None])
    scatter_between = (means - means.mean(axis=0)).T @ (means - means.mean(axis=0))
    within = scatter_within / (speakers * (n - 1))
    between = scatter_between / speakers - within / n
    assert np.linalg.eigvalsh(between).min() > 0  # the closed form is the maximum only when B is positive
    fitted_between, fitted_within = covariances_of(plda)
    np.testing.assert_allclose(plda.mean, x.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fitted_within, within, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fitted_between, between, rtol=1e-7, atol=1e-9)
    assert history[-1] == pytest.approx(log_likelihood(x, labels, x.mean(axis=0), between, within), rel=1e-10)


def test_diagonal_form_whitens_within_and_diagonalises_between():
    rng = np.random.default_rng(14)
    between, within = random_covariance(rng, 4, 0.1), random_covariance(rng, 4, 0.1)
    plda = diagonal_form(np.zeros(4), between, within)
    np.testing.assert_allclose(plda.transform.T @ within @ plda.transform, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(plda.transform.T @ between @ plda.transform, np.diag(plda.psi), atol=1e-9)
    assert np.all(np.diff(plda.psi) <= 0)


@pytest.mark.parametrize("enrollments", [1, 3])
def test_plda_llr_is_the_ratio_of_block_gaussian_densities(enrollments):
    rng = np.random.default_rng(15 + enrollments)
    d = 3
    mean, between, within = rng.standard_normal(d), random_covariance(rng, d, 0.5), random_covariance(rng, d, 0.5)
    plda = diagonal_form(mean, between, within)
    n = enrollments
    for _ in range(5):
        enroll = mean + rng.normal(0, 2, (n, d))
        test = mean + rng.normal(0, 2, d)
        joint = np.kron(np.ones((n + 1, n + 1)), between) + np.kron(np.eye(n + 1), within)
        same = multivariate_normal(np.tile(mean, n + 1), joint).logpdf(np.concatenate([enroll.ravel(), test]))
        apart = (multivariate_normal(np.tile(mean, n), joint[:n * d, :n * d]).logpdf(enroll.ravel())
                 + multivariate_normal(mean, between + within).logpdf(test))
        llr = plda.llr(enroll.mean(axis=0)[None], [n], test[None])
        assert llr.shape == (1, 1)
        assert llr[0, 0] == pytest.approx(same - apart, rel=1e-9, abs=1e-9)


def test_plda_needs_two_speakers_and_a_repeated_one():
    x = np.random.default_rng(16).standard_normal((4, 2))
    with pytest.raises(ValueError, match="two speakers"):
        train_plda(x, ["a", "a", "a", "a"])
    with pytest.raises(ValueError, match="two speakers"):
        train_plda(x, ["a", "b", "c", "d"])


# Post-processing and the back-end -------------------------------------------------------------------------------


def labelled_ivectors(rng, speakers, per_speaker, r, spread=3.0):
    centres = rng.normal(0, spread, (speakers, r))
    x = np.repeat(centres, per_speaker, axis=0) + rng.standard_normal((speakers * per_speaker, r))
    return x, [f"spk{i}" for i in range(speakers) for _ in range(per_speaker)]


def test_wccn_whitens_and_lda_separates():
    rng = np.random.default_rng(17)
    x, labels = labelled_ivectors(rng, 5, 40, 6)
    x = x @ rng.standard_normal((6, 6))  # correlated dimensions
    within_after, _ = class_scatter(x @ wccn(x, labels), labels)
    np.testing.assert_allclose(within_after, np.eye(6), atol=1e-4)
    projection = lda(x, labels, 4)
    within_lda, between_lda = class_scatter(x @ projection, labels)
    np.testing.assert_allclose(within_lda, np.eye(4), atol=1e-4)
    ratios = np.diag(between_lda)
    assert np.all(np.diff(ratios) <= 1e-9)  # columns ordered by between/within ratio
    with pytest.raises(ValueError, match="LDA dimension"):
        lda(x, labels, 7)


def test_length_normalisation_and_cosine():
    x = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    normalised = length_normalise(x)
    np.testing.assert_allclose(np.linalg.norm(normalised[[0, 2]], axis=1), np.sqrt(3))
    assert np.all(normalised[1] == 0)
    scores = cosine_scores(x[[0, 2]], x[[0, 2]])
    np.testing.assert_allclose(scores, [[1.0, -0.6], [-0.6, 1.0]])


def test_fit_backend_caps_lda_at_speakers_minus_one():
    rng = np.random.default_rng(18)
    tv = TotalVariability(rng.standard_normal((6, 10)), 3, 2)
    x, labels = labelled_ivectors(rng, 4, 6, 10)
    backend = fit_backend(tv, x, labels, lda_dim=8)
    assert backend.projection.shape == (10, 3) and backend.scoring == "plda"
    assert backend.plda.psi.shape == (3,)
    with_wccn = fit_backend(tv, x, labels, lda_dim=8, use_wccn=True)
    assert with_wccn.projection.shape == (10, 3)
    assert fit_backend(tv, x, labels, lda_dim=2).projection.shape == (10, 2)
    assert fit_backend(tv, x, labels).projection is None
    processed = backend.process(x)
    np.testing.assert_allclose(np.linalg.norm(processed, axis=1), np.sqrt(3))


@pytest.mark.parametrize("labels", [["only"] * 8, [f"u{i}" for i in range(8)]], ids=["one speaker", "all distinct"])
def test_fit_backend_scores_by_cosine_when_labels_do_not_allow_plda(labels):
    rng = np.random.default_rng(19)
    tv = TotalVariability(rng.standard_normal((6, 4)), 3, 2)
    x = rng.standard_normal((8, 4))
    notes = []
    backend = fit_backend(tv, x, labels, lda_dim=2, use_wccn=True, on_note=notes.append)
    assert backend.scoring == "cosine" and backend.plda is None and backend.projection is None
    assert len(notes) == 1 and "cosine" in notes[0]
    assert ("1 speaker" in notes[0]) == (len(set(labels)) == 1)
    with pytest.raises(SpkverError, match="PLDA scoring needs"):
        fit_backend(tv, x, labels, scoring="plda")
    scores = backend.scores([x[:3], x[3:4]], x[4:])
    expected = cosine_scores(np.array([backend.process(x[:3]).mean(axis=0), backend.process(x[3:4])[0]]),
                             backend.process(x[4:]))
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_fit_backend_is_linear_in_the_number_of_utterances():
    # Counting each label's utterances with list.count made unlabelled training (one label per utterance)
    # quadratic: about 25 s for these 50 000 utterances (and hours for a million); a Counter takes milliseconds.
    rng = np.random.default_rng(20)
    tv = TotalVariability(rng.standard_normal((2, 2)), 1, 2)
    start = time.perf_counter()
    fit_backend(tv, rng.standard_normal((50_000, 2)), range(50_000), scoring="cosine")
    assert time.perf_counter() - start < 5.0


def test_scores_use_every_enrollment_ivector():
    rng = np.random.default_rng(21)
    tv = TotalVariability(rng.standard_normal((6, 5)), 3, 2)
    x, labels = labelled_ivectors(rng, 6, 8, 5)
    backend = fit_backend(tv, x, labels)
    enrollments, tests = [x[:3], x[8:9]], x[[4, 12, 30]]
    processed = [backend.process(e) for e in enrollments]
    expected = np.vstack([backend.plda.llr(p.mean(axis=0)[None], [len(p)], backend.process(tests)) for p in processed])
    np.testing.assert_allclose(backend.scores(enrollments, tests), expected, rtol=1e-12)
    assert backend.scores(enrollments, tests)[0, 0] > backend.scores(enrollments, tests)[1, 0]  # speaker 0's test


# Back-end files -------------------------------------------------------------------------------------------------

ONE_SYSTEM = FeatureConfig(norm="cmn")
DIM = ONE_SYSTEM.dim


def small_ubm(seed=0, k=4):
    rng = np.random.default_rng(seed)
    return Model(GMM(np.full(k, 1 / k), rng.normal(size=(k, DIM)), rng.uniform(0.5, 2, (k, DIM))), "ubm",
                 ONE_SYSTEM, {})


def small_backend(seed=0, k=4, rank=6, lda_dim=4, float32=True):
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((k * DIM, rank))
    tv = TotalVariability(matrix.astype(np.float32) if float32 else matrix, k, DIM)
    x, labels = labelled_ivectors(rng, 6, 5, rank)
    return fit_backend(tv, x, labels, lda_dim=lda_dim, use_wccn=True)


def assert_same_backend(a: IvectorBackend, b: IvectorBackend):
    assert np.array_equal(a.tv.matrix, b.tv.matrix) and np.array_equal(a.mean, b.mean)
    assert np.array_equal(a.projection, b.projection)
    for name in ("mean", "transform", "psi"):
        assert np.array_equal(getattr(a.plda, name), getattr(b.plda, name))
    assert a.extractor_fingerprint == b.extractor_fingerprint


def test_backend_round_trip(tmp_path):
    ubm, backend = small_ubm(), small_backend()
    save_backend(tmp_path / "iv.npz", backend, ubm, {"rank": 6})
    loaded, meta = load_backend(tmp_path / "iv.npz", ubm)
    assert_same_backend(loaded, backend)
    assert meta["kind"] == "ivector" and meta["ubm_fingerprint"] == ubm.fingerprint and meta["training"] == {"rank": 6}
    assert meta["rank"] == 6 and meta["scoring"] == "plda"
    with zipfile.ZipFile(tmp_path / "iv.npz") as archive:  # T is kept in float32 when that is exact
        assert np.load(io.BytesIO(archive.read("matrix.npy"))).dtype == np.float32
    save_backend(tmp_path / "again.npz", backend, ubm, {"rank": 6})
    assert (tmp_path / "again.npz").read_bytes() == (tmp_path / "iv.npz").read_bytes()
    cosine = fit_backend(backend.tv, np.random.default_rng(1).standard_normal((5, 6)), range(5))
    save_backend(tmp_path / "cos.npz", cosine, ubm, {})
    loaded, meta = load_backend(tmp_path / "cos.npz")
    assert loaded.plda is None and loaded.projection is None and meta["scoring"] == "cosine"


def test_a_float64_matrix_round_trips_with_its_fingerprint(tmp_path):
    ubm, backend = small_ubm(), small_backend(float32=False)
    save_backend(tmp_path / "iv.npz", backend, ubm, {})
    loaded, meta = load_backend(tmp_path / "iv.npz", ubm)  # was refused: float32 stored, float64 fingerprint
    assert_same_backend(loaded, backend)
    assert meta["extractor_fingerprint"] == backend.extractor_fingerprint


def rewrite(path, **changes):
    """The archive at ``path`` with members replaced (arrays, or ``meta`` as a dict) or removed (None)."""
    with zipfile.ZipFile(path) as archive:
        arrays = {name[:-4]: np.load(io.BytesIO(archive.read(name))) for name in archive.namelist()}
    meta = json.loads(str(arrays.pop("meta")))
    meta = changes.pop("meta", meta)
    arrays.update(changes)
    path.write_bytes(archive_bytes({k: v for k, v in arrays.items() if v is not None}, meta))


@pytest.fixture
def saved(tmp_path):
    ubm, backend = small_ubm(), small_backend()
    path = tmp_path / "iv.npz"
    save_backend(path, backend, ubm, {})
    return path, ubm, backend


def test_a_backend_of_another_ubm_is_refused(saved):
    path, _, _ = saved
    with pytest.raises(SpkverError, match="different UBM"):
        load_backend(path, small_ubm(seed=1))
    other = small_ubm(k=8)  # its fingerprint claimed, but not its shape
    rewrite(path, meta={**json.loads(str(np.load(path)["meta"])), "ubm_fingerprint": other.fingerprint})
    with pytest.raises(SpkverError, match="does not fit the UBM"):
        load_backend(path, other)


def test_a_truncated_backend_is_refused(saved):
    path, ubm, _ = saved
    data = path.read_bytes()
    for size in (0, 100, len(data) // 2, len(data) - 10):
        path.write_bytes(data[:size])
        with pytest.raises(SpkverError) as error:
            load_backend(path, ubm)
        assert str(path) in str(error.value)


def test_flipped_bytes_in_the_matrix_are_detected(saved):
    path, ubm, backend = saved
    data = bytearray(path.read_bytes())
    stored = backend.tv.matrix.astype(np.float32).tobytes()
    start = bytes(data).find(stored)
    assert start > 0
    data[start + len(stored) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(SpkverError, match="damaged"):  # the archive's own checksum
        load_backend(path, ubm)
    # A well-formed archive whose matrix was changed (checksums remade) no longer matches its fingerprint.
    save_backend(path, backend, ubm, {})
    matrix = backend.tv.matrix.astype(np.float32)
    matrix[7, 1] = np.nextafter(matrix[7, 1], np.float32(np.inf))
    rewrite(path, matrix=matrix)
    with pytest.raises(SpkverError, match="does not match its fingerprint"):
        load_backend(path, ubm)


@pytest.mark.parametrize("member", ["matrix", "mean", "projection", "plda_mean", "plda_transform", "plda_psi"])
def test_nan_in_any_backend_array_is_refused(saved, member):
    path, ubm, _ = saved
    array = np.load(path)[member].copy()
    array.flat[0] = np.nan
    rewrite(path, **{member: array})
    with pytest.raises(SpkverError, match="damaged"):
        load_backend(path, ubm)


@pytest.mark.parametrize("change,message", [
    (dict(mean=np.zeros(5)), "disagree"),
    (dict(plda_psi=-np.ones(4)), "negative"),
    (dict(plda_transform=np.eye(3)), "disagree"),
    (dict(projection=np.ones((5, 4))), "disagree"),
    (dict(matrix=None), "no matrix"),
    (dict(mean=None), "no mean"),
])
def test_inconsistent_backend_arrays_are_refused(saved, change, message):
    path, ubm, _ = saved
    rewrite(path, **change)
    with pytest.raises(SpkverError, match=message):
        load_backend(path, ubm)


def test_a_newer_or_foreign_file_is_refused_as_backend(saved, tmp_path):
    path, ubm, _ = saved
    meta = json.loads(str(np.load(path)["meta"]))
    rewrite(path, meta={**meta, "format_version": 99})
    with pytest.raises(SpkverError, match="newer"):
        load_backend(path, ubm)
    save_model(tmp_path / "ubm.npz", ubm)
    with pytest.raises(SpkverError, match="is a ubm model, not an i-vector back-end"):
        load_backend(tmp_path / "ubm.npz")
    rewrite(path, meta={key: value for key, value in meta.items() if key != "kind"})
    with pytest.raises(SpkverError, match="is not an i-vector back-end"):
        load_backend(path)


def test_save_backend_refuses_nan(tmp_path):
    ubm, backend = small_ubm(), small_backend()
    backend.mean = backend.mean.copy()
    backend.mean[0] = np.nan
    with pytest.raises(SpkverError, match="NaN"):
        save_backend(tmp_path / "iv.npz", backend, ubm, {})
    assert not (tmp_path / "iv.npz").exists()


def test_a_speaker_enrolled_with_a_backend_keeps_its_ivectors(tmp_path):
    from spkver.api import adapt_model

    rng = np.random.default_rng(22)
    ubm, backend = small_ubm(), small_backend()
    arrays = [rng.normal(size=(n, DIM)).astype(np.float32) for n in (50, 80, 120)]
    model = adapt_model(ubm, arrays, "alice", backend=backend)
    expected = extract_ivectors(backend.tv, statistics_rows(ubm.gmm, arrays))
    assert model.ivectors.shape == (3, 6)
    np.testing.assert_allclose(model.ivectors, expected, rtol=1e-12)
    save_model(tmp_path / "alice.npz", model)
    loaded = load_model(tmp_path / "alice.npz", "speaker")
    assert np.array_equal(loaded.ivectors, model.ivectors)
    assert loaded.meta["ivector_extractor"] == backend.extractor_fingerprint
    plain = adapt_model(ubm, arrays, "bob")
    save_model(tmp_path / "bob.npz", plain)
    assert load_model(tmp_path / "bob.npz").ivectors is None
    broken = model.ivectors.copy()
    broken[1, 2] = np.nan
    rewrite(tmp_path / "alice.npz", ivectors=broken)
    with pytest.raises(SpkverError, match="i-vectors are damaged"):
        load_model(tmp_path / "alice.npz")


# Training through the API: workers and checkpoints -----------------------------------------------------------


@pytest.fixture(scope="module")
def example():
    """The example corpus, a small UBM on its background speakers, and their files labelled by folder."""
    from spkver.api import train_ubm
    from spkver.audio.sources import find_audio
    from spkver.synth import example_corpus

    background = find_audio([example_corpus() / "background"])
    ubm = train_ubm(background, n_components=8, iterations=3, run=RunOptions(workers=1))
    return ubm, background, [item.path.parent.name for item in background]


def test_training_is_byte_identical_whatever_the_workers(example, tmp_path, monkeypatch):
    from spkver.api import train_ivector
    from spkver.ivector import training

    ubm, background, labels = example
    pools = []

    class Recording(Engine):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self.pool is not None)

    monkeypatch.setattr(training, "Engine", Recording)
    files = []
    for workers in (1, 2):
        # 0.1 s pieces: some 300 utterances, several shards of statistics and of EM.
        backend = train_ivector(ubm, background, labels=labels, rank=5, iterations=3, segment_seconds=0.1,
                                run=RunOptions(workers=workers))
        history = backend.training["log_likelihood_history"]
        assert backend.training["utterances"] > 2 * SHARD_ROWS and len(history) == 4
        assert np.all(np.diff(history) >= -1e-9 * np.abs(history[:-1]))
        save_backend(tmp_path / f"w{workers}.npz", backend, ubm, backend.training)
        files.append((tmp_path / f"w{workers}.npz").read_bytes())
    assert pools == [False, False, True, True]  # statistics and EM ran in a pool with two workers
    assert files[0] == files[1]


def interrupt_after(step):
    """A save_tv_checkpoint that stops the run right after writing iteration ``step``."""
    from spkver.storage.ivectors import save_tv_checkpoint

    def save(path, state, identity):
        save_tv_checkpoint(path, state, identity)
        if state.step == step:
            raise KeyboardInterrupt

    return save


def test_an_interrupted_run_resumes_to_the_same_bytes(example, tmp_path, monkeypatch):
    import spkver.storage.ivectors as ivectors
    from spkver.api import train_ivector

    ubm, background, labels = example
    options = dict(labels=labels, rank=4, iterations=5, segment_seconds=0.5, run=RunOptions(workers=1))
    reference = train_ivector(ubm, background, **options)
    checkpoint = tmp_path / "iv.npz.checkpoint.npz"
    monkeypatch.setattr(ivectors, "save_tv_checkpoint", interrupt_after(2))
    with pytest.raises(KeyboardInterrupt):
        train_ivector(ubm, background, checkpoint=checkpoint, **options)
    monkeypatch.undo()
    assert checkpoint.exists()
    kept = checkpoint.read_bytes()
    with pytest.raises(SpkverError, match="--resume"):  # never silently replaced
        train_ivector(ubm, background, checkpoint=checkpoint, **options)
    with pytest.raises(SpkverError, match=r"rank 4 \(now 5\), seed 0 \(now 3\)"):
        train_ivector(ubm, background, checkpoint=checkpoint, resume=True, **{**options, "rank": 5}, seed=3)
    with pytest.raises(SpkverError, match="more than --iterations 1"):
        train_ivector(ubm, background, checkpoint=checkpoint, resume=True, **{**options, "iterations": 1})
    assert checkpoint.read_bytes() == kept
    notes = []
    resumed = train_ivector(ubm, background, checkpoint=checkpoint, resume=True,
                            **{**options, "run": RunOptions(workers=1, on_note=notes.append)})
    assert "resuming after iteration 2" in notes and not checkpoint.exists()
    for name, backend in (("reference", reference), ("resumed", resumed)):
        save_backend(tmp_path / f"{name}.npz", backend, ubm, backend.training)
    assert (tmp_path / "reference.npz").read_bytes() == (tmp_path / "resumed.npz").read_bytes()


# The commands ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(synthetic_corpus, tmp_path_factory):
    """Through the CLI: a UBM with alice and bob enrolled without i-vectors (``models``), a PLDA back-end on the
    six background speakers, and alice and bob enrolled with it (``ivmodels``); a trial list of all pairs."""
    work = tmp_path_factory.mktemp("ivector-cli")
    ubm, models = train_and_enroll(synthetic_corpus, work)
    backend = work / "ivector.npz"
    # One-second segments: at half a second (30-40 speech frames) the noisy pitch of unvoiced frames
    # outweighed these synthetic voices' differences and PLDA confused a test of alice for bob.
    result = run("train-ivector", "--ubm", ubm, "-o", backend, "--per-folder", synthetic_corpus / "background",
                 "--rank", 8, "--segment-seconds", 1.0, "--workers", 1)
    assert result.exit_code == 0, result.stderr
    assert "T-matrix iteration  10" in result.stderr and "plda scoring on 6 speakers" in result.stderr
    ivmodels = work / "ivmodels"
    result = run("enroll", "--ubm", ubm, "--ivector", backend, "--models", ivmodels, "--per-folder",
                 synthetic_corpus / "enroll", "--workers", 1)
    assert result.exit_code == 0, result.stderr
    trials = work / "trials"
    tests = sorted((synthetic_corpus / "test").rglob("*.wav"))
    trials.write_text("".join(f"{speaker} {path} {'target' if path.parent.name == speaker else 'nontarget'}\n"
                              for speaker in ("alice", "bob") for path in tests))
    return dict(work=work, ubm=ubm, models=models, backend=backend, ivmodels=ivmodels, trials=trials,
                corpus=synthetic_corpus)


def test_plda_scores_rank_targets_over_non_targets(trained, tmp_path):
    t = trained
    result = run("score", "--ubm", t["ubm"], "--ivector", t["backend"], "--models", t["ivmodels"], "--trials",
                 t["trials"], "-o", tmp_path / "scores.tsv", "--workers", 1)
    assert result.exit_code == 0, result.stderr
    rows = [line.split("\t") for line in (tmp_path / "scores.tsv").read_text().splitlines()]
    assert len(rows) == 12
    scores = {(speaker, path): float(score) for speaker, path, score, _ in rows}
    for (speaker, path), score in scores.items():
        true = path.split("/")[-2]
        if speaker == true:  # each test scores higher against its own speaker than against the other
            other = "bob" if true == "alice" else "alice"
            assert score > scores[other, path], (path, score, scores[other, path])
    target = [float(s) for _, _, s, label in rows if label == "target"]
    nontarget = [float(s) for _, _, s, label in rows if label == "nontarget"]
    assert np.mean(target) > np.mean(nontarget) + 5
    # verify --ivector gives the same scores.
    result = run("verify", "--ubm", t["ubm"], "--ivector", t["backend"], "--models", t["ivmodels"],
                 "--speaker", "alice", "--speaker", "bob", "--json", t["corpus"] / "test")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 12
    for record in records:
        assert record["score"] == pytest.approx(scores[record["speaker"], record["path"]], abs=2e-6)


def test_identify_with_the_backend_names_each_speaker(trained):
    t = trained
    result = run("identify", "--ubm", t["ubm"], "--ivector", t["backend"], "--models", t["ivmodels"],
                 "--closed-set", t["corpus"] / "test")
    assert result.exit_code == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines() if not line.startswith("#")]
    assert len(lines) == 6
    for path, decision, *_ in lines:
        assert decision == path.split("/")[-2]


def test_info_describes_the_backend(trained):
    t = trained
    text = run("info", t["backend"]).stdout
    assert "i-vector back-end, rank 8, 16 components, 124 dimensions, plda scoring" in text
    meta = json.loads(run("info", "--json", t["backend"]).stdout)
    assert meta["kind"] == "ivector" and meta["training"]["speakers"] == 6 and meta["rank"] == 8
    assert meta["ubm_fingerprint"] == load_model(t["ubm"]).fingerprint
    history = meta["training"]["log_likelihood_history"]
    assert len(history) == 11 and np.all(np.diff(history) >= -1e-9 * np.abs(history[:-1]))
    speaker = run("info", t["ivmodels"] / "alice.npz").stdout
    assert f"ivector_extractor: {meta['extractor_fingerprint']}" in speaker
    assert load_model(t["ivmodels"] / "alice.npz").ivectors.shape == (3, 8)  # one per enrollment recording


def test_pair_trials_with_the_backend_score_as_enrolled_speakers(trained, tmp_path):
    t = trained
    corpus = t["corpus"]
    enrollments = {"a0": "enroll/alice/alice_0.wav", "b1": "enroll/bob/bob_1.wav"}
    tests = ["test/alice/alice_0.wav", "test/bob/bob_2.wav"]
    pairs = tmp_path / "pairs"
    pairs.write_text("".join(f"{int(e.split('/')[1] == x.split('/')[1])} {e} {x}\n"
                             for e in enrollments.values() for x in tests))
    result = run("score", "--ubm", t["ubm"], "--ivector", t["backend"], "--pairs", pairs, "--audio-root", corpus,
                 "-o", tmp_path / "pairs.tsv", "--workers", 1)
    assert result.exit_code == 0, result.stderr
    pair_scores = [float(line.split("\t")[2]) for line in (tmp_path / "pairs.tsv").read_text().splitlines()]
    models = tmp_path / "models"
    for name, wav in enrollments.items():
        result = run("enroll", "--ubm", t["ubm"], "--ivector", t["backend"], "--models", models, "--speaker", name,
                     corpus / wav)
        assert result.exit_code == 0, result.stderr
    trials = tmp_path / "trials"
    trials.write_text("".join(f"{name} {corpus / x}\n" for name in enrollments for x in tests))
    result = run("score", "--ubm", t["ubm"], "--ivector", t["backend"], "--models", models, "--trials", trials,
                 "-o", tmp_path / "trials.tsv", "--workers", 1)
    assert result.exit_code == 0, result.stderr
    by_hand = [float(line.split("\t")[2]) for line in (tmp_path / "trials.tsv").read_text().splitlines()]
    assert len(pair_scores) == 4
    np.testing.assert_allclose(pair_scores, by_hand, atol=2e-6)


def test_audio_without_speakers_trains_a_cosine_backend(trained, tmp_path):
    t = trained
    output = tmp_path / "cosine.npz"
    result = run("train-ivector", "--ubm", t["ubm"], "-o", output, "--rank", 4, "--iterations", 3, "--workers", 1,
                 t["corpus"] / "background")
    assert result.exit_code == 0, result.stderr
    assert "no speaker labels (cosine scoring)" in result.stderr and "Traceback" not in result.stderr
    backend, meta = load_backend(output, load_model(t["ubm"]))
    assert backend.scoring == "cosine" and backend.plda is None and meta["training"]["speakers"] is None
    result = run("enroll", "--ubm", t["ubm"], "--ivector", output, "--models", tmp_path / "m", "--per-folder",
                 t["corpus"] / "enroll", "--workers", 1)
    assert result.exit_code == 0, result.stderr
    result = run("verify", "--ubm", t["ubm"], "--ivector", output, "--models", tmp_path / "m", "--speaker", "alice",
                 t["corpus"] / "test" / "alice")
    assert result.exit_code == 0
    assert all(-1 <= float(line.split("\t")[2]) <= 1 for line in result.stdout.splitlines())


def test_audio_without_speakers_warns_about_cosine_scoring(trained, tmp_path):
    t = trained
    result = run("-q", "train-ivector", "--ubm", t["ubm"], "-o", tmp_path / "cosine.npz", "--rank", 4,
                 "--iterations", 1, "--workers", 1, t["corpus"] / "background")
    assert result.exit_code == 0, result.stderr
    assert any(line.startswith("spkver: warning:") and "cosine" in line for line in result.stderr.splitlines())


def test_plda_without_speakers_is_refused_before_training(trained, tmp_path):
    t = trained
    result = run("train-ivector", "--ubm", t["ubm"], "-o", tmp_path / "p.npz", "--rank", 4, "--iterations", 1,
                 "--workers", 1, "--scoring", "plda", t["corpus"] / "background")
    one_error_line(result, "PLDA", "speakers")
    assert "T-matrix iteration" not in result.stderr and not (tmp_path / "p.npz.checkpoint.npz").exists()


def test_lda_on_the_command_line_is_capped_at_speakers_minus_one(trained, tmp_path):
    t = trained
    result = run("train-ivector", "--ubm", t["ubm"], "-o", tmp_path / "two.npz", "--rank", 4, "--iterations", 1,
                 "--workers", 1, "--per-folder", t["corpus"] / "enroll", "--lda-dim", 3)
    # enroll/ holds alice and bob with three recordings each: PLDA, and LDA capped at one dimension.
    assert result.exit_code == 0, result.stderr
    backend, meta = load_backend(tmp_path / "two.npz")
    assert backend.scoring == "plda" and backend.projection.shape == (4, 1) and meta["training"]["lda_dim"] == 1


def test_scoring_speakers_enrolled_without_the_backend_is_refused(trained, tmp_path):
    t = trained
    result = run("score", "--ubm", t["ubm"], "--ivector", t["backend"], "--models", t["models"], "--trials",
                 t["trials"], "-o", tmp_path / "s.tsv")
    # The error names the model file to re-enroll (spkver: error: <file>: <problem>).
    one_error_line(result, f"error: {Path(t['models']) / 'alice.npz'}: ", "'alice'", "without an i-vector back-end",
                   "--ivector")
    assert not (tmp_path / "s.tsv").exists()
    # ... or with another back-end of the same UBM.
    ubm = load_model(t["ubm"])
    backend, meta = load_backend(t["backend"], ubm)
    other = IvectorBackend(TotalVariability(backend.tv.matrix[:, ::-1], backend.tv.n_components, backend.tv.dim),
                           backend.mean, backend.projection, backend.plda)
    save_backend(tmp_path / "other.npz", other, ubm, meta["training"])
    result = run("verify", "--ubm", t["ubm"], "--ivector", tmp_path / "other.npz", "--models", t["ivmodels"],
                 "--speaker", "bob", t["corpus"] / "test" / "bob")
    one_error_line(result, f"error: {Path(t['ivmodels']) / 'bob.npz'}: ", "'bob'", "another i-vector back-end")


def test_enrollment_ivectors_of_another_width_are_refused_naming_the_model(trained, tmp_path):
    from dataclasses import replace

    t = trained
    bob = load_model(Path(t["ivmodels"]) / "bob.npz")
    (tmp_path / "m").mkdir()
    save_model(tmp_path / "m" / "bob.npz", replace(bob, ivectors=np.zeros((2, bob.ivectors.shape[1] + 3))))
    result = run("verify", "--ubm", t["ubm"], "--ivector", t["backend"], "--models", tmp_path / "m",
                 "--speaker", "bob", t["corpus"] / "test" / "bob")
    one_error_line(result, f"error: {tmp_path / 'm' / 'bob.npz'}: ", "dimensions where the back-end's have")


def test_score_normalisation_with_the_backend_is_refused(trained, tmp_path):
    t = trained
    result = run("score", "--ubm", t["ubm"], "--ivector", t["backend"], "--models", t["ivmodels"], "--trials",
                 t["trials"], "--score-norm", "s", "-o", tmp_path / "s.tsv")
    one_error_line(result, "--score-norm s")
    assert not (tmp_path / "s.tsv").exists()


def bad_inputs(t, tmp_path):
    """Each case: a command line that must end in one error line (with these needles) and exit 2."""
    from dataclasses import replace

    corpus = t["corpus"]
    ubm_model = load_model(t["ubm"])
    other_ubm = replace(ubm_model, gmm=GMM(ubm_model.gmm.weights, ubm_model.gmm.means + 0.01,
                                           ubm_model.gmm.variances))
    backend, meta = load_backend(t["backend"])
    save_backend(tmp_path / "foreign.npz", backend, other_ubm, meta["training"])
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(t["backend"].read_bytes()[:5000])
    (tmp_path / "list").write_text("alice enroll/alice/alice_0.wav\n")
    train = ["train-ivector", "--ubm", t["ubm"], "--rank", 4, "--iterations", 1, "--workers", 1]
    verify = ["verify", "--ubm", t["ubm"], "--models", t["ivmodels"], "--speaker", "alice", corpus / "test" / "alice"]
    out = tmp_path / "new.npz"
    return {
        "output exists": ([*train, "-o", t["backend"], corpus / "background"], ["already exists", "--force"]),
        "no output folder": ([*train, "-o", tmp_path / "no" / "x.npz", corpus / "background"], ["does not exist"]),
        "folder and list": ([*train, "-o", out, "--per-folder", corpus / "background", "--speaker-list",
                             tmp_path / "list"], ["not both"]),
        "folder and audio": ([*train, "-o", out, "--per-folder", corpus / "background", corpus / "test"],
                             ["name no speakers"]),
        "plda without speakers": ([*train, "-o", out, "--scoring", "plda", corpus / "background"],
                                  ["PLDA scoring needs speakers"]),
        "rank 0": ([*train, "-o", out, "--rank", 0, corpus / "background"], ["--rank"]),
        "nan segments": ([*train, "-o", out, "--segment-seconds", "nan", corpus / "background"],
                         ["--segment-seconds"]),
        "speaker as ubm": (["train-ivector", "--ubm", t["ivmodels"] / "alice.npz", "-o", out, corpus / "background"],
                           ["alice.npz", "expected a ubm model"]),
        "backend as ubm": (["train-ivector", "--ubm", t["backend"], "-o", out, corpus / "background"],
                           ["ivector.npz"]),
        "missing backend": ([*verify, "--ivector", tmp_path / "none.npz"], ["none.npz"]),
        "ubm as backend": ([*verify, "--ivector", t["ubm"]], ["is a ubm model, not an i-vector back-end"]),
        "speaker as backend": ([*verify, "--ivector", t["ivmodels"] / "bob.npz"],
                               ["is a speaker model, not an i-vector back-end"]),
        "foreign backend": ([*verify, "--ivector", tmp_path / "foreign.npz"], ["different UBM", "train-ivector"]),
        "truncated backend": ([*verify, "--ivector", truncated], ["truncated.npz"]),
        "enroll with foreign": (["enroll", "--ubm", t["ubm"], "--ivector", tmp_path / "foreign.npz", "--models",
                                 tmp_path / "m", "--speaker", "carol", corpus / "enroll" / "alice"],
                                ["different UBM"]),
        "identify with truncated": (["identify", "--ubm", t["ubm"], "--models", t["ivmodels"], "--ivector", truncated,
                                     corpus / "test"], ["truncated.npz"]),
        "info on truncated": (["info", truncated], ["truncated.npz"]),
    }


CASES = ["output exists", "no output folder", "folder and list", "folder and audio", "plda without speakers",
         "rank 0", "nan segments", "speaker as ubm", "backend as ubm", "missing backend",
         "ubm as backend", "speaker as backend", "foreign backend", "truncated backend", "enroll with foreign",
         "identify with truncated", "info on truncated"]


@pytest.mark.parametrize("case", CASES)
def test_bad_inputs_give_one_line_and_exit_2(trained, tmp_path, case):
    cases = bad_inputs(trained, tmp_path)
    assert sorted(cases) == sorted(CASES)
    args, needles = cases[case]
    before = trained["backend"].read_bytes()
    one_error_line(run(*args), *needles)
    assert not (tmp_path / "new.npz").exists() and not (tmp_path / "m").exists()
    assert trained["backend"].read_bytes() == before


def test_plda_on_one_speaker_says_why(trained, tmp_path):
    t = trained
    result = run("train-ivector", "--ubm", t["ubm"], "-o", tmp_path / "x.npz", "--rank", 4, "--iterations", 1,
                 "--workers", 1, "--scoring", "plda", "--per-folder", t["corpus"] / "test")
    assert result.exit_code == 0, result.stderr  # test/ holds alice and bob: PLDA is possible
    only_alice = tmp_path / "alice-only"
    only_alice.mkdir()
    (only_alice / "alice").symlink_to(t["corpus"] / "enroll" / "alice")
    result = run("train-ivector", "--ubm", t["ubm"], "-o", tmp_path / "y.npz", "--rank", 4, "--iterations", 1,
                 "--workers", 1, "--scoring", "plda", "--per-folder", only_alice)
    one_error_line(result, "PLDA scoring needs two or more speakers", "1 speaker")
    assert not (tmp_path / "y.npz").exists()


def common_training(corpus, output):
    return ["train-ivector", "--ubm", corpus["ubm"], "-o", output, "--per-folder", corpus["corpus"] / "background",
            "--rank", 4, "--iterations", 5, "--segment-seconds", 0.5, "--workers", 1]


def test_ctrl_c_prints_a_resume_command_that_gives_the_same_bytes(trained, tmp_path, monkeypatch):
    import spkver.storage.ivectors as ivectors

    reference = tmp_path / "reference.npz"
    assert run(*common_training(trained, reference)).exit_code == 0
    output = tmp_path / "iv.npz"
    checkpoint = tmp_path / "iv.npz.checkpoint.npz"
    monkeypatch.setattr(ivectors, "save_tv_checkpoint", interrupt_after(3))
    result = run(*common_training(trained, output))
    monkeypatch.undo()
    assert result.exit_code == 130 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "interrupted after T-matrix iteration 3" in line and str(checkpoint) in line and checkpoint.exists()
    assert not output.exists()
    kept = checkpoint.read_bytes()
    # Without --resume: refused, saying how to resume or start over.
    one_error_line(run(*common_training(trained, output)), str(checkpoint), "--resume", "--force")
    # --resume with other settings: refused, naming what differs.
    changed = [str(a) for a in common_training(trained, output)]
    changed[changed.index("--rank") + 1] = "5"
    one_error_line(run(*changed, "--seed", 2, "--resume"), "rank 4 (now 5)", "seed 0 (now 2)", "--force")
    assert checkpoint.read_bytes() == kept
    command = shlex.split(line.split("To continue: ", 1)[1])
    assert command[0] == "spkver" and "--resume" in command
    resumed = run(*command[1:])
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming after iteration 3" in resumed.stderr
    assert output.read_bytes() == reference.read_bytes() and not checkpoint.exists()
    # --force replaces the output and starts over, to the same bytes.
    assert run(*common_training(trained, output), "--force", "--seed", 1).exit_code == 0
    assert output.read_bytes() != reference.read_bytes()


@pytest.mark.slow
def test_a_dask_cluster_trains_the_same_extractor_as_local_workers(synthetic_corpus, tmp_path):
    """Statistics on a Dask cluster are the bits of one local process; its T-matrix EM agrees to rounding."""
    distributed = pytest.importorskip("distributed")
    from spkver.audio.sources import find_audio
    from spkver.features.store import FeatureStore
    from spkver.gmm.em import train
    from spkver.ivector.training import train_extractor, write_statistics

    store = FeatureStore(tmp_path / "feats", FeatureConfig())
    store.extract(find_audio([synthetic_corpus / "background"]), run=RunOptions(workers=1))
    arrays, paths = store.arrays(), store.paths()
    gmm = train(arrays, 8, iterations=2, seed=1).gmm
    pieces = segments_of([len(a) for a in arrays], 16)
    k, d = gmm.n_components, gmm.dim
    local_rows = write_statistics(gmm, arrays, pieces, tmp_path / "local.npy", workers=1)
    local = train_extractor(local_rows, tmp_path / "local.npy", k, d, rank=4, iterations=2, workers=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        remote_rows = write_statistics(gmm, arrays, pieces, tmp_path / "remote.npy",
                                       scheduler=cluster.scheduler_address, paths=paths)
        remote = train_extractor(remote_rows, tmp_path / "remote.npy", k, d, rank=4, iterations=2,
                                 scheduler=cluster.scheduler_address)
    assert len(shards_of(len(pieces))) > 1 and len(pieces) > 16  # several shards of EM work and of statistics
    assert np.array_equal(np.asarray(local_rows), np.asarray(remote_rows))
    # Not bit for bit, unlike the pool's workers: the matrices differ in their last bits (cause not found
    # yet; not the BLAS threads: the same with OPENBLAS_NUM_THREADS=1). Equal to rounding.
    np.testing.assert_allclose(remote.tv.matrix, local.tv.matrix, rtol=0, atol=1e-12 * np.abs(local.tv.matrix).max())
    np.testing.assert_allclose(remote.history, local.history, rtol=1e-12)


def _traced_training_peak(path, rows, k, d, r):
    """Peak bytes numpy allocates while T-matrix EM runs two iterations on memory-mapped ``rows`` (fixed start)."""
    import tracemalloc

    from spkver.ivector.extractor import TrainingState, initial_matrix

    state = TrainingState(initial_matrix(k, d, r, rows[:64]), [], 0)
    tracemalloc.start()
    try:
        train_total_variability(np.load(path, mmap_mode="r"), k, d, rank=r, iterations=2, state=state)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_t_matrix_training_memory_does_not_grow_with_utterances_or_shards(tmp_path, monkeypatch):
    from spkver.ivector import extractor

    k, d, r = 256, 4, 32
    monkeypatch.setattr(extractor, "BATCH_VALUES", r * r * 64)  # batches of 64 utterances at this small rank
    accumulator = (k * r * (r + 1) // 2 + k * d * r) * 8
    rng = np.random.default_rng(0)
    peaks = {}
    for utterances in (256, 1024, 2048):  # 2, 8 and 8 shards
        zeroth = rng.gamma(0.5, 4.0, (utterances, k))
        first = rng.standard_normal((utterances, k * d)) * np.repeat(np.sqrt(zeroth), d, axis=1)
        path = tmp_path / f"rows{utterances}.npy"
        np.save(path, np.hstack([zeroth, first]).astype(np.float32))
        peaks[utterances] = _traced_training_peak(path, np.load(path, mmap_mode="r"), k, d, r)
    assert len(shards_of(256)) == 2 and len(shards_of(1024)) == len(shards_of(2048)) == 8
    assert abs(peaks[2048] - peaks[1024]) < accumulator / 16  # twice the utterances, the same memory
    # Shards are added as they are computed, not held: four times the shards cost less than a quarter of
    # an accumulator more (holding every shard's result, as before, cost more than ten).
    assert peaks[1024] - peaks[256] < accumulator / 4
