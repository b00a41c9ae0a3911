"""DatasetConstructorTask through `law run` (subprocesses, as users run it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from utils.dataset.chunk_format import read_chunk
from utils.synthetic import synthetic_arrays, write_ntuple

pytestmark = pytest.mark.slow


def dataset_dir(run_law, version, config="offline_run3"):
    return run_law.data_path / "DatasetConstructorTask" / config / version


def test_export_status_and_rerun(run_law, synthetic_files):
    files, filelist = synthetic_files
    proc = run_law("DatasetConstructorTask", "--config", "offline_run3", "--dataset-version",
                   "v1", "--filelist", filelist, "--chunk-size", 1000, "--coffea-worker", 2)
    assert "Exported" in proc.stdout
    out = dataset_dir(run_law, "v1")
    listed = (out / "processed_files.txt").read_text().split()
    assert listed == [str(out / f"file_{k}.lz4") for k in range(len(listed))]
    rows = sum(len(read_chunk(p)[0]) for p in listed)
    info = json.loads((out / "dataset_info.json").read_text())
    assert rows == info["counts"]["selected"] > 0
    params = json.loads((out / "parameters.json").read_text())["parameters"]
    assert params["chunk_size"] == "1000" and params["seed"] == "123456"
    assert np.load(out / "histogram.npy").sum() == rows
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    status = run_law("DatasetConstructorTask", "--config", "offline_run3",
                     "--dataset-version", "v1", "--print-status", "-1")
    assert status.stdout.count("existent") == 7 and "absent" not in status.stdout
    assert f"chunks: TargetCollection(len={len(listed)})" in status.stdout
    assert f"existent ({len(listed)}/{len(listed)})" in status.stdout
    # without --chunk-size the stored value is used: the dataset is complete, nothing runs
    again = run_law("DatasetConstructorTask", "--config", "offline_run3", "--dataset-version",
                    "v1")
    assert "complete ones were encountered" in again.stdout + again.stderr
    # an explicit different significant value is an error, not a silent reuse
    clash = run_law("DatasetConstructorTask", "--config", "offline_run3", "--dataset-version",
                    "v1", "--chunk-size", 500, check=False)
    assert clash.returncode != 0
    assert "--chunk-size: '1000' -> '500'" in clash.stdout + clash.stderr
    removed = run_law("DatasetConstructorTask", "--config", "offline_run3",
                      "--dataset-version", "v1", "--remove-output", "0,a")
    assert removed.returncode == 0
    assert not out.exists() or not list(out.iterdir()), sorted(out.iterdir())  # nothing left


def test_help_documents_every_parameter(run_law):
    proc = run_law("DatasetConstructorTask", "--help")
    for name in ("--config", "--dataset-version", "--filelist", "--chunk-size",
                 "--coffea-worker", "--executor", "--debug", "--seed"):
        assert name in proc.stdout
    # every b-hive parameter has a description
    assert "jets per output file" in proc.stdout
    assert "coffea executor" in proc.stdout


def _assert_failed_without_outputs(proc, out):
    assert proc.returncode != 0
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


def test_missing_branch_fails_cleanly(run_law, tmp_path, offline_config):
    arrays = synthetic_arrays(offline_config, 300, seed=4)
    del arrays["Cpfcan_quality"]
    bad = write_ntuple(tmp_path / "TT_bad.root", offline_config.tree_name, arrays)
    good = write_ntuple(tmp_path / "QCD_good.root", offline_config.tree_name,
                        synthetic_arrays(offline_config, 300, seed=5))
    filelist = tmp_path / "list.txt"
    filelist.write_text(f"{good}\n{bad}\n")
    proc = run_law("DatasetConstructorTask", "--config", "offline_run3", "--dataset-version",
                   "bad", "--filelist", filelist, check=False)
    log = proc.stdout + proc.stderr
    assert f"{bad}: missing branch(es) ['Cpfcan_quality']" in log
    _assert_failed_without_outputs(proc, dataset_dir(run_law, "bad"))


def test_unmatched_and_missing_files_fail_cleanly(run_law, tmp_path, offline_config):
    good = write_ntuple(tmp_path / "TT_0.root", offline_config.tree_name,
                        synthetic_arrays(offline_config, 100))
    stray = write_ntuple(tmp_path / "WJets_0.root", offline_config.tree_name,
                         synthetic_arrays(offline_config, 100))
    filelist = tmp_path / "list.txt"
    filelist.write_text(f"{good}\n{stray}\n")
    proc = run_law("DatasetConstructorTask", "--config", "offline_run3", "--dataset-version",
                   "stray", "--filelist", filelist, check=False)
    assert f"match no process pattern: {stray}" in proc.stdout + proc.stderr
    _assert_failed_without_outputs(proc, dataset_dir(run_law, "stray"))

    filelist.write_text(f"{good}\n{tmp_path / 'gone.root'}\n")
    proc = run_law("DatasetConstructorTask", "--config", "offline_run3", "--dataset-version",
                   "gone", "--filelist", filelist, check=False)
    assert f"{tmp_path / 'gone.root'}" in proc.stdout + proc.stderr
    _assert_failed_without_outputs(proc, dataset_dir(run_law, "gone"))

    proc = run_law("DatasetConstructorTask", "--config", "offline_run3", "--dataset-version",
                   "nolist", check=False)
    assert "needs --filelist" in proc.stdout + proc.stderr
    _assert_failed_without_outputs(proc, dataset_dir(run_law, "nolist"))


def test_processing_error_leaves_no_output(run_law, tmp_path, offline_config):
    arrays = synthetic_arrays(offline_config, 200, seed=6)
    arrays["jet_pt"] = arrays["Cpfcan_ptrel"]  # jagged where one value per jet is expected
    bad = write_ntuple(tmp_path / "TT_jagged.root", offline_config.tree_name, arrays)
    filelist = tmp_path / "list.txt"
    filelist.write_text(f"{bad}\n")
    for executor in ("iterative", "futures"):
        proc = run_law("DatasetConstructorTask", "--config", "offline_run3",
                       "--dataset-version", "jagged", "--filelist", filelist, "--executor",
                       executor, "--coffea-worker", 2, check=False)
        log = proc.stdout + proc.stderr
        assert f"{bad}: branch 'jet_pt': expected one value per jet" in log
        # a deterministic input error: reported once, not retried, no traceback
        assert "Performed attempt" not in log and "Traceback" not in log
        _assert_failed_without_outputs(proc, dataset_dir(run_law, "jagged"))


def test_verbose_export_and_full_staging_disk(run_law, tmp_path, offline_config):
    from tests.conftest import need_private_mounts

    arrays = synthetic_arrays(offline_config, 600, seed=8)
    arrays["jet_pt"][:9] = np.nan
    arrays["Cpfcan_ptrel"] = arrays["Cpfcan_ptrel"] * np.where(np.arange(600) == 5, np.inf, 1)
    good = write_ntuple(tmp_path / "TT_nan.root", offline_config.tree_name, arrays)
    out_of_bins = synthetic_arrays(offline_config, 100, seed=9)
    out_of_bins["jet_pt"][:] = 9999.0
    empty = write_ntuple(tmp_path / "QCD_high.root", offline_config.tree_name, out_of_bins)
    filelist = tmp_path / "list.txt"
    filelist.write_text(f"{good}\n{empty}\n")
    args = ("DatasetConstructorTask", "--config", "offline_run3", "--filelist", filelist,
            "--executor", "iterative")
    proc = run_law(*args, "--dataset-version", "v", "--verbose")
    assert f"1 input file(s) contributed no jets: {empty}" in proc.stdout
    assert "NaN/inf per branch (jets): jet_pt 9" in proc.stdout
    assert "time per stage: pre-flight check" in proc.stdout
    assert "  TT: b " in proc.stdout and "  QCD: b 0, bb 0" in proc.stdout
    need_private_mounts()
    staging = tmp_path / "staging"
    staging.mkdir()
    full = run_law("unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=100k tmpfs {staging} "
                   "&& \"$@\"", "sh", "law", "run", *args, "--dataset-version", "w",
                   env={"BHIVE_STAGING_DIR": str(staging)}, raw=True, check=False)
    log = full.stdout + full.stderr
    assert full.returncode != 0 and "the disk is full" in log and str(staging) in log
    assert "Traceback" not in log
    _assert_failed_without_outputs(full, dataset_dir(run_law, "w"))


@pytest.mark.parametrize("preset, config, model", [
    ("DeepJetRun", "offline_run3", "DeepJet"),
    ("DeepJetRunHLT", "hlt_run3", "DeepJetHLT"),
    ("DeepJetRunHLTPhase2", "hlt_phase2", "DeepJetHLT"),
    ("ParticleNetRunHLT", "hlt_run3_pnet", "ParticleNet"),
])
def test_presets_resolve_the_whole_chain(run_law, synthetic_files, preset, config, model):
    _, filelist = synthetic_files
    status = run_law(preset, "--version", "v7", "--filelist", filelist, "--test-filelist",
                     filelist, "--print-status", "-1").stdout
    for task in ("ROCCurveTask", "InferenceTask", "TrainingTask", "DatasetConstructorTask"):
        assert f"> {task}(" in status
    assert f"config={config}" in status and f"model_name={model}" in status
    assert "dataset_version=testfiles_v7" in status and "training_version=v7" in status


def test_finished_task_does_not_need_the_inputs_of_its_dataset(run_law, synthetic_files,
                                                              tmp_path):
    """A task after the export checks the dataset's parameters and chunks, not the input
    files of its --filelist: they may be moved or touched once the dataset exists."""
    import shutil

    files, _ = synthetic_files
    moved = tmp_path / "inputs"
    moved.mkdir()
    copies = [shutil.copy(f, moved / f.name) for f in files]
    filelist = moved / "files.txt"
    filelist.write_text("\n".join(map(str, copies)) + "\n")
    common = ("--config", "offline_run3", "--dataset-version", "fl", "--filelist", filelist)
    run_law("InputHistogrammerTask", *common, "--DatasetConstructorTask-chunk-size", 2000)
    copies[0].unlink()  # the input moved away, after the export
    again = run_law("InputHistogrammerTask", *common)
    assert "complete ones were encountered" in again.stdout + again.stderr
    # the dataset's own run still checks its inputs
    export = run_law("DatasetConstructorTask", *common, check=False)
    assert export.returncode != 0 and "do not exist" in export.stdout + export.stderr
