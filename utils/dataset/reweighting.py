"""pT-eta reweighting of every truth label to the shape of a reference label.

For label c with histogram H_c and reference histogram H_r, the weight in a bin is
``(H_r / max H_r) / (H_c / max H_c)``, divided by its maximum so that weights lie in [0, 1]
and can be used directly as acceptance probabilities (rejection sampling). The reference
label gets weight 1 wherever it is populated; bins where the reference is empty get 0;
bins where the label itself is empty get 1 (no jets fall there).
"""

from __future__ import annotations

import numpy as np

from utils.errors import BHiveError


class ReweightingError(BHiveError, ValueError):
    """The histograms cannot define weights."""


def weight_tables(histogram: np.ndarray, reference: int) -> np.ndarray:
    """Per-label weight tables of shape ``(labels, pt bins, eta bins)`` with values in [0, 1].

    If the reference label has no jets at all the shapes cannot be matched: every weight is 1.
    """
    histogram = np.asarray(histogram, dtype=np.float64)
    if histogram.ndim != 3:
        raise ReweightingError(f"expected a (labels, pt, eta) histogram, got {histogram.shape}")
    if not 0 <= reference < len(histogram):
        raise ReweightingError(f"reference index {reference} out of range")
    ref = histogram[reference]
    if ref.max() <= 0:
        return np.ones_like(histogram)
    ref_shape = ref / ref.max()
    tables = np.ones_like(histogram)
    for i, h in enumerate(histogram):
        if h.max() <= 0:
            continue
        shape = h / h.max()
        ratio = np.divide(ref_shape, shape, out=np.zeros_like(shape), where=shape > 0)
        ratio /= ratio.max() if ratio.max() > 0 else 1.0
        tables[i] = np.where(shape > 0, ratio, 1.0)
    return tables


def bin_index(values: np.ndarray, edges: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """Bin of each value for half-open bins ``[edge_i, edge_i+1)``, clipped to the range."""
    edges = np.asarray(edges)
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def jet_weights(tables: np.ndarray, labels: np.ndarray, pt: np.ndarray, eta: np.ndarray,
                pt_bins: tuple[float, ...], eta_bins: tuple[float, ...]) -> np.ndarray:
    """Weight of every jet from its label and (pT, eta) bin."""
    return tables[labels, bin_index(pt, pt_bins), bin_index(eta, eta_bins)]
