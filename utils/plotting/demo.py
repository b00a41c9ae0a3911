"""The closing summary of the demo: a table of the headline numbers and the plot paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.evaluation.discriminants import by_name, evaluate
from utils.evaluation.roc import EvaluationError, roc_curve
from utils.evaluation.summary import summary_table
from utils.plotting.terminal import terminal_roc


def demo_summary(summary: dict[str, Any], pred: Any, roc_dir: Path, wp_dir: Path,
                 model: str) -> tuple[str, str]:
    """``(text, terminal_roc)``: AUC and efficiency at 1 % mis-id per process for BvsL and
    BvsAll (model and reference taggers), the figure paths, and a terminal BvsL ROC."""
    rows = {process: {f"{disc} ({label})": values for disc in ("BvsL", "BvsAll")
                      for label, values in discs.get(disc, {}).items() if "auc" in values}
            for process, discs in summary.items()}
    lines = [summary_table(rows, title=f"b-tagging performance of {model} on the test "
                           "sample", width=120)]
    lines.append("Figures:")
    for name in sorted(p.name for p in roc_dir.glob("roc_*_BvsL.png")) + \
            sorted(p.name for p in roc_dir.glob("roc_*_BvsAll.png")):
        lines.append(f"  {roc_dir / name}")
    lines.append(f"  {roc_dir}/eff_*_vs_pt.png, misid_*_vs_pt.png (binned at the working "
                 "points)")
    for name in sorted(p.name for p in wp_dir.glob("wp_*.png")):
        lines.append(f"  {wp_dir / name}")
    disc = by_name("BvsL")
    try:
        _, score, signal = evaluate(disc, pred.probs, pred.truth, pred.class_names)
        fpr, tpr, _ = roc_curve(score, signal)
        curves = {f"{model} BvsL (all test jets)": (tpr, fpr)}
        terminal = terminal_roc(curves, "b vs light ROC on the test sample")
    except EvaluationError:
        terminal = ""
    return "\n".join(lines) + "\n", terminal
