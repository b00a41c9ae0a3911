"""The original b-hive's YAML configs: the schema read into a Config, the safe expression
interpreter of custom features, dict truths, errors naming file/key/expression, loading by
name, the Python converter, and an export with a YAML config."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from utils.config import ConfigError, load_config
from utils.config.convert import python_source
from utils.config.expressions import Expression, ExpressionError
from utils.config.legacy import read_yaml_config
from utils.dataset.chunk_format import read_chunk
from utils.dataset.directory import DatasetDirectory
from utils.dataset.export import export_dataset
from utils.synthetic import synthetic_arrays, write_ntuple

PART_YAML = """
bins_pt:  [10, 25, 30, 35, 40, 45, 50, 60, 75, 100, 125, 150, 175, 200, 250, 300, 400, 500,
  600, 2001]
bins_eta: [-2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1, 1.5, 2.0, 2.51]
processes: ["TT", "QCD"]
process-weights: {TT: 1.0, QCD: 1.0}
TT:  {pt_min: 30, pt_max: 1000}
QCD: {pt_min: 30, pt_max: 1000, eta_min: -2.5, eta_max: 2.5}
treename: "deepntuplizer/tree"
processor: "LZ4Processing"
dataset: "LZ4Dataset"
global_features: [jet_pt, jet_eta, n_Cpfcand, n_Npfcand, nsv, npv]
global_custom_features:
  - jet_px: "np.cos(jet_phi) * jet_pt"
cpf_candidates: [Cpfcan_BtagPf_trackSip2dSig, Cpfcan_ptrel, Cpfcan_pt, Cpfcan_eta, Cpfcan_phi,
  Cpfcan_e]
npf_candidates: [Npfcan_ptrel, Npfcan_isGamma, Npfcan_pt, Npfcan_eta, Npfcan_phi, Npfcan_e]
npf_custom_features:
  - Npfcan_mass: "np.where(Npfcan_isGamma > 0, 0, np.sqrt(np.maximum(Npfcan_e**2
      - (Npfcan_pt * np.cosh(Npfcan_eta))**2, 0)))"
vtx_features: [sv_deltaR, sv_mass, sv_pt, sv_eta, sv_phi, sv_e]
n_cpf_candidates: 26
n_npf_candidates: 25
n_vtx_candidates: 5
truths: [isB, isBB, isGBB, isLeptonicB, isLeptonicB_C, isC, isCC, isGCC, isUD, isS, isG]
reference_flavour: "isB"
"""

PNET_TRUTHS = """
bins_pt: [30, 100, 1000]
bins_eta: [-2.5, 0, 2.5]
processes: ["default"]
treename: "Events"
global_features: [jet_pt, jet_eta]
truths:
  label_b: [{jet_tauflav: [0]}, {jet_hflav: [5]}]
  label_c: [{jet_tauflav: 0}, {jet_hflav: [4]}]
  label_uds: [{jet_tauflav: [0]}, {jet_hflav: [0]}, {jet_pflav: [-3, -2, -1, 1, 2, 3]}]
  label_g: [{jet_tauflav: [0]}, {jet_hflav: [0]}, {jet_pflav: [21]}]
  label_taup: [{jet_tauflav: [1]}, {jet_elflav: [0]}, {jet_taucharge: [{">": 0}]}]
reference_flavour: label_b
pt_key: jet_pt
eta_key: jet_eta
data_precision: float16
"""


def write(tmp_path, text, name="legacy.yml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def offline_yaml() -> dict:
    """offline_run3 written in the original's schema (its DeepJet feature lists)."""
    config = load_config("offline_run3")
    groups = {g.name: g for g in config.groups}
    return {"bins_pt": list(config.pt_bins), "bins_eta": list(config.eta_bins),
            "processes": ["TT", "QCD"], "TT": {"pt_min": 30, "pt_max": 1000},
            "QCD": {"pt_min": 300, "pt_max": 1000}, "treename": "deepntuplizer/tree",
            "global_features": list(groups["global"].branches),
            "cpf_candidates": list(groups["cpf"].branches),
            "npf_candidates": list(groups["npf"].branches),
            "vtx_features": list(groups["vtx"].branches),
            "n_cpf_candidates": groups["cpf"].length, "n_npf_candidates":
                groups["npf"].length, "n_vtx_features": groups["vtx"].length,
            "truths": list(config.truths), "reference_flavour": "isB"}


