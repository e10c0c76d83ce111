"""``spkver cache info|clear``: the caches spkver keeps (features of training audio, raw cohort scores)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from spkver.backend.scorenorm import cohort_cache_dir
from spkver.errors import SpkverError
from spkver.features.store import cached_stores, default_cache_dir
from spkver.fileio import folder_usage, megabytes, os_problem

CACHE_DIR_HELP = "Feature cache folder [default: $SPKVER_CACHE_DIR, else $XDG_CACHE_HOME/spkver or ~/.cache/spkver]."
MODELS_HELP = "Also the cohort-score cache of this model store (MODELS/.cohort-cache); repeatable."


def which_caches(func):
    """``--cache-dir`` and ``--models``: the caches ``info`` and ``clear`` look at."""
    func = click.option("--models", "models_dirs", type=click.Path(path_type=Path), multiple=True,
                        help=MODELS_HELP)(func)
    return click.option("--cache-dir", type=click.Path(path_type=Path), default=None, help=CACHE_DIR_HELP)(func)


def feature_cache_dir(cache_dir: Path | None) -> Path:
    folder = cache_dir or default_cache_dir()
    if folder is None:
        raise SpkverError("there is no home folder: give --cache-dir, or set SPKVER_CACHE_DIR")
    return folder


def caches(cache_dir: Path | None, models_dirs) -> list[tuple[str, Path]]:
    """Every cache folder asked about, named for the report: feature stores, then cohort caches."""
    found = [("features", store) for store in cached_stores(feature_cache_dir(cache_dir))]
    for models in models_dirs:
        if not Path(models).is_dir():
            raise SpkverError("no such models folder", models)
        found.append(("cohort scores", cohort_cache_dir(models)))
    return found


@click.group("cache")
def cache_group():
    """Show or empty the caches spkver keeps.

    The features of training audio (so that re-running train-ubm skips
    extraction) and the raw cohort scores of score normalisation.

    \b
    Example:
      spkver cache info
      spkver cache clear --models models/
    """


@cache_group.command("info")
@which_caches
def info_command(cache_dir, models_dirs):
    """Where the caches are, and their sizes.

    One line per cache (kind, folder, files, size), then the total.

    \b
    Example:
      spkver cache info --models models/
    """
    total = 0
    click.echo(f"feature cache: {feature_cache_dir(cache_dir)}")
    for kind, folder in caches(cache_dir, models_dirs):
        files, size = folder_usage(folder)
        total += size
        click.echo(f"  {kind}\t{folder}\t{files} files\t{megabytes(size)}")
    click.echo(f"total: {megabytes(total)}")


@cache_group.command("clear")
@which_caches
def clear_command(cache_dir, models_dirs):
    """Remove cached features and cohort scores.

    Removes the cached features, and with --models the cached cohort scores
    of that model store; models are never touched. Only folders spkver made
    are removed (feature stores with an index.json, MODELS/.cohort-cache): a
    cache folder shared with other files keeps them.

    \b
    Example:
      spkver cache clear
    """
    freed = 0
    for kind, folder in caches(cache_dir, models_dirs):
        if not folder.is_dir() or folder.is_symlink():
            continue
        _, size = folder_usage(folder)
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            raise SpkverError(f"cannot remove the {kind} cache ({os_problem(exc)})", folder) from None
        freed += size
        click.echo(f"removed {folder} ({megabytes(size)})")
    click.echo(f"freed {megabytes(freed)}")
