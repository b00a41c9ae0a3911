"""Particle Transformer (Qu, Li, Qian, ICML 2022, arXiv:2202.03772): attention over all jet
constituents with a pairwise-interaction bias from their 4-vectors, then class attention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from utils.models.base_model import BaseModel, InputSpec
from utils.models.layers import (
    AttentionBlock,
    BatchNorm,
    CandidateEncoder,
    axis_offsets,
    candidate_four_vectors,
    dense_stack,
    encode_groups,
    exporting,
    key_padding_bias,
    length_slices,
    on_real,
    real_first,
    self_attention_mask,
    wrap_phi,
)

# modelled cost of one more attention slice, in token pairs of a row (see length_slices)
ATTENTION_OVERHEAD = 4096.0
EPS = 1e-8  # clamp before every log: collinear (delta R = 0) and massless pairs stay finite


def pairwise_features(p4: torch.Tensor) -> torch.Tensor:
    """ParT interaction features ``(B, N, N, 4)``: ln kT, ln z, ln delta R, ln m^2 of each pair.

    ``p4`` holds (pt, eta, phi, energy) ``(B, N, 4)``. With the rapidity y,
    delta R = sqrt(dy^2 + dphi^2) (dphi wrapped into [-pi, pi)), kT = min(pt_i, pt_j) delta R,
    z = min(pt_i, pt_j) / (pt_i + pt_j) and m^2 the invariant mass squared of the pair.
    """
    dtype = p4.dtype
    # float64: m^2 and delta R of (nearly) collinear, light pairs cancel catastrophically in
    # float32, where their logs would be rounding noise (and differ between PyTorch and ONNX)
    pt, eta, phi, energy = p4.double().unbind(-1)
    # sinh through exp: ONNX Runtime has no float64 Sinh
    momentum = torch.stack((energy, pt * torch.cos(phi), pt * torch.sin(phi),
                            0.5 * pt * (torch.exp(eta) - torch.exp(-eta))), -1)
    pz = momentum[..., 3]
    rapidity = 0.5 * torch.log((energy + pz).clamp_min(EPS) / (energy - pz).clamp_min(EPS))
    delta2 = (rapidity.unsqueeze(2) - rapidity.unsqueeze(1)).square() + \
        wrap_phi(phi.unsqueeze(2) - phi.unsqueeze(1)).square()
    # sqrt with a finite gradient at delta R = 0 (the diagonal): input gradients stay finite
    delta = torch.where(delta2 > 0, delta2.clamp_min(1e-30).sqrt(), 0)
    pt_i, pt_j = pt.unsqueeze(2), pt.unsqueeze(1)
    pt_min = torch.minimum(pt_i, pt_j)
    pair = momentum.unsqueeze(2) + momentum.unsqueeze(1)
    mass2 = pair[..., 0].square() - pair[..., 1:].square().sum(-1)
    return torch.stack((
        torch.log((pt_min * delta).clamp_min(EPS)),
        torch.log((pt_min / (pt_i + pt_j).clamp_min(EPS)).clamp_min(EPS)),
        torch.log(delta.clamp_min(EPS)),
        torch.log(mass2.clamp_min(EPS)),
    ), -1).to(dtype)


class ParticleTransformer(BaseModel):
    """ParT on the charged (cpf), neutral (npf) and secondary-vertex (vtx) candidates, and
    the lost tracks (lt) where the config has them with 4-vectors (``part_run3_lt``).

    Particle tokens: each group's raw features plus (delta eta, delta phi) to the jet axis,
    masked input BatchNorm and a pointwise GELU/BN embedding to ``dim``. Pairwise features
    of all token pairs, embedded by a pointwise stack to one bias per head, are added to the
    attention logits of the particle blocks (zero for pairs with a padded member, ``-inf``
    for padded keys). Class-attention blocks update a learnable CLS token from
    [CLS, particles]; its LayerNorm-ed state and the embedded global features give the
    logits.
    """

    name = "ParticleTransformer"
    input_groups = ("global", "cpf", "npf", "vtx")
    needs_four_vectors = ("cpf", "npf", "vtx")
    # further particle groups taken when the config has them with 4-vectors (lost tracks)
    optional_particle_groups = ("lt",)

    def __init__(self, spec: InputSpec, dim: int = 128, heads: int = 8, particle_blocks: int = 3,
                 class_blocks: int = 2, pair_widths: Sequence[int] = (32, 32),
                 ffn_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__(spec)
        extra = tuple(g.name for g in spec.groups if g.name in self.optional_particle_groups
                      and g.length is not None and g.four_vector is not None)
        self.particle_groups = self.needs_four_vectors + extra
        self.input_groups = type(self).input_groups + extra
        self.embeddings = nn.ModuleDict({
            g: CandidateEncoder(spec.group(g).n_features + 2, (dim, dim), nn.GELU)
            for g in self.particle_groups})
        self.pair_embedding = nn.Sequential(BatchNorm(4), dense_stack(4, pair_widths, nn.GELU),
                                            nn.Linear(pair_widths[-1], heads))
        self.particle_blocks = nn.ModuleList(AttentionBlock(dim, heads, ffn_ratio, dropout)
                                             for _ in range(particle_blocks))
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.class_blocks = nn.ModuleList(AttentionBlock(dim, heads, ffn_ratio, 0.0)
                                          for _ in range(class_blocks))
        self.final_norm = nn.LayerNorm(dim)
        n_global = spec.group("global").n_features
        self.global_embedding = nn.Sequential(BatchNorm(n_global), nn.Linear(n_global, dim),
                                              nn.GELU())
        self.head = nn.Linear(2 * dim, spec.n_classes)

    def interaction(self, p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention-logit bias ``(B, heads, N, N)`` from the pairwise features of the real
        pairs (batch statistics from real pairs only); zero for pairs with a padded member."""
        pair_mask = mask.unsqueeze(2) & mask.unsqueeze(1)
        bias = on_real(self.pair_embedding, pairwise_features(p4), pair_mask)
        return bias.permute(0, 3, 1, 2)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        p4, mask = candidate_four_vectors(inputs, self.spec, self.particle_groups)
        offsets = axis_offsets(p4, mask)
        x = encode_groups(self.embeddings, inputs, offsets, mask)
        if exporting():  # dense over all slots: fixed shapes for the trace
            cls = self.attend(x, mask, self.interaction(p4, mask))
        else:
            cls = self.attend_sliced(x, p4, mask)
        jet = torch.cat((self.final_norm(cls), self.global_embedding(inputs["global"])), 1)
        return self.head(jet)

    def attend(self, x: torch.Tensor, mask: torch.Tensor,
               interaction: torch.Tensor) -> torch.Tensor:
        """Particle and class attention over tokens ``x`` ``(B, N, D)``; the CLS state
        ``(B, D)``."""
        attn_bias = interaction + self_attention_mask(mask)
        for block in self.particle_blocks:
            x = block(x, attn_bias)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        cls_mask = torch.cat((torch.ones_like(mask[:, :1]), mask), 1)
        cls_bias = key_padding_bias(cls_mask, x.dtype)[:, None, None, :]
        for block in self.class_blocks:
            cls = block(cls, cls_bias, context=torch.cat((cls, x), 1))
        return cls.squeeze(1)

    def attend_sliced(self, x: torch.Tensor, p4: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """:meth:`attend` on length-sorted slices of the batch, each over only the slots its
        longest jet fills (real tokens moved first: attention does not depend on the order).
        The pair embedding sees the real pairs of all slices at once, so its batch
        statistics are those of the dense form."""
        mask, x, p4 = real_first(mask, x, p4)
        slices = []
        for rows, longest in length_slices(mask.sum(1).cpu(), ATTENTION_OVERHEAD, power=2):
            rows = rows.to(x.device)
            part = mask[rows, :longest]
            pairs = (part.unsqueeze(2) & part.unsqueeze(1)).reshape(-1).nonzero().squeeze(1)
            slices.append((rows, part, pairs, p4[rows, :longest]))
        features = [pairwise_features(p).reshape(-1, 4).index_select(0, pairs)
                    for _, _, pairs, p in slices]
        embedded = self.pair_embedding(torch.cat(features)).split([len(f) for f in features])
        out = x.new_empty(x.shape[0], x.shape[-1])
        for (rows, part, pairs, _), pair_bias in zip(slices, embedded, strict=True):
            n = part.shape[1]
            bias = pair_bias.new_zeros(len(rows) * n * n, pair_bias.shape[-1]).index_copy(
                0, pairs, pair_bias).view(len(rows), n, n, -1).permute(0, 3, 1, 2)
            out = out.index_copy(0, rows, self.attend(x[rows, :n], part, bias))
        return out
