"""Building blocks shared by the taggers: padding-aware normalisation, pooling and attention,
and the candidate kinematics (jet axis, wrapped azimuth) used by the 4-vector models.

Conventions: candidate tensors are channels-last, ``(batch, candidates, channels)``, with a
boolean ``mask`` ``(batch, candidates)`` that is True for real candidates (see
:meth:`BaseModel.padding_mask`). Pointwise ("1x1 convolution") layers are :class:`Linear` on
the last dimension and run on the packed real entries only (:func:`on_real`), so padding
never enters batch statistics and comes back as zeros; pooling and attention are masked.
Appending padding therefore never changes a real output.

Under :func:`export_mode` (and always while ``torch.onnx.export`` traces a model) the
layers with data-dependent shapes take dense, traceable code paths that compute the same
function in eval mode (see :func:`exporting`).
"""

from __future__ import annotations

import contextlib
import math
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.models.base_model import BaseModel, InputSpec

_EXPORT_MODE = [False]


@contextlib.contextmanager
def export_mode() -> Iterator[None]:
    """Use the traceable (dense, fixed-shape) code paths inside the block: what the ONNX
    export traces. They give the same eval-mode outputs as the packed default paths."""
    previous = _EXPORT_MODE[0]
    _EXPORT_MODE[0] = True
    try:
        yield
    finally:
        _EXPORT_MODE[0] = previous


def exporting() -> bool:
    """True inside :func:`export_mode` or while ``torch.onnx.export`` traces."""
    return _EXPORT_MODE[0] or torch.onnx.is_in_onnx_export()


def identity(n: int, device: torch.device) -> torch.Tensor:
    """Boolean identity matrix ``(n, n)`` (written without ``torch.eye``: ONNX Runtime has
    no boolean EyeLike)."""
    r = torch.arange(n, device=device)
    return r.unsqueeze(1) == r.unsqueeze(0)


# -- pointwise layers --------------------------------------------------------------------
ONEDNN_MIN_PRODUCTS = 1 << 23  # rows x in x out; below: F.linear (set-up outweighs the gain)
_ONEDNN_CPU = torch.backends.mkldnn.is_available() and \
    platform.machine().lower() in ("x86_64", "amd64")


def _image(rows: torch.Tensor) -> torch.Tensor:
    """Row-major ``rows`` ``(n, C)`` viewed as a channels-last image ``(1, C, n, 1)``."""
    return rows.t().unsqueeze(0).unsqueeze(-1)


def _kernel(weight: torch.Tensor) -> torch.Tensor:
    """A row-major weight ``(out, in)`` viewed as a channels-last 1x1 kernel."""
    n_out, n_in = weight.shape
    return weight.as_strided((n_out, n_in, 1, 1), (n_in, 1, n_in, n_in))


class _OneDNNLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` on row-major ``x`` ``(rows, in)``, forward and backward run
    as oneDNN 1x1 convolutions on channels-last views of the same memory (no copies)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,  # type: ignore[override]
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(_image(x), _kernel(weight), bias)[0, :, :, 0].t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor  # type: ignore[override]
                 ) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        n_out, n_in = weight.shape
        need_x, need_weight, need_bias = ctx.needs_input_grad
        grad = grad.contiguous()
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            _image(grad), _image(x), _kernel(weight), None, (1, 1), (0, 0), (1, 1), False,
            (0, 0), 1, (need_x, need_weight, False))
        # the bias gradient as a column sum: through oneDNN it cost 5-30 % of this backward
        return (grad_x[0, :, :, 0].t() if need_x else None,
                grad_weight.reshape(n_out, n_in) if need_weight else None,
                grad.sum(0) if ctx.has_bias and need_bias else None)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias``: large float32 batches on x86 CPUs run through oneDNN's 1x1
    convolution, 1.3-1.6x faster in training there than the BLAS product ``F.linear`` calls
    (which on AMD CPUs does not use AVX-512). Small batches, other dtypes and devices,
    autocast, ``torch.compile`` and the ONNX export (see :func:`exporting`) use
    ``F.linear``."""
    n_out, n_in = weight.shape
    if (_ONEDNN_CPU and x.device.type == "cpu" and x.dtype == torch.float32
            and x.numel() * n_out >= ONEDNN_MIN_PRODUCTS
            and weight.dtype == torch.float32 and weight.is_contiguous()
            and not torch.is_autocast_enabled("cpu") and not exporting()
            and not torch.compiler.is_compiling()):
        rows = x.reshape(-1, n_in).contiguous()
        return _OneDNNLinear.apply(rows, weight, bias).view(*x.shape[:-1], n_out)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters; same results up to float32 rounding) computed by
    :func:`linear`: through oneDNN for large float32 CPU batches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class BatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` over rows ``(rows, channels)`` that also accepts a training batch of
    fewer than two rows (e.g. no secondary vertex in a small batch): such a batch is
    normalised with the running statistics and leaves them unchanged.

    In eval mode it computes ``(x - mean) * (weight / sqrt(var + eps)) + bias``: subtracting
    the mean first keeps float32 precise for raw inputs whose mean is large compared with
    their spread (the fused ``x * scale + shift`` loses up to 1e-4 there), in PyTorch and in
    the exported ONNX graph alike."""

    def eval_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, scale, bias) of the eval-mode map ``(x - mean) * scale + bias``."""
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        bias = self.bias if self.bias is not None else torch.zeros_like(scale)
        return self.running_mean, scale, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            mean, scale, bias = self.eval_terms()
            return ((x - mean) * scale + bias).to(x.dtype)  # the input's dtype under autocast
        if x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


