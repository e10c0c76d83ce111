#!/usr/bin/env python3
"""Evaluation runner: drives the spkver CLI on the protocols and prints EER, minDCF, identification.

    python scripts/evaluate.py [--protocol asc ...] [--quick] [--workdir DIR] [--det PNG]

Every step is a real ``spkver`` command (train-ubm, enroll per speaker,
score, evaluate), so the numbers are what a user gets. ``--quick`` runs each
protocol's default configuration only; otherwise the table also varies score
normalisation, top-C vs full scoring, the number of components and the
relevance factor, one at a time from the default.
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

from protocols import DEFAULT_DATA_ROOT, PROTOCOLS  # noqa: E402


def spkver(*args):
    command = [sys.executable, "-m", "spkver", "-q", *map(str, args)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def write_list(path: Path, files):
    path.write_text("".join(f"{f.resolve()}\n" for f in files))
    return path


def with_option(options, name, value):
    """``options`` with ``name`` set to ``value`` (replaced or appended)."""
    options = list(options)
    if name in options:
        options[options.index(name) + 1] = str(value)
    else:
        options += [name, str(value)]
    return options


def train(protocol, workdir: Path, options):
    ubm = workdir / f"ubm-{'_'.join(o.strip('-') for o in options)}.npz"
    if not ubm.exists():
        spkver("train-ubm", "-o", ubm, *options, "--list", write_list(workdir / "ubm.lst", protocol.ubm))
    return ubm


def enroll_all(protocol, ubm: Path, models: Path, relevance=16):
    if models.is_dir() and len(list(models.glob("*.npz"))) == len(protocol.enroll):
        return models
    for speaker, files in sorted(protocol.enroll.items()):
        spkver("enroll", "--ubm", ubm, "--models", models, "--speaker", speaker, "--relevance", relevance,
               "--force", "--list", write_list(models.parent / f"enroll_{speaker}.lst", files))
    return models


def write_trials(protocol, workdir: Path):
    lines = []
    for test in protocol.test:
        for speaker in sorted(protocol.enroll):
            label = "target" if protocol.speaker_of(test) == speaker else "nontarget"
            lines.append(f"{speaker}\t{test.resolve()}\t{label}")
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


def run_protocol(protocol, workdir: Path, train_options=None, relevance=16, top_c=5, norm="none"):
    """One configuration end to end; returns its row of metrics and the scores file."""
    start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    options = train_options or protocol.train_options
    ubm = train(protocol, workdir, options)
    models = enroll_all(protocol, ubm, workdir / f"models-{ubm.stem}-r{relevance}", relevance)
    trials = workdir / "trials" if (workdir / "trials").exists() else write_trials(protocol, workdir)
    scores = workdir / f"scores-{ubm.stem}-r{relevance}-c{top_c}-{norm}.tsv"
    extra = ["--norm", norm, "--cohort", write_list(workdir / "cohort.lst", protocol.cohort)] if norm != "none" else []
    spkver("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", scores, "--top-c", top_c, *extra)
    metrics = json.loads(spkver("evaluate", scores, "--json"))
    return {"eer": metrics["eer"], "min_dcf": metrics["min_dcf"]["0.01"], "targets": metrics["targets"],
            "nontargets": metrics["nontargets"], "id_accuracy": identification_accuracy(scores, protocol),
            "seconds": time.perf_counter() - start, "scores": scores}


def configurations(protocol, quick):
    """(label, keyword arguments of run_protocol): the default, then one change at a time."""
    yield "default", {}
    if quick:
        return
    for norm in ("z", "t", "s"):
        yield f"{norm.upper()}-norm", {"norm": norm}
    yield "full scoring (top-C 0)", {"top_c": 0}
    for k in (64, 128, 256, 512):
        yield f"{k} components", {"train_options": with_option(protocol.train_options, "--components", k)}
    for r in (4, 8):
        yield f"relevance {r}", {"relevance": r}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", action="append", choices=sorted(PROTOCOLS))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="Default configuration only.")
    parser.add_argument("--det", type=Path, help="DET plot of each protocol's default and S-norm scores.")
    args = parser.parse_args()
    workroot = args.workdir or Path(tempfile.mkdtemp(prefix="spkver-eval-"))
    print("| protocol | configuration | target / non-target | EER % | minDCF (0.01) | closed-set ID % | s |")
    print("|---|---|---|---|---|---|---|")
    det_inputs = []
    for name in args.protocol or sorted(PROTOCOLS):
        protocol = PROTOCOLS[name](args.data)
        for label, kwargs in configurations(protocol, args.quick):
            row = run_protocol(protocol, workroot / name, **kwargs)
            if label in ("default", "S-norm"):
                det_inputs.append((f"{name} {label}", row["scores"]))
            print(f"| {name} | {label} | {row['targets']} / {row['nontargets']} | {100 * row['eer']:.2f} | "
                  f"{row['min_dcf']:.3f} | {100 * row['id_accuracy']:.1f} | {row['seconds']:.0f} |", flush=True)
    if args.det:
        copies = []
        for label, path in det_inputs:
            copy = workroot / f"{label.replace(' ', '_')}.tsv"
            copy.write_text(path.read_text())
            copies.append(copy)
        spkver("evaluate", *copies, "--det", args.det)
    print(f"(train-ubm options per protocol: "
          f"{'; '.join(f'{n}: {chr(32).join(PROTOCOLS[n](args.data).train_options)}' for n in sorted(PROTOCOLS))};"
          f" scores and models in {workroot})")


if __name__ == "__main__":
    main()
