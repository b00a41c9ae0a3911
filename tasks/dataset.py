"""DatasetConstructorTask: ROOT ntuples -> shuffled, reweighted LZ4 training chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import DatasetDependency, setting
from tasks.generation import DEFAULT_SAMPLE_VERSION, GenerateSamplesTask
from tasks.remote import BatchWorkflow
from utils.settings import ExportSettings

STAGE_RESULT = "result.json"


class ExportFilesTask(DatasetDependency, law.LocalWorkflow, BatchWorkflow):
    """The per-file stage of the export as a law workflow: one branch (job) per input file
    runs the coffea processor and writes its staged rows; DatasetConstructorTask
    ``--stage-workflow local|htcondor|slurm`` then merges them on the submitting side.

    Outputs: ``stage_<branch>-<key>/result.json`` (+ the staged rows, removed after the
    merge). The key is a hash of what the branch's result depends on (its input file with
    size and modification time, the config fingerprint, the seed, debug), so the result of
    another file list, seed or config is never merged.
    """

    settings_class = ExportSettings
    coffea_worker = setting(ExportSettings, "coffea_worker", significant=False,
                            description="processes per job")
    executor = luigi.ChoiceParameter(default="iterative", choices=("iterative", "futures"),
                                     significant=False,
                                     description="coffea executor inside a job; default: "
                                     "iterative")
    # the merging task's executor (possibly dask) is not the one inside a job
    exclude_params_req_get = {"seed", "executor"}

    def _plan(self) -> list[tuple[str, str]]:
        from utils.dataset.export import ExportError, plan_inputs
        from utils.dataset.inputs import read_filelist

        if not self.filelist:
            raise ExportError("per-file export jobs (--stage-workflow) need --filelist")
        by_process = plan_inputs(self.load_config(), read_filelist(self.filelist), self.debug)
        return [(process, f) for process, files in by_process.items() for f in files]

    def create_branch_map(self) -> dict[int, tuple[str, str]]:
        return dict(enumerate(self._plan()))

    def stage_key(self) -> str:
        """Hash of everything the branch's staged rows depend on."""
        import hashlib
        import json

        from utils.dataset.directory import inputs_record

        _, path = self.branch_data
        payload = {"inputs": inputs_record([path]), "seed": self.settings.seed,
                   "config": self.load_config().fingerprint(), "debug": self.debug,
                   "branch": self.branch}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def output(self) -> law.LocalFileTarget:
        return self.local_target(f"stage_{self.branch}-{self.stage_key()}/{STAGE_RESULT}")

    def run(self) -> None:
        import shutil

        from utils.dataset.export import check_inputs, run_processor
        from utils.io import write_json

        config = self.load_config()
        process, path = self.branch_data
        staging = Path(self.output().path).parent
        for old in self.local_path().glob(f"stage_{self.branch}-*"):  # other inputs' results
            shutil.rmtree(old, ignore_errors=True)
        staging.mkdir(parents=True)
        entries = check_inputs(config, [path])
        result = run_processor(config, {process: [path]}, {path: self.branch}, staging,
                               seed=self.settings.seed, executor=self.executor,
                               workers=self.settings.coffea_worker, debug=self.debug)
        write_json(staging / STAGE_RESULT, {
            "staged": [[str(p), int(n)] for p, n in result["staged"]],
            "histogram": result.get("histogram"), "counts": result.get("counts", {}),
            "rows_per_file": result.get("rows_per_file", {}),
            "non_finite_branches": result.get("non_finite_branches", {}),
            "labels_per_process": result.get("labels_per_process", {}),
            "entries": entries})


