"""Branch schema of the generated DeepNTuples-style trees (one entry per jet)."""

from __future__ import annotations

import awkward as ak
import numpy as np

TREE_NAME = "deepntuplizer/tree"

F4, I4, I8 = np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.int64)

#: per-jet branches: name -> (dtype, description with unit)
JET_BRANCHES: dict[str, tuple[np.dtype, str]] = {
    "event": (I8, "event number within the file"),
    "jet_pt": (F4, "jet transverse momentum [GeV]"),
    "jet_eta": (F4, "jet pseudorapidity"),
    "jet_phi": (F4, "jet azimuth [rad]"),
    "jet_mass": (F4, "jet invariant mass [GeV]"),
    "jet_energy": (F4, "jet energy [GeV]"),
    "n_Cpfcand": (F4, "number of charged candidates (= nCpfcan)"),
    "n_Npfcand": (F4, "number of neutral candidates (= nNpfcan)"),
    "npv": (F4, "reconstructed primary vertices: 1 + resolved pileup vertices"),
    "TagVarCSV_trackSumJetEtRatio": (F4, "E_T of the selected-track sum / jet E_T"),
    "TagVarCSV_trackSumJetDeltaR": (F4, "dR(selected-track sum, jet axis); 0 without tracks"),
    "TagVarCSV_vertexCategory": (F4, "0 = RecoVertex (>= 1 SV), 2 = NoVertex"),
    "TagVarCSV_trackSip2dValAboveCharm": (
        F4, "2D IP of the first track lifting the track mass above 1.5 GeV [cm]; -1 if none"),
    "TagVarCSV_trackSip2dSigAboveCharm": (
        F4, "2D IP significance of that track; -1 if none"),
    "TagVarCSV_trackSip3dValAboveCharm": (
        F4, "signed 3D IP of that track [cm]; -1 if none"),
    "TagVarCSV_trackSip3dSigAboveCharm": (
        F4, "3D IP significance of that track; -1 if none"),
    "TagVarCSV_jetNSelectedTracks": (F4, "number of tracks passing the CSV track selection"),
    "TagVarCSV_jetNTracksEtaRel": (F4, "number of tracks in secondary vertices"),
    "isB": (I4, "one B hadron, no semileptonic decay (0/1)"),
    "isBB": (I4, ">= 2 B hadrons, not from one gluon splitting (0/1)"),
    "isGBB": (I4, ">= 2 B hadrons, two from one g -> bb splitting (0/1)"),
    "isLeptonicB": (I4, "one B hadron with an e/mu among its daughters (0/1)"),
    "isLeptonicB_C": (I4, "one B hadron, e/mu from its C-hadron daughter (0/1)"),
    "isC": (I4, "no B, one C hadron (0/1)"),
    "isCC": (I4, "no B, >= 2 C hadrons, not from one gluon splitting (0/1)"),
    "isGCC": (I4, "no B, >= 2 C hadrons, two from one g -> cc splitting (0/1)"),
    "isUD": (I4, "no B/C hadron, leading parton u/d/c/b or none (0/1)"),
    "isS": (I4, "no B/C hadron, leading parton s (0/1)"),
    "isG": (I4, "no B/C hadron, leading parton gluon (0/1)"),
    "jet_hadronFlavour": (I4, "5 with a B hadron, 4 with a C hadron (no B), else 0"),
    "jet_partonFlavour": (I4, "PDG id of the leading ghost parton, 0 if none"),
}

