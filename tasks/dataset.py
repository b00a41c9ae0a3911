"""DatasetConstructorTask: ROOT ntuples -> shuffled, reweighted LZ4 training chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import DatasetDependency
from tasks.generation import GenerateSamplesTask


class DatasetConstructorTask(DatasetDependency):
    """Export the jets of the input ROOT files into LZ4 chunks with pT-eta weights.

    Outputs (in ``DatasetConstructorTask/<config>[/debug]/<dataset_version>/``):
    ``file_<k>.lz4`` chunks, ``processed_files.txt``, ``histogram.npy``, ``weights.json``,
    ``dataset_info.json`` and ``parameters.json``.
    """

    chunk_size = luigi.OptionalIntParameter(
        default=None,
        description="jets per output file (the last file holds the remainder); default: "
        "100000 for a new dataset, else the stored value",
    )
    coffea_worker = luigi.IntParameter(
        default=1,
        significant=False,
        description="parallel worker processes for the coffea processor and merging; "
        "default: 1",
    )
    executor = luigi.ChoiceParameter(
        default="futures",
        choices=("iterative", "futures", "dask"),
        significant=False,
        description="coffea executor: 'iterative' (in process), 'futures' (process pool of "
        "--coffea-worker workers) or 'dask' (dask.distributed: --scheduler-address, or a "
        "local cluster of --coffea-worker processes); default: futures",
    )
    scheduler_address = luigi.Parameter(
        default="",
        significant=False,
        description="--executor dask: address of a running dask scheduler (tcp://host:port); "
        "the workers must see the output directory. Default: start a local cluster",
    )

    stored_defaults = {**DatasetDependency.stored_defaults, "chunk_size": 100_000}
    # the shuffling seed of a dataset is its own; a training's --seed is not forwarded
    exclude_params_req_get = {"seed"}

    sample_version = luigi.Parameter(
        default="v1",
        description="config with built-in samples and no --filelist: version of the generated "
        "sample (GenerateSamplesTask); default: v1",
    )

    def requires(self) -> dict[str, Any]:
        """Generated samples when the config defines them and no --filelist is given."""
        if self.filelist:
            return {}
        samples = self.load_config().generated_samples or {}
        requirements = {}
        for process, settings in samples.items():
            kwargs = {k: settings[k] for k in ("n_files", "events_per_file", "pthat_min")
                      if k in settings}
            if self.debug:
                kwargs["n_files"] = 1
            requirements[process] = GenerateSamplesTask.req(
                self, process=process, sample_version=self.sample_version,
                _prefer_cli={"n_files", "events_per_file", "pthat_min"}, **kwargs)
        return requirements

    def parameters_record(self) -> dict[str, Any]:
        record = super().parameters_record()
        record["config_fingerprint"] = self.load_config().fingerprint()
        return record

    def output(self) -> dict[str, Any]:
        from utils.dataset.export import HISTOGRAM, INFO, PROCESSED_FILES, WEIGHTS

        outputs: dict[str, Any] = {
            "processed_files": self.local_target(PROCESSED_FILES),
            "histogram": self.local_target(HISTOGRAM),
            "weights": self.local_target(WEIGHTS),
            "info": self.local_target(INFO),
            "parameters": self.parameters_target(),
        }
        listing = Path(outputs["processed_files"].path)
        if listing.exists():
            outputs["chunks"] = law.TargetCollection([
                self.local_target(Path(line).name)
                for line in listing.read_text().splitlines() if line.strip()
            ])
        return outputs

    def input_files(self) -> list[str]:
        from utils.dataset.inputs import read_filelist

        if not self.filelist and self.input():
            return [target.path for sample in self.input().values()
                    for _, target in sorted(sample["collection"].targets.items())]
        if not self.filelist:
            raise ValueError(
                f"DatasetConstructorTask for config '{self.config}' needs --filelist (a text "
                "file listing the input ROOT files); if the dataset already exists, check "
                "--dataset-version and --config")
        return read_filelist(self.filelist)

    def run(self) -> None:
        from utils.dataset.export import PROCESSED_FILES, export_dataset
        from utils.io import publishing
        from utils.progress import console

        config = self.load_config()
        files = self.input_files()
        out_dir = self.local_path()
        for stale in out_dir.glob("file_*.lz4"):
            stale.unlink()
        with publishing(out_dir, last=(PROCESSED_FILES,)) as work:
            summary = export_dataset(
                config, files, out_dir, work, chunk_size=self.resolved("chunk_size"),
                seed=self.resolved("seed"),
                executor=self.executor, workers=self.coffea_worker, debug=self.debug,
                scheduler_address=self.scheduler_address or None)
            self.write_parameters(work)
        c = summary.counts
        console.print(
            f"[bold green]Exported {sum(summary.rows):,} jets[/] of {c['entries']:,} entries "
            f"into {len(summary.files)} file(s) in {summary.seconds:.1f} s "
            f"({c['entries'] / max(summary.seconds, 1e-9):,.0f} entries/s): "
            f"{c['out_of_window']:,} outside pT/eta bins, {c['no_label']:,} without label, "
            f"{c['non_finite']:,} with NaN/inf dropped, {c['multi_label']:,} with several "
            f"labels (first one kept)")
        console.print(f"  {out_dir}")
