#!/usr/bin/env python3
"""How spkver's defaults were chosen: each candidate setting on every protocol, averaged over UBM seeds.

    python scripts/tune_defaults.py [--protocol asc ...] [--seeds 2] [--first-seed 0] [--only LABEL ...]
                                    [--feature-norm cmn]

The library's own calls (feature extraction, EM, MAP, top-C scoring, S-norm
against the cohort a UBM stores) run in this process, so a row costs seconds, not the minutes of the CLI
runner (``scripts/evaluate.py``, which gives the same numbers for one seed).
Features are extracted once per protocol and setting and kept in
``--workdir``. Each row changes one setting from the defaults (the two systems
of ``--feature-norm cmn+warp``, or with ``--feature-norm cmn`` the one system on
which the other settings were decided) and prints the
mean EER over ``--seeds`` UBM seeds for every protocol, how many protocols it
improves, and the mean over protocols; seed-to-seed differences are
0.2-0.6 EER points, so a setting must win on most protocols to matter.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocols import DEFAULT_BUILD_DIR, DEFAULT_DATA_ROOT, PROTOCOLS  # noqa: E402

from spkver.audio.decode import native_sample_rate  # noqa: E402
from spkver.audio.sources import AudioItem  # noqa: E402
from spkver.backend.metrics import eer, min_dcf  # noqa: E402
from spkver.backend.scorenorm import COHORT_SEGMENTS, cohort_segments, cohort_statistics, normalise_scores  # noqa: E402  # noqa: E402
from spkver.backend.scoring import Scorer  # noqa: E402
from spkver.features.config import FeatureConfig, feature_rate_for  # noqa: E402
from spkver.features.extraction import extract_all  # noqa: E402
from spkver.gmm.channels import (  # noqa: E402
    CHANNEL_ITERATIONS,
    DEFAULT_CHANNEL_FACTORS,
    ChannelCompensation,
    train_channels,
)
from spkver.gmm.em import (
    auto_components,  # noqa: E402
    train,  # noqa: E402
)
from spkver.gmm.engine import Engine  # noqa: E402
from spkver.gmm.map import DEFAULT_ADAPT, adapt_to  # noqa: E402

# (label, feature settings, run settings): the defaults, then one change at a time.
CANDIDATES = [
    ("defaults", {}, {}),
    ("no pitch features", {"pitch": False}, {}),
    ("VAD: none", {"vad": "none"}, {}),
    ("VAD: energy, 30 dB below the loudest frame (0.2)", {"vad": "energy"}, {}),
    ("VAD: no edge growth", {"vad_grow_ms": 0.0}, {}),
    ("20 cepstra", {"n_ceps": 20}, {}),
    ("30 cepstra", {"n_ceps": 30}, {}),
    ("all cepstra (64 / 48)", {"n_ceps": "all"}, {}),
    ("40 / 30 mel bands", {"n_mels": "narrow"}, {}),
    ("80 / 60 mel bands", {"n_mels": "wide"}, {}),
    ("c0 replaced by log energy", {"log_energy": True}, {}),
    ("one system: CMN (the previous default)", {"norm": "cmn"}, {}),
    ("one system: CMVN", {"norm": "cmvn"}, {}),
    ("one system: feature warping, 3 s", {"norm": "warp"}, {}),
    ("deltas: Δ only", {"deltas": 1}, {}),
    ("delta window ±1", {"delta_window": 1}, {}),
    ("delta window ±3", {"delta_window": 3}, {}),
    ("no 80 dB log-mel floor", {"top_db": None}, {}),
    ("components: frames / 400", {}, {"frames_per_component": 400}),
    ("components: frames / 1600", {}, {"frames_per_component": 1600}),
    ("MAP means only", {}, {"adapt": "m"}),
    ("MAP means and variances", {}, {"adapt": "mv"}),
    ("MAP means, weights, variances", {}, {"adapt": "mwv"}),
    ("relevance 8", {}, {"relevance": 8}),
    ("relevance 12", {}, {"relevance": 12}),
    ("relevance 24", {}, {"relevance": 24}),
    ("no score normalisation (--score-norm none)", {}, {"norm": "none"}),
    ("S-norm, cohort of 50 segments", {}, {"cohort_size": 50}),
    ("S-norm, cohort of 200 segments", {}, {"cohort_size": 200}),
    ("adaptive S-norm, top 50 of 100 segments", {}, {"top_n": 50}),
    ("adaptive S-norm, top 100 of 200 segments", {}, {"cohort_size": 200, "top_n": 100}),
    ("top-C 2 scoring", {}, {"top_c": 2}),
    ("top-C 10 scoring", {}, {"top_c": 10}),
    ("window 20 ms", {"window_ms": 20.0}, {}),
    ("window 32 ms", {"window_ms": 32.0}, {}),
    ("mel filterbank from 100 Hz", {"fmin": 100.0}, {}),
    ("one system: no cepstral normalisation", {"norm": "none"}, {}),
    # Two changes: the best pair for the 16 kHz protocols (asc, asc-short) found by hand.
    ("no log-mel floor and delta window ±1", {"top_db": None, "delta_window": 1}, {}),
    # Other systems than the default pair (each its own UBM and models; their raw scores averaged, then S-norm).
    ("systems: CMN and CMVN", {"norm": "cmn+cmvn"}, {}),
    ("systems: CMVN and feature warping", {"norm": "cmvn+warp"}, {}),
    ("systems: CMN, CMVN and feature warping", {"norm": "cmn+cmvn+warp"}, {}),
    # Fusions of separate models (S-normed scores averaged, as `spkver fuse --mean`), measured before the
    # default had two systems: the one-system CMN model with another.
    ("fusion: CMN and feature warping", [{"norm": "cmn"}, {"norm": "warp"}], {}),
    ("fusion: CMN and no-pitch CMN", [{"norm": "cmn"}, {"norm": "cmn", "pitch": False}], {}),
    ("fusion: CMN and CMN without log-mel floor, delta window ±1",
     [{"norm": "cmn"}, {"norm": "cmn", "top_db": None, "delta_window": 1}], {}),
    ("fusion: CMN, feature warping, and CMN without log-mel floor with delta window ±1",
     [{"norm": "cmn"}, {"norm": "warp"}, {"norm": "cmn", "top_db": None, "delta_window": 1}], {}),
    ("one system on the cepstra of both normalisations (CMN and warping)", ({"norm": "cmn"}, {"norm": "warp"}), {}),
    # Channel factors (learnt from the UBM speakers' recordings; the rows above were measured before they were
    # the default, which is why the README gives them without).
    ("no channel factors (--channel-factors 0)", {}, {"channel_factors": 0}),
    ("channel factors: 5", {}, {"channel_factors": 5}),
    ("channel factors: 50", {}, {"channel_factors": 50}),
    ("channel factors: principal components only (no EM)", {}, {"channel_iterations": 0}),
    ("channel factors: 2 EM iterations", {}, {"channel_iterations": 2}),
    ("channel factors: 5 EM iterations", {}, {"channel_iterations": 5}),
]


# The systems every row starts from (--feature-norm): spkver's default, or "cmn" for the one-system table;
# and the channel factors (--channel-factors): spkver's default, or 0 for the tables measured before them.
BASE_NORM = [FeatureConfig().norm]
BASE_CHANNELS = [DEFAULT_CHANNEL_FACTORS]


def feature_config(protocol, settings) -> FeatureConfig:
    """The default features for the protocol's UBM audio (with the systems of ``--feature-norm``), with
    ``settings`` changed."""
    rate = feature_rate_for(native_sample_rate(p) for p in protocol.ubm[:50])
    base = FeatureConfig(sample_rate=rate, norm=BASE_NORM[0])
    settings = dict(settings)
    if settings.get("n_ceps") == "all":
        settings["n_ceps"] = base.n_mels
    if settings.get("n_mels") in ("narrow", "wide"):
        factor = 0.625 if settings["n_mels"] == "narrow" else 1.25
        settings["n_mels"] = int(round(base.n_mels * factor))
        settings["n_ceps"] = min(base.n_ceps, settings["n_mels"])
    return replace(base, **settings) if settings else base


def protocol_features(protocol, config, workdir: Path):
    """Features of every file of the protocol, extracted once per config (cached in ``workdir``).

    Several systems' features are their one-system features side by side (as extraction makes them,
    tests/test_features.py), so each normalisation is extracted and cached once.
    """
    if len(config.norms) > 1:
        parts = [protocol_features(protocol, replace(config, norm=norm), workdir) for norm in config.norms]
        return {f: np.hstack([part[f] for part in parts]) for f in parts[0]}
    files = sorted({str(f) for f in [*protocol.ubm, *protocol.test, *protocol.cohort,
                                     *(f for fs in protocol.enroll.values() for f in fs)]})
    key = hashlib.sha256((protocol.name + config.fingerprint() + "\n".join(files)).encode()).hexdigest()[:16]
    cache = workdir / f"{protocol.name}-{key}.npz"
    if cache.exists():
        with np.load(cache) as data:
            return {f: data[str(i)] for i, f in enumerate(files)}
    extracted = extract_all([AudioItem(f, Path(f)) for f in files], config)
    features = {str(item.path): frames for item, frames in extracted}
    np.savez(cache, **{str(i): features[f] for i, f in enumerate(files)})
    return features


def candidate_features(protocol, settings, workdir: Path) -> list:
    """``(features, views)`` of each model of a candidate: one settings dict is one spkver model (of the
    systems its ``norm`` names, ``views`` their columns); a list of them is a fusion of models (their
    S-normed scores averaged, as ``spkver fuse --mean``); a tuple is one system on the cepstra of each
    setting side by side (the pitch columns once, from the first)."""
    if isinstance(settings, dict):
        config = feature_config(protocol, settings)
        return [(protocol_features(protocol, config, workdir), config.views)]
    if isinstance(settings, list):
        return [f for s in settings for f in candidate_features(protocol, s, workdir)]
    parts = [(candidate_features(protocol, s, workdir)[0][0], feature_config(protocol, s)) for s in settings]
    return [({f: np.hstack([parts[0][0][f]] + [p[f][:, :(1 + c.deltas) * c.n_ceps] for p, c in parts[1:]])
              for f in parts[0][0]}, (slice(None),))]


def metrics(protocol, scores):
    """EER and minDCF(0.01) of a (tests, speakers) score matrix of ``protocol``."""
    truth = np.array([[protocol.speaker_of(t) == s for s in sorted(protocol.enroll)] for t in protocol.test])
    return eer(scores[truth], scores[~truth]), min_dcf(scores[truth], scores[~truth], 0.01)


def scores_of(protocol, features, seed, frames_per_component=None, relevance=16.0, adapt=DEFAULT_ADAPT, norm="s",
              cohort_size=COHORT_SEGMENTS, top_n=None, top_c=5, views=(slice(None),), channel_factors=None,
              channel_iterations=CHANNEL_ITERATIONS):
    """The (tests, speakers) scores of one UBM seed, with spkver's defaults unless told otherwise.

    ``frames_per_component`` (None: the ``auto`` rule), ``relevance``, ``adapt``, ``norm`` ("s" or
    "none"), ``cohort_size`` (segments), ``top_n`` (adaptive S-norm), ``top_c`` (components scored
    per frame), ``channel_factors`` (learnt from the UBM audio's speakers, as ``train-ubm`` does
    from a data folder with utt2spk; 0 for none, None for ``--channel-factors``) and
    ``channel_iterations`` (their EM iterations after the principal components) are the settings
    of ``train-ubm``, ``enroll`` and ``score`` of those names. ``views`` are the columns of each
    system (``FeatureConfig.views``): each has its own UBM and models, and the raw scores, test and
    cohort alike, are the mean over the systems (``SystemsScorer``).
    """
    ubm_frames = [features[str(f)] for f in protocol.ubm]
    labels = [protocol.speaker_of(f) for f in protocol.ubm]
    channel_factors = BASE_CHANNELS[0] if channel_factors is None else channel_factors
    n_frames = sum(len(a) for a in ubm_frames)
    k = auto_components(n_frames) if frames_per_component is None else \
        int(np.clip(2 ** round(np.log2(max(n_frames / frames_per_component, 1))), 16, 2048))
    speakers = sorted(protocol.enroll)
    cohort = [c.astype(np.float32) for c in cohort_segments(ubm_frames, cohort_size)]  # what train-ubm stores
    raw = z_cohort = t_cohort = 0.0
    for view in views:
        frames = [a[:, view] for a in ubm_frames]
        with Engine(frames, 2) as engine:
            ubm = train(frames, k, seed=seed, engine=engine).gmm
        compensation = ChannelCompensation(ubm, train_channels(ubm, frames, labels, channel_factors,
                                                               iterations=channel_iterations)) \
            if channel_factors else None
        compensated = (lambda f: f) if compensation is None else compensation.compensate
        models = [adapt_to(ubm, [features[str(f)][:, view] for f in protocol.enroll[s]], relevance, adapt,
                           compensation)[0] for s in speakers]
        scorer = Scorer(ubm, models, top_c)
        tests = [compensated(features[str(t)][:, view]) for t in protocol.test]
        raw = raw + np.array([scorer.scores(f) for f in tests]) / len(views)
        if norm == "s":
            segments = [compensated(c[:, view]) for c in cohort]
            z_cohort = z_cohort + np.array([scorer.scores(c) for c in segments]).T / len(views)
            cohort_models = [adapt_to(ubm, [c], relevance, adapt)[0] for c in segments]
            t_scorer = Scorer(ubm, cohort_models, top_c)
            t_cohort = t_cohort + np.array([t_scorer.scores(f) for f in tests]) / len(views)
    if norm != "s":
        return raw
    z, t = cohort_statistics(z_cohort, top_n), cohort_statistics(t_cohort, top_n)
    return normalise_scores(raw, "s", (z[0][None, :], z[1][None, :]), (t[0][:, None], t[1][:, None]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", action="append", choices=sorted(PROTOCOLS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0, help="Seeds run from this one (to add seeds later).")
    parser.add_argument("--only", action="append", help="Run only candidates whose label starts with this.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "spkver-tune")
    parser.add_argument("--feature-norm", default=FeatureConfig().norm,
                        help="The systems every row starts from (a row's own norm wins): spkver's default "
                             "(%(default)s), or cmn for the one-system technique table of the README.")
    parser.add_argument("--channel-factors", type=int, default=DEFAULT_CHANNEL_FACTORS,
                        help="The channel factors every row starts from (a row's own wins): spkver's default "
                             "(%(default)s, learnt from each protocol's UBM speakers), or 0 for the tables of the "
                             "README measured before them.")
    args = parser.parse_args()
    BASE_NORM[0] = FeatureConfig(norm=args.feature_norm).norm
    BASE_CHANNELS[0] = args.channel_factors
    args.workdir.mkdir(parents=True, exist_ok=True)
    names = args.protocol or list(PROTOCOLS)
    protocols = {n: PROTOCOLS[n](args.data, args.build_dir) for n in names}
    print(f"Mean EER % over UBM seeds {args.first_seed}-{args.first_seed + args.seeds - 1} (mean minDCF(0.01) over "
          "protocols in the last column).")
    print("| setting | " + " | ".join(names) + " | better on | mean EER | mean minDCF |")
    print("|---|" + "---|" * (len(names) + 3), flush=True)
    baseline = {}
    for label, settings, options in CANDIDATES:
        if args.only and label != "defaults" and not any(label.startswith(o) for o in args.only):
            continue
        row = {}
        for name, protocol in protocols.items():
            features = candidate_features(protocol, settings, args.workdir)
            seeds = range(args.first_seed, args.first_seed + args.seeds)
            results = np.array([metrics(protocol, np.mean([scores_of(protocol, f, seed, views=views, **options)
                                                           for f, views in features], axis=0)) for seed in seeds])
            row[name] = results.mean(axis=0)
        baseline = baseline or row
        better = sum(row[n][0] < baseline[n][0] for n in names)
        cells = [f"{100 * row[n][0]:.2f}" for n in names]
        print(f"| {label} | " + " | ".join(cells) + f" | {'-' if row is baseline else f'{better} of {len(names)}'} "
              f"| {100 * np.mean([row[n][0] for n in names]):.2f} | {np.mean([row[n][1] for n in names]):.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
