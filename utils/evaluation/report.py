"""ROC and working-point reports from inference outputs (the work of ROCCurveTask,
WorkingPointTask and the comparison task; law-free)."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.config import label_to_class
from utils.evaluation.binned import binned_rates
from utils.evaluation.discriminants import Discriminant, available, by_name, softmax
from utils.evaluation.discriminants import score as discriminant_score
from utils.evaluation.roc import EvaluationError, roc_curve
from utils.evaluation.summary import Roc, discriminant_roc, window_mask
from utils.evaluation.working_points import jet_flavours, working_points, write_working_points
from utils.io import save_npz, write_json
from utils.progress import console

WP_DISCRIMINANTS = ("BvsAll", "BvsL")
# what an inference writes (utils.torch.inference) and :class:`Predictions` reads
PREDICTION_FILES = ("prediction.npy", "truth.npy", "kinematics.npy", "process.npy",
                    "output.root", "classes.json", "inference_time.json", "attack.json")


def file_tag(label: str) -> str:
    """A tagger label as a file-name part: ``Track counting (x)`` -> ``Track_counting_x``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")


@dataclass
class Predictions:
    """Inference outputs of one model on one test sample (``probs`` None: the test jets
    only, for reference-tagger evaluations)."""

    label: str
    class_names: list[str]
    probs: np.ndarray | None
    truth: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    process: np.ndarray
    observers: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: str | Path, label: str = "",
             observers: Sequence[str] = ()) -> Predictions:
        """Read ``prediction.npy``, ``truth.npy``, ``kinematics.npy``, ``process.npy``,
        ``classes.json`` and the ``observers`` from ``output.root`` of an InferenceTask."""
        directory = Path(directory)
        meta = json.loads((directory / "classes.json").read_text())
        kinematics = np.load(directory / "kinematics.npy")
        values: dict[str, np.ndarray] = {}
        if observers:
            import uproot

            with uproot.open(directory / "output.root") as f:
                tree = f["tree"]
                missing = [o for o in observers if o not in tree]
                if missing:
                    raise EvaluationError(f"{directory / 'output.root'} has no observers "
                                          f"{missing}")
                values = {k: np.asarray(v) for k, v in tree.arrays(list(observers),
                                                                   library="np").items()}
        return cls(label or meta.get("model_name", "model"), list(meta["class_names"]),
                   softmax(np.load(directory / "prediction.npy")), np.load(directory /
                                                                           "truth.npy"),
                   kinematics[:, 0], kinematics[:, 1], np.load(directory / "process.npy"),
                   values)

    @classmethod
    def from_dataset(cls, config: Any, files: Sequence[str | Path]) -> Predictions:
        """The jets of an exported dataset (truth classes from the config, pT, eta, process,
        observers) without model scores."""
        from utils.dataset.chunk_format import read_chunk

        mapping = label_to_class(config.classes)
        parts: dict[str, list[np.ndarray]] = {}
        observers: dict[str, list[np.ndarray]] = {}
        for path in files:  # only the few columns needed, chunk by chunk
            rows, layout = read_chunk(path)
            lookup = np.array([mapping.get(label, -1) for label in layout.truth_labels])
            parts.setdefault("truth", []).append(
                lookup[np.argmax(rows[:, layout.slice("truth")], axis=1)])
            parts.setdefault("pt", []).append(rows[:, layout.column(config.pt_key)])
            parts.setdefault("eta", []).append(rows[:, layout.column(config.eta_key)])
            parts.setdefault("process", []).append(rows[:, layout.process_column])
            for name, values in layout.decode_observers(rows).items():
                observers.setdefault(name, []).append(values.copy())
        if not parts:
            raise EvaluationError("the dataset has no chunk files")
        joined = {k: np.concatenate(v) for k, v in parts.items()}
        return cls("", list(config.classes), None, joined["truth"],
                   joined["pt"].astype(np.float64), joined["eta"].astype(np.float64),
                   joined["process"].astype(np.int64),
                   {k: np.concatenate(v) for k, v in observers.items()})

    def subset(self, mask: np.ndarray) -> Predictions:
        return Predictions(self.label, self.class_names,
                           None if self.probs is None else self.probs[mask], self.truth[mask],
                           self.pt[mask], self.eta[mask], self.process[mask],
                           {k: v[mask] for k, v in self.observers.items()})


def process_windows(config: Any, pred: Predictions) -> dict[str, Predictions]:
    """The jets of every process inside its evaluation window (processes without jets are
    reported and left out)."""
    out = {}
    for index, process in enumerate(config.processes):
        mask = (pred.process == index) & window_mask(pred.pt, pred.eta, process.pt_range,
                                                     process.eta_range)
        if not mask.any():
            console.print(f"[yellow]{process.name}: no test jets in the evaluation window; "
                          "skipped[/]")
            continue
        out[process.name] = pred.subset(mask)
    return out


