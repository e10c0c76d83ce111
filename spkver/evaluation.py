"""Batch scoring of trial lists, and open-set identification, as library calls."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spkver.audio import AudioItem
from spkver.corpus import usable_features
from spkver.errors import SpkverError
from spkver.fileio import file_identity
from spkver.models import Model, SpeakerStore
from spkver.normalization import Cohort, cohort_statistics, describe_normalisation, normalise_scores
from spkver.scoring import Scorer, checked_scores


def _load_speakers(ubm, store: SpeakerStore, trials, skip_bad, on_skip, source):
    models = {}
    for trial in trials:
        if trial.speaker in models:
            continue
        try:
            models[trial.speaker] = store.load(trial.speaker, ubm)
        except SpkverError as exc:
            message = f"line {trial.line}: speaker {trial.speaker!r}: {exc}"
            if not skip_bad:
                raise SpkverError(message, source) from None
            models[trial.speaker] = None
            if on_skip:
                on_skip(f"{source}: {message}")
    return models


def _test_features(ubm, trials, workers, skip_bad, on_skip, progress, on_note=None):
    """Features of each distinct test file, extracted once, in parallel."""
    distinct = {}
    for trial in trials:
        distinct.setdefault(str(trial.path), AudioItem(trial.test, trial.path, f"trials line {trial.line}"))
    good = usable_features(distinct.values(), ubm.feature_config, workers, skip_bad, on_skip, progress, on_note)
    return {str(item.path): frames for item, frames in good}


@dataclass
class ScoredTrial:
    speaker: str
    test: str
    score: float
    label: bool | None


def score_trials(ubm: Model, store: SpeakerStore, trials, top_c=5, norm="none", cohort: Cohort | None = None,
                 top_n=None, calibration=None, workers=None, skip_bad=False, on_skip=None, progress=None,
                 source="trials", on_note=None) -> list[ScoredTrial]:
    """Score every trial; each test file is read and scored against the UBM once.

    Parameters
    ----------
    norm : {"none", "z", "t", "s"}
        Score normalisation against ``cohort`` (required unless ``"none"``).
    top_n : int, optional
        Adaptive normalisation: cohort statistics from the N highest cohort scores.
    calibration : Calibration, optional
        Maps the (normalised) scores to log-likelihood ratios.
    """
    if norm != "none" and cohort is None:
        raise SpkverError(f"--norm {norm} needs --cohort")
    if calibration is not None:
        calibration.require(describe_normalisation(norm, top_n))
    models = _load_speakers(ubm, store, trials, skip_bad, on_skip, source)
    features = _test_features(ubm, trials, workers, skip_bad, on_skip, progress, on_note)
    by_file = {}
    for index, trial in enumerate(trials):
        if models[trial.speaker] is not None and features.get(str(trial.path)) is not None:
            by_file.setdefault(str(trial.path), []).append(index)
    loaded = sorted(name for name, model in models.items() if model is not None)
    column = {name: i for i, name in enumerate(loaded)}
    scorer = Scorer(ubm.gmm, [models[name].gmm for name in loaded], top_c)
    z_stats = None
    if norm in ("z", "s") and loaded:
        z_stats = cohort_statistics(cohort.z_scores([models[name] for name in loaded]), top_n)
    scores = {}
    for path, indices in by_file.items():
        frames = features[path]
        columns = np.array([column[trials[i].speaker] for i in indices])
        # Only this file's claimed speakers: Kaldi trial lists often pair a file with a few models.
        raw = checked_scores(scorer.scores(frames, columns), path)
        z = t = None
        if z_stats is not None:
            z = (z_stats[0][columns], z_stats[1][columns])
        if norm in ("t", "s"):
            mean, std = cohort_statistics(cohort.t_scores(file_identity(path), frames), top_n)
            t = (mean[0], std[0])
        final = normalise_scores(raw, norm, z, t)
        if calibration is not None:
            final = calibration(final)
        scores.update(zip(indices, final.tolist()))
    if cohort is not None:
        cohort.save(on_note)
    return [ScoredTrial(t.speaker, t.test, scores[i], t.label) for i, t in enumerate(trials) if i in scores]


@dataclass
class Identification:
    path: str
    decision: str
    ranking: list


def identify(ubm: Model, speakers, items, top=3, threshold=None, top_c=5, workers=None, skip_bad=False,
             on_skip=None, progress=None, calibration=None, on_note=None) -> list[Identification]:
    """Rank enrolled speakers for each recording; ``unknown`` when the best is below ``threshold``."""
    if not speakers:
        raise SpkverError("no speakers are enrolled in the model store")
    if calibration is not None:
        calibration.require("none")
    scorer = Scorer(ubm.gmm, [s.gmm for s in speakers], top_c)
    answers = []
    for item, frames in usable_features(items, ubm.feature_config, workers, skip_bad, on_skip, progress, on_note):
        scores = checked_scores(scorer.scores(frames), item.path)
        if calibration is not None:
            scores = calibration(scores)
        order = np.argsort(-scores, kind="stable")[: max(1, top)]
        ranking = [(speakers[i].meta["speaker"], float(scores[i])) for i in order]
        best_name, best_score = ranking[0]
        decision = best_name if threshold is None or best_score >= threshold else "unknown"
        answers.append(Identification(str(item.path), decision, ranking))
    return answers
