"""Run 3 HLT inputs with the candidates' 4-vectors, for ParticleNet (k-NN in eta-phi)."""

from config.hlt_run3 import config as hlt_run3

FOUR_VECTORS = {
    "cpf": ("Cpfcan_pt", "Cpfcan_eta", "Cpfcan_phi", "Cpfcan_e"),
    "npf": ("Npfcan_pt", "Npfcan_eta", "Npfcan_phi", "Npfcan_e"),
}

config = hlt_run3.replace(description="Run 3 HLT inputs with candidate 4-vectors (ParticleNet)")
for _group, _names in FOUR_VECTORS.items():
    _branches = config.group(_group).branches
    config = config.replace_group(_group, branches=_branches + _names, four_vector=_names)