class DatasetConstructorTask(DatasetDependency):
    """Export the jets of the input ROOT files into LZ4 chunks with pT-eta weights.

    Outputs (in ``DatasetConstructorTask/<config>[/debug]/<dataset_version>/``):
    ``file_<k>.lz4`` chunks, ``processed_files.txt``, ``histogram.npy``, ``weights.json``,
    ``dataset_info.json`` and ``parameters.json`` (with the inputs: paths, sizes and
    modification times). A published dataset that lost a chunk is an error, never rebuilt
    silently. With ``--legacy-dataset`` a dataset of the original b-hive is imported instead
    (:mod:`utils.dataset.legacy`: one chunk per original file, ``--chunk-size`` unused).
    """

    settings_class = ExportSettings
    chunk_size = setting(ExportSettings, "chunk_size", description="jets per output file "
                         "(the last file holds the remainder); default: the config's "
                         "chunk_size if it sets one (demo: 5000), else 100000, for a new "
                         "version; else the stored value")
    coffea_worker = setting(ExportSettings, "coffea_worker", significant=False)
    executor = setting(ExportSettings, "executor", significant=False)
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
    sample_version = luigi.OptionalParameter(
        default=None,
        description="config with built-in samples and no --filelist: version of the generated "
        f"sample (GenerateSamplesTask); default: {DEFAULT_SAMPLE_VERSION} for a new dataset, "
        "else the stored value (later commands need only --dataset-version)",
    )

    # the shuffling seed of a dataset is its own; a training's --seed is not forwarded
    exclude_params_req_get = {"seed"}

    def value(self, name: str) -> Any:
        """As for every task; ``sample_version``: given, else stored, else the default."""
        if name == "sample_version" and self.sample_version is None:
            stored = self.stored_record().get("parameters", {}).get("sample_version")
            return stored or DEFAULT_SAMPLE_VERSION
        return super().value(name)

    def resolved_values(self) -> dict[str, Any]:
        """As for every task, with the config's ``chunk_size`` (if it sets one) as the
        default of a new dataset."""
        values = super().resolved_values()
        stored = self.stored_record().get("parameters", {}).get("chunk_size")
        if self.chunk_size is None and stored is None and self.load_config().chunk_size:
            values["chunk_size"] = self.load_config().chunk_size
        return values

    def validate_parameters(self) -> None:
        from utils.settings import SettingsError

        if self.legacy_dataset and self.filelist:
            raise SettingsError("give either --filelist (ROOT files to export) or "
                                "--legacy-dataset (an original b-hive dataset to import), "
                                "not both")
        if self.legacy_dataset and self.stage_workflow != "none":
            raise SettingsError("--stage-workflow runs the export of ROOT files; a "
                                "--legacy-dataset is imported in this job")
        if self.legacy_dataset and \
                Path(self.legacy_dataset).expanduser().resolve() == self.local_path():
            raise SettingsError(f"--legacy-dataset {self.legacy_dataset} is the directory of "
                                "this dataset version itself: import it into another "
                                "--dataset-version")

    def directory(self) -> Any:
        from utils.dataset.directory import DatasetDirectory

        return DatasetDirectory(self.local_path())

    def holds_result(self) -> bool:
        return self.directory().published

    version_hint = ("--dataset-version; for the test dataset of InferenceTask and the tasks "
                    "after it --test-dataset-version (or --test-sample-version)")

    def check_requirements(self, seen: set[str] | None = None) -> None:
        """Nothing: a published dataset no longer depends on the samples or jobs it was
        made from."""

    def check_as_requirement(self, seen: set[str]) -> None:
        """For a task that needs this dataset: its parameters, not its inputs (a published
        dataset no longer depends on them; they may be gone), and whole chunks."""
        stored = self.stored_record()
        if stored:
            self._refuse_differences(self.record_differences(
                stored, self.parameters_record(with_inputs=False)))
            self.check_result()

    def check_result(self) -> None:
        from utils.settings import PARAMETERS_FILE

        # a published dataset must be whole (with its record): never rebuilt behind the back
        self.directory().check(required=(PARAMETERS_FILE,))

    def requires(self) -> dict[str, Any]:
        """Generated samples when the config defines them and no --filelist is given; the
        per-file export jobs with --stage-workflow."""
        if self.stage_workflow != "none":
            return {"stage": ExportFilesTask.req(self, workflow=self.stage_workflow,
                                                 seed=self.settings.seed)}
        if self.filelist or self.legacy_dataset:
            return {}
        samples = self.load_config().generated_samples or {}
        requirements = {}
        for process, settings in samples.items():
            kwargs = {k: settings[k] for k in ("n_files", "events_per_file", "pthat_min")
                      if k in settings}
            if self.debug:
                kwargs["n_files"] = 1
            requirements[process] = GenerateSamplesTask.req(
                self, process=process, sample_version=self.value("sample_version"),
                _prefer_cli={"n_files", "events_per_file", "pthat_min"}, **kwargs)
        return requirements

    def parameters_record(self, with_inputs: bool = True) -> dict[str, Any]:
        """The parameters, config fingerprint and class mapping; with --filelist also the
        inputs (compared with the recorded ones) unless not ``with_inputs``."""
        record = super().parameters_record()
        config = self.load_config()
        if self.filelist or self.legacy_dataset or not config.generated_samples:
            record["parameters"].pop("sample_version", None)  # only generated inputs have one
        if self.legacy_dataset:
            for unused in ("chunk_size", "seed"):  # an import keeps the original's files
                record["parameters"].pop(unused, None)
        if not with_inputs:
            return record
        if self.filelist:
            record["inputs"] = self._inputs_record(self.input_files())
        elif self.legacy_dataset:
            source = Path(self.legacy_dataset).expanduser().resolve()
            if source.is_dir() or not self.holds_result():  # else: imported, source gone
                record["inputs"] = self._legacy_inputs_record(source)
        return record

    def _legacy_inputs_record(self, source: Path) -> dict[str, Any]:
        from utils.dataset.directory import inputs_record
        from utils.dataset.legacy import DEBUG_FILES, legacy_files

        files = legacy_files(source)
        return inputs_record(map(str, files[:DEBUG_FILES] if self.debug else files))

    def _inputs_record(self, files: list[str]) -> dict[str, Any]:
        from utils.dataset.directory import inputs_record
        from utils.dataset.export import plan_inputs

        by_process = plan_inputs(self.load_config(), files, self.debug)
        return inputs_record([f for fs in by_process.values() for f in fs])

    def record_differences(self, stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
        from utils.dataset.directory import inputs_difference

        diffs = []
        if "inputs" in current and "inputs" in stored:
            difference = inputs_difference(stored["inputs"], current["inputs"])
            if difference:
                option = "legacy-dataset" if self.legacy_dataset else "filelist"
                diffs.append(f"inputs (--{option}): {difference}")
        rest = {k: v for k, v in current.items() if k != "inputs"}
        return diffs + super().record_differences(stored, rest)

    def output(self) -> dict[str, Any]:
        from utils.dataset.directory import HISTOGRAM, INFO, PROCESSED_FILES, SCALES, WEIGHTS

        outputs: dict[str, Any] = {
            "processed_files": self.local_target(PROCESSED_FILES),
            "histogram": self.local_target(HISTOGRAM),
            "weights": self.local_target(WEIGHTS),
            "info": self.local_target(INFO),
            "parameters": self.parameters_target(),
        }
        directory = self.directory()
        if directory.published:
            outputs["chunks"] = law.TargetCollection([self.local_target(p.name)
                                                      for p in directory.files()])
            if (directory.path / SCALES).is_file():  # datasets of older versions have none
                outputs["scales"] = self.local_target(SCALES)
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
                             out_dir, work, self.settings.chunk_size, self.settings.seed,
                             self.settings.coffea_worker, self.debug, start)

    def input_files(self) -> list[str]:
        from utils.dataset.export import ExportError
        from utils.dataset.inputs import read_filelist

        if not self.filelist and self.input() and "stage" not in self.input():
            return [target.path for sample in self.input().values()
                    for _, target in sorted(sample["collection"].targets.items())]
        if not self.filelist:
            raise ExportError(
                f"DatasetConstructorTask for config '{self.config}' needs --filelist (a text "
                "file listing the input ROOT files) or --legacy-dataset (a dataset of the "
                "original b-hive; for a test dataset: --test-filelist / --test-legacy-dataset)"
                f": dataset version '{self.dataset_version}' does not exist yet in "
                f"{self.local_path()}")
        return read_filelist(self.filelist)

    def run(self) -> None:
        from utils.dataset.directory import CHUNK_GLOB, PROCESSED_FILES
        from utils.dataset.export import export_dataset, report
        from utils.io import publishing
        from utils.settings import PARAMETERS_FILE

        config = self.load_config()
        if self.legacy_dataset:
            self._import_legacy(config)
            return
        files = self.input_files()
        out_dir = self.local_path()
        for stale in out_dir.glob(CHUNK_GLOB):  # chunks of a dataset whose listing is gone
            stale.unlink()
        # parameters.json before processed_files.txt: a published dataset has its record
        with publishing(out_dir, last=(PARAMETERS_FILE, PROCESSED_FILES)) as work:
            if self.stage_workflow != "none":
                summary = self._merge_stages(config, files, out_dir, work)
            else:
                summary = export_dataset(
                    config, files, out_dir, work, chunk_size=self.settings.chunk_size,
                    seed=self.settings.seed, executor=self.settings.executor,
                    workers=self.settings.coffea_worker, debug=self.debug,
                    scheduler_address=self.scheduler_address or None)
            record = self.parameters_record()
            record["inputs"] = self._inputs_record(files)
            self.write_parameters(work, record)
        if self.stage_workflow != "none":
            # the staged rows are merged: free the space (redone if the dataset is rebuilt)
            import shutil

            for target in self.input()["stage"]["collection"].targets.values():
                shutil.rmtree(Path(target.path).parent, ignore_errors=True)
        report(summary, config, out_dir, verbose=self.verbose)

    def _import_legacy(self, config: Any) -> None:
        """Import the original b-hive's dataset given by --legacy-dataset."""
        from utils.dataset.directory import CHUNK_GLOB, PROCESSED_FILES
        from utils.dataset.export import report
        from utils.dataset.legacy import import_legacy_dataset
        from utils.io import publishing
        from utils.settings import PARAMETERS_FILE

        out_dir = self.local_path()
        for stale in out_dir.glob(CHUNK_GLOB):
            stale.unlink()
        with publishing(out_dir, last=(PARAMETERS_FILE, PROCESSED_FILES)) as work:
            summary = import_legacy_dataset(config, self.legacy_dataset, out_dir, work,
                                            workers=self.settings.coffea_worker,
                                            debug=self.debug)
            self.write_parameters(work)
        report(summary, config, out_dir, verbose=self.verbose, verb="Imported")
