"""Loss and accuracy curves of a training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from utils.plotting.style import experiment_label, legend_beside, new_figure, save


def plot_history(history: Any, out_dir: str | Path) -> list[Path]:
    """``loss.{pdf,png}`` and ``accuracy.{pdf,png}``: training vs validation per epoch."""
    paths: list[Path] = []
    for key, ylabel, scale in (("loss", "Loss", 1.0), ("accuracy", "Accuracy [%]", 100.0)):
        fig, ax = new_figure()
        for part, label, style in (("train", "Training", "o-"),
                                   ("validation", "Validation", "s--")):
            values = np.asarray(getattr(history, part)[key], dtype=float) * scale
            ax.plot(np.arange(1, len(values) + 1), values, style, label=label)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        legend_beside(ax)
        ax.grid(alpha=0.3)
        experiment_label(ax)
        paths += save(fig, Path(out_dir) / key)
    return paths
