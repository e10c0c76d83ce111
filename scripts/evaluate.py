#!/usr/bin/env python3
"""Evaluation runner: drives the spkver CLI on the protocols and prints EER, minDCF, identification.

    python scripts/evaluate.py [--protocol asc ...] [--defaults] [--workdir DIR] [--det PNG]

Every step is a real ``spkver`` command (train-ubm, enroll per speaker,
score, evaluate) given nothing but the audio, so the numbers are what a user
gets. The UBM's audio is given as a Kaldi data folder (``wav.scp`` and
``utt2spk``), as a Kaldi user has it: its speakers let ``train-ubm`` learn
channel factors. ``--defaults`` runs each protocol with spkver's defaults only;
otherwise the table also changes one option at a time from the defaults, and
a second table pivots the EERs: one row per option, one column per protocol.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocols import DEFAULT_BUILD_DIR, DEFAULT_DATA_ROOT, PROTOCOLS  # noqa: E402


def spkver(*args):
    command = [sys.executable, "-m", "spkver", "-q", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def write_list(path: Path, files):
    path.write_text("".join(f"{Path(f).resolve()}\n" for f in files))
    return path


def slug(options) -> str:
    return "_".join(str(o).strip("-") for o in options) or "default"


def write_data_dir(path: Path, files, speaker_of) -> Path:
    """A Kaldi data folder of ``files``: ``wav.scp`` and ``utt2spk`` (utterance ids speaker-first, as Kaldi
    sorts them)."""
    path.mkdir(parents=True, exist_ok=True)
    ids = [f"{speaker_of(Path(f))}-{i:05d}" for i, f in enumerate(files)]
    (path / "wav.scp").write_text("".join(f"{u} {Path(f).resolve()}\n" for u, f in zip(ids, files)))
    (path / "utt2spk").write_text("".join(f"{u} {u.rsplit('-', 1)[0]}\n" for u in ids))
    return path


def train(protocol, workdir: Path, options):
    ubm = workdir / f"ubm-{slug(options)}.npz"
    if not ubm.exists():
        spkver("train-ubm", "-o", ubm, *options,
               "--data-dir", write_data_dir(workdir / "ubm-data", protocol.ubm, protocol.speaker_of))
    return ubm


def enroll_all(protocol, ubm: Path, models: Path, options):
    if models.is_dir() and len(list(models.glob("*.npz"))) == len(protocol.enroll):
        return models
    for speaker, files in sorted(protocol.enroll.items()):
        spkver("enroll", "--ubm", ubm, "--models", models, "--speaker", speaker, "--force", *options,
               "--list", write_list(models.parent / f"enroll_{speaker}.lst", files))
    return models


def write_trials(protocol, workdir: Path):
    lines = []
    for test in protocol.test:
        for speaker in sorted(protocol.enroll):
            label = "target" if protocol.speaker_of(test) == speaker else "nontarget"
            lines.append(f"{speaker}\t{Path(test).resolve()}\t{label}")
    path = workdir / "trials"
    path.write_text("\n".join(lines) + "\n")
    return path


def identification_accuracy(scores_path: Path, protocol):
    """Closed-set identification: the best-scoring model of each test file is its speaker."""
    best = defaultdict(lambda: (None, -float("inf")))
    for line in scores_path.read_text().splitlines():
        if line.startswith("#"):
            continue
        speaker, test, score = line.split("\t")[:3]
        if float(score) > best[test][1]:
            best[test] = (speaker, float(score))
    return sum(protocol.speaker_of(Path(t)) == s for t, (s, _) in best.items()) / len(best)


def run_protocol(protocol, workdir: Path, train_options=(), enroll_options=(), score_options=()):
    """One configuration end to end; returns its row of metrics and the scores file."""
    start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    ubm = train(protocol, workdir, list(train_options))
    models = enroll_all(protocol, ubm, workdir / f"models-{ubm.stem}-{slug(enroll_options)}", list(enroll_options))
    trials = workdir / "trials" if (workdir / "trials").exists() else write_trials(protocol, workdir)
    scores = workdir / f"scores-{ubm.stem}-{slug(enroll_options)}-{slug(score_options)}.tsv"
    options = list(score_options)
    if "--score-norm" in options:
        options += ["--cohort", write_list(workdir / "cohort.lst", protocol.cohort)]
    spkver("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", scores, *options)
    return measured(protocol, scores, time.perf_counter() - start) | {"ubm": ubm, "models": models}


def measured(protocol, scores: Path, seconds: float):
    """The metrics row of a score file."""
    metrics = json.loads(spkver("evaluate", scores, "--json"))
    return {"eer": metrics["eer"], "min_dcf": metrics["min_dcf"]["0.01"], "targets": metrics["targets"],
            "nontargets": metrics["nontargets"], "id_accuracy": identification_accuracy(scores, protocol),
            "seconds": seconds, "scores": scores}


# (label, train-ubm options, enroll options, score options): the defaults, then one change at a time.
CONFIGURATIONS = [
    ("default", [], [], []),
    ("no VAD (--vad none)", ["--vad", "none"], [], []),
    ("energy VAD of spkver 0.2 (--vad energy)", ["--vad", "energy"], [], []),
    ("20 cepstra", ["--n-ceps", "20"], [], []),
    ("30 cepstra", ["--n-ceps", "30"], [], []),
    ("c0 replaced by log energy", ["--log-energy"], [], []),
    ("one system: CMN (--feature-norm cmn, the previous default)", ["--feature-norm", "cmn"], [], []),
    ("one system: feature warping (--feature-norm warp)", ["--feature-norm", "warp"], [], []),
    ("systems: CMN and CMVN (--feature-norm cmn+cmvn)", ["--feature-norm", "cmn+cmvn"], [], []),
    ("no channel factors (--channel-factors 0)", ["--channel-factors", "0"], [], []),
    ("components x 1/2", ["--components", "half"], [], []),
    ("components x 2", ["--components", "double"], [], []),
    ("relevance 8", [], ["--relevance", "8"], []),
    ("relevance 24", [], ["--relevance", "24"], []),
    ("MAP means only (--adapt m)", [], ["--adapt", "m"], []),
    ("MAP means, weights, variances (--adapt mwv)", [], ["--adapt", "mwv"], []),
    ("no score normalisation (--score-norm none)", [], [], ["--score-norm", "none"]),
    ("full scoring (--top-c 0)", [], [], ["--top-c", "0"]),
]


def configurations(defaults_only):
    return [CONFIGURATIONS[0]] if defaults_only else CONFIGURATIONS


def resolve_components(options, default_ubm: Path):
    """``--components half|double``: half or twice the default UBM's automatic choice."""
    if "--components" not in options:
        return options
    from spkver.storage.models import load_model

    k = load_model(default_ubm, "ubm").gmm.n_components
    options = list(options)
    i = options.index("--components") + 1
    options[i] = str(k // 2 if options[i] == "half" else 2 * k)
    return options


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", action="append", choices=sorted(PROTOCOLS))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR,
                        help="Where the long-recording protocols are built (once).")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--defaults", action="store_true", help="spkver's defaults only.")
    parser.add_argument("--det", type=Path, help="DET plot of each protocol's default scores.")
    args = parser.parse_args()
    workroot = args.workdir or Path(tempfile.mkdtemp(prefix="spkver-eval-"))
    names = args.protocol or list(PROTOCOLS)
    print("| protocol | configuration | target / non-target | EER % | minDCF (0.01) | closed-set ID % | s |")
    print("|---|---|---|---|---|---|---|", flush=True)
    det_inputs, pivot = [], defaultdict(dict)
    for name in names:
        protocol = PROTOCOLS[name](args.data, args.build_dir)
        default_ubm, rows = None, {}
        for label, train_options, enroll_options, score_options in configurations(args.defaults):
            if default_ubm is not None:
                train_options = resolve_components(train_options, default_ubm)
            rows[label] = run_protocol(protocol, workroot / name, train_options, enroll_options, score_options)
            default_ubm = default_ubm or rows[label]["ubm"]
        for label, row in rows.items():
            pivot[label][name] = row["eer"]
            if label == "default":
                det_inputs.append((name, row["scores"]))
            print(f"| {name} | {label} | {row['targets']} / {row['nontargets']} | {100 * row['eer']:.2f} | "
                  f"{row['min_dcf']:.3f} | {100 * row['id_accuracy']:.1f} | {row['seconds']:.0f} |", flush=True)
    if not args.defaults:
        print()
        print("| EER % | " + " | ".join(names) + " | better on |")
        print("|---|" + "---|" * (len(names) + 1))
        for label, eers in pivot.items():
            base = pivot["default"]
            better = sum(eers[n] < base[n] for n in names)
            cells = [f"{100 * eers[n]:.2f}" + ("" if label == "default" else f" ({100 * (eers[n] - base[n]):+.2f})")
                     for n in names]
            print(f"| {label} | " + " | ".join(cells) + f" | {'-' if label == 'default' else better} |")
    if args.det:
        copies = []
        for label, path in det_inputs:
            copy = workroot / f"{label}.tsv"
            copy.write_text(path.read_text())
            copies.append(copy)
        spkver("evaluate", *copies, "--det", args.det)
    print(f"(scores and models in {workroot})")


if __name__ == "__main__":
    main()
