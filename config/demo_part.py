"""Built-in demo with candidate 4-vectors for ParticleTransformer-style models (cf. part_run3)."""

from config.demo import config as demo

config = (
    demo.replace(description="demo inputs plus candidate 4-vectors (ParticleTransformer)")
    .with_four_vector("cpf", ("Cpfcan_pt", "Cpfcan_eta", "Cpfcan_phi", "Cpfcan_e"))
    .with_four_vector("npf", ("Npfcan_pt", "Npfcan_eta", "Npfcan_phi", "Npfcan_e"))
    .with_four_vector("vtx", ("sv_pt", "sv_eta", "sv_phi", "sv_e"))
)
