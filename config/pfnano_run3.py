"""BTV PFNano: NanoAOD jets plus their PF candidates (charged / neutral, through JetPFCands)
and secondary vertices (within dR < 0.4), for DeepJet- and ParT-style trainings.

Candidate columns are provided by the ``nanoaod`` processor: ``Cpfcan_<field>`` and
``Npfcan_<field>`` from ``PFCands_<field>`` or ``JetPFCands_<field>``, ``sv_<field>`` from
``SV_<field>`` (see utils/processors/nanoaod.py)."""

import numpy as np

from config.nanoaod_run3 import config as nanoaod
from utils.config import Derived, FeatureGroup


def _energy(prefix):
    """Candidate energy from pt, eta and mass (massless where no mass is stored)."""
    pt, eta, mass = f"{prefix}_pt", f"{prefix}_eta", f"{prefix}_mass"
    return Derived(f"{prefix}_e", (pt, eta, mass),
                   lambda **v: np.sqrt((v[pt] * np.cosh(v[eta])) ** 2 + v[mass] ** 2))


GLOBAL = (
    "Jet_pt", "Jet_eta", "Jet_mass", "Jet_area", "Jet_chHEF", "Jet_neHEF", "Jet_chEmEF",
    "Jet_neEmEF", "Jet_muEF", "Jet_nConstituents", "Jet_nElectrons", "Jet_nMuons",
    "Jet_DeepCSV_trackSumJetEtRatio", "Jet_DeepCSV_trackSumJetDeltaR",
    "Jet_DeepCSV_vertexCategory", "Jet_DeepCSV_trackSip2dSigAboveCharm",
    "Jet_DeepCSV_trackSip3dSigAboveCharm", "Jet_DeepCSV_jetNSelectedTracks",
    "Jet_DeepCSV_jetNTracksEtaRel", "Jet_DeepCSV_flightDistance2dSig",
    "Jet_DeepCSV_flightDistance3dSig",
)
CPF = (
    "Cpfcan_pt", "Cpfcan_eta", "Cpfcan_phi", "Cpfcan_mass", "Cpfcan_d0", "Cpfcan_d0Err",
    "Cpfcan_dz", "Cpfcan_dzErr", "Cpfcan_puppiWeight", "Cpfcan_charge", "Cpfcan_trkChi2",
    "Cpfcan_lostInnerHits", "Cpfcan_pvAssocQuality", "Cpfcan_trkQuality",
    "Cpfcan_btagEtaRel", "Cpfcan_btagPtRatio", "Cpfcan_btagPParRatio", "Cpfcan_btagSip3dVal",
    "Cpfcan_btagSip3dSig", "Cpfcan_btagJetDistVal",
)
NPF = ("Npfcan_pt", "Npfcan_eta", "Npfcan_phi", "Npfcan_mass", "Npfcan_puppiWeight",
       "Npfcan_pdgId")
VTX = ("sv_pt", "sv_eta", "sv_phi", "sv_mass", "sv_ntracks", "sv_dlen", "sv_dlenSig",
       "sv_dxy", "sv_dxySig", "sv_pAngle", "sv_chi2", "sv_ndof")

config = nanoaod.replace(
    description="BTV PFNano jets with PF candidates and secondary vertices",
    groups=(
        FeatureGroup("global", GLOBAL, integer_features=(
            "Jet_nConstituents", "Jet_nElectrons", "Jet_nMuons", "Jet_DeepCSV_vertexCategory",
            "Jet_DeepCSV_jetNSelectedTracks", "Jet_DeepCSV_jetNTracksEtaRel")),
        FeatureGroup("cpf", CPF, length=25, derived=(_energy("Cpfcan"),),
                     sort_by="Cpfcan_btagSip3dSig", integer_features=(
                         "Cpfcan_charge", "Cpfcan_lostInnerHits", "Cpfcan_pvAssocQuality",
                         "Cpfcan_trkQuality"),
                     four_vector=("Cpfcan_pt", "Cpfcan_eta", "Cpfcan_phi", "Cpfcan_e")),
        FeatureGroup("npf", NPF, length=25, derived=(_energy("Npfcan"),), sort_by="Npfcan_pt",
                     integer_features=("Npfcan_pdgId",),
                     four_vector=("Npfcan_pt", "Npfcan_eta", "Npfcan_phi", "Npfcan_e")),
        FeatureGroup("vtx", VTX, length=4, derived=(_energy("sv"),),
                     integer_features=("sv_ntracks", "sv_ndof"),
                     four_vector=("sv_pt", "sv_eta", "sv_phi", "sv_e")),
    ),
    observers=("Jet_phi", "event", "Jet_hadronFlavour", "Jet_partonFlavour",
               "Jet_btagDeepFlavB", "Jet_btagDeepFlavCvL", "Jet_btagDeepFlavCvB",
               "Jet_btagDeepB"),
    reference_taggers={
        "BvsAll": {"DeepJet": "Jet_btagDeepFlavB", "DeepCSV": "Jet_btagDeepB"},
        "BvsL": {"DeepJet": "Jet_btagDeepFlavB", "DeepCSV": "Jet_btagDeepB"},
        "CvsL": {"DeepJet": "Jet_btagDeepFlavCvL"},
        "CvsB": {"DeepJet": "Jet_btagDeepFlavCvB"},
    },
)
