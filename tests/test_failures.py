"""What users meet when something goes wrong, through `law run` as they run it: every
failure ends with a clear message, no traceback, no half-written output, and a state that
the same command (or the corrected one) continues from. Faults are injected at exact points
(tests/faults.py), so nothing here depends on timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST_SAMPLE, REPO, need_private_mounts
from utils.generation import generate_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    """Two small generated files (TT, QCD) and their file list, for the demo config."""
    directory = tmp_path_factory.mktemp("demo_inputs")
    tt, qcd = directory / "TT_0.root", directory / "QCD_0.root"
    generate_file(tt, process="TT", n_events=250, seed=21, **FAST_SAMPLE)
    generate_file(qcd, process="QCD", n_events=600, seed=22, **FAST_SAMPLE)
    filelist = directory / "files.txt"
    filelist.write_text(f"{tt}\n{qcd}\n")
    return tt, qcd, filelist


@pytest.fixture
def law(law_env, tmp_path):
    """``law(*args, fault=None)``: run ``law run`` (optionally with a fault injected) with
    DATA_PATH and BHIVE_STAGING_DIR in fresh directories; return the process with ``.log``
    (stdout + stderr)."""
    data, staging = tmp_path / "data", tmp_path / "staging"

    def run(*args: object, fault: str | None = None, env: dict | None = None,
            prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        command = ["law", "run"] if fault is None else \
            [sys.executable, "-m", "tests.faults", fault, "run"]
        environment = dict(law_env, DATA_PATH=str(data), BHIVE_STAGING_DIR=str(staging),
                           **(env or {}))
        proc = subprocess.run([*prefix, *command, *map(str, args)], env=environment, cwd=REPO,
                              capture_output=True, text=True, timeout=900)
        proc.log = proc.stdout + proc.stderr
        return proc

    run.data, run.staging = data, staging
    return run


def hidden(directory: Path) -> list[str]:
    """Temporary files and work directories left in ``directory`` (recursively)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob(".*"))


DATASET = ("--config", "demo", "--dataset-version", "d1", "--chunk-size", 400)


def training(epochs: object = 3, batch_size: object = 64, *extra: object) -> tuple:
    return ("TrainingTask", "--config", "demo", "--dataset-version", "d1",
            "--training-version", "t1", "--model-name", "DeepJet", "--epochs", epochs,
            "--batch-size", batch_size, *extra)


TRAINING = training()


def training_dir(law) -> Path:
    return law.data / "TrainingTask" / "demo" / "d1" / "t1" / "DeepJet" / "epochs_3" / "nominal"


def export(law, demo_files, *extra: object) -> subprocess.CompletedProcess:
    proc = law("DatasetConstructorTask", *DATASET, "--filelist", demo_files[2], *extra)
    assert proc.returncode == 0, proc.log[-3000:]
    return proc


def test_help_works_for_every_task(law_env):
    index = Path(law_env["LAW_HOME"]) / "index"
    tasks = [line.split(":")[1] for line in index.read_text().splitlines() if ":" in line]
    assert {"DatasetConstructorTask", "TrainingTask", "InferenceTask", "ROCCurveTask",
            "WorkingPointTask", "DemoRun"} <= set(tasks)

    def helps(task: str) -> tuple[str, subprocess.CompletedProcess]:
        return task, subprocess.run(["law", "run", task, "--help"], env=law_env, cwd=REPO,
                                    capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(helps, tasks))
    for task, proc in results.items():
        assert proc.returncode == 0, f"{task} --help:\n{proc.stderr[-2000:]}"
        assert "--verbose" in proc.stdout and "Traceback" not in proc.stderr, task
    assert "last 30% of the epochs" in " ".join(results["TrainingTask"].stdout.split())


def test_invalid_values_write_nothing_and_failed_starts_do_not_lock(law, demo_files):
    export(law, demo_files)
    for args, message in ((training(3, 0), "--batch-size must be >= 1; got 0"),
                          (training(0), "--epochs must be >= 1; got 0"),
                          (training(3, 64, "--learning-rate", -1), "--learning-rate must be > 0"),
                          (training(3, 64, "--optimizer", "Adamm"),
                           "'Adamm' is not a torch.optim")):
        proc = law(*args)
        assert proc.returncode != 0 and message in proc.log, proc.log[-2000:]
        assert "Traceback" not in proc.log
        assert not (law.data / "TrainingTask").exists()
    # a model that cannot run on the config stops the whole chain before any of it runs
    # (before: the test dataset was exported first)
    roc = law("ROCCurveTask", *training(3, 64)[1:7], "--model-name", "ParticleNet",
              "--test-dataset-version", "d2", "--test-filelist", demo_files[2])
    assert roc.returncode != 0 and "ModelInputError" in roc.log, roc.log[-2000:]
    assert "Will not run ROCCurveTask or any dependencies" in roc.log
    assert not (law.data / "DatasetConstructorTask" / "demo" / "d2").exists()
    # a run stopped before its first epoch finished does not lock the version
    stopped = law(*TRAINING, fault="signal-at-epoch:INT:0")
    assert stopped.returncode == 130
    assert stopped.stdout.rstrip().endswith("interrupted after epoch 0; run the same command "
                                            "again to resume")
    assert (training_dir(law) / "parameters.json").exists()
    changed = law(*TRAINING, "--learning-rate", 0.003)
    assert changed.returncode == 0, changed.log[-3000:]
    record = json.loads((training_dir(law) / "parameters.json").read_text())["parameters"]
    assert record["learning_rate"] == "0.003"
    # once it holds a checkpoint, it is locked
    clash = law(*TRAINING, "--learning-rate", 0.01)
    assert clash.returncode != 0 and "--learning-rate: '0.003' -> '0.01'" in clash.log


