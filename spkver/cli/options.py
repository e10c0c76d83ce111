"""What the commands share: the reporter (stderr), option types and groups, and their conversions."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import click

from spkver.backend.metrics import bayes_threshold
from spkver.cli.report import Reporter
from spkver.errors import SpkverError
from spkver.features.config import VAD_METHODS, FeatureConfig
from spkver.features.normalise import FEATURE_NORMS
from spkver.storage.models import load_model
from spkver.storage.speakers import SpeakerStore


class Finite(click.FloatRange):
    """A float within optional bounds that is neither NaN nor infinite."""

    name = "number"

    def _describe_range(self) -> str:
        return "" if self.min is None and self.max is None else super()._describe_range()

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def cap_workers(ctx, param, value):
    """--workers: at most the cores this process may use (more only add start-up time and memory)."""
    from spkver.run import default_workers

    cores = default_workers()
    if value is not None and value > cores:
        reporter = ctx.find_object(Reporter) or Reporter()
        reporter.warn(f"--workers {value}: this machine lets spkver use {cores} "
                      f"core{'s' if cores > 1 else ''}; using {cores}")
        return cores
    return value


def workers_option(help_text="Processes for feature extraction [default: all cores]."):
    return click.option("--workers", type=click.IntRange(min=1), default=None, callback=cap_workers,
                        help=help_text)


def audio_inputs(func):
    """The AUDIO... arguments and the --list, --data-dir, --allow-pipes, --workers and --skip-bad options."""
    func = click.argument("audio", nargs=-1, type=click.Path(path_type=Path))(func)
    func = click.option("--list", "list_file", type=click.Path(path_type=Path), multiple=True,
                        help="File with one audio path per line, or Kaldi wav.scp lines (repeatable: the lists "
                             "add up).")(func)
    func = click.option("--data-dir", type=click.Path(path_type=Path),
                        help="Kaldi data folder: wav.scp (piped commands run), optional segments, utt2spk/spk2utt; "
                             "results name its utterance ids.")(func)
    func = click.option("--allow-pipes", is_flag=True,
                        help="Run the commands of piped lines ('utt cmd |') in --list files (they run any "
                             "command: only for lists you trust).")(func)
    func = workers_option()(func)
    func = click.option("--skip-bad", is_flag=True,
                        help="Report unreadable or silent files and go on without them.")(func)
    return func


def audio_items(report, audio, list_file, data_dir, allow_pipes):
    """The AudioItems of the audio_inputs options; --allow-pipes without a --list only earns a warning."""
    from spkver.audio.sources import gather_inputs

    if not list_file:
        warn_ignored(report, ["allow_pipes"], "without --list (a --data-dir's wav.scp runs its commands anyway)")
    return gather_inputs(audio, list_file, data_dir, allow_pipes=allow_pipes)


def top_c_option(func):
    return click.option("--top-c", type=click.IntRange(min=0), default=5, show_default=True,
                        help="Score only the C best UBM components per frame; 0 for all.")(func)


def decision_options(threshold_help: str):
    """``--threshold`` (``threshold_help`` says its default), ``--top-c``, ``--calibration`` and ``--p-target``.

    How ``verify`` and ``identify`` score and decide; :func:`decision_threshold`
    turns the three decision options into the threshold.
    """
    def decorate(func):
        func = click.option("--p-target", type=Finite(0, 1, min_open=True, max_open=True), default=0.01,
                            show_default=True, help="Prior of the target speaker for calibrated decisions.")(func)
        func = click.option("--calibration", "calibration_path", type=click.Path(path_type=Path),
                            help="CAL.json from `spkver calibrate`: scores become log-likelihood ratios.")(func)
        func = top_c_option(func)
        return click.option("--threshold", type=Finite(), default=None, help=threshold_help)(func)

    return decorate


def decision_threshold(threshold, calibration, p_target):
    """--threshold if given; else the Bayes threshold for calibrated LLRs; else 0."""
    if threshold is not None:
        return threshold
    return bayes_threshold(p_target) if calibration is not None else 0.0


class AutoOrPositiveInt(click.ParamType):
    """``auto`` (None) or a whole number of at least ``minimum`` (1 unless told)."""

    name = "auto|N"

    def __init__(self, minimum: int = 1):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither 'auto' nor a whole number", param, ctx)
        if number < self.minimum:
            self.fail(f"{number} is not at least {self.minimum}", param, ctx)
        return number


class FeatureNorms(click.ParamType):
    """A feature normalisation, or several joined by ``+`` (one system each): ``cmn``, ``cmn+warp``."""

    name = "|".join(FEATURE_NORMS) + "[+...]"

    def get_metavar(self, param, *args, **kwargs):
        return self.name  # lower case, as typed

    def convert(self, value, param, ctx):
        norms = [part.strip() for part in str(value).lower().split("+")]
        unknown = [n for n in norms if n not in FEATURE_NORMS]
        if unknown:
            self.fail(f"{unknown[0]!r} is not one of {', '.join(FEATURE_NORMS)} (join several with +)", param, ctx)
        if len(set(norms)) < len(norms):
            self.fail(f"{value!r} names a normalisation twice", param, ctx)
        return "+".join(norms)


def deprecated_alias(report, old, new, old_value, new_value, default):
    """The value of option ``new``, taking a deprecated ``old`` spelling (with a warning) when given."""
    if old_value is None:
        return default if new_value is None else new_value
    report.warn(f"{old} is deprecated and will be removed; use {new}")
    if new_value is not None and new_value != old_value:
        raise SpkverError(f"{old} {old_value} contradicts {new} {new_value}; give only {new}")
    return old_value


def feature_options(func):
    """Feature settings (used by train-ubm and extract; stored in the model)."""
    d = FeatureConfig()
    options = [
        click.option("--sample-rate", type=click.IntRange(min=1000), default=None,
                     help="Feature sample rate in Hz [default: 8000 when most training audio is telephone-band "
                          "(at most 8 kHz), else 16000]."),
        click.option("--window-ms", type=Finite(min=1), default=d.window_ms, show_default=True,
                     help="Analysis window length in milliseconds."),
        click.option("--hop-ms", type=Finite(min=1), default=d.hop_ms, show_default=True,
                     help="Frame shift in milliseconds."),
        click.option("--n-mels", type=click.IntRange(min=1), default=None,
                     help="Mel bands [default: one per 44 mel: 64 at 16 kHz, 48 at 8 kHz]."),
        click.option("--n-ceps", type=click.IntRange(min=1), default=None,
                     help="Cepstra kept, c0 included [default: 40, or all bands when fewer]."),
        click.option("--log-energy", is_flag=True, help="Replace c0 by the frame's log energy (HTK's _E)."),
        click.option("--pitch/--no-pitch", default=d.pitch, show_default=True,
                     help="Append the log pitch (YIN), its derivatives and its aperiodicity (not normalised)."),
        click.option("--fmin", type=Finite(min=0), default=d.fmin, show_default=True,
                     help="Lowest frequency of the mel filterbank, Hz."),
        click.option("--fmax", type=Finite(min=1), default=None, help="[default: Nyquist]"),
        click.option("--deltas", type=click.IntRange(0, 2), default=d.deltas, show_default=True,
                     help="Derivatives appended to the cepstra: 0 none, 1 Δ, 2 Δ and ΔΔ."),
        click.option("--feature-norm", type=FeatureNorms(), default=None,
                     help=f"Per-recording normalisation of the cepstra: cepstral mean (cmn), mean and variance "
                          f"(cmvn), feature warping over 3 s (warp) or none; several joined by + train one system "
                          f"each and average their scores [default: {d.norm}, two systems]."),
        click.option("--norm", "old_feature_norm", type=FeatureNorms(), default=None, hidden=True),
        click.option("--vad", type=click.Choice(VAD_METHODS), default=None,
                     help=f"Voice-activity detection: per-band excess over the noise floor (spectral), within "
                          f"--vad-range-db of the loudest frame (energy, before 0.3), or none [default: {d.vad}]."),
        click.option("--no-vad", is_flag=True, help="Keep every frame (same as --vad none)."),
        click.option("--vad-threshold", type=Finite(min=0, min_open=True), default=d.vad_threshold,
                     show_default=True, help="Spectral VAD: speech evidence that starts a speech region."),
        click.option("--vad-range-db", type=Finite(min=1), default=d.vad_range_db, show_default=True,
                     help="Energy VAD: keep frames within this many dB of the loudest."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def feature_fields(report, values: dict, base: FeatureConfig) -> dict:
    """The :class:`FeatureConfig` fields that feature option ``values`` (by parameter name) set.

    The two spellings of the normalisation become ``norm``, and ``--vad`` /
    ``--no-vad`` become ``vad``; where those options are left at None, ``base``
    holds the value. Every other option is a field of its own name.
    """
    paired = ("feature_norm", "old_feature_norm", "vad", "no_vad")
    fields = {name: value for name, value in values.items() if name not in paired}
    if "feature_norm" in values or "old_feature_norm" in values:
        fields["norm"] = deprecated_alias(report, "--norm", "--feature-norm", values.get("old_feature_norm"),
                                          values.get("feature_norm"), base.norm)
    if "vad" in values or "no_vad" in values:
        vad, no_vad = values.get("vad"), values.get("no_vad", False)
        if no_vad and vad not in (None, "none"):
            raise SpkverError(f"--no-vad contradicts --vad {vad}")
        fields["vad"] = "none" if no_vad else vad or base.vad
    return fields


def make_feature_config(report, **values) -> FeatureConfig:
    """The FeatureConfig of the feature options (``sample_rate`` already decided)."""
    try:
        return FeatureConfig(**feature_fields(report, values, FeatureConfig()))
    except ValueError as exc:
        raise SpkverError(f"invalid feature settings: {exc}") from None


def check_store_feature_options(report, stored: FeatureConfig, feature_values, store, use: str) -> None:
    """Feature options given for an existing feature store must agree with its settings.

    The store's settings are the defaults there: each option typed on the
    command line is applied to them, and any that changes one is refused,
    named with the store's value (``--n-ceps 13 where the store has --n-ceps 40``);
    ``use`` says what leaving them out does ("add to it", "train on it").
    """
    given = given_on_command_line(feature_values)
    changes = feature_fields(report, {name: feature_values[name] for name in given}, stored)
    if changes.get("fmax") == stored.sample_rate / 2 and stored.fmax is None:
        del changes["fmax"]  # the Nyquist frequency typed out is what the store's "none" means
    try:
        requested = replace(stored, **changes)
    except ValueError as exc:
        raise SpkverError(f"feature options do not fit the store's settings ({exc}); leave them out to {use} with "
                          "its own settings, or use another folder", store) from None
    have = stored.to_dict()
    differing = [(field, value) for field, value in requested.to_dict().items() if have[field] != value]
    if differing:
        def typed(field, value):  # as it would be typed: --n-ceps 13, --no-pitch, --feature-norm cmvn
            name = {"norm": "feature-norm"}.get(field, field.replace("_", "-"))
            return (f"--{name}" if value else f"--no-{name}") if isinstance(value, bool) else f"--{name} {value}"

        shown = ", ".join(f"{typed(field, value)} where the store has {typed(field, have[field])}"
                          for field, value in differing)
        raise SpkverError(f"feature store holds features of other settings ({shown}); leave those options out to "
                          f"{use} with its own settings, or use another folder", store)


def training_feature_config(report, items, feature_values) -> FeatureConfig:
    """Feature settings for training on ``items``: the options, with the sample rate chosen from the audio."""
    from spkver.features.config import default_feature_config

    if feature_values["sample_rate"] is None:
        default, why = default_feature_config(items)
        report.log(why)
        feature_values = dict(feature_values, sample_rate=default.sample_rate)
    return make_feature_config(report, **feature_values)


def feature_cache(report, cache_dir):
    """The feature cache folder to use: ``--cache-dir`` must work; the default may be skipped, with a word.

    Returns ``(folder or None, created)``: ``created`` when this run made the
    default folder, so that the command can say where it is and how big it grew.
    """
    from spkver.features.store import default_cache_dir, usable_cache_dir

    if cache_dir is not None:
        problem = usable_cache_dir(cache_dir)
        if problem:
            raise SpkverError(f"cannot use as a feature cache ({problem})", cache_dir)
        return cache_dir, False
    default = default_cache_dir()
    existed = default is not None and default.exists()
    problem = "there is no home folder (set SPKVER_CACHE_DIR)" if default is None else usable_cache_dir(default)
    if problem:
        report.warn(f"features are not cached: {problem}{'' if default is None else f' ({default})'}")
        return None, False
    return default, not existed


def store_options(func):
    """``--ubm`` and ``--models``, the two paths :func:`load_store` opens."""
    func = click.option("--models", "models_dir", required=True, type=click.Path(path_type=Path),
                        help="Speaker store folder: one <speaker>.npz per enrolled speaker.")(func)
    return click.option("--ubm", "ubm_path", required=True, type=click.Path(path_type=Path), help="The UBM.")(func)


def load_store(ubm_path, models_dir):
    ubm = load_model(ubm_path, kind="ubm")
    return ubm, SpeakerStore(models_dir)


def ivector_option(what: str):
    """``--ivector BACKEND.npz``: ``what`` says what the back-end does for the command."""
    return click.option("--ivector", "ivector_path", type=click.Path(path_type=Path),
                        help=f"i-vector back-end from `spkver train-ivector`: {what}")


def ivector_backend(path, ubm):
    """The back-end ``--ivector`` names (checked against ``ubm``), or None."""
    if path is None:
        return None
    from spkver.storage.ivectors import load_backend

    return load_backend(path, ubm)[0]


def calibration_option(path):
    """The calibration ``--calibration`` names, or None; scipy (its fitting) is imported only when one is given."""
    if path is None:
        return None
    from spkver.backend.calibration import load_calibration

    return load_calibration(path)


def warn_ignored(report, names, reason: str) -> None:
    """Warn about each option of ``names`` given on the command line that has no effect (``reason`` says why).

    An option that changes nothing in the combination given is never silent: the
    user believes it did something.
    """
    for name in given_on_command_line(names):
        report.warn(f"--{name.replace('_', '-')} has no effect {reason}")


def given_on_command_line(names) -> list:
    """Those of the parameter ``names`` the user typed (not left at their defaults), in order."""
    ctx = click.get_current_context()
    return [name for name in names if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]


def is_stdout(output) -> bool:
    """``-o -``: the output goes to standard output."""
    return str(output) == "-"


def refuse_to_replace(output, is_same_kind, what: str) -> None:
    """Before any work: an output file may replace only a file of its own kind (``-`` is stdout, always fine)."""
    from spkver.fileio import refuse_other_kind

    if not is_stdout(output):
        refuse_other_kind(output, is_same_kind, what)


def write_output(output, data: bytes) -> str:
    """Write a text output (scores, a calibration): ``-`` to stdout, a file atomically; returns where it went."""
    import sys

    from spkver.fileio import write_atomic

    if is_stdout(output):
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return "stdout"
    write_atomic(output, data)
    return str(output)


def map_options(applies_to: str = ""):
    """``--relevance`` and ``--adapt``: how speaker models are MAP-adapted (``applies_to`` prefixes their help)."""
    from spkver.gmm.map import ADAPT_MODES, DEFAULT_ADAPT, MAX_RELEVANCE

    def decorate(func):
        func = click.option("--adapt", type=click.Choice(ADAPT_MODES), default=DEFAULT_ADAPT, show_default=True,
                            help=f"{applies_to}adapt means (m), and weights (w) and/or variances (v).")(func)
        return click.option("--relevance", type=Finite(min=0, max=MAX_RELEVANCE), default=16.0, show_default=True,
                            help=f"{applies_to}MAP relevance factor: larger keeps models closer to the UBM "
                                 "(Reynolds 2000: 16).")(func)

    return decorate


# Speakers and their audio, for enroll's batches and train-ivector's labels.


def speakers_per_folder(report, root: Path, skip_bad: bool) -> dict:
    """Speaker id (a sub-folder's name) to the audio below that sub-folder."""
    from spkver.audio.sources import find_audio
    from spkver.storage.speakers import validate_speaker_id

    if not root.is_dir():
        raise SpkverError("no such folder" if not root.exists() else "is not a folder", root)
    speakers = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            validate_speaker_id(folder.name)
        except SpkverError as exc:
            raise SpkverError(f"sub-folder name is not a speaker id: {exc.message}", folder) from None
        try:
            speakers[folder.name] = find_audio([folder])
        except SpkverError as exc:
            if not skip_bad:
                raise
            report.warn(f"{exc}; speaker {folder.name!r} not enrolled")
    if not speakers:
        raise SpkverError("holds no sub-folders with audio (one per speaker, named after the speaker)", root)
    return speakers


def read_speaker_list(path: Path, data_dir) -> dict:
    """Speaker id to audio from 'speaker path-or-utterance-id' lines (utterance ids of ``data_dir``)."""
    from dataclasses import replace

    from spkver.audio.sources import find_audio, list_lines, read_data_dir
    from spkver.storage.speakers import validate_speaker_id

    utterances = {item.key: item for item in read_data_dir(data_dir).items} if data_dir is not None else {}
    speakers: dict[str, list] = {}
    seen: dict[tuple, int] = {}
    for number, line in list_lines(path, "speaker list"):
        fields = line.strip().split(None, 1)
        if len(fields) < 2:
            raise SpkverError(f"line {number}: expected 'speaker path-or-utterance-id'", path)
        name, target = fields
        try:
            validate_speaker_id(name)
            items = [utterances[target]] if target in utterances else find_audio([path.parent / target])
        except SpkverError as exc:
            raise SpkverError(f"line {number}: {exc}", path) from None
        for item in items:
            if (name, item) in seen:
                raise SpkverError(f"line {number}: repeats the entry of line {seen[name, item]}", path)
            seen[name, item] = number
            speakers.setdefault(name, []).append(replace(item, origin=item.origin or f"{path} line {number}"))
    if not speakers:
        raise SpkverError("speaker list names no speakers", path)
    return speakers


def speakers_of_data_dir(data_dir: Path) -> dict:
    """Speaker id to utterances of a data folder (its spk2utt or utt2spk)."""
    from spkver.audio.sources import read_data_dir

    data = read_data_dir(data_dir)
    if not data.speakers:
        raise SpkverError("data folder has neither spk2utt nor utt2spk: give --speaker to enroll all of it as one "
                          "speaker", data.root)
    return {name: data.items_of(name) for name in data.speakers}
