"""InputHistogrammerTask -> HistogramPlotterTask: input feature distributions of a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import DatasetDependency
from tasks.dataset import DatasetConstructorTask

HISTOGRAMS = "histograms.npz"


class InputHistogrammerTask(DatasetDependency):
    """Histogram every input feature of an exported dataset per process and truth label.

    Binning from robust quantiles (0.5 %-99.5 %, integer features on integer bins) with
    under/overflow; candidate groups over their real candidates, plus their multiplicity.
    Output: ``histograms.npz`` (+ ``parameters.json``).
    """

    max_jets = luigi.IntParameter(default=-1, description="histogram at most this many jets "
                                  "(-1: all); default: -1")

    def requires(self) -> DatasetConstructorTask:
        return DatasetConstructorTask.req(self)

    def output(self) -> dict[str, law.LocalFileTarget]:
        return {"histograms": self.local_target(HISTOGRAMS),
                "parameters": self.parameters_target()}

    def run(self) -> None:
        from utils.dataset.directory import DatasetDirectory
        from utils.dataset.histograms import histogram_dataset
        from utils.progress import console, progress_bar

        config = self.load_config()
        dataset_dir = Path(self.input()["processed_files"].path).parent
        directory = DatasetDirectory(dataset_dir)
        files = directory.files()
        total = directory.n_jets
        if self.max_jets > 0:
            total = min(total, self.max_jets)
        with self.publishing(HISTOGRAMS) as work:
            with progress_bar("Histogramming", total=total, unit="jets") as bar:
                hists = histogram_dataset(files, self.max_jets if self.max_jets > 0 else None,
                                          process_names=config.process_names,
                                          progress=bar.advance)
            hists.save(work / HISTOGRAMS)
            self.write_parameters(work)
        console.print(f"{len(hists.histograms)} feature histograms -> {self.local_path()}")


class HistogramPlotterTask(DatasetDependency):
    """Plot the input histograms: per process and feature, the truth classes overlaid
    (normalised), ``<process>/<feature>.pdf/png``; ``--ylog`` for log y axes."""

    ylog = luigi.BoolParameter(default=False, description="logarithmic y axes (default: "
                               "automatic for steeply falling distributions)")
    max_jets = InputHistogrammerTask.max_jets

    def requires(self) -> InputHistogrammerTask:
        return InputHistogrammerTask.req(self)

    def store_parts(self) -> tuple[str, ...]:
        """``.../<dataset_version>[/ylog]``: linear and log plots side by side."""
        return super().store_parts() + (("ylog",) if self.ylog else ())

    def output(self) -> dict[str, Any]:
        return {"index": self.local_target("plots.txt"), "parameters": self.parameters_target()}

    def run(self) -> None:
        from utils.dataset.histograms import FeatureHistograms
        from utils.io import write_text
        from utils.plotting.histograms import plot_feature_histograms
        from utils.plotting.style import set_figure_label
        from utils.progress import console

        config = self.load_config()
        set_figure_label(config.figure_text)
        hists = FeatureHistograms.load(self.input()["histograms"].path)
        out_dir = self.local_path()
        with self.publishing("plots.txt") as work:
            paths = plot_feature_histograms(hists, work, classes=config.classes,
                                            log_y=True if self.ylog else None)
            write_text(work / "plots.txt", "".join(
                f"{out_dir / p.relative_to(work)}\n" for p in paths))
            self.write_parameters(work)
        console.print(f"{len(paths)} plots in {out_dir}")
