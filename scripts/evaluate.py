#!/usr/bin/env python3
"""Evaluation runner: drives the spkver CLI on the protocols and prints EER and minDCF.

    python scripts/evaluate.py [--protocol asc --protocol fsdd] [--workdir DIR] [--data ROOT]

Every step is a real ``spkver`` command (train-ubm, enroll per speaker,
verify), so the numbers are what a user gets.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocols import DEFAULT_DATA_ROOT, PROTOCOLS  # noqa: E402

from spkver.metrics import eer, min_dcf  # noqa: E402


def spkver(*args):
    command = [sys.executable, "-m", "spkver", "-q", *map(str, args)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def write_list(path: Path, files):
    path.write_text("".join(f"{f.resolve()}\n" for f in files))
    return path


def run_protocol(protocol, workdir: Path, extra_train=()):
    """Train, enroll, verify through the CLI; return (targets, nontargets, seconds)."""
    start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    ubm = workdir / "ubm.npz"
    models = workdir / "models"
    if models.exists():
        shutil.rmtree(models)
    spkver("train-ubm", "-o", ubm, "--force", *protocol.train_options, *extra_train,
           "--list", write_list(workdir / "ubm.lst", protocol.ubm))
    for speaker, files in sorted(protocol.enroll.items()):
        spkver("enroll", "--ubm", ubm, "--models", models, "--speaker", speaker,
               "--list", write_list(workdir / f"enroll_{speaker}.lst", files))
    speakers = [a for s in sorted(protocol.enroll) for a in ("--speaker", s)]
    out = spkver("verify", "--ubm", ubm, "--models", models, *speakers,
                 "--list", write_list(workdir / "test.lst", protocol.test))
    (workdir / "scores.tsv").write_text(out)
    targets, nontargets = [], []
    for line in out.splitlines():
        speaker, path, score, _ = line.split("\t")
        (targets if protocol.speaker_of(Path(path)) == speaker else nontargets).append(float(score))
    return targets, nontargets, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", action="append", choices=sorted(PROTOCOLS))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workroot = args.workdir or Path(tempfile.mkdtemp(prefix="spkver-eval-"))
    print("| protocol | train-ubm options | target / non-target trials | EER % | minDCF (P=0.01) | seconds |")
    print("|---|---|---|---|---|---|")
    for name in args.protocol or sorted(PROTOCOLS):
        protocol = PROTOCOLS[name](args.data)
        tar, non, seconds = run_protocol(protocol, workroot / name)
        print(f"| {name} | `{' '.join(protocol.train_options)}` | {len(tar)} / {len(non)} | "
              f"{100 * eer(tar, non):.2f} | {min_dcf(tar, non, 0.01):.3f} | {seconds:.0f} |", flush=True)
    print(f"(scores and models in {workroot})")


if __name__ == "__main__":
    main()
