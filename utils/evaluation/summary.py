"""Per-(process, discriminant) summary: AUC and efficiencies at fixed mis-id rates.

Efficiencies are interpolated linearly on the exact ROC curve
(:func:`utils.evaluation.roc.efficiency_at_mistag`). A mis-id rate below ``1 / N_background``
is not resolved by the sample; its efficiency is reported as ``None``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from utils.evaluation.discriminants import Discriminant, available, by_name, evaluate
from utils.evaluation.roc import EvaluationError, efficiency_at_mistag, roc_curve
from utils.evaluation.roc import auc as area_under_curve

MISTAG_POINTS: dict[str, float] = {"eff_at_10pc": 0.1, "eff_at_1pc": 0.01,
                                   "eff_at_0p1pc": 0.001}
COLUMN_TITLES = {"auc": "AUC", "eff_at_10pc": "eff @ 10%", "eff_at_1pc": "eff @ 1%",
                 "eff_at_0p1pc": "eff @ 0.1%"}


@dataclass(frozen=True, eq=False)
class Roc:
    """Exact ROC curve of one discriminant (selection ``score >= threshold``)."""

    name: str
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_signal: int
    n_background: int

    @property
    def auc(self) -> float:
        return area_under_curve(self.fpr, self.tpr)

    def summary(self) -> dict[str, Any]:
        """``{auc, eff_at_10pc, eff_at_1pc, eff_at_0p1pc, n_signal, n_background}``."""
        return roc_summary(self.fpr, self.tpr, self.n_signal, self.n_background)


def roc_summary(fpr: np.ndarray, tpr: np.ndarray, n_signal: int, n_background: int
                ) -> dict[str, Any]:
    """AUC and signal efficiency at the :data:`MISTAG_POINTS` as a JSON-serialisable dict."""
    out: dict[str, Any] = {"auc": area_under_curve(fpr, tpr)}
    for key, mistag in MISTAG_POINTS.items():
        resolved = mistag * n_background >= 1
        out[key] = efficiency_at_mistag(fpr, tpr, mistag) if resolved else None
    out["n_signal"], out["n_background"] = int(n_signal), int(n_background)
    return out


def discriminant_roc(disc: Discriminant, probs: np.ndarray, truth: np.ndarray,
                     class_names: Sequence[str]) -> Roc:
    """ROC of ``disc`` on the jets of its signal and background flavours."""
    _, score, is_signal = evaluate(disc, probs, truth, class_names)
    try:
        fpr, tpr, thresholds = roc_curve(score, is_signal)
    except EvaluationError as exc:
        raise EvaluationError(f"{disc.name}: {exc}") from exc
    n_signal = int(is_signal.sum())
    return Roc(disc.name, fpr, tpr, thresholds, n_signal, len(is_signal) - n_signal)


def discriminant_rocs(probs: np.ndarray, truth: np.ndarray, class_names: Sequence[str],
                      names: Sequence[str] | None = None) -> dict[str, Roc]:
    """ROCs of the named discriminants (default: all the classes provide), by name."""
    discs = available(class_names) if names is None else [by_name(n) for n in names]
    missing = [d.name for d in discs if d not in available(class_names)]
    if missing:
        raise EvaluationError(f"discriminants {missing} need classes the model lacks; "
                              f"classes {list(class_names)} provide "
                              f"{[d.name for d in available(class_names)]}")
    return {d.name: discriminant_roc(d, probs, truth, class_names) for d in discs}


def window_mask(pt: np.ndarray, eta: np.ndarray, pt_range: tuple[float, float],
                eta_range: tuple[float, float]) -> np.ndarray:
    """Jets inside a process's evaluation window (half-open: ``low <= x < high``)."""
    pt, eta = np.asarray(pt), np.asarray(eta)
    return (pt >= pt_range[0]) & (pt < pt_range[1]) & (eta >= eta_range[0]) & \
        (eta < eta_range[1])


def summary_table(summary: Mapping[str, Mapping[str, Mapping[str, Any]]],
                  title: str = "Evaluation summary", width: int = 100) -> str:
    """Render ``{process: {discriminant: {auc, eff_at_...}}}`` as a plain-text table."""
    table = Table(title=title)
    table.add_column("Process")
    table.add_column("Discriminant")
    for key in COLUMN_TITLES:
        table.add_column(COLUMN_TITLES[key], justify="right")
    table.add_column("N sig / N bkg", justify="right")
    for process, discs in summary.items():
        for i, (disc, values) in enumerate(discs.items()):
            cells = [_format(values.get(k), 4 if k == "auc" else 3) for k in COLUMN_TITLES]
            counts = (f"{values['n_signal']:,} / {values['n_background']:,}"
                      if "n_signal" in values and "n_background" in values else "-")
            table.add_row(process if i == 0 else "", disc, *cells, counts,
                          end_section=i == len(discs) - 1)
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()


def _format(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"
