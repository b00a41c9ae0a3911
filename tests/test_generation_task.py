"""GenerateSamplesTask and the demo export on generated samples (through `law run`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import uproot

from tasks.generation import GenerateSamplesTask

pytestmark = pytest.mark.slow


def test_branch_seeds_distinct_and_stable():
    seeds = {(p, v, b): GenerateSamplesTask(process=p, n_files=3, branch=b, sample_version=v,
                                            seed=7).branch_seed()
             for p in ("TT", "QCD") for v in ("v1", "test") for b in range(3)}
    assert len(set(seeds.values())) == len(seeds)
    again = GenerateSamplesTask(process="TT", n_files=3, branch=1, sample_version="v1", seed=7)
    assert again.branch_seed() == seeds[("TT", "v1", 1)]


def _arrays(path):
    tree = uproot.open(path)["deepntuplizer/tree"]
    return tree.arrays(["jet_pt", "Cpfcan_BtagPf_trackSip2dSig", "isB"], library="np")


def test_generate_workflow_reproducible(run_law, tmp_path):
    args = ("GenerateSamplesTask", "--process", "TT", "--n-files", 2, "--events-per-file", 60,
            "--workers", 2)
    run_law(*args)
    sample = run_law.data_path / "GenerateSamplesTask" / "v1" / "TT"
    files = [sample / "TT_0.root", sample / "TT_1.root"]
    assert (sample / "filelist.txt").read_text().split() == [str(f) for f in files]
    record = json.loads((sample / "parameters.json").read_text())["parameters"]
    assert record["events_per_file"] == "60" and record["n_files"] == "2"
    first = [_arrays(f) for f in files]
    pools = sorted(sample.parent.glob("pileup_pool_*.npz"))  # one pool, shared by the files
    assert [p.name.split("_")[2] for p in pools] == ["realistic"]
    assert record["pileup"] == "30.0" and record["mpi"] == "True"
    assert not np.array_equal(first[0]["jet_pt"][:10], first[1]["jet_pt"][:10])
    # same parameters in another output area -> bit-identical arrays
    other = tmp_path / "again"
    run_law.data_path.rename(other)
    run_law(*args)
    for f, a in zip(files, first, strict=True):
        b = _arrays(f)
        for key in a:
            if a[key].dtype == object:
                assert all(np.array_equal(x, y) for x, y in zip(a[key], b[key], strict=True))
            else:
                np.testing.assert_array_equal(a[key], b[key])
    clash = run_law("GenerateSamplesTask", "--process", "TT", "--n-files", 2,
                    "--events-per-file", 80, check=False)
    assert clash.returncode != 0
    assert "--events-per-file: '60' -> '80'" in clash.stdout + clash.stderr


def test_demo_dataset_from_generated_samples(run_law):
    args = ("DatasetConstructorTask", "--config", "demo", "--dataset-version", "d1",
            "--GenerateSamplesTask-n-files", 1, "--GenerateSamplesTask-events-per-file", 100)
    status = run_law(*args, "--print-status", "-1")
    assert "GenerateSamplesTask" in status.stdout and "absent" in status.stdout
    run_law(*args, "--workers", 2)
    generated = sorted((run_law.data_path / "GenerateSamplesTask" / "v1").rglob("*.root"))
    assert [f.name for f in generated] == ["QCD_0.root", "TT_0.root"]
    n_jets = sum(uproot.open(f)["deepntuplizer/tree"].num_entries for f in generated)
    info = json.loads((run_law.data_path / "DatasetConstructorTask" / "demo" / "d1" /
                       "dataset_info.json").read_text())
    # every generated jet has pT > 15 GeV, |eta| < 2.5 and exactly one label: all exported
    assert info["counts"]["selected"] == info["counts"]["entries"] == n_jets
    assert info["counts"]["multi_label"] == 0