#: jagged candidate groups: group -> (counter branch, {field: description}); all float32;
#: the branch of a field is ``<group>_<field>``
GROUPS: dict[str, tuple[str, dict[str, str]]] = {
    "Cpfcan": ("nCpfcan", {
        "BtagPf_trackEtaRel": "rapidity of the track (pion mass) w.r.t. the jet axis",
        "BtagPf_trackPtRel": "track momentum transverse to the jet axis [GeV]",
        "BtagPf_trackPPar": "track momentum along the jet axis [GeV]",
        "BtagPf_trackDeltaR": "dR(track, jet axis)",
        "BtagPf_trackPParRatio": "track momentum along the jet axis / track momentum",
        "BtagPf_trackSip2dVal": "signed transverse impact parameter [cm]",
        "BtagPf_trackSip2dSig": "signed transverse impact parameter significance",
        "BtagPf_trackSip3dVal": "signed 3D impact parameter [cm]",
        "BtagPf_trackSip3dSig": "signed 3D impact parameter significance",
        "BtagPf_trackJetDistVal": "minus the distance of closest approach track-jet axis [cm]",
        "ptrel": "track pT / jet pT",
        "drminsv": "min dR(track, SV momentum) in the jet, at most 0.4",
        "VTX_ass": "PV association quality: 7 if |Sip3dSig| < 3 else 5",
        "puppiw": "PUPPI weight (1: tracks passing charged-hadron subtraction)",
        "chi2": "normalised track chi2 (chi2(20)/20, larger for mismeasured tracks)",
        "quality": "track quality mask (always 7 = highPurity)",
        "pt": "track transverse momentum [GeV]",
        "eta": "track pseudorapidity",
        "phi": "track azimuth [rad]",
        "e": "track energy [GeV]",
        "isPileup": "generator truth: 1 for a pileup track (validation only, not an input)",
    }),
    "Npfcan": ("nNpfcan", {
        "ptrel": "candidate pT / jet pT",
        "deltaR": "dR(candidate, jet axis)",
        "isGamma": "1 for photons (ECAL), 0 for neutral hadrons (HCAL)",
        "HadFrac": "hadronic energy fraction (1 neutral hadron, 0 photon)",
        "drminsv": "min dR(candidate, SV momentum) in the jet, at most 0.4",
        "puppiw": "PUPPI-like weight (1 without pileup)",
        "pt": "candidate transverse momentum [GeV]",
        "eta": "candidate pseudorapidity",
        "phi": "candidate azimuth [rad]",
        "e": "candidate energy (smeared) [GeV]",
        "isPileup": "generator truth: 1 for a pileup deposit (validation only, not an input)",
    }),
    "sv": ("nsv", {
        "pt": "SV transverse momentum (sum of tracks) [GeV]",
        "deltaR": "dR(SV momentum, jet axis) - 0.5 (DeepNTuples convention)",
        "mass": "invariant mass of the SV tracks (pion mass) [GeV]",
        "ntracks": "number of tracks of the SV",
        "chi2": "vertex fit chi2 (random chi2 with 2 ntracks - 3 dof)",
        "normchi2": "chi2 / (2 ntracks - 3)",
        "dxy": "transverse flight distance from the PV [cm]",
        "dxysig": "transverse flight distance significance",
        "d3d": "3D flight distance from the PV [cm]",
        "d3dsig": "3D flight distance significance",
        "costhetasvpv": "cosine between the flight direction and the SV momentum",
        "enratio": "SV energy / jet energy",
        "eta": "SV pseudorapidity (momentum)",
        "phi": "SV azimuth (momentum) [rad]",
        "e": "SV energy (pion mass) [GeV]",
    }),
}

#: every branch written: name -> short description (including unit)
BRANCHES: dict[str, str] = {name: doc for name, (_, doc) in JET_BRANCHES.items()}
for _group, (_counter, _fields) in GROUPS.items():
    BRANCHES[_counter] = f"number of {_group} entries of the jet (int32 counter)"
    BRANCHES.update({f"{_group}_{field}": doc for field, doc in _fields.items()})


def tree_types() -> dict[str, np.dtype | ak.types.Type]:
    """Branch types for ``uproot.WritableDirectory.mktree`` (groups as records)."""
    types: dict[str, np.dtype | ak.types.Type] = {
        name: dtype for name, (dtype, _) in JET_BRANCHES.items()}
    for group, (_, fields) in GROUPS.items():
        record = ak.types.RecordType([ak.types.NumpyType("float32")] * len(fields), list(fields))
        types[group] = ak.types.ListType(record)
    return types


def counter_name(group: str) -> str:
    """Name of the counter branch of ``group`` (``nCpfcan``, ``nNpfcan``, ``nsv``)."""
    return GROUPS[group][0]