def fold_norm(dense: nn.Linear, norm: BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``norm(dense(x))`` with ``norm`` in eval mode: one linear map (in
    the Linear's dtype)."""
    mean, scale, bias = norm.eval_terms()
    shift = bias - mean * scale
    weight = (dense.weight * scale.unsqueeze(1)).to(dense.weight.dtype)
    folded = shift if dense.bias is None else torch.addcmul(shift, dense.bias, scale)
    return weight, folded.to(dense.weight.dtype)


def on_real(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            mask: torch.Tensor) -> torch.Tensor:
    """Apply a row-wise ``module`` to the real entries of ``x`` ``(..., C)`` only (``mask``
    has the leading shape ``(...)``); padded entries of the result are zero."""
    flat = x.reshape(-1, x.shape[-1])
    index = mask.reshape(-1).nonzero().squeeze(1)
    out = module(flat.index_select(0, index))
    return out.new_zeros(flat.shape[0], out.shape[-1]).index_copy(0, index, out).view(
        *x.shape[:-1], out.shape[-1])


SMALL_BATCH = 16  # batches up to this size run as one slice (trimmed to the longest jet)


@torch.compiler.disable
def length_slices(lengths: torch.Tensor, overhead: float = 128.0, power: float = 1.0
                  ) -> list[tuple[torch.Tensor, int]]:
    """Rows of a batch sorted by ``lengths`` (per jet, on the CPU) and cut into slices of
    similar length; each with its longest length (at least 1).

    Models run their per-jet work (LSTM, attention) slice by slice over only the slots the
    slice's longest jet fills: jets share their batch as before, padding costs little. The
    cut minimises the modelled cost, per slice ``overhead + rows * longest ** power`` (in
    units of one row-slot; ``power`` 2 for attention), exactly by dynamic programming over
    the distinct lengths.
    """
    if len(lengths) <= SMALL_BATCH:  # e.g. jet-by-jet inference: slicing cannot pay
        return [(torch.arange(len(lengths)), max(int(lengths.max()), 1) if len(lengths) else 1)]
    order = torch.argsort(lengths, stable=True)
    values, counts = np.unique(lengths.clamp_min(1).numpy(), return_counts=True)
    ends = np.cumsum(counts)  # rows up to and including each distinct length
    starts = np.concatenate(([0], ends[:-1]))
    width = values.astype(np.float64) ** power
    # cost[j][i]: one slice of the distinct lengths i..j (i <= j)
    cost = (overhead + (ends[:, None] - starts[None, :]) * width[:, None]).tolist()
    best = [0.0]  # best[j]: cost of the first j distinct lengths
    cut = []
    for row in cost:  # plain floats: a few microseconds per length, not per numpy call
        totals = [b + c for b, c in zip(best, row, strict=False)]
        best.append(min(totals))
        cut.append(totals.index(best[-1]))
    slices, j = [], len(values) - 1
    while j >= 0:
        i = cut[j]
        slices.append((order[starts[i]:ends[j]], int(values[j])))
        j = i - 1
    return slices[::-1]


def real_first(mask: torch.Tensor, *tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``mask`` ``(B, N)`` and the per-slot ``tokens`` ``(B, N, C)`` reordered so that each
    jet's real candidates come first (in their order), padding after them."""
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
    return (mask.gather(1, order),
            *(t.gather(1, order.unsqueeze(-1).expand_as(t)) for t in tokens))


def foldable(modules: Iterable[nn.Module]) -> bool:
    """Whether an eval-mode call may fold ``modules`` (BatchNorms into Linears) and skip
    calling them: outside the ONNX export, none of them in training mode (e.g. dropout kept
    on for Monte-Carlo dropout, a BatchNorm adapting to test data) and none with forward
    hooks or pre-hooks, which a folded call would never run."""
    return not exporting() and not any(
        m.training or m._forward_hooks or m._forward_pre_hooks for m in modules)


def _fold_into(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor,
               shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``x -> weight @ (x * scale + shift) + bias`` as one linear map,
    computed in the wider of the two dtypes and returned in the weight's."""
    dtype = weight.dtype
    if scale.dtype != dtype:  # e.g. float32 BatchNorms in a half model
        wide = torch.promote_types(dtype, scale.dtype)
        weight, scale, shift = weight.to(wide), scale.to(wide), shift.to(wide)
        bias = None if bias is None else bias.to(wide)
    folded_bias = weight @ shift if bias is None else torch.addmv(bias, weight, shift)
    return (weight * scale).to(dtype), folded_bias.to(dtype)


class DenseStack(nn.Sequential):
    """``Linear -> activation -> BatchNorm -> Dropout`` blocks (see :func:`dense_stack`).

    In eval mode (outside the ONNX export, see :func:`foldable`) each BatchNorm is folded
    into the next block's ``Linear`` (weights scaled per input, the shift moved into its
    bias) and the last one is one fused multiply-add: the same function, without three
    passes over every layer's output. The folding happens on every call, so it always
    matches the current parameters.
    """

    def forward(self, x: torch.Tensor,  # type: ignore[override]
                input_norm: BatchNorm | None = None) -> torch.Tensor:
        """The stack on ``x`` ``(..., in)``, after ``input_norm`` when given (also folded in
        eval mode; there ``x`` has its mean subtracted first, which keeps raw inputs precise,
        see :class:`BatchNorm`; not under autocast, whose float16 cast of raw values could
        overflow)."""
        norms = [] if input_norm is None else [input_norm]
        if self.training or not foldable([*norms, *self]):
            return super().forward(x if input_norm is None else input_norm(x))
        scale = shift = None
        if input_norm is not None and torch.is_autocast_enabled(x.device.type):
            x = input_norm(x)
        elif input_norm is not None:
            mean, scale, shift = input_norm.eval_terms()
            x = (x - mean).to(x.dtype)
        layers = list(self)
        for dense, activation, norm in zip(layers[::4], layers[1::4], layers[2::4], strict=True):
            weight, bias = dense.weight, dense.bias
            if scale is not None:
                weight, bias = _fold_into(weight, bias, scale, shift)
            x = activation(linear(x, weight, bias))
            mean, scale, bias = norm.eval_terms()
            shift = bias - mean * scale
        return x if scale is None else torch.addcmul(shift, x, scale).to(x.dtype)


def dense_stack(in_features: int, widths: Sequence[int],
                activation: Callable[[], nn.Module] = nn.ReLU,
                dropout: float = 0.0) -> DenseStack:
    """``Linear -> activation -> BatchNorm -> Dropout`` for each width (DeepJet's dense and
    1x1-convolution blocks)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [Linear(in_features, width), activation(), BatchNorm(width),
                   nn.Dropout(dropout)]
        in_features = width
    return DenseStack(*layers)


class CandidateEncoder(nn.Module):
    """Raw candidate features -> input BatchNorm -> :func:`dense_stack`, on real candidates.

    The input normalisation replaces external preprocessing: raw values (GeV, cm,
    significances, flags) are standardised with statistics of real candidates only.
    """

    def __init__(self, in_features: int, widths: Sequence[int],
                 activation: Callable[[], nn.Module] = nn.ReLU, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.Sequential(BatchNorm(in_features),
                                    dense_stack(in_features, widths, activation, dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return on_real(self._encode, x, mask)

    def _encode(self, rows: torch.Tensor) -> torch.Tensor:
        norm, stack = self.layers
        return stack(rows, input_norm=norm)


def encode_groups(encoders: nn.ModuleDict, inputs: Mapping[str, torch.Tensor],
                  extra: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Tokens ``(B, N, D)`` of several candidate groups: each group's raw features with its
    slice of the per-candidate ``extra`` features ``(B, N, E)`` appended, through that
    group's :class:`CandidateEncoder` (``encoders`` keyed by group, in concatenation order)."""
    lengths = [inputs[g].shape[1] for g in encoders]
    return torch.cat([
        encoder(torch.cat((inputs[g], group_extra), -1), group_mask)
        for (g, encoder), group_extra, group_mask in zip(
            encoders.items(), extra.split(lengths, 1), mask.split(lengths, 1), strict=True)], 1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` ``(..., N, C)`` over the real entries of dim -2; zero if there are none."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(-2) / m.sum(-2).clamp_min(1)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the real entries of the last dim; padded entries get weight 0 (all
    weights are 0 if none is real)."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) * mask.to(scores.dtype)


class AttentionPooling(nn.Module):
    """Weighted sum of the real tokens with learned, masked softmax weights."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = masked_softmax(self.score(x).squeeze(-1), mask)
        return torch.einsum("bn,bnc->bc", weights, x)


def self_attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """Additive attention mask ``(B, 1, N, N)``: ``-inf`` for padded keys.

    Every token may attend to itself, so padded queries (whose outputs are never used) have
    one finite logit and no NaN appears, even for jets without any candidate.
    """
    n = mask.shape[1]
    allowed = mask.unsqueeze(1) | identity(n, mask.device)
    return key_padding_bias(allowed).unsqueeze(1)


def key_padding_bias(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """0 where ``allowed``, ``-inf`` elsewhere (additive attention-logit mask)."""
    zeros = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return zeros.masked_fill(~allowed, float("-inf"))


class AttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block: multi-head attention and a GELU feed-forward network.

    ``x`` ``(B, Nq, D)`` is the residual stream (the queries); keys and values come from
    ``context`` ``(B, Nk, D)`` (default ``x``: self-attention). ``attn_bias`` is added to the
    attention logits, broadcastable to ``(B, heads, Nq, Nk)``: ``-inf`` masks a key, finite
    values are e.g. ParT's pairwise interaction. Dropout acts on the residual branches, not
    on the attention weights (which would force the slow reference attention kernel).
    """

    def __init__(self, dim: int, heads: int, ffn_ratio: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm_attn = nn.LayerNorm(dim)
        self.query = Linear(dim, dim)
        self.key_value = Linear(dim, 2 * dim)
        self.out = Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(Linear(dim, ffn_ratio * dim), nn.GELU(),
                                 Linear(ffn_ratio * dim, dim))
        self.drop = nn.Dropout(dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm_attn(x)
        kv = q if context is None else self.norm_attn(context)
        k, v = self.key_value(kv).chunk(2, dim=-1)
        attn = F.scaled_dot_product_attention(
            self._split_heads(self.query(q)), self._split_heads(k), self._split_heads(v),
            attn_mask=attn_bias.to(q.dtype))
        x = x + self.drop(self.out(attn.transpose(1, 2).flatten(2)))
        return x + self.drop(self.ffn(self.norm_ffn(x)))


# -- candidate kinematics -------------------------------------------------------------------
def wrap_phi(dphi: torch.Tensor) -> torch.Tensor:
    """Azimuthal difference wrapped into [-pi, pi)."""
    return torch.remainder(dphi + math.pi, 2 * math.pi) - math.pi


def candidate_four_vectors(inputs: Mapping[str, torch.Tensor], spec: InputSpec,
                           groups: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pt, eta, phi, energy) ``(B, N, 4)`` of the candidates of ``groups`` (concatenated in
    that order) and their padding mask ``(B, N)``; padded slots are all zero."""
    vectors, masks = [], []
    for name in groups:
        x = inputs[name]
        vectors.append(x[..., list(spec.group(name).four_vector)])
        masks.append(BaseModel.padding_mask(x))
    return torch.cat(vectors, 1), torch.cat(masks, 1)


def axis_offsets(p4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(delta eta, delta phi) ``(B, N, 2)`` of each candidate w.r.t. the jet axis, the
    direction of the summed momentum of the real candidates; zero for padding."""
    pt, eta, phi = p4[..., 0] * mask, p4[..., 1], p4[..., 2]
    px = (pt * torch.cos(phi)).sum(1, keepdim=True)
    py = (pt * torch.sin(phi)).sum(1, keepdim=True)
    pz = (pt * torch.sinh(eta)).sum(1, keepdim=True)
    # an empty jet has no axis (0); written so that input gradients stay finite there too
    has_axis = (px != 0) | (py != 0)
    axis_phi = torch.where(has_axis, torch.atan2(py, torch.where(has_axis, px, 1)), 0)
    axis_eta = torch.asinh(pz / (px.square() + py.square()).clamp_min(1e-12).sqrt())
    offsets = torch.stack((eta - axis_eta, wrap_phi(phi - axis_phi)), -1)
    return offsets * mask.unsqueeze(-1)
