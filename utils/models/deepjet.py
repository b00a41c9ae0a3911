"""DeepJet (CMS DP-2017/027, JINST 15 (2020) P12012): per-candidate 1x1 convolutions and one
LSTM per candidate group, merged with the global jet features in a dense classifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from utils.models.base_model import BaseModel, InputSpec
from utils.models.layers import (
    BatchNorm,
    CandidateEncoder,
    dense_stack,
    exporting,
    length_slices,
)

CONV_WIDTHS = {"cpf": (64, 32, 32, 8), "npf": (32, 16, 4), "vtx": (64, 32, 32, 8)}
LSTM_WIDTHS = {"cpf": 150, "npf": 50, "vtx": 50}
# modelled cost of one more LSTM slice, in row-slots (see length_slices)
LSTM_OVERHEAD = 512.0


class SequenceSummary(nn.Module):
    """LSTM over the real candidates of each jet, read backwards (last real candidate first,
    so the leading candidates, which the ntupliser sorts first, are read last); returns the
    final hidden state, zero for jets without candidates.

    Jets without candidates are skipped (their summary is zero). The others are sorted by
    candidate count and the fused dense LSTM runs on a few slices of similar count, each
    over the slots up to its longest jet, reading every jet at its last real step (padding
    after it cannot change that output); the ONNX export runs it over all slots at once.
    Both give the same output; the slicing never changes which jets share a batch (the
    fused LSTM beats a packed sequence, which runs step by step). An LSTM call costs about
    as much as 512 more slots (``LSTM_OVERHEAD``, measured for all three widths).
    """

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_features, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n_real = mask.sum(1)
        if exporting():
            has_real = (n_real > 0).unsqueeze(1).to(x.dtype)
            backwards = self._backwards(n_real, x.shape[1])
            return self._dense(x.gather(1, backwards.unsqueeze(-1).expand_as(x)),
                               n_real) * has_real
        out = x.new_zeros(x.shape[0], self.lstm.hidden_size)
        lengths = n_real.cpu()
        filled = lengths.nonzero().squeeze(1)  # jets without candidates keep a zero summary
        for rows, longest in length_slices(lengths[filled], LSTM_OVERHEAD) if len(filled) else ():
            rows = filled[rows].to(x.device)
            counts = n_real[rows]
            part = x[rows.unsqueeze(1), self._backwards(counts, longest)]  # one gather
            out = out.index_copy(0, rows, self._dense(part, counts))
        return out

    @staticmethod
    def _backwards(n_real: torch.Tensor, slots: int) -> torch.Tensor:
        """Slot indices ``(jets, slots)``: each jet's real candidates in reverse order, then
        its first one repeated."""
        positions = torch.arange(slots, device=n_real.device)
        return (n_real.unsqueeze(1) - 1 - positions).clamp_min(0)

    def _dense(self, x: torch.Tensor, n_real: torch.Tensor) -> torch.Tensor:
        """Dense LSTM over all slots of ``x``, read at each jet's last real step."""
        out, _ = self.lstm(x)
        last = (n_real - 1).clamp_min(0).view(-1, 1, 1).expand(-1, 1, out.shape[-1])
        return out.gather(1, last).squeeze(1)


class DeepJet(BaseModel):
    """DeepJet: global features plus the cpf, npf and vtx candidate sequences.

    Every group is batch-normalised on the raw inputs (candidate statistics exclude padding),
    each candidate passes a 1x1-convolution stack (Linear-ReLU-BN-Dropout), each sequence an
    LSTM over its real candidates; the summaries and the global features feed a dense stack.
    """

    name = "DeepJet"
    input_groups = ("global", "cpf", "npf", "vtx")

    def __init__(self, spec: InputSpec,
                 conv_widths: Mapping[str, Sequence[int]] = CONV_WIDTHS,
                 lstm_widths: Mapping[str, int] = LSTM_WIDTHS,
                 dense_widths: Sequence[int] = (200,) + (100,) * 7,
                 dropout: float = 0.1) -> None:
        super().__init__(spec)
        self.candidate_groups = self.input_groups[1:]
        self.global_norm = BatchNorm(spec.group("global").n_features)
        self.encoders = nn.ModuleDict({
            g: CandidateEncoder(spec.group(g).n_features, conv_widths[g], nn.ReLU, dropout)
            for g in self.candidate_groups})
        self.sequences = nn.ModuleDict({
            g: SequenceSummary(conv_widths[g][-1], lstm_widths[g]) for g in self.candidate_groups})
        merged = spec.group("global").n_features + sum(lstm_widths[g]
                                                       for g in self.candidate_groups)
        self.dense = dense_stack(merged, dense_widths, nn.ReLU, dropout)
        self.output = nn.Linear(dense_widths[-1], spec.n_classes)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        summaries = [self.global_norm(inputs["global"])]
        for g in self.candidate_groups:
            mask = self.padding_mask(inputs[g])
            summaries.append(self.sequences[g](self.encoders[g](inputs[g], mask), mask))
        return self.output(self.dense(torch.cat(summaries, 1)))


class DeepJetHLT(DeepJet):
    """DeepJet trained on the HLT inputs (``hlt_run3``, ``hlt_phase2``): the same network."""

    name = "DeepJetHLT"
