"""DatasetConstructorTask: ROOT ntuples -> shuffled, reweighted LZ4 training chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import DatasetDependency
from tasks.generation import GenerateSamplesTask
from tasks.remote import BatchWorkflow

STAGE_RESULT = "result.json"


class ExportFilesTask(DatasetDependency, law.LocalWorkflow, BatchWorkflow):
    """The per-file stage of the export as a law workflow: one branch (job) per input file
    runs the coffea processor and writes its staged rows; DatasetConstructorTask
    ``--stage-workflow local|htcondor|slurm`` then merges them on the submitting side.

    Outputs: ``stage_<branch>/result.json`` (+ the staged rows, removed after the merge).
    """

    coffea_worker = luigi.IntParameter(default=1, significant=False,
                                       description="processes per job; default: 1")
    executor = luigi.ChoiceParameter(default="iterative", choices=("iterative", "futures"),
                                     significant=False,
                                     description="coffea executor inside a job; default: "
                                     "iterative")
    exclude_params_req_get = {"seed"}

    def _plan(self) -> list[tuple[str, str]]:
        from utils.dataset.export import plan_inputs
        from utils.dataset.inputs import read_filelist

        if not self.filelist:
            raise ValueError("per-file export jobs (--stage-workflow) need --filelist")
        by_process = plan_inputs(self.load_config(), read_filelist(self.filelist), self.debug)
        return [(process, f) for process, files in by_process.items() for f in files]

    def create_branch_map(self) -> dict[int, tuple[str, str]]:
        return dict(enumerate(self._plan()))

    def output(self) -> law.LocalFileTarget:
        return self.local_target(f"stage_{self.branch}/{STAGE_RESULT}")

    def run(self) -> None:
        import shutil

        from utils.dataset.export import check_inputs, run_processor
        from utils.io import write_json

        config = self.load_config()
        process, path = self.branch_data
        staging = self.local_path(f"stage_{self.branch}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        entries = check_inputs(config, [path])
        result = run_processor(config, {process: [path]}, {path: self.branch}, staging,
                               seed=self.resolved("seed"), executor=self.executor,
                               workers=self.coffea_worker, debug=self.debug)
        write_json(staging / STAGE_RESULT, {
            "staged": [[str(p), int(n)] for p, n in result["staged"]],
            "histogram": result["histogram"], "counts": result["counts"],
            "rows_per_file": result["rows_per_file"], "entries": entries})


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
    stage_workflow = luigi.ChoiceParameter(
        default="none",
        choices=("none", "local", "htcondor", "slurm"),
        significant=False,
        description="run the per-file processing as law workflow jobs (ExportFilesTask, one "
        "per file: local, htcondor or slurm; see its --ExportFilesTask-* options) and merge "
        "here; default: none (process in this job with --executor)",
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
        """Generated samples when the config defines them and no --filelist is given; the
        per-file export jobs with --stage-workflow."""
        if self.stage_workflow != "none":
            return {"stage": ExportFilesTask.req(self, workflow=self.stage_workflow,
                                                 seed=self.resolved("seed"))}
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
        config = self.load_config()
        record["config_fingerprint"] = config.fingerprint()
        if self.filelist or not config.generated_samples:  # only generated inputs have one
            record["parameters"].pop("sample_version", None)
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

    def _merge_stages(self, config: Any, files: list[str], out_dir: Path, work: Path) -> Any:
        """Merge the staged rows of the ExportFilesTask jobs."""
        import json
        import time

        from utils.dataset.export import finish_export, plan_inputs

        start = time.perf_counter()
        targets = self.input()["stage"]["collection"].targets
        results = [json.loads(Path(targets[b].path).read_text()) for b in sorted(targets)]
        entries = {f: n for result in results for f, n in result["entries"].items()}
        return finish_export(config, results, plan_inputs(config, files, self.debug), entries,
                             out_dir, work, self.resolved("chunk_size"), self.resolved("seed"),
                             self.coffea_worker, self.debug, start)

    def input_files(self) -> list[str]:
        from utils.dataset.inputs import read_filelist

        if not self.filelist and self.input() and "stage" not in self.input():
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
            if self.stage_workflow != "none":
                summary = self._merge_stages(config, files, out_dir, work)
            else:
                summary = export_dataset(
                    config, files, out_dir, work, chunk_size=self.resolved("chunk_size"),
                    seed=self.resolved("seed"),
                    executor=self.executor, workers=self.coffea_worker, debug=self.debug,
                    scheduler_address=self.scheduler_address or None)
            self.write_parameters(work)
        if self.stage_workflow != "none":
            # the staged rows are merged: free the space (redone if the dataset is rebuilt)
            import shutil

            for target in self.input()["stage"]["collection"].targets.values():
                shutil.rmtree(Path(target.path).parent, ignore_errors=True)
        c = summary.counts
        console.print(
            f"[bold green]Exported {sum(summary.rows):,} jets[/] of {c['entries']:,} entries "
            f"into {len(summary.files)} file(s) in {summary.seconds:.1f} s "
            f"({c['entries'] / max(summary.seconds, 1e-9):,.0f} entries/s): "
            f"{c['out_of_window']:,} outside pT/eta bins, {c['no_label']:,} without label, "
            f"{c['non_finite']:,} with NaN/inf dropped, {c['multi_label']:,} with several "
            f"labels (first one kept)")
        console.print(f"  {out_dir}")