def test_unreadable_and_missing_values_name_the_option(law):
    for args, message in ((training("ten"), "--epochs: 'ten' is not an integer"),
                          (training(3, 64, "--learning-rate", "1e-3x"),
                           "--learning-rate: '1e-3x' is not a number"),
                          (("GenerateSamplesTask", "--process", "TT", "--mpi", "maybe"),
                           "--mpi: 'maybe' is not True or False"),
                          (("GenerateSamplesTask", "--process", "WW"),
                           "--process: WW is not a valid choice from"),
                          (("GenerateSamplesTask", "--pileup", "20"),
                           "requires --process to be set")):
        proc = law(*args)
        assert proc.returncode != 0 and message in proc.log, proc.log[-2000:]
        assert "Traceback" not in proc.log, proc.log[-2000:]
        assert not law.data.exists()


def test_interrupts_and_kill_during_checkpoint_resume(law, demo_files):
    export(law, demo_files)
    out = training_dir(law)
    # kill -9 while model_1.pt is being written: its temporary is left behind
    killed = law(*TRAINING, fault="kill-writing:model_1.pt")
    assert killed.returncode == -9
    assert (out / "model_0.pt").exists() and not (out / "model_1.pt").exists()
    assert [p for p in hidden(out) if p.startswith(".model_1.tmp-")]
    # Ctrl-C and SIGTERM: one line, no traceback; the leftovers are gone; resumes each time
    for signal_name, epoch, resumed, code in (("INT", 1, 1, 130), ("TERM", 2, 1, 143)):
        proc = law(*TRAINING, fault=f"signal-at-epoch:{signal_name}:{epoch}")
        assert proc.returncode == code, proc.log[-3000:]  # 128 + the signal number
        assert f"Resuming after epoch {resumed}" in proc.stdout
        assert proc.stdout.rstrip().endswith(f"interrupted after epoch {epoch}; run the same "
                                             "command again to resume")
        assert "Traceback" not in proc.log and "KeyboardInterrupt" not in proc.log
        assert hidden(out) == []
    done = law(*TRAINING)
    assert done.returncode == 0 and "Resuming after epoch 2" in done.stdout
    metrics = np.load(out / "validation_metrics.npz")
    assert len(metrics["loss"]) == 3 and (out / "model_2.pt").exists() and hidden(out) == []


def test_ctrl_c_while_a_plot_is_saved(law, demo_files):
    export(law, demo_files)
    proc = law(*TRAINING, fault="signal-writing:INT:loss.png")
    assert proc.returncode == 130
    assert proc.stdout.rstrip().endswith("interrupted after epoch 0; run the same command "
                                         "again to resume")
    assert "Traceback" not in proc.log and "matplotlib" not in proc.log
    assert hidden(training_dir(law)) == [] and not (training_dir(law) / "loss.png").exists()


def test_kill_during_export_merge_leaves_nothing_after_the_next_run(law, demo_files):
    killed = law("DatasetConstructorTask", *DATASET, "--filelist", demo_files[2],
                 fault="kill-writing:file_1.lz4")
    assert killed.returncode == -9
    dataset = law.data / "DatasetConstructorTask" / "demo" / "d1"
    assert not (dataset / "processed_files.txt").exists()
    assert [p for p in hidden(dataset) if p.startswith(".work-")]
    assert [p.name for p in law.staging.iterdir()][0].startswith("bhive-staging-")
    export(law, demo_files)
    assert hidden(dataset) == [] and list(law.staging.iterdir()) == []
    assert (dataset / "file_1.lz4").exists()


