"""Batch workflows (HTCondor, Slurm) without a batch system: rendered job files, and the
local workflow of the per-file export stage giving the same dataset as a plain run."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from law.job.dashboard import NoJobDashboard
from luigi.cmdline_parser import CmdlineParser

import tasks.dataset  # noqa: F401  (registers the tasks)
import tasks.generation  # noqa: F401

pytestmark = pytest.mark.slow


def render_job(args: list[str], job_num: int, branches: list[int]) -> tuple[str, Path]:
    """The job file law would submit for ``branches``, and its directory."""
    with CmdlineParser.global_instance(args) as parser:
        task = parser.get_task_obj()
        proxy = task.workflow_proxy
        proxy.dashboard = NoJobDashboard()
        proxy.job_file_factory = proxy.create_job_file_factory()
        job = proxy.create_job_file(job_num, branches)["job"]
    return Path(job).read_text(), Path(job).parent


def decoded_arguments(text: str) -> str:
    """law passes the task parameters and branches base64-encoded; decode what decodes."""
    words = []
    for word in text.split():
        try:
            words.append(base64.b64decode(word, validate=True).decode())
        except (ValueError, UnicodeDecodeError):
            continue
    return " ".join(words)


@pytest.fixture
def env(monkeypatch, tmp_path, law_env):
    for key in ("B_HIVE_DIR", "LAW_HOME", "LAW_CONFIG_FILE"):
        monkeypatch.setenv(key, law_env[key])
    monkeypatch.setenv("DATA_PATH", str(tmp_path / "data"))
    return tmp_path


def test_htcondor_job_file(env, synthetic_files):
    _, filelist = synthetic_files
    text, directory = render_job(
        ["ExportFilesTask", "--workflow", "htcondor", "--config", "offline_run3",
         "--dataset-version", "batch", "--filelist", str(filelist), "--max-runtime", "90min",
         "--htcondor-flavour", "workday", "--seed", "7"], 2, [2])
    assert "universe = vanilla" in text
    assert "+MaxRuntime = 5400" in text and '+JobFlavour = "workday"' in text
    assert f"initialdir = {env / 'data'}/ExportFilesTask/offline_run3/batch/htcondor_jobs" \
        in text
    arguments = next(line for line in text.splitlines() if line.startswith("arguments"))
    assert "tasks.dataset ExportFilesTask" in arguments
    decoded = decoded_arguments(arguments.split("ExportFilesTask", 1)[1])
    assert "--config=offline_run3" in decoded and "--dataset-version=batch" in decoded
    assert "--seed=7" in decoded and f"--filelist={filelist}" in decoded
    assert "2" in decoded.split()  # the branch of this job
    bootstrap = next(directory.glob("remote_bootstrap*.sh")).read_text()
    assert f'source "{os.environ["B_HIVE_DIR"]}/setup.sh"' in bootstrap
    assert f'export DATA_PATH="{env / "data"}"' in bootstrap


def test_slurm_job_file(env):
    text, directory = render_job(
        ["GenerateSamplesTask", "--workflow", "slurm", "--process", "QCD", "--n-files", "6",
         "--max-runtime", "2.5"], 0, [3, 4, 5])
    assert "#SBATCH --time=02:30:00" in text
    assert "GenerateSamplesTask" in text and "_3To6" in text
    decoded = decoded_arguments(text.split("GenerateSamplesTask", 2)[-1])
    assert "--process=QCD" in decoded and "--n-files=6" in decoded
    assert "3 4 5" in decoded
    bootstrap = next(directory.glob("remote_bootstrap*.sh")).read_text()
    assert "{{" not in bootstrap and "setup.sh" in bootstrap


def test_local_stage_workflow_equals_plain_run(run_law, synthetic_files):
    _, filelist = synthetic_files
    common = ("DatasetConstructorTask", "--config", "offline_run3", "--filelist", filelist,
              "--chunk-size", 1500)
    run_law(*common, "--dataset-version", "plain")
    # the merging task's executor (here dask) is not forwarded to the jobs
    run_law(*common, "--dataset-version", "staged", "--stage-workflow", "local", "--workers",
            2, "--executor", "dask")
    base = run_law.data_path / "DatasetConstructorTask" / "offline_run3"
    plain = sorted((base / "plain").glob("file_*.lz4"))
    assert plain and [p.name for p in plain] == sorted(
        p.name for p in (base / "staged").glob("file_*.lz4"))
    for path in plain:
        assert path.read_bytes() == (base / "staged" / path.name).read_bytes()
    stages = run_law.data_path / "ExportFilesTask" / "offline_run3" / "staged"
    assert not list(stages.glob("stage_*"))  # staged rows removed after the merge
    # removing and rebuilding the dataset redoes the stage
    run_law(*common, "--dataset-version", "staged", "--remove-output", "0,a")
    run_law(*common, "--dataset-version", "staged", "--stage-workflow", "local")
    for path in plain:
        assert path.read_bytes() == (base / "staged" / path.name).read_bytes()


def test_stage_results_of_other_inputs_are_never_merged(run_law, synthetic_files, tmp_path):
    files, filelist = synthetic_files
    # jobs of an interrupted export (stages done, no merge) with another seed ...
    run_law("ExportFilesTask", "--config", "offline_run3", "--dataset-version", "s",
            "--filelist", filelist, "--seed", 99, "--workers", 2)
    stages = run_law.data_path / "ExportFilesTask" / "offline_run3" / "s"
    assert len(list(stages.glob("stage_*"))) == len(files)
    # ... are not taken by the export with the default seed: it equals a plain export
    common = ("DatasetConstructorTask", "--config", "offline_run3", "--filelist", filelist,
              "--chunk-size", 1500)
    run_law(*common, "--dataset-version", "s", "--stage-workflow", "local")
    run_law(*common, "--dataset-version", "plain")
    base = run_law.data_path / "DatasetConstructorTask" / "offline_run3"
    for path in sorted((base / "plain").glob("file_*.lz4")):
        assert path.read_bytes() == (base / "s" / path.name).read_bytes()
    assert not list(stages.glob("stage_*"))


def test_workflows_run_locally_by_default():
    from tasks.dataset import ExportFilesTask
    from tasks.generation import GenerateSamplesTask

    assert GenerateSamplesTask(process="TT").effective_workflow == "local"
    task = ExportFilesTask(config="offline_run3", filelist="x.txt")
    assert task.effective_workflow == "local"


def test_sample_version_only_recorded_for_generated_inputs(synthetic_files):
    from tasks.dataset import DatasetConstructorTask

    files, filelist = synthetic_files
    listed = DatasetConstructorTask(config="demo", filelist=str(filelist), sample_version="test")
    record = listed.parameters_record()
    assert "sample_version" not in record["parameters"]
    # the inputs of a --filelist are recorded with their sizes and modification times
    assert list(record["inputs"]) == sorted(map(str, files), key=lambda f: "QCD" in f)
    assert record["inputs"][str(files[0])]["size"] == files[0].stat().st_size
    generated = DatasetConstructorTask(config="demo", sample_version="test")
    assert generated.parameters_record()["parameters"]["sample_version"] == "test"
    offline = DatasetConstructorTask(config="offline_run3", sample_version="test")
    assert "sample_version" not in offline.parameters_record()["parameters"]


def test_sample_versions_are_stored_and_found_again(tmp_path, monkeypatch):
    """A dataset made from a non-default generated sample version finds it again without the
    option (later commands need only the dataset version); the test dataset of InferenceTask
    likewise, with --test-sample-version for a new one and 'test' by default."""
    import json

    from tasks.dataset import DatasetConstructorTask
    from tasks.inference import InferenceTask

    monkeypatch.setenv("DATA_PATH", str(tmp_path))

    def publish(version: str, sample_version: str) -> None:
        """A published dataset directory whose record names ``sample_version``."""
        task = DatasetConstructorTask(config="demo", dataset_version=version,
                                      sample_version=sample_version)
        record = task.parameters_record()
        task.local_path().mkdir(parents=True)
        (task.local_path() / "parameters.json").write_text(json.dumps(record))
        (task.local_path() / "processed_files.txt").write_text("")

    fresh = DatasetConstructorTask(config="demo", dataset_version="new")
    assert fresh.value("sample_version") == "v1"
    assert {t.sample_version for t in fresh.requires().values()} == {"v1"}
    publish("v2data", "v2")
    again = DatasetConstructorTask(config="demo", dataset_version="v2data")
    assert again.value("sample_version") == "v2"
    assert {t.sample_version for t in again.requires().values()} == {"v2"}
    again.check_parameters()  # no mismatch with the stored v2
    clash = DatasetConstructorTask(config="demo", dataset_version="v2data", sample_version="v3")
    with pytest.raises(Exception, match="--sample-version: 'v2' -> 'v3'"):
        clash.check_parameters()

    def test_sample(**kwargs: str) -> str:
        task = InferenceTask(config="demo", training_version="t", model_name="DeepJet",
                             test_dataset_version="tests", **kwargs)
        return task.test_dataset_task().value("sample_version")

    assert test_sample() == "test"
    assert test_sample(test_sample_version="ideal") == "ideal"
    publish("tests", "realistic")
    assert test_sample() == "realistic"
