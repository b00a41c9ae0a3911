"""NanoAOD / PFNano processor and reference taggers on the real CMS test files."""

from __future__ import annotations

import json
import textwrap

import awkward as ak
import numpy as np
import pytest
import uproot
from coffea.nanoevents import BaseSchema, NanoEventsFactory
from sklearn.metrics import roc_auc_score

from tests.conftest import CMS_DATA
from utils.config import load_config
from utils.dataset.chunk_format import read_chunk
from utils.dataset.directory import DatasetDirectory
from utils.dataset.export import export_dataset
from utils.processors.nanoaod import NanoAODProcessor

pytestmark = pytest.mark.skipif(not CMS_DATA.is_dir(),
                                reason=f"real CMS test files not available ({CMS_DATA})")
TT = CMS_DATA / "nano_tt_v12.root"
PFNANO = CMS_DATA / "pfnano.root"
DY = CMS_DATA / "nano_dy.root"


def _events(path):
    return NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=BaseSchema,
                                       mode="virtual", metadata={"entrystart": 0}).events()


def _processor(config, tmp_path):
    return NanoAODProcessor(config, tmp_path, {})


def _config_file(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return load_config(str(path))


def test_flavour_counts_before_selection(tmp_path):
    proc = _processor(load_config("nanoaod_run3"), tmp_path)
    n, column, jet_id = proc.jet_source(_events(TT))
    flavour = np.asarray(column("Jet_hadronFlavour"))
    assert n == 1504 == len(np.unique(jet_id))
    assert {5: 406, 4: 150, 0: 948} == {f: int((flavour == f).sum()) for f in (5, 4, 0)}


def test_export_matches_independent_selection(tmp_path):
    config = load_config("nanoaod_run3")
    out = tmp_path / "out"
    out.mkdir()
    summary = export_dataset(config, [str(TT)], out, out, chunk_size=500, executor="iterative")
    jets = uproot.open(TT)["Events"].arrays(["Jet_pt", "Jet_eta", "Jet_jetId",
                                             "Jet_hadronFlavour", "Jet_partonFlavour",
                                             "Jet_btagDeepFlavB", "event"])
    flat = {k: ak.to_numpy(ak.flatten(jets[k])) for k in jets.fields if k != "event"}
    event = ak.to_numpy(ak.flatten(ak.broadcast_arrays(jets.event, jets.Jet_pt)[0]))
    had, part = flat["Jet_hadronFlavour"], np.abs(flat["Jet_partonFlavour"])
    labelled = (had == 5) | (had == 4) | ((had == 0) & (np.isin(part, (1, 2, 3)) |
                                                       (flat["Jet_partonFlavour"] == 21)))
    selected = ((flat["Jet_pt"] >= 20) & (flat["Jet_pt"] < 3000) & (flat["Jet_eta"] >= -2.5)
                & (flat["Jet_eta"] < 2.5) & ((flat["Jet_jetId"] & 2) > 0) & labelled)
    rows = np.concatenate([read_chunk(p)[0] for p in DatasetDirectory(out).files()])
    layout = read_chunk(DatasetDirectory(out).files()[0])[1]
    assert len(rows) == summary.counts["selected"] == int(selected.sum())
    np.testing.assert_array_equal(np.sort(rows[:, layout.column("Jet_pt")]),
                                  np.sort(flat["Jet_pt"][selected]))
    observers = layout.decode_observers(rows)
    pairs = set(zip(observers["event"].astype(np.int64), observers["Jet_btagDeepFlavB"],
                    strict=True))
    expected = set(zip(event[selected].astype(np.int64),
                       flat["Jet_btagDeepFlavB"][selected].astype(np.float64), strict=True))
    assert pairs == expected  # observers travel exactly (event numbers, tagger scores)


def test_reference_auc_equals_independent_computation(run_law, tmp_path):
    filelist = tmp_path / "files.txt"
    filelist.write_text(f"{TT}\n")
    run_law("ReferenceROCTask", "--config", "nanoaod_run3", "--dataset-version", "tt",
            "--filelist", filelist, "--DatasetConstructorTask-executor", "iterative")
    out = run_law.data_path / "ReferenceROCTask" / "nanoaod_run3" / "tt"
    summary = json.loads((out / "summary.json").read_text())
    jets = uproot.open(TT)["Events"].arrays(["Jet_pt", "Jet_eta", "Jet_jetId",
                                             "Jet_hadronFlavour", "Jet_partonFlavour",
                                             "Jet_btagDeepFlavB"])
    f = {k: ak.to_numpy(ak.flatten(jets[k])) for k in jets.fields}
    had, part = f["Jet_hadronFlavour"], f["Jet_partonFlavour"]
    labelled = (had > 0) | ((had == 0) & (np.isin(np.abs(part), (1, 2, 3)) | (part == 21)))
    window = (f["Jet_pt"] >= 30) & (f["Jet_pt"] < 1000) & (np.abs(f["Jet_eta"]) < 2.5) & \
        ((f["Jet_jetId"] & 2) > 0) & labelled
    expected = roc_auc_score(had[window] == 5, f["Jet_btagDeepFlavB"][window])
    assert summary["TT"]["BvsAll"]["DeepJet"]["auc"] == pytest.approx(expected, abs=1e-12)
    for tagger in ("DeepJet", "ParticleNet", "RobustParTAK4"):
        assert summary["TT"]["BvsL"][tagger]["auc"] > 0.95
    assert (out / "roc_TT_BvsL.png").exists() and (out / "roc_TT_BvsAll__DeepJet.npz").exists()


def test_pfnano_candidate_counts(tmp_path):
    config = load_config("pfnano_run3")
    proc = _processor(config, tmp_path)
    events = _events(PFNANO)
    n, column, _ = proc.jet_source(events)
    arrays = uproot.open(PFNANO)["Events"].arrays(["nJet", "JetPFCands_jetIdx",
                                                  "JetPFCands_pFCandsIdx", "PFCands_charge"])
    charge = arrays.PFCands_charge[arrays.JetPFCands_pFCandsIdx]
    n_jets = ak.to_numpy(arrays.nJet).astype(np.int64)
    jet = ak.to_numpy(ak.flatten(arrays.JetPFCands_jetIdx + (np.cumsum(n_jets) - n_jets)))
    charged = ak.to_numpy(ak.flatten(charge != 0))
    expected_charged = np.bincount(jet[charged], minlength=n)
    expected_neutral = np.bincount(jet[~charged], minlength=n)
    np.testing.assert_array_equal(ak.to_numpy(ak.num(column("Cpfcan_pt"))), expected_charged)
    np.testing.assert_array_equal(ak.to_numpy(ak.num(column("Npfcan_pt"))), expected_neutral)
    assert expected_charged.sum() > 0 and expected_neutral.sum() > 0
    # per-pair JetPFCands fields follow the same pairs as the PFCands fields
    assert ak.all(ak.num(column("Cpfcan_btagSip3dSig")) == ak.num(column("Cpfcan_pt")))
    # SVs: within dR < 0.4 of the jet, ordered by decreasing dlenSig
    sig = column("sv_dlenSig")
    assert ak.all(sig[:, :-1] >= sig[:, 1:])


def test_pfnano_export_sorted_and_padded(tmp_path):
    base = load_config("pfnano_run3")
    config = _config_file(tmp_path, "pfnano_any", """
        from config.pfnano_run3 import config as pfnano
        from utils.config import Process
        config = pfnano.replace(processes=(Process("TT", "*pfnano*"),))
    """)
    out = tmp_path / "out"
    out.mkdir()
    export_dataset(config, [str(PFNANO)], out, out, chunk_size=1000, executor="iterative")
    rows, layout = read_chunk(DatasetDirectory(out).files()[0])
    cpf = rows[:, layout.slice("cpf")].reshape(len(rows), 25, -1)
    sip = cpf[:, :, layout.block("cpf").features.index("Cpfcan_btagSip3dSig")]
    real = np.abs(cpf).sum(axis=2) > 0
    assert real.any() and np.all(real[:, :-1] >= real[:, 1:])  # padding only at the end
    both = real[:, :-1] & real[:, 1:]
    assert np.all(sip[:, :-1][both] >= sip[:, 1:][both])
    assert base.group("cpf").sort_by == "Cpfcan_btagSip3dSig"


def test_dy_without_b_jets_reports_instead_of_crashing(run_law, tmp_path):
    config = tmp_path / "nano_dy_config.py"
    config.write_text(textwrap.dedent("""
        from config.nanoaod_run3 import config as nano
        from utils.config import FeatureGroup
        config = nano.replace(
            groups=(FeatureGroup("global", ("Jet_pt", "Jet_eta", "Jet_mass", "Jet_chHEF")),),
            observers=("event", "Jet_btagDeepFlavB", "Jet_btagCSVV2"),
            reference_taggers={"BvsAll": {"DeepJet": "Jet_btagDeepFlavB",
                                          "CSVv2": "Jet_btagCSVV2"},
                               "BvsL": {"DeepJet": "Jet_btagDeepFlavB"}},
        )
    """))
    filelist = tmp_path / "files.txt"
    filelist.write_text(f"{DY}\n")
    proc = run_law("ReferenceROCTask", "--config", config, "--dataset-version", "dy",
                   "--filelist", filelist, "--DatasetConstructorTask-executor", "iterative")
    assert "DY BvsAll: need signal and background jets, got 0 signal" in proc.stdout
    out = run_law.data_path / "ReferenceROCTask" / "nano_dy_config" / "dy"
    summary = json.loads((out / "summary.json").read_text())
    assert "0 signal" in summary["DY"]["BvsAll"]["error"]


def v15_like(path, tmp_path):
    """The v12 file as NanoAOD v15 has it: no Jet_jetId, Jet_chMultiplicity and
    Jet_neMultiplicity (v12 has neither: chM = 1 where chHEF > 0, the rest neutral), and the
    RobustParTAK4 scores under UParTAK4 names."""
    with uproot.open(path) as f:
        tree = f["Events"]
        jets = tree.arrays([k for k in tree.keys() if k.startswith("Jet_")
                            and k != "Jet_jetId"])
        event = tree["event"].array()
    fields = {k[len("Jet_"):].replace("RobustParTAK4QG", "UParTAK4QvG")
              .replace("RobustParTAK4", "UParTAK4"): jets[k] for k in jets.fields}
    charged = ak.values_astype(fields["chHEF"] > 0, np.int32)
    fields["chMultiplicity"] = charged
    fields["neMultiplicity"] = ak.values_astype(fields["nConstituents"], np.int32) - charged
    out = tmp_path / "nano_tt_v15like.root"
    with uproot.recreate(out) as f:
        f.mktree("Events", {"Jet": ak.type(ak.zip(fields)), "event": event.type.content})
        f["Events"].extend({"Jet": ak.zip(fields), "event": event})
    return out


def test_jet_id_is_computed_where_the_file_has_none(tmp_path):
    """v15 files: the selection's Jet_jetId comes from the fractions and multiplicities; on
    the v12 jets it reproduces the stored tight flag on every jet but one (a fraction
    stored rounded at the cut, see tests/test_jet_id.py)."""
    config = load_config("nanoaod_run3")
    v15 = v15_like(TT, tmp_path)
    with uproot.open(v15) as f:
        assert "Jet_jetId" not in f["Events"] and "Jet_chMultiplicity" in f["Events"]
    needed, missing = NanoAODProcessor.source_branches(
        config, set(uproot.open(v15)["Events"].keys()))
    assert "Jet_jetId" not in needed and "Jet_neMultiplicity" in needed
    assert [m for m in missing if "jetId" in m] == []
    computed = np.asarray(_processor(config, tmp_path).jet_source(_events(v15))[1]("Jet_jetId"))
    stored = np.asarray(_processor(config, tmp_path).jet_source(_events(TT))[1]("Jet_jetId"))
    eta = np.abs(ak.to_numpy(ak.flatten(uproot.open(TT)["Events"]["Jet_eta"].array())))
    central = eta <= 2.7
    assert ((computed[central] & 2) != (stored[central] & 2)).sum() == 1
    # without the stored flag and the multiplicities, the pre-flight check names both
    _, missing = NanoAODProcessor.source_branches(
        config, set(uproot.open(v15)["Events"].keys()) - {"Jet_chMultiplicity"})
    assert any(m.startswith("Jet_jetId (or, to compute it, Jet_eta, Jet_chHEF") and
               "Jet_chMultiplicity, Jet_neMultiplicity)" in m for m in missing)


def test_v15_file_exports_with_the_taggers_it_has(run_law, tmp_path):
    """A v15-like file: the export names RobustParTAK4 as absent instead of failing; the
    reference ROCs and working points show DeepJet, ParticleNet and UParTAK4, the latter with
    the scores RobustParTAK4 has on the same jets of the v12 file."""
    v15 = v15_like(TT, tmp_path)
    results = {}
    for name, path in (("v12", TT), ("v15", v15)):
        filelist = tmp_path / f"{name}.txt"
        filelist.write_text(f"{path}\n")
        run = run_law("ReferenceROCTask", "--config", "nanoaod_run3", "--dataset-version", name,
                      "--filelist", filelist, "--DatasetConstructorTask-executor", "iterative")
        out = run_law.data_path / "ReferenceROCTask" / "nanoaod_run3" / name
        results[name] = run.stdout + run.stderr, json.loads((out / "summary.json").read_text())
    text, v15_summary = results["v15"]
    assert "Reference tagger RobustParTAK4: 1 of 1 input file(s) lack" in text
    assert "Reference tagger UParTAK4" not in text
    assert set(v15_summary["TT"]["BvsL"]) == {"DeepJet", "ParticleNet", "UParTAK4"}
    v12_text, v12_summary = results["v12"]
    assert "Reference tagger UParTAK4: 1 of 1 input file(s) lack" in v12_text
    assert set(v12_summary["TT"]["BvsL"]) == {"DeepJet", "ParticleNet", "RobustParTAK4"}
    for disc in ("BvsL", "BvsAll", "CvsL", "CvsB"):
        assert v15_summary["TT"][disc]["UParTAK4"] == v12_summary["TT"][disc]["RobustParTAK4"]
        assert v15_summary["TT"][disc]["DeepJet"] == v12_summary["TT"][disc]["DeepJet"]
