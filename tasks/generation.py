"""GenerateSamplesTask: built-in ttbar / QCD samples (Pythia8 + FastJet + toy detector)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import BaseTask
from tasks.remote import BatchWorkflow

DEFAULT_EVENTS = {"TT": 1200, "QCD": 4000}
FILELIST = "filelist.txt"


class GenerateSamplesTask(BaseTask, law.LocalWorkflow, BatchWorkflow):
    """Generate flat DeepNTuples-style ROOT files; one workflow branch per file.

    Outputs in ``GenerateSamplesTask/<sample_version>/<process>/``: ``<process>_<i>.root`` and
    ``filelist.txt`` (written when the last file is complete). Branches run in parallel with
    law's ``--workers N`` (``--workflow local``) or as batch jobs (``--workflow htcondor`` or
    ``slurm``).
    """

    process = luigi.ChoiceParameter(
        choices=("TT", "QCD"),
        description="physics process: TT (ttbar, 13.6 TeV) or QCD (hard QCD with --pthat-min)",
    )
    n_files = luigi.IntParameter(
        default=4,
        description="number of files (workflow branches); default: 4",
    )
    events_per_file = luigi.OptionalIntParameter(
        default=None,
        description="events per file; default: 1200 for TT (~6700 jets), 4000 for QCD "
        "(~6500 jets)",
    )
    pthat_min = luigi.FloatParameter(
        default=30.0,
        description="QCD only: minimum pT-hat of the hard scattering in GeV; default: 30",
    )
    sample_version = luigi.Parameter(
        default="v1",
        description="version tag of the generated sample (a directory name); default: v1",
    )

    stored_defaults = {**BaseTask.stored_defaults, "events_per_file": None}
    exclude_params_req_get = {"seed"}

    def store_parts(self) -> tuple[str, ...]:
        return super().store_parts() + (self.sample_version, self.process)

    def create_branch_map(self) -> dict[int, int]:
        if self.n_files < 1:
            raise ValueError(f"--n-files must be >= 1, got {self.n_files}")
        return {i: i for i in range(self.n_files)}

    @property
    def n_events(self) -> int:
        return int(self.resolved("events_per_file"))

    def resolved(self, name: str) -> Any:
        value = super().resolved(name)
        if name == "events_per_file" and value is None:
            return DEFAULT_EVENTS[self.process]
        return value

    def output(self) -> law.LocalFileTarget:
        return self.local_target(f"{self.process}_{self.branch}.root")

    def workflow_complete(self) -> Any:
        self.check_parameters()  # the workflow's completeness is law's; mismatches still raise
        return NotImplemented

    def filelist_target(self) -> law.LocalFileTarget:
        return self.local_target(FILELIST)

    def parameters_record(self) -> dict[str, Any]:
        record = super().parameters_record()
        if self.process != "QCD":
            record["parameters"].pop("pthat_min", None)
        return record

    def branch_seed(self) -> int:
        """Seed of this file from (--seed, sample version, process, branch): distinct per file
        and per sample version (a test sample gets other seeds than the training sample)."""
        import zlib

        import numpy as np

        from utils.generation.generator import PROCESSES, SEED_MAX

        state = np.random.SeedSequence([self.resolved("seed"),
                                        zlib.crc32(self.sample_version.encode()),
                                        PROCESSES.index(self.process), self.branch])
        return int(state.generate_state(1)[0]) % (SEED_MAX + 1)

    def run(self) -> None:
        from utils.generation import generate_file
        from utils.progress import console, progress_bar

        path = Path(self.output().path)
        path.parent.mkdir(parents=True, exist_ok=True)
        label = f"{self.process} file {self.branch + 1}/{self.n_files}"
        with progress_bar(f"Generating {label}", total=self.n_events, unit="events") as bar:
            stats = generate_file(path, process=self.process, n_events=self.n_events,
                                  seed=self.branch_seed(), pthat_min=self.pthat_min,
                                  progress=bar.advance)
        console.print(f"{label}: {stats['n_jets']:,} jets from {stats['n_events']:,} events in "
                      f"{stats['seconds']:.1f} s -> {path}")
        self._finish_workflow()

    def _finish_workflow(self) -> None:
        """Write filelist.txt and parameters.json once every file of the sample exists.

        The content is deterministic, so concurrent branches finishing together write the
        same files (atomically); at least the last branch to finish sees all files.
        """
        from utils.io import write_json

        files = [Path(self.req(self, branch=b).output().path) for b in range(self.n_files)]
        if not all(f.exists() for f in files):
            return
        write_json(self.local_path("parameters.json"), self.parameters_record())
        target = Path(self.filelist_target().path)
        tmp = target.with_name(f".{target.name}.tmp-{self.branch}")
        tmp.write_text("".join(f"{f}\n" for f in files))
        tmp.replace(target)