def reference_label(label: str, model_labels: Collection[str]) -> str:
    """A reference tagger's label, told apart from a model of the same name (e.g. a DeepJet
    trained here next to the CMS DeepJet scores of a PFNano sample)."""
    return f"{label} (reference)" if label in model_labels else label


def usable_taggers(config: Any, pred: Predictions, model_labels: Collection[str] = ()
                   ) -> dict[str, dict[str, str]]:
    """The config's reference taggers (``{discriminant: {label: observer}}``) without those
    whose scores some of ``pred``'s jets lack (NaN: input files without the tagger's
    branches, e.g. RobustParTAK4 in NanoAOD v15); one line names each tagger left out.
    Labels equal to one of ``model_labels`` get " (reference)" (:func:`reference_label`)."""
    taggers = {disc: {reference_label(label, model_labels): observer
                      for label, observer in entries.items()}
               for disc, entries in (config.reference_taggers or {}).items()}
    lacking: dict[str, int] = {}
    for entries in taggers.values():
        for label, observer in entries.items():
            values = pred.observers.get(observer)
            n = 0 if values is None else int((~np.isfinite(values)).sum())
            if n:
                lacking[label] = max(lacking.get(label, 0), n)
    for label, n in lacking.items():
        console.print(f"[yellow]Reference tagger {label}: no score (NaN) for {n:,} of "
                      f"{len(pred.truth):,} jets, e.g. from input files without its branches; "
                      "left out[/]")
    return {disc: {label: observer for label, observer in entries.items()
                   if label not in lacking} for disc, entries in taggers.items()}


def reference_rocs(taggers: Mapping[str, Mapping[str, str]], disc: Discriminant,
                   pred: Predictions) -> dict[str, Roc]:
    """ROCs of the reference ``taggers`` of ``disc`` on the same jets as the model."""
    from utils.evaluation.discriminants import jets

    out = {}
    for label, observer in taggers.get(disc.name, {}).items():
        mask, is_signal = jets(disc, pred.truth, pred.class_names)
        fpr, tpr, thresholds = roc_curve(pred.observers[observer][mask], is_signal)
        n_signal = int(is_signal.sum())
        out[label] = Roc(label, fpr, tpr, thresholds, n_signal, len(is_signal) - n_signal)
    return out


def roc_report(config: Any, preds: Sequence[Predictions], out_dir: Path,
               binned: bool = True) -> dict[str, Any]:
    """ROC curves of every discriminant per process (all ``preds`` overlaid, plus the
    config's reference taggers), binned efficiencies at the working points, ``.npz`` curves
    of the first prediction and ``summary.json``
    (``{process: {discriminant: {label: {auc, eff_at_10pc, eff_at_1pc, eff_at_0p1pc, ...}}}}``,
    labels being the models and the reference taggers); returns the summary."""
    from utils.plotting.roc import plot_binned, plot_roc, window_label
    from utils.plotting.style import set_figure_label

    set_figure_label(config.figure_text)
    summary: dict[str, Any] = {}
    windows = [process_windows(config, p) for p in preds]
    taggers = usable_taggers(config, preds[0], [p.label for p in preds if p.probs is not None])
    for process in config.processes:
        if process.name not in windows[0]:
            continue
        title = window_label(process.name, process.pt_range, process.eta_range)
        summary[process.name] = {}
        for disc in available(preds[0].class_names):
            curves, entry = [], {}
            for pred, window in zip(preds, windows, strict=True):
                if pred.probs is None:
                    continue
                try:
                    roc = discriminant_roc(disc, window[process.name].probs,
                                           window[process.name].truth, pred.class_names)
                except EvaluationError as exc:
                    console.print(f"[yellow]{process.name} {disc.name} ({pred.label}): {exc}; "
                                  "no curve[/]")
                    entry[pred.label] = {"error": str(exc)}
                    continue
                entry[pred.label] = roc.summary()
                curves.append((pred.label, roc.fpr, roc.tpr, roc.auc))
                if pred is preds[0]:
                    save_npz(out_dir / f"roc_{process.name}_{disc.name}.npz", fpr=roc.fpr,
                             tpr=roc.tpr, thresholds=roc.thresholds, auc=roc.auc)
            if curves or preds[0].probs is None:
                try:
                    refs = reference_rocs(taggers, disc, windows[0][process.name])
                except EvaluationError as exc:
                    if preds[0].probs is None and taggers.get(disc.name):
                        console.print(f"[yellow]{process.name} {disc.name}: {exc}; no "
                                      "curve[/]")
                        entry = {"error": str(exc)}
                    refs = {}
                for label, roc in refs.items():
                    entry[label] = roc.summary()
                    curves.append((label, roc.fpr, roc.tpr, roc.auc))
                    save_npz(out_dir / f"roc_{process.name}_{disc.name}__{file_tag(label)}.npz",
                             fpr=roc.fpr, tpr=roc.tpr, thresholds=roc.thresholds, auc=roc.auc)
                if curves:
                    plot_roc(curves, out_dir / f"roc_{process.name}_{disc.name}", title,
                             disc.xlabel, disc.ylabel)
            if entry:
                summary[process.name][disc.name] = entry
            if binned and curves and preds[0].probs is not None and \
                    disc.name in WP_DISCRIMINANTS:
                _binned_report(config, disc, windows[0][process.name], process.name, title,
                               out_dir, plot_binned)
    write_json(out_dir / "summary.json", summary)
    return summary


