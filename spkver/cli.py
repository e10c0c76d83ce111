"""The ``spkver`` command line: parse, call the library, print.

Results go to stdout; logs and progress to stderr. Exit codes: 0 success,
2 bad usage or bad input (one line naming the file and the problem), 1 any
other failure.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import click
import numpy as np
from scipy.special import expit

from spkver import __version__
from spkver.adapt import ADAPT_MODES, DEFAULT_ADAPT
from spkver.audio import gather_inputs
from spkver.calibration import load_calibration
from spkver.errors import SpkverError, printable
from spkver.features import NORMALISATIONS, VAD_METHODS, FeatureConfig
from spkver.fileio import locked, os_problem
from spkver.metrics import bayes_threshold
from spkver.models import SpeakerStore, load_model, save_model, validate_speaker_id
from spkver.pipeline import COHORT_SEGMENTS


class Reporter:
    """Where logs and progress go: stderr, unless ``--quiet``."""

    def __init__(self, quiet=False):
        self.quiet = quiet

    def log(self, message):
        if not self.quiet:
            click.echo(printable(message), err=True)

    def warn(self, message):
        click.echo(f"spkver: warning: {printable(message)}", err=True)

    def progress(self, label):
        """A ``progress(iterator, length)`` wrapper drawing a bar over files."""

        def wrap(results, length):
            if self.quiet:
                yield from results
                return
            with click.progressbar(results, length=length, label=label, file=sys.stderr,
                                   show_pos=True) as bar:
                yield from bar

        return wrap

    def iteration(self):
        start = time.perf_counter()
        last = [start]

        def report(step, average, gain):
            now = time.perf_counter()
            gain_text = "" if gain is None else f"  gain {gain:+.2e}"
            self.log(f"EM iteration {step:3d}: average log-likelihood {average:.4f}{gain_text}  "
                     f"({now - last[0]:.2f} s)")
            last[0] = now

        return report


class SpkverGroup(click.Group):
    """Turns user errors into one line and exit code 2, and bugs into exit code 1."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:  # usage errors: one line, like every other error
            click.echo(f"spkver: error: {exc.format_message()} (spkver -h for help)", err=True)
            code = exc.exit_code
        except click.exceptions.Abort:
            click.echo("spkver: interrupted", err=True)
            code = 130
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SpkverError as exc:
            click.echo(f"spkver: error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("spkver: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except OSError as exc:  # the system's fault (disk full, read-only, permissions) reached us unwrapped
            where = printable(exc.filename) + ": " if exc.filename else ""
            click.echo(f"spkver: error: {where}{os_problem(exc)}", err=True)
            ctx.exit(2)
        except MemoryError:
            click.echo("spkver: error: out of memory (fewer --workers, or smaller inputs)", err=True)
            ctx.exit(2)
        except Exception as exc:  # noqa: BLE001 - last resort, shown without traceback
            if os.environ.get("SPKVER_DEBUG"):
                traceback.print_exc()
            click.echo(f"spkver: internal error: {type(exc).__name__}: {exc} "
                       "(set SPKVER_DEBUG=1 for a traceback)", err=True)
            ctx.exit(1)


@click.group(cls=SpkverGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spkver")
@click.option("-q", "--quiet", is_flag=True, help="No logs or progress on stderr.")
@click.pass_context
def cli(ctx, quiet):
    """GMM-UBM speaker verification: train-ubm, enroll, verify."""
    ctx.obj = Reporter(quiet)
    # Python's own warnings (NumPy's RuntimeWarnings, say) become one line like ours, and -q silences them.
    warnings.showwarning = lambda message, *args, **kwargs: None if quiet else ctx.obj.warn(str(message))


class Finite(click.FloatRange):
    """A float within optional bounds that is neither NaN nor infinite."""

    name = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def cap_workers(ctx, param, value):
    """--workers: at most the cores this process may use (more only add start-up time and memory)."""
    from spkver.corpus import default_workers

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
    """The AUDIO... arguments and the --list, --workers and --skip-bad options."""
    func = click.argument("audio", nargs=-1, type=click.Path(path_type=Path))(func)
    func = click.option("--list", "list_file", type=click.Path(path_type=Path),
                        help="File with one audio path per line, or Kaldi wav.scp lines.")(func)
    func = workers_option()(func)
    func = click.option("--skip-bad", is_flag=True,
                        help="Report unreadable or silent files and go on without them.")(func)
    return func


def top_c_option(func):
    return click.option("--top-c", type=click.IntRange(min=0), default=5, show_default=True,
                        help="Score only the C best UBM components per frame; 0 for all.")(func)


def calibration_options(func):
    func = click.option("--p-target", type=Finite(0, 1, min_open=True, max_open=True), default=0.01,
                        show_default=True, help="Prior of the target speaker for calibrated decisions.")(func)
    return click.option("--calibration", "calibration_path", type=click.Path(path_type=Path),
                        help="CAL.json from `spkver calibrate`: scores become log-likelihood ratios.")(func)


def decision_threshold(threshold, calibration, p_target):
    """--threshold if given; else the Bayes threshold for calibrated LLRs; else 0."""
    if threshold is not None:
        return threshold
    return bayes_threshold(p_target) if calibration is not None else 0.0


class AutoOrPositiveInt(click.ParamType):
    """``auto`` (None) or a positive integer."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither 'auto' nor a whole number", param, ctx)
        if number < 1:
            self.fail(f"{number} is not at least 1", param, ctx)
        return number


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
        click.option("--window-ms", type=Finite(min=1), default=d.window_ms, show_default=True),
        click.option("--hop-ms", type=Finite(min=1), default=d.hop_ms, show_default=True),
        click.option("--n-mels", type=click.IntRange(min=1), default=None,
                     help="Mel bands [default: one per 44 mel: 64 at 16 kHz, 48 at 8 kHz]."),
        click.option("--n-ceps", type=click.IntRange(min=1), default=None,
                     help="Cepstra kept, c0 included [default: 40, or all bands when fewer]."),
        click.option("--log-energy", is_flag=True, help="Replace c0 by the frame's log energy (HTK's _E)."),
        click.option("--fmin", type=Finite(min=0), default=d.fmin, show_default=True),
        click.option("--fmax", type=Finite(min=1), default=None, help="[default: Nyquist]"),
        click.option("--deltas", type=click.IntRange(0, 2), default=d.deltas, show_default=True),
        click.option("--feature-norm", type=click.Choice(NORMALISATIONS), default=None,
                     help=f"Per-recording feature normalisation: cepstral mean (cmn), mean and variance (cmvn), "
                          f"feature warping over 3 s (warp) or none [default: {d.norm}]."),
        click.option("--norm", "old_feature_norm", type=click.Choice(NORMALISATIONS), default=None, hidden=True),
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


def make_feature_config(report, sample_rate, feature_norm, old_feature_norm, vad, no_vad, **values) -> FeatureConfig:
    """The FeatureConfig of the feature options (``sample_rate`` already decided)."""
    values["norm"] = deprecated_alias(report, "--norm", "--feature-norm", old_feature_norm, feature_norm,
                                      FeatureConfig.norm)
    if no_vad and vad not in (None, "none"):
        raise SpkverError(f"--no-vad contradicts --vad {vad}")
    values["vad"] = "none" if no_vad else vad or FeatureConfig.vad
    try:
        return FeatureConfig(sample_rate=sample_rate, **values)
    except ValueError as exc:
        raise SpkverError(f"invalid feature settings: {exc}") from None


def training_feature_config(report, items, feature_values) -> FeatureConfig:
    """Feature settings for training on ``items``: the options, with the sample rate chosen from the audio."""
    from spkver.pipeline import default_feature_config

    if feature_values["sample_rate"] is None:
        default, why = default_feature_config(items)
        report.log(why)
        feature_values = dict(feature_values, sample_rate=default.sample_rate)
    return make_feature_config(report, **feature_values)


@cli.command("train-ubm")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="UBM file to write (.npz).")
@click.option("--components", type=AutoOrPositiveInt(), default="auto", show_default=True,
              help="Gaussians in the UBM; auto: the power of two nearest one per 800 speech frames, 16-2048.")
@click.option("--iterations", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--init", type=click.Choice(["kmeans", "split"]), default="kmeans", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--tol", type=Finite(min=0), default=1e-4, show_default=True,
              help="Stop when the relative gain in average log-likelihood is below this.")
@click.option("--allow-fewer-components", is_flag=True,
              help="With too little speech, train fewer components instead of failing.")
@click.option("--force", is_flag=True,
              help="Replace an existing OUTPUT (speakers enrolled from it must be re-enrolled).")
@click.option("--features", "features_dir", type=click.Path(path_type=Path),
              help="Train on a feature store made by `spkver extract` (instead of AUDIO).")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Keep extracted features here for re-runs [default: $SPKVER_CACHE_DIR or ~/.cache/spkver].")
@click.option("--no-cache", is_flag=True, help="Keep features in memory only.")
@click.option("--scheduler", default=None, help="Dask scheduler address: accumulate EM statistics on a cluster.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUTPUT's checkpoint.")
@click.option("--cohort-segments", type=click.IntRange(min=0), default=COHORT_SEGMENTS, show_default=True,
              help="3 s segments of the training speech kept in the UBM for `spkver score`'s S-norm; 0 for none.")
@feature_options
@audio_inputs
@click.pass_obj
def train_ubm_command(report, output, components, iterations, init, seed, tol, allow_fewer_components,
                      force, features_dir, cache_dir, no_cache, scheduler, resume, cohort_segments, audio, list_file,
                      workers, skip_bad, **feature_values):
    """Train a universal background model on AUDIO (files or folders).

    A checkpoint (OUTPUT.checkpoint.npz) is written after every EM iteration;
    --resume continues from it after a crash or Ctrl-C.
    """
    from spkver.pipeline import train_ubm

    if not output.parent.is_dir():
        raise SpkverError("output folder does not exist", output.parent)
    if not os.access(output.parent, os.W_OK):  # fail now, not after hours of EM
        raise SpkverError("output folder is not writable", output.parent)
    if output.exists() and not force:
        raise SpkverError("already exists; pass --force to replace it (speakers enrolled from it "
                          "will need re-enrolling)", output)
    if features_dir is not None and (audio or list_file):
        raise SpkverError("give either --features or AUDIO/--list, not both")
    items = config = None
    if features_dir is None:
        items = gather_inputs(audio, list_file)
        config = training_feature_config(report, items, feature_values)
        report.log(f"train-ubm: {len(items)} files, {config.dim}-dim features ({config.n_ceps} cepstra of "
                   f"{config.n_mels} mel bands at {config.sample_rate} Hz, VAD {config.vad})")
    cache = None if no_cache or features_dir is not None else feature_cache(report, cache_dir)
    model = train_ubm(items, config, components, iterations, init, seed, tol, workers=workers,
                      skip_bad=skip_bad, allow_fewer_components=allow_fewer_components,
                      on_skip=report.warn, progress=report.progress("features"),
                      on_iteration=report.iteration(), on_note=report.warn, cache_dir=cache,
                      features_dir=features_dir, scheduler=scheduler,
                      checkpoint=Path(f"{output}.checkpoint.npz"), resume=resume, on_log=report.log,
                      cohort_size=cohort_segments)
    with locked(output.parent / f".{output.name}.lock"):  # another run may have finished meanwhile
        if output.exists() and not force:
            raise SpkverError("was written meanwhile (another train-ubm run?); pass --force to replace it", output)
        save_model(output, model)
    summary = model.meta["training"]
    report.log(f"wrote {output}: {summary['components']} components, {summary['frames']} frames, "
               f"average log-likelihood {summary['average_log_likelihood']:.4f}")


@cli.command()
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Feature store folder.")
@feature_options
@audio_inputs
@click.pass_obj
def extract(report, output, audio, list_file, workers, skip_bad, **feature_values):
    """Extract features of AUDIO into a feature store (re-runs skip unchanged files)."""
    from spkver.featstore import FeatureStore

    items = gather_inputs(audio, list_file)
    store = FeatureStore(output, training_feature_config(report, items, feature_values))
    kept = store.extract(items, workers, skip_bad, report.warn, report.progress("features"), report.warn)
    frames = sum(len(a) for _, a in kept)
    report.log(f"{output}: {len(kept)} of {len(items)} files, {frames} speech frames, "
               f"{len(store.entries)} entries in the store")


def feature_cache(report, cache_dir):
    """The feature cache folder to use: ``--cache-dir`` must work; the default may be skipped, with a word."""
    from spkver.featstore import default_cache_dir, usable_cache_dir

    if cache_dir is not None:
        problem = usable_cache_dir(cache_dir)
        if problem:
            raise SpkverError(f"cannot use as a feature cache ({problem})", cache_dir)
        return cache_dir
    default = default_cache_dir()
    problem = "there is no home folder (set SPKVER_CACHE_DIR)" if default is None else usable_cache_dir(default)
    if problem:
        report.warn(f"features are not cached: {problem}{'' if default is None else f' ({default})'}")
        return None
    return default


def load_store(ubm_path, models_dir):
    ubm = load_model(ubm_path, kind="ubm")
    return ubm, SpeakerStore(models_dir)


@cli.command()
@click.option("--ubm", "ubm_path", required=True, type=click.Path(path_type=Path))
@click.option("--models", "models_dir", required=True, type=click.Path(path_type=Path),
              help="Speaker store folder (created if missing).")
@click.option("--speaker", required=True)
@click.option("--relevance", type=Finite(min=0), default=16.0, show_default=True)
@click.option("--adapt", type=click.Choice(ADAPT_MODES), default=DEFAULT_ADAPT, show_default=True,
              help="Adapt means (m), and weights (w) and/or variances (v).")
@click.option("--force", is_flag=True, help="Replace an enrolled speaker.")
@audio_inputs
@click.pass_obj
def enroll(report, ubm_path, models_dir, speaker, relevance, adapt, force, audio, list_file,
           workers, skip_bad):
    """Enroll SPEAKER by MAP-adapting the UBM to AUDIO."""
    from spkver.pipeline import enroll as enroll_speaker

    validate_speaker_id(speaker)
    ubm, store = load_store(ubm_path, models_dir)
    if store.exists(speaker) and not force:
        raise SpkverError(f"speaker {speaker!r} is already enrolled; pass --force to replace it",
                          store.path(speaker))
    items = gather_inputs(audio, list_file)
    model = enroll_speaker(ubm, items, speaker, relevance, adapt, workers, skip_bad,
                           on_skip=report.warn, progress=report.progress("features"), on_note=report.warn)
    with store.locked(speaker):
        if store.exists(speaker) and not force:
            raise SpkverError(f"speaker {speaker!r} was enrolled meanwhile; pass --force to replace it",
                              store.path(speaker))
        save_model(store.path(speaker), model)
    report.log(f"enrolled {speaker}: {model.meta['training']['frames']} speech frames from "
               f"{model.meta['training']['files']} files -> {store.path(speaker)}")


@cli.command()
@click.option("--ubm", "ubm_path", required=True, type=click.Path(path_type=Path))
@click.option("--models", "models_dir", required=True, type=click.Path(path_type=Path))
@click.option("--speaker", required=True, multiple=True, help="Claimed speaker (repeatable).")
@click.option("--threshold", type=Finite(), default=None,
              help="Accept when the score is at least this [default: 0, or the Bayes threshold "
                   "for --p-target with --calibration].")
@top_c_option
@calibration_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@audio_inputs
@click.pass_obj
def verify(report, ubm_path, models_dir, speaker, threshold, top_c, calibration_path, p_target, as_json, audio,
           list_file, workers, skip_bad):
    """Is AUDIO spoken by SPEAKER? Prints speaker, path, score, accept|reject."""
    from spkver.pipeline import verify as verify_trials

    for name in speaker:
        validate_speaker_id(name)
    ubm, store = load_store(ubm_path, models_dir)
    models = [store.load(name, ubm) for name in speaker]
    calibration = load_calibration(calibration_path) if calibration_path else None
    threshold = decision_threshold(threshold, calibration, p_target)
    items = gather_inputs(audio, list_file)
    trials = verify_trials(ubm, models, items, threshold, top_c, workers, skip_bad, on_skip=report.warn,
                           progress=report.progress("features"), calibration=calibration, on_note=report.warn)
    for t in trials:
        decision = "accept" if t.accepted else "reject"
        if as_json:
            record = {"speaker": t.speaker, "path": t.path, "score": round(t.score, 6),
                      "decision": decision, "frames": t.frames}
            if calibration is not None:
                record["posterior"] = round(float(expit(t.score + np.log(p_target / (1 - p_target)))), 6)
                record["p_target"] = p_target
            click.echo(json.dumps(record, allow_nan=False))
        else:
            click.echo(f"{printable(t.speaker)}\t{printable(t.path)}\t{t.score:.6f}\t{decision}")


@cli.command()
@click.argument("model_path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def info(model_path, as_json):
    """Describe a model file."""
    model = load_model(model_path)
    meta = dict(model.meta)
    meta.pop("feature_config", None)
    if as_json:
        meta.update(feature_config=model.feature_config.to_dict(), fingerprint=model.fingerprint,
                    components=model.gmm.n_components, dim=model.gmm.dim)
        click.echo(json.dumps(meta, indent=2, sort_keys=True, allow_nan=False))
        return
    click.echo(f"{printable(model_path)}: {model.kind} model, {model.gmm.n_components} components, "
               f"{model.gmm.dim} dimensions, format {meta.pop('format_version')}")
    click.echo(f"fingerprint: {model.fingerprint}")
    for key in ("speaker", "relevance", "adapt", "ubm_fingerprint"):
        if key in meta:
            click.echo(f"{key}: {printable(meta[key])}")
    training = {k: v for k, v in meta.get("training", {}).items() if k != "log_likelihood_history"}
    click.echo("training: " + printable(", ".join(f"{k}={v}" for k, v in training.items())))
    click.echo("features: " + ", ".join(f"{k}={v}" for k, v in model.feature_config.to_dict().items()))


@cli.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Where to write the demo's audio and models [default: a temporary folder].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.pass_obj
def demo(report, workdir, seed):
    """Synthesize speakers, train a UBM, enroll, verify and report the EER."""
    from spkver.demo import run_demo

    run_demo(workdir, seed, echo=click.echo, progress=report.progress)


from spkver import cli_eval  # noqa: E402,F401 - registers score, evaluate, calibrate, identify


def main():
    cli(prog_name="spkver")
