"""Batch submission of law workflows to HTCondor (lxplus) and Slurm (law's contrib packages).

Tasks with branches mix in :class:`BatchWorkflow` to accept ``--workflow htcondor`` or
``--workflow slurm`` next to ``local``. Jobs source ``setup.sh`` of the submitting checkout
(shared file system) with the same ``DATA_PATH``; law's ``--parallel-jobs``, ``--retries``,
``--poll-interval`` and friends apply. Outputs are written by the jobs and collected
(merged) on the submitting side by the downstream task.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import law
import luigi

from tasks.base import data_path

law.contrib.load("htcondor", "slurm")

BOOTSTRAP = Path(__file__).with_name("remote_bootstrap.sh")


class BatchWorkflow(law.htcondor.HTCondorWorkflow, law.slurm.SlurmWorkflow):
    """HTCondor and Slurm job configuration shared by every b-hive workflow."""

    max_runtime = law.DurationParameter(
        default=2.0, unit="h", significant=False,
        description="maximum runtime of one job, in hours unless a unit is given (e.g. 30min); "
        "HTCondor +MaxRuntime, Slurm --time; default: 2h",
    )
    htcondor_flavour = luigi.Parameter(
        default="longlunch", significant=False,
        description="lxplus HTCondor +JobFlavour (espresso 20min, microcentury 1h, longlunch "
        "2h, workday 8h, tomorrow 1d, testmatch 3d, nextweek 1w); default: longlunch",
    )
    exclude_params_branch = {"max_runtime", "htcondor_flavour"}

    def _jobs_dir(self, kind: str) -> law.LocalDirectoryTarget:
        return law.LocalDirectoryTarget(str(self.local_path(f"{kind}_jobs")))

    def _bootstrap(self) -> law.JobInputFile:
        return law.JobInputFile(str(BOOTSTRAP), share=False, render_local=True)

    def _render(self, config: Any) -> Any:
        config.render_variables["bhive_dir"] = os.environ.get(
            "B_HIVE_DIR", str(Path(__file__).resolve().parents[1]))
        config.render_variables["bhive_data_path"] = str(data_path())
        return config

    # HTCondor
    def htcondor_output_directory(self) -> law.LocalDirectoryTarget:
        return self._jobs_dir("htcondor")

    def htcondor_bootstrap_file(self) -> law.JobInputFile:
        return self._bootstrap()

    def htcondor_job_config(self, config: Any, job_num: Any, branches: Any) -> Any:
        config.custom_content.append(("+MaxRuntime", int(math.floor(self.max_runtime * 3600))))
        config.custom_content.append(("+JobFlavour", f'"{self.htcondor_flavour}"'))
        config.custom_content.append(("getenv", "false"))
        return self._render(config)

    # Slurm
    def slurm_output_directory(self) -> law.LocalDirectoryTarget:
        return self._jobs_dir("slurm")

    def slurm_bootstrap_file(self) -> law.JobInputFile:
        return self._bootstrap()

    def slurm_job_config(self, config: Any, job_num: Any, branches: Any) -> Any:
        minutes = int(math.ceil(self.max_runtime * 60))
        config.custom_content.append(("time", f"{minutes // 60:02d}:{minutes % 60:02d}:00"))
        return self._render(config)
