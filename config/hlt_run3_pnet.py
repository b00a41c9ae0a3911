"""Run 3 HLT inputs with the candidates' 4-vectors, for ParticleNet (k-NN in eta-phi)."""

from config.hlt_run3 import config as hlt_run3

config = (
    hlt_run3.replace(description="Run 3 HLT inputs with candidate 4-vectors (ParticleNet)")
    .with_four_vector("cpf", ("Cpfcan_pt", "Cpfcan_eta", "Cpfcan_phi", "Cpfcan_e"))
    .with_four_vector("npf", ("Npfcan_pt", "Npfcan_eta", "Npfcan_phi", "Npfcan_e"))
)
