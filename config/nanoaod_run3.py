"""CMS NanoAOD (v12-v15, Run 3): jets of the ``Events`` tree with the per-jet features
NanoAOD provides, truth from Jet_hadronFlavour / Jet_partonFlavour (classes b, c, uds, g) and
the CMS taggers stored in the files as references.

Versions: v12-v14 files store DeepJet, ParticleNet and RobustParTAK4 scores, v15 files
DeepJet, ParticleNet and UParTAK4. All four are declared; a tagger whose branches a file
lacks is named once by the export, stored as NaN and left out of the evaluation.

Jet selection: the tight Run 3 jet ID (bit 1 of ``Jet_jetId``). v15 files have no
``Jet_jetId``: the ``nanoaod`` processor computes it from ``Jet_chHEF``, ``Jet_neHEF``,
``Jet_chEmEF``, ``Jet_neEmEF``, ``Jet_muEF``, ``Jet_chMultiplicity`` and
``Jet_neMultiplicity`` with the JME Run 3 AK4 PUPPI criteria per eta region (source: JME
twiki JetID13p6TeV and JME's jetid.json correctionlib files, with the forward-region fix of
the v12/v13 flag; implemented in utils/processors/jet_id.py). Tight:

- abs(eta) <= 2.6: neHEF < 0.99, neEmEF < 0.90, chM + neM > 1, chHEF > 0.01, chM > 0
- 2.6 < abs(eta) <= 2.7: neHEF < 0.90, neEmEF < 0.99
- 2.7 < abs(eta) <= 3.0: neHEF < 0.99
- abs(eta) > 3.0: neEmEF < 0.40, neM >= 2

tight lepton veto: tight and, for abs(eta) <= 2.7, muEF < 0.80 and chEmEF < 0.80.
Within the config's window (abs(eta) < 2.5) the stored v12 flag is the one JME calls
correct, and the computation reproduces it on 1503 of the 1504 jets of the v12 test file
(the other has neEmEF stored rounded to 0.8984375 at the 0.90 cut; tests/test_jet_id.py)."""

import numpy as np

from utils.config import Config, Derived, FeatureGroup, Process


def _hadron(flavour):
    return lambda Jet_hadronFlavour: np.asarray(Jet_hadronFlavour) == flavour  # noqa: N803


def _light(Jet_hadronFlavour, Jet_partonFlavour):  # noqa: N803
    return (np.asarray(Jet_hadronFlavour) == 0) & np.isin(np.abs(np.asarray(Jet_partonFlavour)),
                                                          (1, 2, 3))


def _gluon(Jet_hadronFlavour, Jet_partonFlavour):  # noqa: N803
    return (np.asarray(Jet_hadronFlavour) == 0) & (np.asarray(Jet_partonFlavour) == 21)


def _one_minus(branch):
    """uds-vs-g score from a g-vs-uds branch."""
    return Derived(f"{branch}_UDSvsG", (branch,), lambda **v: 1.0 - np.asarray(v[branch]))


TRUTHS = (
    Derived("label_b", ("Jet_hadronFlavour",), _hadron(5)),
    Derived("label_c", ("Jet_hadronFlavour",), _hadron(4)),
    Derived("label_uds", ("Jet_hadronFlavour", "Jet_partonFlavour"), _light),
    Derived("label_g", ("Jet_hadronFlavour", "Jet_partonFlavour"), _gluon),
)
CLASSES = {"b": ("label_b",), "c": ("label_c",), "uds": ("label_uds",), "g": ("label_g",)}
PT_BINS = (20, 30, 40, 50, 60, 75, 100, 125, 150, 200, 300, 500, 1000, 3000)
ETA_BINS = (-2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5)


def name_pattern(name: str) -> str:
    """Paths with ``name``, in any case, at the start of a directory or file name or after
    ``_``, ``-`` or ``.`` (``/store/mc/<campaign>/TTtoLNu2Q_.../x.root``,
    ``nano_tt_v12.root``), never inside a word (a user directory ``mattia`` is not TT)."""
    return "*[/_.-]" + "".join(f"[{c.upper()}{c.lower()}]" for c in name) + "*"


PROCESSES = tuple(Process(name, name_pattern(name), pt_range=(30, 1000), eta_range=(-2.5, 2.5))
                  for name in ("TT", "QCD", "DY"))
TIGHT_JET_ID = Derived("tight_jet_id", ("Jet_jetId",),
                       lambda Jet_jetId: (np.asarray(Jet_jetId) & 2) > 0)  # noqa: N803

GLOBAL_FEATURES = (
    "Jet_pt", "Jet_eta", "Jet_mass", "Jet_area", "Jet_chHEF", "Jet_neHEF", "Jet_chEmEF",
    "Jet_neEmEF", "Jet_muEF", "Jet_nConstituents", "Jet_nElectrons", "Jet_nMuons", "Jet_nSVs",
)
DEEPJET = ("Jet_btagDeepFlavB", "Jet_btagDeepFlavCvL", "Jet_btagDeepFlavCvB",
           "Jet_btagDeepFlavQG")
PNET = ("Jet_btagPNetB", "Jet_btagPNetCvL", "Jet_btagPNetCvB", "Jet_btagPNetQvG")
PART = ("Jet_btagRobustParTAK4B", "Jet_btagRobustParTAK4CvL", "Jet_btagRobustParTAK4CvB",
        "Jet_btagRobustParTAK4QG")
UPART = ("Jet_btagUParTAK4B", "Jet_btagUParTAK4CvL", "Jet_btagUParTAK4CvB",
         "Jet_btagUParTAK4QvG")  # NanoAOD v15; QvG is quark-vs-gluon, as PNet's


def reference_taggers(taggers):
    """Reference discriminants from (label, (B, CvL, CvB, uds-vs-g)) observer names."""
    refs = {"BvsAll": {}, "BvsL": {}, "CvsL": {}, "CvsB": {}, "UDSvsG": {}}
    for label, (b, cvl, cvb, udsg) in taggers:
        refs["BvsAll"][label] = b
        refs["BvsL"][label] = b
        refs["CvsL"][label] = cvl
        refs["CvsB"][label] = cvb
        refs["UDSvsG"][label] = udsg
    return refs


config = Config(
    description="CMS NanoAOD v12-v15 jets with the stored CMS taggers as references",
    tree_name="Events",
    processor="nanoaod",
    processes=PROCESSES,
    pt_bins=PT_BINS,
    eta_bins=ETA_BINS,
    pt_key="Jet_pt",
    eta_key="Jet_eta",
    groups=(FeatureGroup("global", GLOBAL_FEATURES, integer_features=(
        "Jet_nConstituents", "Jet_nElectrons", "Jet_nMuons", "Jet_nSVs")),),
    truths=TRUTHS,
    classes=CLASSES,
    reference_flavour="label_b",
    selection=TIGHT_JET_ID,
    observers=("Jet_phi", "event", "Jet_hadronFlavour", "Jet_partonFlavour",
               *DEEPJET[:3], *PNET, *PART[:3], *UPART, _one_minus("Jet_btagDeepFlavQG"),
               _one_minus("Jet_btagRobustParTAK4QG")),
    reference_taggers=reference_taggers((
        ("DeepJet", (*DEEPJET[:3], "Jet_btagDeepFlavQG_UDSvsG")),
        ("ParticleNet", PNET),
        ("RobustParTAK4", (*PART[:3], "Jet_btagRobustParTAK4QG_UDSvsG")),
        ("UParTAK4", UPART),
    )),
)
