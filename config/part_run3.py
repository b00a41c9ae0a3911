"""Offline Run 3 ParticleTransformer inputs (the original b-hive's ``part_run3``): the
DeepJet inputs of ``offline_run3`` plus each candidate's 4-vector, with the original's
multiplicities (26 charged, 25 neutral candidates, 5 secondary vertices).

Branches (CMS DeepNTuples ``deepntuplizer/tree``): the offline_run3 ones (15 global, 16 cpf,
6 npf, 12 vtx) and ``Cpfcan_pt/eta/phi/e``, ``Npfcan_pt/eta/phi/e``, ``sv_eta/phi/e``
(``sv_pt`` is already a vtx feature): 15 + 26 x 20 + 25 x 10 + 5 x 15 = 860 inputs, as the
original's row.
"""

from config.offline_run3 import config as offline

config = (
    offline.replace(description="Offline Run 3 ParticleTransformer inputs (DeepNTuples, "
                    "with candidate 4-vectors)")
    .replace_group("cpf", length=26)
    .replace_group("vtx", length=5)
    .with_four_vector("cpf", ("Cpfcan_pt", "Cpfcan_eta", "Cpfcan_phi", "Cpfcan_e"))
    .with_four_vector("npf", ("Npfcan_pt", "Npfcan_eta", "Npfcan_phi", "Npfcan_e"))
    .with_four_vector("vtx", ("sv_pt", "sv_eta", "sv_phi", "sv_e"))
)
