"""Configuration schema, shipped configs and error messages."""

from __future__ import annotations

import textwrap

import pytest

from utils.config import ConfigError, available_configs, label_to_class, load_config

OFFLINE_GLOBAL = [
    "jet_pt", "jet_eta", "n_Cpfcand", "n_Npfcand", "nsv", "npv",
    "TagVarCSV_trackSumJetEtRatio", "TagVarCSV_trackSumJetDeltaR", "TagVarCSV_vertexCategory",
    "TagVarCSV_trackSip2dValAboveCharm", "TagVarCSV_trackSip2dSigAboveCharm",
    "TagVarCSV_trackSip3dValAboveCharm", "TagVarCSV_trackSip3dSigAboveCharm",
    "TagVarCSV_jetNSelectedTracks", "TagVarCSV_jetNTracksEtaRel",
]


def test_shipped_configs_load():
    names = available_configs()
    for required in ("offline_run3", "hlt_run3", "hlt_phase2"):
        assert required in names
    for name in names:
        config = load_config(name)
        assert config.name == name
        assert config.reference_flavour in config.truth_labels


def test_offline_run3_contents(offline_config):
    c = offline_config
    assert c.tree_name == "deepntuplizer/tree"
    assert list(c.group("global").features) == OFFLINE_GLOBAL
    assert c.group("global").length is None
    assert (c.group("cpf").length, len(c.group("cpf").features)) == (25, 16)
    assert (c.group("npf").length, len(c.group("npf").features)) == (25, 6)
    assert (c.group("vtx").length, len(c.group("vtx").features)) == (4, 12)
    assert c.group("cpf").features[0] == "Cpfcan_BtagPf_trackEtaRel"
    assert c.group("vtx").features[-1] == "sv_enratio"
    assert c.truth_labels == ("isB", "isBB", "isGBB", "isLeptonicB", "isLeptonicB_C", "isC",
                              "isCC", "isGCC", "isUD", "isS", "isG")
    assert dict(c.classes) == {
        "b": ("isB",), "bb": ("isBB", "isGBB"), "lepb": ("isLeptonicB", "isLeptonicB_C"),
        "c": ("isC", "isCC", "isGCC"), "uds": ("isUD", "isS"), "g": ("isG",)}
    assert c.reference_flavour == "isB"
    assert c.pt_bins == (10, 25, 30, 35, 40, 45, 50, 60, 75, 100, 125, 150, 175, 200, 250,
                         300, 400, 500, 600, 2000)
    assert c.eta_bins == (-2.5, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5)
    windows = {p.name: p.pt_range for p in c.processes}
    assert windows == {"TT": (30, 1000), "QCD": (300, 1000)}
    # 15 + 25*16 + 25*6 + 4*12 input columns
    assert sum(g.width for g in c.groups) == 15 + 400 + 150 + 48


def test_hlt_configs_derive_from_offline(offline_config):
    hlt = load_config("hlt_run3")
    assert hlt.tree_name == "DeepJetNTupler/DeepJetvars"
    names = hlt.group("global").features
    assert "nCpfcan" in names and "nNpfcan" in names
    assert "n_Cpfcand" not in names and "n_Npfcand" not in names
    assert names[2:4] == ("nCpfcan", "nNpfcan")  # same position as offline
    assert hlt.pt_bins[0] == 30 and hlt.pt_bins[1:] == tuple(
        e for e in offline_config.pt_bins if e > 30)
    assert hlt.group("cpf") == offline_config.group("cpf")
    phase2 = load_config("hlt_phase2")
    assert phase2.eta_bins[0] == -4.0 and phase2.eta_bins[-1] == 4.0
    assert phase2.group("global") == hlt.group("global")
    assert all(p.eta_range == (-4.0, 4.0) for p in phase2.processes)


def _write_config(tmp_path, body: str, name: str = "broken.py"):
    path = tmp_path / name
    path.write_text("from config.offline_run3 import config as base\n"
                    "from utils.config import Config, FeatureGroup, Process\n"
                    + textwrap.dedent(body))
    return path


