"""ROC curves in the terminal (plotext)."""

from __future__ import annotations

import numpy as np


def terminal_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str,
                 width: int = 90, height: int = 25) -> str:
    """Render ``{label: (efficiency, mis-id)}`` with a log mis-id axis; return the text."""
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    for label, (eff, mis) in curves.items():
        keep = mis > 0
        plt.plot(eff[keep].tolist(), np.log10(mis[keep]).tolist(), label=label, marker="braille")
    plt.xlim(0, 1)
    plt.ylim(-4, 0)
    plt.yticks([-4, -3, -2, -1, 0], ["1e-4", "1e-3", "1e-2", "0.1", "1"])
    plt.xlabel("signal efficiency")
    plt.ylabel("mis-id rate")
    plt.title(title)
    return plt.build()
