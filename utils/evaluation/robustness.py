"""Robustness report: how one or several trainings degrade under test attacks of growing
magnitude (the work of RobustnessTask; law-free).

Input: one :class:`AttackedRun` per (training, test attack, magnitude), magnitude 0 being the
nominal evaluation. Output: ``robustness.json``, ROC figures nominal vs attacked, AUC and
b-efficiency at 1 % light mis-id vs magnitude (all trainings in one figure) and a text table.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from utils.evaluation.discriminants import available, by_name
from utils.evaluation.report import Predictions, file_tag, process_windows
from utils.evaluation.roc import EvaluationError
from utils.evaluation.summary import discriminant_roc
from utils.io import write_json

DISCRIMINANTS = ("BvsL", "BvsAll")
NOMINAL = "nominal"


@dataclass
class AttackedRun:
    """Predictions of training ``entry`` on the test jets under ``attack`` at ``magnitude``
    (``nominal``, 0: no attack), with the input changes the attack made per group."""

    entry: str
    attack: str
    magnitude: float
    predictions: Predictions
    changes: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def _key(magnitude: float) -> str:
    return f"{magnitude:g}"


def robustness_summary(config: Any, runs: Sequence[AttackedRun]
                       ) -> tuple[dict[str, Any], dict[tuple, Any]]:
    """``{entry: {process: {disc: {attack: {magnitude: {auc, eff_at_1pc, ...}}}}}}`` (the
    nominal evaluation under ``nominal``/``0`` and as magnitude 0 of every attack) and the
    ROC curves by (entry, process, disc, attack, magnitude)."""
    results: dict[str, Any] = {}
    curves: dict[tuple, Any] = {}
    for run in runs:
        windows = process_windows(config, run.predictions)
        for process, window in windows.items():
            for name in DISCRIMINANTS:
                disc = by_name(name)
                if disc not in available(window.class_names):
                    continue
                try:
                    roc = discriminant_roc(disc, window.probs, window.truth, window.class_names)
                except EvaluationError:
                    continue
                curves[(run.entry, process, name, run.attack, run.magnitude)] = roc
                results.setdefault(run.entry, {}).setdefault(process, {}).setdefault(
                    name, {}).setdefault(run.attack, {})[_key(run.magnitude)] = roc.summary()
    for entry in results.values():  # the nominal point starts every attack's curve
        for discs in entry.values():
            for attacks in discs.values():
                nominal = attacks.get(NOMINAL, {}).get("0")
                for attack, points in attacks.items():
                    if attack != NOMINAL and nominal is not None:
                        points.setdefault("0", nominal)
    return results, curves


def robustness_report(config: Any, runs: Sequence[AttackedRun], out_dir: Path
                      ) -> dict[str, Any]:
    """Write ``robustness.json`` and the figures into ``out_dir``; return the report."""
    from utils.plotting.robustness import plot_metric_vs_magnitude
    from utils.plotting.roc import plot_roc, window_label
    from utils.plotting.style import set_figure_label

    set_figure_label(config.figure_text)
    results, curves = robustness_summary(config, runs)
    windows = {p.name: window_label(p.name, p.pt_range, p.eta_range) for p in config.processes}
    entries = list(dict.fromkeys(r.entry for r in runs))
    attacks = [a for a in dict.fromkeys(r.attack for r in runs) if a != NOMINAL]
    for entry in entries:
        for process, discs in results.get(entry, {}).items():
            for name in discs:
                disc = by_name(name)
                for attack in attacks:
                    shown = [(entry, process, name, NOMINAL, 0.0)] + sorted(
                        (k for k in curves if k[:4] == (entry, process, name, attack)),
                        key=lambda k: k[4])
                    rocs = [(f"{attack} $\\epsilon$ = {k[4]:g}" if k[3] != NOMINAL else
                             NOMINAL, curves[k]) for k in shown if k in curves]
                    if len(rocs) < 2:
                        continue
                    plot_roc([(label, roc.fpr, roc.tpr, roc.auc) for label, roc in rocs],
                             out_dir / f"roc_{file_tag(entry)}_{process}_{name}_{attack}",
                             f"{windows[process]}\n{entry}", disc.xlabel, disc.ylabel)
    for process in windows:
        for name in DISCRIMINANTS:
            series = {}
            for entry in entries:
                points = results.get(entry, {}).get(process, {}).get(name, {})
                for attack in attacks:
                    if attack in points:
                        series[(entry, attack)] = sorted(
                            (float(m), values) for m, values in points[attack].items())
            if series:
                plot_metric_vs_magnitude(series, out_dir / f"robustness_{process}_{name}",
                                         windows[process], name)
    changes: dict[str, Any] = {}
    for run in runs:
        if run.attack != NOMINAL:
            changes.setdefault(run.entry, {}).setdefault(run.attack, {})[
                _key(run.magnitude)] = dict(run.changes)
    report = {"entries": entries, "attacks": attacks,
              "magnitudes": sorted({r.magnitude for r in runs if r.attack != NOMINAL}),
              "results": results, "input_changes": changes}
    write_json(out_dir / "robustness.json", report)
    return report


def robustness_table(report: Mapping[str, Any], title: str = "Robustness",
                     width: int = 140) -> str:
    """Text table: per training, attack and magnitude the TT/QCD/... BvsL and BvsAll AUC,
    the BvsL b-efficiency at 1 % light mis-id and the mean |change| of the moved inputs (in
    units of the feature spreads; the largest over the input groups)."""
    results = report["results"]
    processes = list(dict.fromkeys(p for entry in results.values() for p in entry))
    table = Table(title=title)
    for column in ("Training", "Attack", "Magnitude"):
        table.add_column(column)
    for process in processes:
        table.add_column(f"{process} BvsL AUC", justify="right")
        table.add_column(f"{process} BvsAll AUC", justify="right")
        table.add_column(f"{process} b-eff @ 1%", justify="right")
    table.add_column("mean |dx| / spread", justify="right")
    for entry in report["entries"]:
        rows = [(NOMINAL, "0")] + [(a, _key(m)) for a in report["attacks"]
                                   for m in report["magnitudes"]]
        for i, (attack, magnitude) in enumerate(rows):
            cells = []
            for process in processes:
                discs = results.get(entry, {}).get(process, {})
                bvsl = discs.get("BvsL", {}).get(attack, {}).get(magnitude, {})
                bvsall = discs.get("BvsAll", {}).get(attack, {}).get(magnitude, {})
                cells += [_number(bvsl.get("auc"), 4), _number(bvsall.get("auc"), 4),
                          _number(bvsl.get("eff_at_1pc"), 3)]
            groups = report["input_changes"].get(entry, {}).get(attack, {}).get(magnitude, {})
            moved = [v["mean_abs_change"] for v in groups.values()
                     if v.get("fraction_changed", 0) > 0]
            change = f"{max(moved):.3g}" if moved else "-"
            if all(c == "-" for c in cells):
                continue
            table.add_row(entry if i == 0 else "", attack, magnitude, *cells, change,
                          end_section=i == len(rows) - 1)
    buffer = io.StringIO()
    Console(file=buffer, width=width, force_terminal=False, color_system=None).print(table)
    return buffer.getvalue()


def _number(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
