"""Exact ROC curves and AUC from sorted scores (no binning)."""

from __future__ import annotations

import numpy as np

from utils.errors import BHiveError


class EvaluationError(BHiveError, ValueError):
    """A curve cannot be computed (e.g. no signal or no background jets)."""


def roc_curve(score: np.ndarray, is_signal: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``: selecting ``score >= threshold`` for every distinct score
    (descending), starting from the point (0, 0) at threshold +inf."""
    score = np.asarray(score, dtype=np.float64)
    is_signal = np.asarray(is_signal, dtype=bool)
    n_sig, n_bkg = int(is_signal.sum()), int((~is_signal).sum())
    if n_sig == 0 or n_bkg == 0:
        raise EvaluationError(f"need signal and background jets, got {n_sig} signal and "
                              f"{n_bkg} background")
    order = np.argsort(-score, kind="mergesort")
    score, is_signal = score[order], is_signal[order]
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # last index of each value
    tps = np.cumsum(is_signal)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / n_sig]
    fpr = np.r_[0.0, fps / n_bkg]
    thresholds = np.r_[np.inf, score[last]]
    return fpr, tpr, thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids)."""
    return float(np.trapezoid(tpr, fpr))


def efficiency_at_mistag(fpr: np.ndarray, tpr: np.ndarray, mistag: float) -> float:
    """Signal efficiency at a background mis-id rate, interpolated linearly on the curve."""
    return float(np.interp(mistag, fpr, tpr))
