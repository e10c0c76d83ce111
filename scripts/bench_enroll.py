#!/usr/bin/env python3
"""Batch enrollment: 20 ASC speakers x 50 files in one `spkver enroll` against 20 separate commands.

    python scripts/bench_enroll.py [--data-root ../shared/data] [--workdir DIR] [--workers N]

Both ways run the real CLI (``python -m spkver``) in the same run, against
one small UBM (``--components 64`` on ASC speakers 1-10, not timed). The
batch command gets a ``--speaker-list``; the separate commands one
``--speaker`` each. Both write byte-identical models (checked). Prints the
two times and their ratio (target: at least 5x).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from protocols import DEFAULT_DATA_ROOT, asc_speaker  # noqa: E402

SPEAKERS = [f"{n:08d}" for n in range(11, 31)]
FILES_PER_SPEAKER = 50


def spkver(*args) -> float:
    """Run one spkver command quietly; its wall-clock seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "spkver", "-q", *map(str, args)], check=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=None, help="--workers of both ways [default: all cores]")
    args = parser.parse_args()
    files = sorted((args.data_root / "asc" / "dataset").rglob("*.wav"))
    if not files:
        sys.exit(f"no ASC files under {args.data_root / 'asc' / 'dataset'}")
    by_speaker: dict[str, list[Path]] = {}
    for path in files:
        by_speaker.setdefault(asc_speaker(path), []).append(path)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="spkver-bench-enroll-"))
    work.mkdir(parents=True, exist_ok=True)
    workers = ["--workers", args.workers] if args.workers else []

    ubm_list = work / "ubm.lst"
    ubm_list.write_text("".join(f"{p}\n" for p in files if int(asc_speaker(p)) <= 10))
    ubm = work / "ubm.npz"
    if not ubm.exists():
        spkver("train-ubm", "-o", ubm, "--components", 64, "--list", ubm_list, "--no-cache", *workers)

    enroll = {s: by_speaker[s][:FILES_PER_SPEAKER] for s in SPEAKERS}
    speaker_list = work / "speakers.txt"
    speaker_list.write_text("".join(f"{s} {p}\n" for s, paths in enroll.items() for p in paths))
    separate_models, batch_models = work / "separate", work / "batch"

    separate = 0.0
    for speaker, paths in enroll.items():
        separate += spkver("enroll", "--ubm", ubm, "--models", separate_models, "--speaker", speaker, "--force",
                           *workers, *paths)
    batch = spkver("enroll", "--ubm", ubm, "--models", batch_models, "--speaker-list", speaker_list, "--force",
                   *workers)

    same = all((separate_models / f"{s}.npz").read_bytes() == (batch_models / f"{s}.npz").read_bytes()
               for s in SPEAKERS)
    print(f"{len(SPEAKERS)} speakers x {FILES_PER_SPEAKER} files, UBM of 64 components")
    print("| way | seconds |")
    print("|---|---|")
    print(f"| {len(SPEAKERS)} separate `spkver enroll --speaker` commands | {separate:.2f} |")
    print(f"| one `spkver enroll --speaker-list` | {batch:.2f} |")
    print(f"speed-up: {separate / batch:.1f}x (target at least 5x); models byte-identical: {same}")


if __name__ == "__main__":
    main()
