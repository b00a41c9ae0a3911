"""Offline Run 3 DeepJet inputs as written by the CMS DeepNTuples ntupliser.

This is the base configuration: ``hlt_run3``, ``hlt_phase2`` and ``demo`` derive from it.
"""

from utils.config import Config, FeatureGroup, Process

GLOBAL_FEATURES = (
    "jet_pt", "jet_eta", "n_Cpfcand", "n_Npfcand", "nsv", "npv",
    "TagVarCSV_trackSumJetEtRatio", "TagVarCSV_trackSumJetDeltaR",
    "TagVarCSV_vertexCategory", "TagVarCSV_trackSip2dValAboveCharm",
    "TagVarCSV_trackSip2dSigAboveCharm", "TagVarCSV_trackSip3dValAboveCharm",
    "TagVarCSV_trackSip3dSigAboveCharm", "TagVarCSV_jetNSelectedTracks",
    "TagVarCSV_jetNTracksEtaRel",
)
CPF_FEATURES = (
    "Cpfcan_BtagPf_trackEtaRel", "Cpfcan_BtagPf_trackPtRel", "Cpfcan_BtagPf_trackPPar",
    "Cpfcan_BtagPf_trackDeltaR", "Cpfcan_BtagPf_trackPParRatio",
    "Cpfcan_BtagPf_trackSip2dVal", "Cpfcan_BtagPf_trackSip2dSig",
    "Cpfcan_BtagPf_trackSip3dVal", "Cpfcan_BtagPf_trackSip3dSig",
    "Cpfcan_BtagPf_trackJetDistVal", "Cpfcan_ptrel", "Cpfcan_drminsv", "Cpfcan_VTX_ass",
    "Cpfcan_puppiw", "Cpfcan_chi2", "Cpfcan_quality",
)
NPF_FEATURES = (
    "Npfcan_ptrel", "Npfcan_deltaR", "Npfcan_isGamma", "Npfcan_HadFrac", "Npfcan_drminsv",
    "Npfcan_puppiw",
)
VTX_FEATURES = (
    "sv_pt", "sv_deltaR", "sv_mass", "sv_ntracks", "sv_chi2", "sv_normchi2", "sv_dxy",
    "sv_dxysig", "sv_d3d", "sv_d3dsig", "sv_costhetasvpv", "sv_enratio",
)
# integer-valued or categorical features: attacks keep them nominal (--attack-reduce); as the
# original b-hive's DeepJet integer columns (global 2-5, 8, 13, 14; cpf VTX_ass, quality)
GLOBAL_INTEGERS = ("n_Cpfcand", "n_Npfcand", "nsv", "npv", "TagVarCSV_vertexCategory",
                   "TagVarCSV_jetNSelectedTracks", "TagVarCSV_jetNTracksEtaRel")
CPF_INTEGERS = ("Cpfcan_VTX_ass", "Cpfcan_quality")
NPF_INTEGERS = ("Npfcan_isGamma",)
VTX_INTEGERS = ("sv_ntracks",)
# values written when there is nothing to measure (attacks keep them; 0 always counts)
GLOBAL_DEFAULTS = {f"TagVarCSV_trackSip{d}{kind}AboveCharm": -1.0
                   for d in ("2d", "3d") for kind in ("Val", "Sig")}  # no track above charm
CPF_DEFAULTS = {"Cpfcan_drminsv": 0.4}  # no secondary vertex within the jet radius
NPF_DEFAULTS = {"Npfcan_drminsv": 0.4}
TRUTHS = (
    "isB", "isBB", "isGBB", "isLeptonicB", "isLeptonicB_C", "isC", "isCC", "isGCC",
    "isUD", "isS", "isG",
)
CLASSES = {
    "b": ("isB",),
    "bb": ("isBB", "isGBB"),
    "lepb": ("isLeptonicB", "isLeptonicB_C"),
    "c": ("isC", "isCC", "isGCC"),
    "uds": ("isUD", "isS"),
    "g": ("isG",),
}
PT_BINS = (10, 25, 30, 35, 40, 45, 50, 60, 75, 100, 125, 150, 175, 200, 250, 300, 400, 500,
           600, 2000)
ETA_BINS = (-2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5)

config = Config(
    description="Offline Run 3 DeepJet inputs (CMS DeepNTuples)",
    tree_name="deepntuplizer/tree",
    processes=(
        Process("TT", "*TT*", pt_range=(30, 1000), eta_range=(-2.5, 2.5)),
        Process("QCD", "*QCD*", pt_range=(300, 1000), eta_range=(-2.5, 2.5)),
    ),
    pt_bins=PT_BINS,
    eta_bins=ETA_BINS,
    groups=(
        FeatureGroup("global", GLOBAL_FEATURES, integer_features=GLOBAL_INTEGERS,
                     default_values=GLOBAL_DEFAULTS),
        FeatureGroup("cpf", CPF_FEATURES, length=25, integer_features=CPF_INTEGERS,
                     default_values=CPF_DEFAULTS),
        FeatureGroup("npf", NPF_FEATURES, length=25, integer_features=NPF_INTEGERS,
                     default_values=NPF_DEFAULTS),
        FeatureGroup("vtx", VTX_FEATURES, length=4, integer_features=VTX_INTEGERS),
    ),
    truths=TRUTHS,
    classes=CLASSES,
    reference_flavour="isB",
)
