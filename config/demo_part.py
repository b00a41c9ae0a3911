"""Built-in demo with candidate 4-vectors for ParticleTransformer-style models (cf. part_run3)."""

from config.demo import config as demo

FOUR_VECTORS = {
    "cpf": ("Cpfcan_pt", "Cpfcan_eta", "Cpfcan_phi", "Cpfcan_e"),
    "npf": ("Npfcan_pt", "Npfcan_eta", "Npfcan_phi", "Npfcan_e"),
    "vtx": ("sv_pt", "sv_eta", "sv_phi", "sv_e"),
}


def _with_four_vectors(config, group, names):
    branches = config.group(group).branches
    extra = tuple(n for n in names if n not in branches)
    return config.replace_group(group, branches=branches + extra, four_vector=names)


config = demo.replace(description="demo inputs plus candidate 4-vectors (ParticleTransformer)")
for _group, _names in FOUR_VECTORS.items():
    config = _with_four_vectors(config, _group, _names)
