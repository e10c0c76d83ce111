"""The speaker store: a folder of speaker models, ``DIR/<speaker>.npz``, with safe speaker ids."""

from __future__ import annotations

import re
from pathlib import Path

from spkver.errors import SpkverError, printable
from spkver.fileio import locked, os_problem
from spkver.storage.models import Model, load_model

SPEAKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ENROLLED_SHOWN = 10  # speaker ids an error message lists before "and N more"


def validate_speaker_id(speaker: str) -> str:
    """Return ``speaker`` if it is a safe id, else raise (before any file is touched)."""
    if not isinstance(speaker, str) or not SPEAKER_ID.fullmatch(speaker):
        shown = repr(speaker) if isinstance(speaker, str) and len(speaker) <= 40 else "given"
        raise SpkverError(
            f"speaker id {shown} is not valid: use 1-128 characters from A-Z a-z 0-9 . _ -,"
            " starting with a letter or digit"
        )
    return speaker


class SpeakerStore:
    """A folder of speaker models, ``DIR/<speaker>.npz``."""

    def __init__(self, root):
        self.root = Path(root)
        if self.root.is_symlink() and not self.root.exists():
            raise SpkverError("models folder is a broken symbolic link", self.root)
        if self.root.exists() and not self.root.is_dir():
            its_folder = f": {printable(self.root.parent)}" if self.root.suffix == ".npz" else ""
            raise SpkverError(f"is a file, not a models folder (give the folder that holds <speaker>.npz "
                              f"files{its_folder})", self.root)

    def path(self, speaker: str) -> Path:
        return self.root / f"{validate_speaker_id(speaker)}.npz"

    def exists(self, speaker: str) -> bool:
        return self.path(speaker).is_file()

    def speakers(self) -> list[str]:
        """The enrolled speaker ids, sorted; a models folder that does not exist is an error."""
        self._require_folder()
        try:
            return sorted(p.stem for p in self.root.glob("*.npz") if SPEAKER_ID.fullmatch(p.stem))
        except OSError as exc:
            raise SpkverError(f"cannot read the models folder ({os_problem(exc)})", self.root) from None

    def load(self, speaker: str, ubm: Model | None = None) -> Model:
        """Load a speaker; with ``ubm``, refuse one adapted from a different UBM."""
        path = self.path(speaker)
        if not path.is_file():
            self._require_folder()
            raise SpkverError(f"speaker {speaker!r} is not enrolled (no {path.name}; {self.enrolled_summary()})",
                              self.root)
        model = load_model(path, kind="speaker")
        if model.meta["speaker"] != speaker:
            raise SpkverError(f"holds speaker id {printable(model.meta['speaker'])!r}, not {speaker!r} as its file "
                              "name says; refusing it (re-enroll the speaker)", path)
        if ubm is not None and (model.meta["ubm_fingerprint"] != ubm.fingerprint
                                or model.feature_config != ubm.feature_config):
            raise SpkverError("speaker model was adapted from a different UBM; re-enroll it", path)
        if ubm is not None and any(m.means.shape != u.means.shape for m, u in zip(model.gmms, ubm.gmms)):
            raise SpkverError(f"speaker model has {model.gmm.n_components} components where its UBM has "
                              f"{ubm.gmm.n_components}: it is damaged; re-enroll it", path)
        return model

    def _require_folder(self) -> None:
        if not self.root.is_dir():
            raise SpkverError("no such models folder (check the path; enroll creates it)", self.root)

    def enrolled_summary(self, most: int = ENROLLED_SHOWN) -> str:
        """Who is enrolled, for messages: up to ``most`` ids, then how many more."""
        names = self.speakers()
        if not names:
            return "no speaker is enrolled in this folder"
        more = f" and {len(names) - most} more" if len(names) > most else ""
        return f"enrolled: {', '.join(names[:most])}{more}"

    def locked(self, speaker: str):
        """A ``with`` block holding an exclusive lock on one speaker while it is written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpkverError(f"cannot create the models folder ({os_problem(exc)})", self.root) from None
        return locked(self.root / f".{validate_speaker_id(speaker)}.lock")
