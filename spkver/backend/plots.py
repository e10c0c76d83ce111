"""DET curves (needs the optional ``[plot]`` extra: matplotlib)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from spkver.backend.metrics import det_points, eer
from spkver.errors import SpkverError
from spkver.fileio import write_atomic

TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]


def det_plot(curves, path, title="DET curve"):
    """Draw one DET curve per ``(label, target_scores, nontarget_scores)`` on normal-deviate axes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpkverError("--det needs matplotlib: pip install 'spkver[plot]'") from None
    from scipy.special import ndtri  # the normal deviate of a probability

    clip = 1e-4
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for label, tar, non in curves:
        p_miss, p_fa = det_points(tar, non)
        rate = eer(tar, non)
        x = ndtri(np.clip(p_fa, clip, 1 - clip))
        y = ndtri(np.clip(p_miss, clip, 1 - clip))
        (line,) = ax.plot(x, y, label=f"{label} (EER {100 * rate:.2f}%)")
        ax.plot(ndtri(max(rate, clip)), ndtri(max(rate, clip)), "o", color=line.get_color())
    ticks = ndtri(TICKS)
    labels = [f"{100 * t:g}" for t in TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlim(ndtri(0.0005), ndtri(0.5))
    ax.set_ylim(ndtri(0.0005), ndtri(0.5))
    ax.plot([-5, 5], [-5, 5], ":", color="grey", linewidth=0.8)
    ax.set_xlabel("false-alarm probability (%)")
    ax.set_ylabel("miss probability (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    image = io.BytesIO()
    try:
        fig.savefig(image, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=110)
    except ValueError as exc:  # a format matplotlib cannot write
        raise SpkverError(f"cannot draw the plot in this format ({exc}); use .png, .pdf or .svg", path) from None
    finally:
        plt.close(fig)
    write_atomic(path, image.getvalue())  # like every file spkver writes: complete, or not there
