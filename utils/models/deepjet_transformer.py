"""DeepJetTransformer: DeepJet's inputs with the LSTMs replaced by a transformer encoder over
all candidates of a jet (charged, neutral and secondary vertices in one token sequence)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from utils.models.base_model import BaseModel, InputSpec
from utils.models.layers import (
    AttentionBlock,
    AttentionPooling,
    BatchNorm,
    CandidateEncoder,
    self_attention_mask,
)


class DeepJetTransformer(BaseModel):
    """Per-group embedding (masked input BatchNorm, two pointwise GELU/BN layers) to a common
    width plus a learned group-type embedding; pre-LN transformer encoder with key padding
    mask; masked attention pooling; concatenated with the embedded global features; dense
    head."""

    name = "DeepJetTransformer"
    input_groups = ("global", "cpf", "npf", "vtx")

    def __init__(self, spec: InputSpec, dim: int = 128, heads: int = 8, layers: int = 3,
                 ffn_ratio: int = 2, dropout: float = 0.1) -> None:
        super().__init__(spec)
        self.candidate_groups = self.input_groups[1:]
        self.embeddings = nn.ModuleDict({
            g: CandidateEncoder(spec.group(g).n_features, (dim, dim), nn.GELU)
            for g in self.candidate_groups})
        self.group_type = nn.Parameter(0.02 * torch.randn(len(self.candidate_groups), dim))
        self.encoder = nn.ModuleList(AttentionBlock(dim, heads, ffn_ratio, dropout)
                                     for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim)
        self.pooling = AttentionPooling(dim)
        n_global = spec.group("global").n_features
        self.global_embedding = nn.Sequential(BatchNorm(n_global), nn.Linear(n_global, dim),
                                              nn.GELU())
        self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(dim, spec.n_classes))

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tokens, masks = [], []
        for i, g in enumerate(self.candidate_groups):
            mask = self.padding_mask(inputs[g])
            tokens.append(self.embeddings[g](inputs[g], mask) + self.group_type[i])
            masks.append(mask)
        x, mask = torch.cat(tokens, 1), torch.cat(masks, 1)
        attn_mask = self_attention_mask(mask)
        for block in self.encoder:
            x = block(x, attn_mask)
        pooled = self.pooling(self.final_norm(x), mask)
        return self.head(torch.cat((pooled, self.global_embedding(inputs["global"])), 1))