@pytest.mark.parametrize("body, key, fragment", [
    ("config = base.replace(colour='red')\n", "colour", "unknown key"),
    ("config = base.replace(reference_flavour='isX')\n", "reference_flavour",
     "not one of the truth labels"),
    ("config = base.replace(pt_bins=())\n", "pt_bins", "at least two bin edges"),
    ("config = base.replace(eta_bins=(0, 1, 1))\n", "eta_bins", "strictly increasing"),
    ("config = base.replace(classes={**base.classes, 'tau': ('isTau',)})\n", "classes.tau",
     "unknown truth label 'isTau'"),
    ("config = base.replace(classes={'b': ('isB',)})\n", "classes", "belong to no class"),
    ("config = base.replace(pt_key='jet_ptx')\n", "pt_key", "per-jet feature"),
    ("config = base.replace(storage_dtype='int8')\n", "storage_dtype", "float32"),
    ("config = base.replace_group('cpf', length=0)\n", "groups.cpf.length", "positive integer"),
    ("config = base.replace(processes=(Process('TT', '*TT*', pt_range=(5, 1)),))\n",
     "processes.TT.pt_range", "low < high"),
    ("config = base.replace(truths=base.truths + ('isB',))\n", "truths", "duplicate"),
])
def test_invalid_config_names_file_and_key(tmp_path, body, key, fragment):
    path = _write_config(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    message = str(err.value)
    assert str(path) in message
    assert f"key '{key}'" in message
    assert fragment in message


def test_missing_required_key(tmp_path):
    path = _write_config(tmp_path, "config = Config(tree_name='t')\n", "incomplete.py")
    with pytest.raises(ConfigError, match=r"incomplete.py: key 'processes': is required"):
        load_config(str(path))


def test_module_without_config_object(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="must define `config = Config"):
        load_config(str(path))


def test_unknown_config_name_lists_available():
    with pytest.raises(ConfigError, match=r"unknown config 'nope'.*offline_run3"):
        load_config("nope")


def test_fingerprint_tracks_exported_content(offline_config):
    same = offline_config.replace(description="another text")
    assert same.fingerprint() == offline_config.fingerprint()
    other = offline_config.replace_group("vtx", length=5)
    assert other.fingerprint() != offline_config.fingerprint()


def test_label_to_class_and_fingerprint_cover_the_class_grouping(offline_config):
    mapping = label_to_class(offline_config.classes)
    assert mapping["isB"] == 0 and mapping["isGBB"] == 1 and mapping["isG"] == 5
    assert len(mapping) == 11
    # swapping the labels of two classes (same class names) is a different config
    classes = dict(offline_config.classes)
    classes["uds"], classes["g"] = classes["g"], classes["uds"]
    swapped = offline_config.replace(classes=classes)
    assert list(swapped.classes) == list(offline_config.classes)
    assert swapped.fingerprint() != offline_config.fingerprint()
    assert label_to_class(swapped.classes)["isG"] == 4
    # so is another order of the classes (the order gives the class indices)
    reordered = offline_config.replace(classes=dict(reversed(offline_config.classes.items())))
    assert reordered.fingerprint() != offline_config.fingerprint()


def test_fingerprint_sees_function_constants_and_reference(offline_config):
    from utils.config import Derived

    low = offline_config.replace(selection=Derived("cut", ("jet_pt",), lambda jet_pt: jet_pt > 30))
    high = offline_config.replace(selection=Derived("cut", ("jet_pt",),
                                                    lambda jet_pt: jet_pt > 300))
    assert low.fingerprint() != high.fingerprint()
    assert offline_config.replace(reference_flavour="isC").fingerprint() != \
        offline_config.fingerprint()


def test_derived_may_use_derived(offline_config):
    from utils.config import Derived

    config = offline_config.replace_group(
        "global", derived=(Derived("abs_eta", ("jet_eta",), abs),)).replace(
        selection=Derived("central", ("abs_eta",), lambda abs_eta: abs_eta < 1.5))
    assert "abs_eta" not in config.branches and "jet_eta" in config.branches


def test_reweighting_section_is_validated(offline_config):
    assert offline_config.reweighting.method == "reference"
    assert offline_config.reweighting_reference == "isB"
    with pytest.raises(ConfigError, match="must give every class a fraction"):
        offline_config.replace(reweighting={"class_fractions": {"b": 1, "c": 1}})
    with pytest.raises(ConfigError, match="'isX' is neither a class"):
        offline_config.replace(reweighting={"reference": "isX"})
    with pytest.raises(ConfigError, match="quantile': must be in"):
        offline_config.replace(reweighting={"quantile": 0})
    by_class = offline_config.replace(reweighting={"reference": "b"})
    assert by_class.reweighting_reference == "b"
    # the resolved reference enters the fingerprint: None and the same flavour are equal
    same = offline_config.replace(reweighting={"reference": "isB"})
    assert same.fingerprint() == offline_config.fingerprint() != by_class.fingerprint()


def test_figure_labels_say_what_the_sample_is():
    assert load_config("demo").figure_text == "Private work (Pythia8 sample)"
    assert load_config("nanoaod_run3").figure_text == "CMS Simulation Private Work"
    custom = load_config("offline_run3").replace(figure_label="CMS Phase-2 Simulation")
    assert custom.figure_text == "CMS Phase-2 Simulation"
    with pytest.raises(ConfigError, match="key 'figure_label': must be a string"):
        load_config("offline_run3").replace(figure_label=3)


def test_integer_features_for_attacks(offline_config):
    from utils.config import FeatureGroup

    cpf = offline_config.group("cpf")
    assert cpf.frozen_features(reduce=True) == ("Cpfcan_VTX_ass", "Cpfcan_quality")
    assert cpf.frozen_features(reduce=False) == ()
    hlt = load_config("hlt_run3").group("global")
    assert "nCpfcan" in hlt.integer_features and "n_Cpfcand" not in hlt.integer_features
    pnet = load_config("hlt_run3_pnet").group("cpf")  # 4-vectors stay nominal by default
    assert set(pnet.frozen_features(reduce=False)) == {"Cpfcan_pt", "Cpfcan_eta",
                                                        "Cpfcan_phi", "Cpfcan_e"}
    free = load_config("hlt_run3_pnet").replace_group("cpf", attack_four_vector=True)
    assert free.group("cpf").frozen_features(reduce=False) == ()
    with pytest.raises(ConfigError, match=r"groups.cpf.integer_features.*\['nope'\] are not "
                                          "features of the group"):
        FeatureGroup("cpf", ("a", "b"), length=2, integer_features=("nope",))
    # attack declarations do not change what is exported
    assert offline_config.replace_group("cpf", integer_features=()).fingerprint() == \
        offline_config.fingerprint()


def test_reference_tagger_branches_are_optional_only_if_nothing_else_reads_them():
    config = load_config("nanoaod_run3")
    assert config.tagger_branches["UParTAK4"] == (
        "Jet_btagUParTAK4B", "Jet_btagUParTAK4CvL", "Jet_btagUParTAK4CvB", "Jet_btagUParTAK4QvG")
    assert config.tagger_branches["RobustParTAK4"][-1] == "Jet_btagRobustParTAK4QG"  # via 1 - x
    optional = config.optional_branches
    assert {"Jet_btagUParTAK4B", "Jet_btagRobustParTAK4QG", "Jet_btagDeepFlavB"} <= optional
    assert not optional & {"Jet_pt", "Jet_jetId", "Jet_hadronFlavour", "event", "Jet_phi"}
    assert "Jet_btagRobustParTAK4QG_UDSvsG" in config.optional_observers
    assert "Jet_phi" not in config.optional_observers
    # demo's track-counting reference is computed from an input feature: nothing optional
    assert load_config("demo").optional_branches == frozenset()
