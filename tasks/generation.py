"""GenerateSamplesTask: built-in ttbar / QCD samples (Pythia8 + FastJet + toy detector)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import BaseTask, setting
from tasks.remote import BatchWorkflow
from utils.settings import GenerationSettings

FILELIST = "filelist.txt"
DEFAULT_SAMPLE_VERSION = "v1"  # of a training sample
TEST_SAMPLE_VERSION = "test"  # of the test sample InferenceTask generates


class GenerateSamplesTask(BaseTask, law.LocalWorkflow, BatchWorkflow):
    """Generate flat DeepNTuples-style ROOT files; one workflow branch per file.

    Outputs in ``GenerateSamplesTask/<sample_version>/<process>/``: ``<process>_<i>.root`` and
    ``filelist.txt`` (written when the last file is complete). With pileup, the pool of
    minimum-bias events is ``GenerateSamplesTask/<sample_version>/pileup_pool_*.npz``, made
    by the first branch that needs it and shared by both processes. Branches run in parallel with
    law's ``--workers N`` (``--workflow local``) or as batch jobs (``--workflow htcondor`` or
    ``slurm``).
    """

    process = luigi.ChoiceParameter(
        choices=("TT", "QCD"),
        description="physics process: TT (ttbar, 13.6 TeV) or QCD (hard QCD with --pthat-min)",
    )
    settings_class = GenerationSettings
    n_files = setting(GenerationSettings, "n_files")
    events_per_file = setting(GenerationSettings, "events_per_file")
    pthat_min = setting(GenerationSettings, "pthat_min")
    seed = setting(GenerationSettings, "seed")
    detector = setting(GenerationSettings, "detector")
    mpi = setting(GenerationSettings, "mpi")
    pileup = setting(GenerationSettings, "pileup")
    sample_version = luigi.Parameter(
        default=DEFAULT_SAMPLE_VERSION,
        description="version tag of the generated sample (a directory name); default: "
        f"{DEFAULT_SAMPLE_VERSION}",
    )
    version_hint = ("--sample-version, or --test-sample-version for the test sample of "
                    "InferenceTask and the tasks after it")

    exclude_params_req_get = {"seed"}

    def store_parts(self) -> tuple[str, ...]:
        return super().store_parts() + (self.sample_version, self.process)

    def create_branch_map(self) -> dict[int, int]:
        return {i: i for i in range(self.settings.n_files)}

    @property
    def n_events(self) -> int:
        return self.settings.events(self.process)

    def output(self) -> law.LocalFileTarget:
        return self.local_target(f"{self.process}_{self.branch}.root")

    def holds_result(self) -> bool:
        """A sample is locked to its parameters as soon as one of its files exists."""
        return any(self.local_path().glob(f"{self.process}_*.root"))

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

        state = np.random.SeedSequence([self.settings.seed,
                                        zlib.crc32(self.sample_version.encode()),
                                        PROCESSES.index(self.process), self.branch])
        return int(state.generate_state(1)[0]) % (SEED_MAX + 1)

    def pileup_pool(self) -> Any:
        """The sample version's minimum-bias pool (generated and stored on first use).

        Its content is a function of (--seed, sample version, detector). Local branches
        wait for the one making it (a file lock); where locks do not work, branches making
        it at the same time write the same file (atomically)."""
        import fcntl
        import zlib

        from utils.generation import pileup
        from utils.io import remove_stale
        from utils.progress import console

        seed = pileup.pool_seed(self.settings.seed, zlib.crc32(self.sample_version.encode()))
        directory = self.local_path().parent
        path = directory / f"pileup_pool_{self.settings.detector}_{seed}.npz"
        with open(directory / f".{path.name}.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
            except OSError:  # file systems without locks: generate concurrently
                pass
            if not path.exists():
                remove_stale(directory)
                console.print(f"Generating the pileup pool ({pileup.POOL_EVENTS:,} "
                              f"minimum-bias events) -> {path}")
                pileup.generate_pool(pileup.POOL_EVENTS, seed,
                                     self.settings.detector == "realistic").save(path)
        return pileup.MinBiasPool.load(path)

    def run(self) -> None:
        from utils.generation import generate_file
        from utils.io import remove_stale
        from utils.progress import console, progress_bar

        path = Path(self.output().path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path.parent)  # temporaries of killed generations
        if not self.holds_result():  # recorded before the first file of the sample exists
            self.write_parameters(path.parent)
        pool = self.pileup_pool() if self.settings.pileup > 0 else None
        label = f"{self.process} file {self.branch + 1}/{self.n_files}"
        with progress_bar(f"Generating {label}", total=self.n_events, unit="events") as bar:
            stats = generate_file(path, process=self.process, n_events=self.n_events,
                                  seed=self.branch_seed(), pthat_min=self.settings.pthat_min,
                                  progress=bar.advance,
                                  detector_model=self.settings.detector,
                                  mpi=self.settings.mpi, pileup_mu=self.settings.pileup,
                                  pileup_pool=pool)
        console.print(f"{label}: {stats['n_jets']:,} jets from {stats['n_events']:,} events in "
                      f"{stats['seconds']:.1f} s -> {path}")
        self._finish_workflow()

    def _finish_workflow(self) -> None:
        """Write filelist.txt once every file of the sample exists.

        The content is deterministic, so concurrent branches finishing together write the
        same file (atomically); at least the last branch to finish sees all files.
        """
        from utils.io import write_text

        files = [Path(self.req(self, branch=b).output().path) for b in range(self.n_files)]
        if not all(f.exists() for f in files):
            return
        write_text(self.filelist_target().path, "".join(f"{f}\n" for f in files))