def test_offline_deepjet_yaml_matches_the_python_config(tmp_path):
    path = write(tmp_path, yaml.safe_dump(offline_yaml()), "offline_run3.yml")
    config, python = read_yaml_config(path), load_config("offline_run3")
    assert config.name == "offline_run3" and config.tree_name == "deepntuplizer/tree"
    assert [(g.name, g.features, g.length) for g in config.groups] == \
        [(g.name, g.features, g.length) for g in python.groups]
    assert config.truths == python.truths and dict(config.classes) == dict(python.classes)
    assert [(p.name, p.pattern, p.pt_range) for p in config.processes] == \
        [("TT", "*TT*", (30.0, 1000.0)), ("QCD", "*QCD*", (300.0, 1000.0))]
    assert config.pt_bins == python.pt_bins and config.reference_flavour == "isB"


def test_part_yaml_with_four_vectors_and_custom_features(tmp_path):
    config = read_yaml_config(write(tmp_path, PART_YAML))
    groups = {g.name: g for g in config.groups}
    assert groups["global"].features[-1] == "jet_px"
    assert groups["cpf"].length == 26 and groups["vtx"].length == 5
    assert groups["cpf"].four_vector == ("Cpfcan_pt", "Cpfcan_eta", "Cpfcan_phi", "Cpfcan_e")
    assert groups["vtx"].four_vector == ("sv_pt", "sv_eta", "sv_phi", "sv_e")
    assert groups["npf"].features[-1] == "Npfcan_mass"
    assert set(groups["npf"].derived[0].uses) == {"Npfcan_isGamma", "Npfcan_e", "Npfcan_pt",
                                                  "Npfcan_eta"}
    assert config.processes[1].eta_range == (-2.5, 2.5)
    assert config.processes[0].eta_range == (-np.inf, np.inf)
    # the custom features computed through the export, checked against the input file
    arrays = synthetic_arrays(config, 800, seed=4)
    arrays["jet_phi"] = np.random.default_rng(5).uniform(-np.pi, np.pi, 800).astype(np.float32)
    ntuple = write_ntuple(tmp_path / "TT_0.root", config.tree_name, arrays)
    out = tmp_path / "dataset"
    out.mkdir()
    export_dataset(config, [str(ntuple)], out, out, chunk_size=1000, executor="iterative")
    rows, layout = read_chunk(DatasetDirectory(out).files()[0])
    with uproot.open(ntuple) as f:
        jets = f["deepntuplizer/tree"].arrays(["jet_pt", "jet_phi"], library="np")
    by_pt = dict(zip(jets["jet_pt"].astype(np.float32), np.cos(jets["jet_phi"]) *
                     jets["jet_pt"], strict=True))
    stored = rows[:, [layout.column("jet_pt"), layout.column("jet_px")]]
    np.testing.assert_allclose(stored[:, 1], [by_pt[p] for p in stored[:, 0]], rtol=1e-6)


def test_dict_truths_or_values_and_operators(tmp_path):
    config = read_yaml_config(write(tmp_path, PNET_TRUTHS))
    assert dict(config.classes) == {"b": ("label_b",), "c": ("label_c",),
                                    "uds": ("label_uds",), "g": ("label_g",),
                                    "taup": ("label_taup",)}
    assert config.processes[0].pattern == "*" and config.storage_dtype == "float16"
    columns = {"jet_tauflav": np.array([0, 0, 0, 0, 1, 1]),
               "jet_hflav": np.array([5, 4, 0, 0, 0, 0]),
               "jet_pflav": np.array([5, 4, -2, 21, 0, 0]),
               "jet_elflav": np.array([0, 0, 0, 0, 0, 0]),
               "jet_taucharge": np.array([0, 0, 0, 0, 1, -1])}
    flags = {t.name: t(columns).tolist() for t in config.truths}
    assert flags == {"label_b": [1, 0, 0, 0, 0, 0], "label_c": [0, 1, 0, 0, 0, 0],
                     "label_uds": [0, 0, 1, 0, 0, 0], "label_g": [0, 0, 0, 1, 0, 0],
                     "label_taup": [0, 0, 0, 0, 1, 0]}


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('true')", "'__import__('os')' is not allowed: only np."),
    ("__import__('os')", "'__import__' cannot be called"),
    ("jet_pt.real", "'jet_pt' is not allowed: only np.<function>"),
    ("np.load('x.npy')", "'np.load' is not an allowed function"),
    ("open('x')", "'open' cannot be called"),
    ("jet_pt[0]", "'jet_pt[0]' is not allowed"),
    ("lambda: 1", "'lambda: 1' is not allowed"),
    ("np", "'np' is only allowed in calls"),
    ("jet_pt +", "not a valid expression"),
])
def test_expressions_outside_the_allow_list_are_refused(tmp_path, expression, message):
    with pytest.raises(ExpressionError, match=re.escape(message)):
        Expression(expression)
    text = PART_YAML.replace('"np.cos(jet_phi) * jet_pt"', yaml.safe_dump(expression).split(
        "\n")[0])
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"{path}: key 'global_custom_features.jet_px': "
                       r"expression .*"):
        read_yaml_config(path)


