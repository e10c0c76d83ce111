"""spkver: GMM-UBM speaker verification, as a command line and as a library.

The public API is the names in ``__all__``; each is imported from its home
module at first use, so ``import spkver`` itself loads nothing heavy (no
numpy). The package is layered as the data flows (ARCHITECTURE.md):
``audio`` → ``features`` → ``gmm`` → ``ivector`` → ``storage`` → ``backend`` → ``api`` → ``cli``.

Examples
--------
>>> import spkver
>>> ubm = spkver.train_ubm(spkver.find_audio(["background/"]), n_components=256)  # doctest: +SKIP
>>> alice = spkver.enroll(ubm, spkver.find_audio(["alice/"]), "alice")  # doctest: +SKIP
>>> spkver.verify(ubm, [alice], spkver.find_audio(["test.wav"]))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the module that defines it.
_HOMES = {
    "train_ubm": "spkver.api", "enroll": "spkver.api", "enroll_many": "spkver.api", "verify": "spkver.api",
    "score_trials": "spkver.api", "identify": "spkver.api", "Identification": "spkver.api",
    "train_ivector": "spkver.api", "IvectorBackend": "spkver.ivector.backend",
    "load_backend": "spkver.storage.ivectors", "save_backend": "spkver.storage.ivectors",
    "RunOptions": "spkver.run",
    "SpkverError": "spkver.errors",
    "AudioItem": "spkver.audio.sources", "find_audio": "spkver.audio.sources", "read_list": "spkver.audio.sources",
    "read_data_dir": "spkver.audio.sources",
    "load_audio": "spkver.audio.decode",
    "FeatureConfig": "spkver.features.config",
    "GMM": "spkver.gmm.model",
    "Model": "spkver.storage.models", "load_model": "spkver.storage.models", "save_model": "spkver.storage.models",
    "SpeakerStore": "spkver.storage.speakers",
    "Trial": "spkver.storage.trials", "Score": "spkver.storage.trials", "read_trials": "spkver.storage.trials",
    "read_scores": "spkver.storage.trials",
    "Cohort": "spkver.backend.scorenorm",
    "Calibration": "spkver.backend.calibration", "fit_calibration": "spkver.backend.calibration",
    "Fusion": "spkver.backend.fusion", "fit_fusion": "spkver.backend.fusion", "load_fusion": "spkver.backend.fusion",
    "save_fusion": "spkver.backend.fusion",
    "load_calibration": "spkver.backend.calibration", "save_calibration": "spkver.backend.calibration",
    "eer": "spkver.backend.metrics", "min_dcf": "spkver.backend.metrics", "bayes_threshold": "spkver.backend.metrics",
}

__all__ = [
    "AudioItem", "Calibration", "Cohort", "FeatureConfig", "Fusion", "GMM", "Identification", "IvectorBackend",
    "Model", "RunOptions", "Score", "SpeakerStore", "SpkverError", "Trial", "__version__", "bayes_threshold", "eer",
    "enroll", "enroll_many", "find_audio", "fit_calibration", "fit_fusion", "identify", "load_audio", "load_backend",
    "load_calibration", "load_fusion", "load_model", "min_dcf", "read_data_dir", "read_list", "read_scores",
    "read_trials", "save_backend", "save_calibration", "save_fusion", "save_model", "score_trials", "train_ivector",
    "train_ubm", "verify",
]

if TYPE_CHECKING:
    from spkver.api import Identification, enroll, enroll_many, identify, score_trials, train_ivector, train_ubm, verify
    from spkver.audio.decode import load_audio
    from spkver.audio.sources import AudioItem, find_audio, read_data_dir, read_list
    from spkver.backend.calibration import Calibration, fit_calibration, load_calibration, save_calibration
    from spkver.backend.fusion import Fusion, fit_fusion, load_fusion, save_fusion
    from spkver.backend.metrics import bayes_threshold, eer, min_dcf
    from spkver.backend.scorenorm import Cohort
    from spkver.errors import SpkverError
    from spkver.features.config import FeatureConfig
    from spkver.gmm.model import GMM
    from spkver.ivector.backend import IvectorBackend
    from spkver.run import RunOptions
    from spkver.storage.ivectors import load_backend, save_backend
    from spkver.storage.models import Model, load_model, save_model
    from spkver.storage.speakers import SpeakerStore
    from spkver.storage.trials import Score, Trial, read_scores, read_trials


def __getattr__(name: str):
    """Import a public name's module at the name's first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'spkver' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
