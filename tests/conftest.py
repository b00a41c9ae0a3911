"""Shared fixtures: synthetic ntuples, law environment, subprocess runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from utils.config import load_config
from utils.synthetic import write_synthetic_ntuple

# generated files for tests that need jets, not the physics of the default sample: no
# underlying event and no pileup (GenerateSamplesTask --mpi False --pileup 0)
FAST_SAMPLE = {"mpi": False, "pileup_mu": 0.0}

REPO = Path(__file__).resolve().parents[1]
# real CMS NanoAOD/PFNano test files (not part of a user's clone; tests skip without them)
CMS_DATA = Path(os.environ.get("BHIVE_CMS_DATA", REPO.parent / "shared" / "data" / "cms-nanoaod"))


def need_private_mounts() -> None:
    """Skip unless ``unshare -rm`` works (user and mount namespaces): the full-disk tests
    mount a tiny tmpfs there, visible to nothing else."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -rm (user and mount namespaces) for a real full disk")


@pytest.fixture(scope="session")
def offline_config():
    return load_config("offline_run3")


@pytest.fixture(scope="session")
def synthetic_files(tmp_path_factory, offline_config):
    """Two TT files and one QCD file (offline_run3 schema) plus their file list."""
    directory = tmp_path_factory.mktemp("ntuples")
    files = [
        write_synthetic_ntuple(directory / "TT_0.root", offline_config, 1500, seed=1,
                               nan_fraction=0.01),
        write_synthetic_ntuple(directory / "TT_1.root", offline_config, 1200, seed=2),
        write_synthetic_ntuple(directory / "QCD_0.root", offline_config, 1800, seed=3,
                               nan_fraction=0.01),
    ]
    filelist = directory / "files.txt"
    filelist.write_text("# synthetic test inputs\n" + "\n".join(map(str, files)) + "\n\n")
    return files, filelist


@pytest.fixture(scope="session")
def law_env(tmp_path_factory):
    """Environment for ``law`` subprocesses with a fresh task index."""
    home = tmp_path_factory.mktemp("law_home")
    env = dict(os.environ)
    env.update({
        "B_HIVE_DIR": str(REPO),
        "LAW_HOME": str(home),
        "LAW_CONFIG_FILE": str(REPO / "law.cfg"),
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    })
    subprocess.run(["law", "index"], env=env, check=True, capture_output=True, cwd=REPO)
    return env


@pytest.fixture
def run_law(law_env, tmp_path):
    """Run ``law run <args>`` with DATA_PATH in a fresh directory; return the process."""
    data = tmp_path / "data"

    def run(*args: str, check: bool = True, env: dict | None = None,
            raw: bool = False) -> subprocess.CompletedProcess:
        """``raw``: ``args`` is the whole command (e.g. law run wrapped in another one)."""
        environment = dict(law_env, DATA_PATH=str(data), **(env or {}))
        command = list(map(str, args)) if raw else ["law", "run", *map(str, args)]
        proc = subprocess.run(command, env=environment, cwd=REPO,
                              capture_output=True, text=True, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(f"law run {' '.join(map(str, args))} failed "
                                 f"({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                                 f"{proc.stderr[-4000:]}")
        return proc

    run.data_path = data
    return run


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """A small exported demo dataset (Pythia8 TT + QCD, chunk size 800 -> several files).

    Returns ``(config, dataset_dir)``; config ``demo_part`` so every model finds its inputs.
    """
    from utils.dataset.export import export_dataset
    from utils.generation import generate_file

    config = load_config("demo_part")
    directory = tmp_path_factory.mktemp("demo")
    files = [directory / "TT_0.root", directory / "QCD_0.root"]
    generate_file(files[0], process="TT", n_events=500, seed=11, **FAST_SAMPLE)
    generate_file(files[1], process="QCD", n_events=1500, seed=12, **FAST_SAMPLE)
    out = directory / "dataset"
    out.mkdir()
    export_dataset(config, [str(f) for f in files], out, out, chunk_size=800, seed=3,
                   executor="iterative")
    return config, out