def test_expression_values_and_branch_names():
    e = Expression("np.where(a > 1, np.sqrt(b) * np.pi, -c ** 2) + ak.num(d, axis=1)")
    assert e.names == ["a", "b", "c", "d"]
    d = ak.Array([[1, 2], [3]])
    out = e(a=np.array([2.0, 0.0]), b=np.array([4.0, 9.0]), c=np.array([1.0, 3.0]), d=d)
    np.testing.assert_allclose(out, [2 * np.pi + 2, -9 + 1])
    assert repr(e) == ("Expression('np.where(a > 1, np.sqrt(b) * np.pi, -c ** 2) + "
                       "ak.num(d, axis=1)')")


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "key 'colour': unknown key"),
    ({"bins_pt": [10]}, "key 'bins_pt': must be a list of at least two bin edges"),
    ({"n_cpf_candidates": None}, "key 'n_cpf_candidates': missing"),
    ({"truths": {"label_b": [{"hflav": [{"~": 5}]}]}}, "operator maps take one of"),
    ({"reference_flavour": "isX"}, "key 'reference_flavour'"),
    ({"truths": {"label_b": [{"hflav": {">": "four"}}]}},
     "condition values are numbers or operator maps, got {'>': 'four'}"),
    ({"truths": {"label_b": [{"hflav": [True]}]}}, "got True"),
    ({"TT": {"pt_min": "30", "pt_max": 1000}},
     "key 'TT': pt_min/pt_max must be (low, high) with low < high, got ('30', 1000)"),
    ({"QCD": {"eta_min": 2, "eta_max": -2}}, "key 'QCD': eta_min/eta_max must be (low, high)"),
])
def test_yaml_errors_name_the_file_and_key(tmp_path, change, message):
    raw = offline_yaml()
    for key, value in change.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    path = write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=str(path)) as info:
        read_yaml_config(path)
    assert message in str(info.value)


def test_default_process_takes_its_window(tmp_path):
    """``processes: [default]`` with a ``default:`` window: every file, that window (the
    original reads it too); a misspelt window key is refused."""
    config = read_yaml_config(write(tmp_path, PNET_TRUTHS + "default: {pt_min: 100, "
                                    "pt_max: 200, eta_max: 1.5}\n"))
    (process,) = config.processes
    assert (process.name, process.pattern, process.pt_range, process.eta_range) == \
        ("default", "*", (100.0, 200.0), (-math.inf, 1.5))
    path = write(tmp_path, PNET_TRUTHS + "default: {pt_min: 100, ptmax: 200}\n")
    with pytest.raises(ConfigError, match=rf"{path}: key 'default': a process window is"):
        read_yaml_config(path)


def test_config_by_name_reads_config_dir_yaml(tmp_path, monkeypatch):
    (tmp_path / "config").mkdir()
    write(tmp_path / "config", yaml.safe_dump(offline_yaml()), "my_study.yml")
    monkeypatch.setenv("B_HIVE_DIR", str(tmp_path))
    load_config.cache_clear()
    try:
        assert load_config("my_study").name == "my_study"
        assert load_config("my_study.yml").groups == load_config("my_study").groups
        from utils.config import available_configs

        assert "my_study" in available_configs()
    finally:
        load_config.cache_clear()


def test_converter_writes_an_equivalent_python_config(tmp_path):
    path = write(tmp_path, PART_YAML, "part_legacy.yml")
    converted = tmp_path / "part_legacy.py"
    proc = subprocess.run([sys.executable, "-m", "utils.config.convert", str(path)],
                          capture_output=True, text=True, check=True)
    converted.write_text(proc.stdout)
    assert converted.read_text() == python_source(read_yaml_config(path), path)
    python = load_config(str(converted))
    assert python.fingerprint() == read_yaml_config(path).fingerprint()
    assert python.groups[0].derived[0].function(jet_phi=np.array([0.0]),
                                                jet_pt=np.array([5.0])) == pytest.approx(5.0)
    failed = subprocess.run([sys.executable, "-m", "utils.config.convert",
                             str(tmp_path / "missing.yml")], capture_output=True, text=True)
    assert failed.returncode == 1 and "missing.yml: cannot be read as YAML" in failed.stderr