def test_missing_chunk_is_never_rebuilt_and_inputs_are_recorded(law, demo_files):
    export(law, demo_files)
    dataset = law.data / "DatasetConstructorTask" / "demo" / "d1"
    (dataset / "file_1.lz4").unlink()
    before = sorted(p.name for p in dataset.iterdir())
    # without --filelist the demo config could generate samples: it must not
    proc = law(*TRAINING)
    assert proc.returncode != 0
    assert f"{dataset / 'file_1.lz4'} is missing" in proc.log
    assert "--remove-output 0,a" in proc.log and "Traceback" not in proc.log
    assert not (law.data / "GenerateSamplesTask").exists()
    assert not (law.data / "TrainingTask").exists()
    assert sorted(p.name for p in dataset.iterdir()) == before
    # a truncated chunk is found as well
    (dataset / "file_0.lz4").write_bytes((dataset / "file_0.lz4").read_bytes()[:100])
    proc = law("DatasetConstructorTask", *DATASET)
    assert "file_0.lz4 has 100 bytes" in proc.log and "file_1.lz4 is missing" in proc.log
    # so is a lost parameters.json (the dataset would otherwise be silently re-exported)
    (dataset / "parameters.json").unlink()
    proc = law("DatasetConstructorTask", *DATASET)
    assert f"{dataset / 'parameters.json'} is missing" in proc.log
    assert (dataset / "file_2.lz4").exists()
    # --remove-output clears it; the same version with another file list is refused
    assert law("DatasetConstructorTask", *DATASET, "--remove-output", "0,a").returncode == 0
    export(law, demo_files)
    other = demo_files[2].with_name("tt_only.txt")
    other.write_text(f"{demo_files[0]}\n")
    proc = law("DatasetConstructorTask", *DATASET, "--filelist", other)
    assert proc.returncode != 0
    assert f"inputs (--filelist): 1 file(s) recorded but not given now: {demo_files[1]}" \
        in proc.log
    # a changed input file is a different input too
    os.utime(demo_files[1], (1e9, 1e9))
    proc = law("DatasetConstructorTask", *DATASET, "--filelist", demo_files[2])
    assert f"1 file(s) changed since (size or modification time): {demo_files[1]}" in proc.log


def test_truncated_and_broken_inputs(law, demo_files, tmp_path):
    truncated = tmp_path / "TT_truncated.root"
    data = demo_files[0].read_bytes()
    truncated.write_bytes(data[:int(len(data) * 0.8)])
    filelist = tmp_path / "list.txt"
    filelist.write_text(f"{truncated}\n{demo_files[1]}\n")
    proc = law("DatasetConstructorTask", "--config", "demo", "--dataset-version", "t",
               "--filelist", filelist, "--executor", "futures", "--coffea-worker", 2)
    assert proc.returncode != 0
    assert f"{truncated}: truncated file: branch '" in proc.log
    assert "Traceback" not in proc.log and "Performed attempt" not in proc.log
    assert not (law.data / "DatasetConstructorTask" / "demo" / "t").exists()


def test_edited_class_grouping_is_refused(law, demo_files, tmp_path):
    config = tmp_path / "mydemo.py"
    config.write_text("from config.demo import config as demo\nconfig = demo\n")
    args = ("--config", config, "--dataset-version", "d1", "--filelist", demo_files[2],
            "--chunk-size", 400)
    assert law("DatasetConstructorTask", *args).returncode == 0
    config.write_text(textwrap.dedent("""
        from config.demo import config as demo
        classes = dict(demo.classes)
        classes["uds"], classes["g"] = classes["g"], classes["uds"]
        config = demo.replace(classes=classes)
    """))
    proc = law("DatasetConstructorTask", *args)
    assert proc.returncode != 0
    assert "label -> class mapping {b: isB" in proc.log
    assert "uds: isUD+isS, g: isG} -> {" in proc.log and "uds: isG, g: isUD+isS}" in proc.log


def test_full_disk_reported_with_the_file(law, demo_files):
    export(law, demo_files)
    proc = law(*TRAINING, fault="enospc-writing:best_model.pt")
    out = training_dir(law)
    assert proc.returncode != 0
    assert f"DiskFullError: {out / 'best_model.pt'}: the disk is full (No space left" in proc.log
    assert "Traceback" not in proc.log
    assert hidden(out) == [] and not list(out.glob("*.pt"))


def test_full_disk_during_checkpoint(law, demo_files):
    need_private_mounts()
    export(law, demo_files)
    target = law.data / "TrainingTask"
    target.mkdir()
    # the training directory on a 600 kB file system: the metrics and plots fit, the
    # DeepJet checkpoint (3 MB) does not
    script = (f"mount -t tmpfs -o size=600k tmpfs {target} && \"$@\"; echo rc=$?; "
              f"find {target} -name '*.p*' | sort")
    proc = law(*TRAINING, prefix=("unshare", "-rm", "sh", "-c", script, "sh"))
    out = training_dir(law)
    assert "rc=0" not in proc.stdout, proc.log[-3000:]
    assert f"DiskFullError: {out / 'best_model.pt'}: the disk is full" in proc.log
    assert "Traceback" not in proc.log
    left = proc.stdout.split("rc=")[1]
    assert ".tmp-" not in left and ".pt" not in left and "loss.png" in left
