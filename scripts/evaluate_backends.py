#!/usr/bin/env python3
"""GMM-UBM, i-vector + cosine, i-vector + PLDA and their fusion on the protocols, through the CLI.

    python scripts/evaluate_backends.py [--protocol asc-long ...] [--workdir DIR] [-- TRAIN-IVECTOR OPTIONS]

Per protocol: the default UBM (``train-ubm`` on the protocol's UBM audio),
``train-ivector`` on the same audio with its speakers (``--speaker-list``),
``enroll --ivector`` of every speaker, then ``score`` with the MAP models
(spkver's default S-norm) and ``score --ivector`` (PLDA; cosine scores come
from the same back-end without its PLDA). The fusion of GMM-UBM with
i-vector + PLDA is ``spkver fuse``, cross-validated: the test speakers are
split into two halves, a fusion learnt on one half's trials fuses the
other's, so no trial is scored by weights learnt on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate import spkver, train, write_trials  # noqa: E402
from protocols import DEFAULT_BUILD_DIR, DEFAULT_DATA_ROOT, PROTOCOLS  # noqa: E402

DEFAULT_PROTOCOLS = ["asc-long", "fsdd-long", "asc", "fsdd"]


def speaker_list(path: Path, speakers: dict) -> Path:
    path.write_text("".join(f"{name} {Path(f).resolve()}\n" for name, files in sorted(speakers.items())
                            for f in files))
    return path


def eer_of(scores: Path) -> tuple[float, float]:
    metrics = json.loads(spkver("evaluate", scores, "--json"))
    return metrics["eer"], metrics["min_dcf"]["0.01"]


def cosine_scores(ubm: Path, backend: Path, models: Path, trials: Path, out: Path) -> Path:
    """The back-end's cosine scores (its PLDA left out), through the library."""
    from spkver import SpeakerStore, load_model, read_trials, score_trials
    from spkver.run import RunOptions
    from spkver.storage.ivectors import load_backend
    from spkver.storage.trials import format_score

    ubm_model = load_model(ubm, "ubm")
    cosine, _ = load_backend(backend, ubm_model)
    cosine.plda = None
    scored = score_trials(ubm_model, SpeakerStore(models), read_trials(trials), backend=cosine,
                          run=RunOptions(workers=2))
    out.write_text("".join(format_score(s.speaker, s.test, s.score, s.label) + "\n" for s in scored))
    return out


def split_by_test_speaker(scores: Path, protocol, halves: tuple[Path, Path]):
    """Write the trials of even- and odd-numbered test speakers to two score files."""
    speakers = sorted({protocol.speaker_of(Path(line.split("\t")[1])) for line in scores.read_text().splitlines()
                       if line and not line.startswith("#")})
    half_of = {s: i % 2 for i, s in enumerate(speakers)}
    lines = [[], []]
    header = [line for line in scores.read_text().splitlines() if line.startswith("#")]
    for line in scores.read_text().splitlines():
        if line and not line.startswith("#"):
            lines[half_of[protocol.speaker_of(Path(line.split("\t")[1]))]].append(line)
    for path, part in zip(halves, lines):
        path.write_text("\n".join(header + part) + "\n")


def fused_cross_validated(protocol, workdir: Path, systems: list[Path]) -> Path:
    """Fuse ``systems`` two-fold by test speaker (learn on one half, apply to the other); the pooled result."""
    parts = {}
    for system in systems:
        halves = (workdir / f"{system.stem}.half0.tsv", workdir / f"{system.stem}.half1.tsv")
        split_by_test_speaker(system, protocol, halves)
        parts[system] = halves
    fused_lines = []
    for learn, apply in ((0, 1), (1, 0)):
        fusion = workdir / f"fusion.learn{learn}.json"
        fusion.unlink(missing_ok=True)
        spkver("fuse", *[parts[s][learn] for s in systems], "-o", fusion)
        out = workdir / f"fused.half{apply}.tsv"
        out.unlink(missing_ok=True)
        spkver("fuse", *[parts[s][apply] for s in systems], "--fusion", fusion, "-o", out)
        lines = out.read_text().splitlines()
        header = [line for line in lines if line.startswith("#")]
        fused_lines += [line for line in lines if line and not line.startswith("#")]
    fused = workdir / "fused.tsv"
    fused.write_text("\n".join(header + fused_lines) + "\n")
    return fused


def run(protocol, workdir: Path, ivector_options: list[str]) -> dict:
    start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    ubm = train(protocol, workdir, [])
    trials = workdir / "trials" if (workdir / "trials").exists() else write_trials(protocol, workdir)
    tag = "_".join(o.strip("-") for o in ivector_options) or "default"
    backend = workdir / f"ivector-{tag}.npz"
    ubm_speakers: dict = {}
    for path in protocol.ubm:
        ubm_speakers.setdefault(protocol.speaker_of(path), []).append(path)
    if not backend.exists():
        spkver("train-ivector", "--ubm", ubm, "-o", backend, *ivector_options,
               "--speaker-list", speaker_list(workdir / "ubm-speakers.lst", ubm_speakers))
    models = workdir / f"models-iv-{tag}"
    if not models.is_dir():
        spkver("enroll", "--ubm", ubm, "--ivector", backend, "--models", models,
               "--speaker-list", speaker_list(workdir / "enroll-speakers.lst", protocol.enroll))
    gmm = workdir / "scores-gmm.tsv"
    if not gmm.exists():
        spkver("score", "--ubm", ubm, "--models", models, "--trials", trials, "-o", gmm)
    plda = workdir / f"scores-plda-{tag}.tsv"
    spkver("score", "--ubm", ubm, "--ivector", backend, "--models", models, "--trials", trials, "-o", plda)
    cosine = cosine_scores(ubm, backend, models, trials, workdir / f"scores-cosine-{tag}.tsv")
    row = {"gmm": eer_of(gmm), "cosine": eer_of(cosine), "plda": eer_of(plda)}
    try:
        fusion_dir = workdir / f"fusion-{tag}"
        fusion_dir.mkdir(exist_ok=True)
        row["fusion"] = eer_of(fused_cross_validated(protocol, fusion_dir, [gmm, plda]))
    except RuntimeError as exc:  # spkver fuse missing or failing: say so in the table
        print(f"fusion failed: {exc}", file=sys.stderr)
        row["fusion"] = (float("nan"), float("nan"))
    row["seconds"] = time.perf_counter() - start
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", action="append", choices=sorted(PROTOCOLS))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("ivector_options", nargs="*", help="train-ivector options (after --)")
    args = parser.parse_args()
    workroot = args.workdir or Path(tempfile.mkdtemp(prefix="spkver-backends-"))
    print("| protocol | GMM-UBM | i-vector + cosine | i-vector + PLDA | fusion GMM-UBM + PLDA | fusion vs best single |"
          " s |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for name in args.protocol or DEFAULT_PROTOCOLS:
        row = run(PROTOCOLS[name](args.data, args.build_dir), workroot / name, args.ivector_options)
        cells = [f"{100 * row[s][0]:.2f} ({row[s][1]:.3f})" for s in ("gmm", "cosine", "plda", "fusion")]
        best = min(row["gmm"][0], row["plda"][0])
        # With a single system already at 0% EER there is nothing left to gain: no percentage.
        gain = f"{100 * (best - row['fusion'][0]) / best:+.0f}%" if best > 0 else "- (best single 0%)"
        print(f"| {name} | " + " | ".join(cells) + f" | {gain} | {row['seconds']:.0f} |", flush=True)
    print(f"(EER % (minDCF 0.01); scores in {workroot})")


if __name__ == "__main__":
    main()
