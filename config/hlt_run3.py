"""Run 3 HLT DeepJet inputs (DeepJetNTupler): offline inputs with HLT names, pT from 30 GeV."""

from config.offline_run3 import config as offline

HLT_NAMES = {"n_Cpfcand": "nCpfcan", "n_Npfcand": "nNpfcan"}
HLT_GLOBAL = offline.group("global").rename(HLT_NAMES)

config = offline.replace(
    description="Run 3 HLT DeepJet inputs (DeepJetNTupler)",
    tree_name="DeepJetNTupler/DeepJetvars",
    pt_bins=tuple(edge for edge in offline.pt_bins if edge >= 30),
).replace_group("global", branches=HLT_GLOBAL.branches,
                 integer_features=HLT_GLOBAL.integer_features,
                 default_values=HLT_GLOBAL.default_values)