def _binned_report(config: Any, disc: Discriminant, pred: Predictions, process: str,
                   title: str, out_dir: Path, plot_binned: Any) -> None:
    score = discriminant_score(disc, pred.probs, pred.class_names)
    flavour = jet_flavours(pred.truth, pred.class_names)
    try:
        wps = working_points(score, flavour, background="l")
    except EvaluationError:
        return
    wps = [wp for wp in wps if wp.name in ("L", "M", "T")]
    for variable, values, edges in (("pt", pred.pt, config.pt_bins),
                                    ("eta", pred.eta, config.eta_bins)):
        rates = binned_rates(values, score, flavour, edges, wps, variable=variable)
        eff = [r for r in rates if r.flavour == "b"]
        mis = [r for r in rates if r.flavour != "b"]
        plot_binned(eff, out_dir / f"eff_{process}_{disc.name}_vs_{variable}", title,
                    "b-jet efficiency")
        plot_binned(mis, out_dir / f"misid_{process}_{disc.name}_vs_{variable}", title,
                    "Mis-identification rate", log_y=True)


def working_point_report(config: Any, pred: Predictions, out_dir: Path,
                         discriminants: Sequence[str] = WP_DISCRIMINANTS
                         ) -> dict[str, dict[str, dict[str, list[dict[str, Any]]]]]:
    """Working points (L, M, T, XT, XXT light mis-id) per process for the discriminants, of
    the model and of the config's reference taggers on the same jets:
    ``wp_<process>_<disc>[__<tagger>].csv/.json``, a mis-id vs threshold figure of the model,
    and the report ``{process: {discriminant: {label: [working points]}}}``."""
    from utils.plotting.roc import window_label
    from utils.plotting.style import set_figure_label
    from utils.plotting.working_points import plot_working_points

    set_figure_label(config.figure_text)
    taggers = usable_taggers(config, pred, [pred.label])
    report: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    for name, window in process_windows(config, pred).items():
        process = next(p for p in config.processes if p.name == name)
        report[name] = {}
        for disc in (by_name(d) for d in discriminants):
            if disc not in available(pred.class_names):
                continue
            flavour = jet_flavours(window.truth, window.class_names)
            scores = {pred.label: discriminant_score(disc, window.probs, window.class_names)}
            for label, observer in taggers.get(disc.name, {}).items():
                scores[label] = window.observers[observer]
            for label, score in scores.items():
                try:
                    wps = working_points(score, flavour, background="l")
                except EvaluationError as exc:
                    console.print(f"[yellow]{name} {disc.name} ({label}): {exc}[/]")
                    continue
                base = out_dir / f"wp_{name}_{disc.name}"
                if label != pred.label:
                    base = base.with_name(f"{base.name}__{file_tag(label)}")
                write_working_points(wps, base)
                if label == pred.label:
                    plot_working_points(score, flavour, wps, base, disc.name, title=window_label(
                        name, process.pt_range, process.eta_range))
                report[name].setdefault(disc.name, {})[label] = [wp.to_dict() for wp in wps]
    return report


def headline(summary: Mapping[str, Any], discriminant: str = "BvsL"
             ) -> dict[str, dict[str, dict[str, Any]]]:
    """``{process: {label: {auc, eff_at_1pc}}}`` of one discriminant from a ROC summary."""
    return {process: {label: {"auc": values.get("auc"), "eff_at_1pc": values.get("eff_at_1pc")}
                      for label, values in discs.get(discriminant, {}).items()}
            for process, discs in summary.items()}

