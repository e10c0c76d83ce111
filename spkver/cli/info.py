"""``info`` (describe a model file) and ``demo`` (the whole pipeline on synthetic voices)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from spkver.errors import printable
from spkver.storage.models import load_model


@click.command("info")
@click.argument("model_path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def info_command(model_path, as_json):
    """Describe a model file (UBM, speaker, or i-vector back-end).

    \b
    Example:
      spkver info models/alice.npz
    """
    from spkver.storage.ivectors import BACKEND_KIND, load_backend
    from spkver.storage.models import read_kind

    if read_kind(model_path) == BACKEND_KIND:
        backend, meta = load_backend(model_path)
        if as_json:
            click.echo(json.dumps(meta, indent=2, sort_keys=True, allow_nan=False))
            return
        click.echo(f"{printable(model_path)}: i-vector back-end, rank {backend.tv.rank}, "
                   f"{backend.tv.n_components} components, {backend.tv.dim} dimensions, {backend.scoring} scoring, "
                   f"format {meta['format_version']}")
        for key in ("ubm_fingerprint", "extractor_fingerprint"):
            click.echo(f"{key}: {printable(meta[key])}")
        training = {k: v for k, v in meta.get("training", {}).items() if k != "log_likelihood_history"}
        click.echo("training: " + printable(", ".join(f"{k}={v}" for k, v in training.items())))
        return
    model = load_model(model_path)
    meta = dict(model.meta)
    meta.pop("feature_config", None)
    if as_json:
        meta.update(feature_config=model.feature_config.to_dict(), fingerprint=model.fingerprint,
                    components=model.gmm.n_components, dim=model.gmm.dim, systems=len(model.gmms),
                    feature_dim=model.feature_config.dim,
                    channel_factors=model.channels[0].shape[2] if model.channels else 0)
        click.echo(json.dumps(meta, indent=2, sort_keys=True, allow_nan=False))
        return
    systems = model.feature_config.norms
    shape = f"{model.gmm.n_components} components, {model.gmm.dim} dimensions"
    if len(systems) > 1:
        shape = f"{len(systems)} systems ({', '.join(systems)}) of {shape} each"
    click.echo(f"{printable(model_path)}: {model.kind} model, {shape}, format {meta.pop('format_version')}")
    click.echo(f"fingerprint: {model.fingerprint}")
    for key in ("speaker", "relevance", "adapt", "ubm_fingerprint", "ivector_extractor"):
        if key in meta:
            click.echo(f"{key}: {printable(meta[key])}")
    training = {k: v for k, v in meta.get("training", {}).items()
                if k not in ("log_likelihood_history", "systems", "channels")}
    click.echo("training: " + printable(", ".join(f"{k}={v}" for k, v in training.items())))
    if model.channels:
        learnt = meta.get("training", {}).get("channels")
        source = (f" (learnt from {learnt.get('speakers')} speakers, {learnt.get('recordings')} recordings"
                  + (f", {learnt['iterations']} EM iterations" if "iterations" in learnt else "") + ")"
                  if isinstance(learnt, dict) else "")
        click.echo(printable(f"channel factors: {model.channels[0].shape[2]} per system{source}"))
    systems_trained = meta.get("training", {}).get("systems")
    for number, system in enumerate(systems_trained if isinstance(systems_trained, list) else [], start=1):
        if isinstance(system, dict):  # its normalisation first, as the features line names the systems
            shown = {k: v for k, v in system.items() if k not in ("log_likelihood_history", "norm")}
            click.echo(printable(f"system {number} ({system.get('norm')}): "
                                 + ", ".join(f"{k}={v}" for k, v in shown.items())))
    click.echo("features: " + ", ".join(f"{k}={v}" for k, v in model.feature_config.to_dict().items()))


@click.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Where to write the demo's audio and models [default: a temporary folder].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the synthetic voices and of the UBM.")
@click.pass_obj
def demo_command(report, workdir, seed):
    """Synthesize speakers, train a UBM, enroll, verify and report the EER.

    \b
    Example:
      spkver demo --workdir spkver-demo
    """
    from spkver.demo import run_demo

    run_demo(workdir, seed, echo=click.echo, progress=report.progress)
