"""Tagger models: the BaseModel contract, padding invariance, per-jet independence,
determinism, and the padding-aware building blocks they share."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn

from utils.config import Config, load_config
from utils.models import BaseModel, InputSpec, ModelInputError, available_models, get_model, layers
from utils.models.deepjet import DeepJet, SequenceSummary
from utils.models.layers import (
    BatchNorm,
    CandidateEncoder,
    Linear,
    axis_offsets,
    candidate_four_vectors,
    dense_stack,
    export_mode,
    length_slices,
    on_real,
    self_attention_mask,
)
from utils.models.particle_net import knn
from utils.models.particle_transformer import pairwise_features

MODELS = available_models()
BATCH = 64
FOUR_VECTOR_PREFIX = {"cpf": "Cpfcan_", "npf": "Npfcan_", "vtx": "sv_"}
Batch = dict[str, torch.Tensor]


def with_four_vectors(config: Config) -> Config:
    """``config`` with (pt, eta, phi, energy) declared for cpf, npf and vtx."""
    for group, prefix in FOUR_VECTOR_PREFIX.items():
        config = config.with_four_vector(group, tuple(prefix + v for v in ("pt", "eta", "phi",
                                                                             "e")))
    return config


@pytest.fixture(scope="module")
def config():
    return load_config("offline_run3")


@pytest.fixture(scope="module")
def specs(config):
    return {"plain": InputSpec.from_config(config),
            "four_vectors": InputSpec.from_config(with_four_vectors(config))}


def spec_for(name: str, specs: dict[str, InputSpec]) -> InputSpec:
    """The offline spec, with 4-vectors for the models that need them."""
    return specs["four_vectors" if get_model(name).needs_four_vectors else "plain"]


def make_batch(spec: InputSpec, batch_size: int = BATCH, seed: int = 0) -> Batch:
    """Raw-scale inputs: features from 1e-3 to 1e3 (a fixed scale per feature), integer
    flags, physical 4-vectors (jets anywhere in phi, so some straddle +-pi). Jet 0 has no
    candidate in any group, jet 1 one per group, jet 2 full groups, the others a random count
    (zero included)."""
    scale_generator = torch.Generator().manual_seed(12345)
    g = torch.Generator().manual_seed(seed)
    jet_eta = 5 * torch.rand(batch_size, 1, generator=g) - 2.5
    jet_phi = 2 * math.pi * torch.rand(batch_size, 1, generator=g) - math.pi
    batch = {}
    for group in spec.groups:
        shape = (batch_size, group.length or 1, group.n_features)
        scales = 10 ** (6 * torch.rand(group.n_features, generator=scale_generator) - 3)
        x = torch.randn(*shape, generator=g) * scales
        x[..., -1] = torch.randint(0, 4, shape[:2], generator=g)  # a flag, often 0
        # (overwritten by the energy in the 4-vector groups, whose last feature it is)
        if group.four_vector is not None:
            pt, eta, phi, energy = group.four_vector
            x[..., pt] = 0.5 + 30 * torch.rand(shape[:2], generator=g)
            x[..., eta] = jet_eta + 0.2 * torch.randn(shape[:2], generator=g)
            x[..., phi] = torch.remainder(
                jet_phi + 0.2 * torch.randn(shape[:2], generator=g) + math.pi, 2 * math.pi
            ) - math.pi
            x[..., energy] = x[..., pt] * torch.cosh(x[..., eta]) * (
                1 + 0.1 * torch.rand(shape[:2], generator=g))
        if group.length is None:
            batch[group.name] = x[:, 0]
            continue
        n_real = torch.randint(0, group.length + 1, (batch_size,), generator=g)
        n_real[:3] = torch.tensor([0, 1, group.length])
        batch[group.name] = x * (torch.arange(group.length) < n_real[:, None]).unsqueeze(-1)
    return batch


def with_padding(batch: Batch, extra: int = 5) -> Batch:
    """Append ``extra`` all-zero candidates to every candidate group."""
    return {g: torch.cat((x, x.new_zeros(x.shape[0], extra, x.shape[2])), 1) if x.ndim == 3
            else x for g, x in batch.items()}


def build(name: str, spec: InputSpec, seed: int = 0) -> BaseModel:
    torch.manual_seed(seed)
    return get_model(name)(spec)


@pytest.fixture(scope="module")
def eval_model(specs):
    """``eval_model(name)``: the model in eval mode, BatchNorm statistics averaged over two
    batches (built once per module; tests must not modify it)."""
    cache = {}

    def get(name):
        if name not in cache:
            spec = spec_for(name, specs)
            model = build(name, spec)
            for module in model.modules():
                if isinstance(module, nn.BatchNorm1d):
                    module.momentum = None  # cumulative average
            with torch.no_grad():
                for seed in (100, 101):
                    model(make_batch(spec, 128, seed=seed))
            cache[name] = model.eval()
        return cache[name]

    return get


# -- registry and contract ----------------------------------------------------------------
def test_all_architectures_are_registered():
    expected = {"DeepJet", "DeepJetHLT", "DeepJetTransformer", "ParticleNet",
                "ParticleTransformer", "MLP"}
    assert expected <= set(MODELS)
    assert issubclass(get_model("DeepJetHLT"), DeepJet)
    assert get_model("DeepJetHLT") is not get_model("DeepJet")


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name, specs):
    spec = spec_for(name, specs)
    model = build(name, spec).train()
    batch = make_batch(spec)
    logits = model(batch)
    assert logits.shape == (BATCH, spec.n_classes)
    loss = model.loss(logits, torch.randint(0, spec.n_classes, (BATCH,)))
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", MODELS)
def test_padding_does_not_change_the_output(name, specs, eval_model):
    model = eval_model(name)
    batch = make_batch(spec_for(name, specs))
    with torch.no_grad():
        reference, padded = model(batch), model(with_padding(batch))
    assert torch.isfinite(reference).all()
    assert (reference - padded).abs().max() < 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_batch_statistics_ignore_padding(name, specs):
    """In training mode (dropout off) padding changes neither the output nor the BatchNorm
    running statistics: normalisation layers only see real candidates."""
    spec = spec_for(name, specs)
    batch = make_batch(spec)
    outputs, buffers = [], []
    for inputs in (batch, with_padding(batch)):
        model = build(name, spec).train()
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        with torch.no_grad():
            outputs.append(model(inputs))
        buffers.append(torch.cat([b.flatten().float() for b in model.buffers()]))
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)
    assert torch.allclose(buffers[0], buffers[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_each_jet_depends_only_on_its_own_inputs(name, specs, eval_model):
    model = eval_model(name)
    batch = make_batch(spec_for(name, specs))
    subset = torch.tensor([7, 0, 2, 31, 1])
    with torch.no_grad():
        full = model(batch)
        alone = model({g: x[subset] for g, x in batch.items()})
        assert (full[subset] - alone).abs().max() < 1e-5
        for group in model.input_groups:  # every consumed group reaches the output
            changed = {g: x.clone() for g, x in batch.items()}
            changed[group][2] *= 1.5  # jet 2 has candidates in every group
            diff = (model(changed) - full).abs().amax(1)
            assert diff[2] > 1e-4, f"output ignores group {group}"
            assert diff[torch.arange(BATCH) != 2].max() < 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_given_the_seed(name, specs):
    spec = spec_for(name, specs)
    batch = make_batch(spec, 16)
    outputs = []
    for _ in range(2):
        model = build(name, spec, seed=3).train()
        torch.manual_seed(4)  # dropout
        outputs.append(model(batch))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(build(name, spec, seed=5).train()(batch), outputs[0])


@pytest.mark.parametrize("name", MODELS)
def test_number_of_classes_comes_from_the_spec(name, config):
    spec = InputSpec.from_config(with_four_vectors(config), class_names=("b", "c", "l"))
    assert spec.n_classes == 3
    logits = build(name, spec)(make_batch(spec, 8))
    assert logits.shape == (8, 3)


def test_deepjet_size(specs):
    for name in ("DeepJet", "DeepJetHLT"):
        assert 250_000 <= build(name, specs["plain"]).n_parameters() <= 300_000
    hlt = InputSpec.from_config(load_config("hlt_run3"))
    offline = build("DeepJet", specs["plain"]).n_parameters()
    assert build("DeepJetHLT", hlt).n_parameters() == offline


def test_input_sizes_come_from_the_spec(config):
    """A config with other feature counts and lengths builds and runs every model."""
    smaller = with_four_vectors(config).replace_group(
        "cpf", length=10, branches=with_four_vectors(config).group("cpf").branches[3:])
    spec = InputSpec.from_config(smaller)
    assert spec.group("cpf").n_features == 17
    for name in MODELS:
        assert build(name, spec)(make_batch(spec, 8)).shape == (8, spec.n_classes)


@pytest.mark.parametrize("name", ["ParticleTransformer", "ParticleNet"])
def test_missing_four_vectors_are_reported(name, specs):
    with pytest.raises(ModelInputError, match="four_vector") as error:
        get_model(name)(specs["plain"])
    assert "cpf" in str(error.value) and "Cpfcan_pt" in str(error.value)


def test_missing_input_group_is_reported(config):
    no_vertices = config.replace(groups=tuple(g for g in config.groups if g.name != "vtx"))
    spec = InputSpec.from_config(no_vertices)
    with pytest.raises(ModelInputError, match="vtx"):
        get_model("DeepJet")(spec)
    assert get_model("MLP").input_groups == ("global",)
    batch = make_batch(spec, 8)
    assert build("MLP", spec)({"global": batch["global"]}).shape == (8, spec.n_classes)


# -- building blocks ------------------------------------------------------------------------
def test_batch_norm_statistics_ignore_padding():
    torch.manual_seed(0)
    x = 100 * torch.randn(6, 9, 4) + 50
    mask = torch.arange(9) < torch.tensor([0, 3, 9, 1, 5, 2])[:, None]
    x = x * mask.unsqueeze(-1)
    ours, reference = BatchNorm(4).train(), nn.BatchNorm1d(4).train()
    out = on_real(ours, x, mask)
    assert torch.allclose(out[mask], reference(x[mask]), atol=1e-5)
    assert (out[~mask] == 0).all()
    assert torch.allclose(ours.running_var, reference.running_var)
    # fewer than two real entries: running statistics used, and left unchanged
    before = ours.running_mean.clone()
    single = on_real(ours, x[1:2, :2], mask[1:2, :2] & torch.tensor([True, False]))
    assert torch.isfinite(single).all() and torch.equal(ours.running_mean, before)


def test_knn_never_picks_padding_or_itself():
    torch.manual_seed(0)
    points = torch.randn(3, 12, 2)
    mask = torch.arange(12) < torch.tensor([12, 4, 1])[:, None]
    idx, valid = knn(torch.cdist(points, points).square(), mask, k=6)
    assert idx.shape == (3, 12, 6)
    assert (valid.sum(-1) == torch.tensor([[6] * 12, [3] * 4 + [0] * 8, [0] * 12])).all()
    neighbours_real = torch.gather(mask.unsqueeze(1).expand(-1, 12, -1), 2, idx)
    assert neighbours_real[valid].all()
    assert not (idx == torch.arange(12)[:, None])[valid].any()
    # the valid neighbours of a full jet are its 6 nearest points
    distance = torch.cdist(points[0], points[0]).fill_diagonal_(float("inf"))
    assert torch.equal(idx[0].sort(-1).values, distance.topk(6, largest=False).indices.sort(-1)
                       .values)


def test_pairwise_features_follow_the_part_definitions():
    # two massless particles: pt 10 and 30, delta y = 0.3, phi on either side of +-pi
    pt, eta, phi = torch.tensor([10.0, 30.0]), torch.tensor([0.1, 0.4]), torch.tensor([3.1, -3.1])
    p4 = torch.stack((pt, eta, phi, pt * torch.cosh(eta)), -1).unsqueeze(0)
    features = pairwise_features(p4)[0]
    delta = math.hypot(0.3, 2 * math.pi - 6.2)
    e = pt * torch.cosh(eta)
    mass2 = 2 * (e[0] * e[1] - pt[0] * pt[1] * (math.cos(6.2) + math.sinh(0.1) * math.sinh(0.4)))
    expected = torch.tensor([math.log(10 * delta), math.log(0.25), math.log(delta),
                             math.log(mass2)])
    assert torch.allclose(features[0, 1], expected, atol=1e-4)
    assert torch.allclose(features[1, 0], features[0, 1])
    assert torch.isfinite(features).all()  # also delta R = 0 on the diagonal


def test_axis_offsets_wrap_phi():
    p4 = torch.tensor([[[10.0, 0.5, math.pi - 0.05, 12.0], [10.0, 0.7, -math.pi + 0.05, 13.0],
                        [0.0, 0.0, 0.0, 0.0]]])
    offsets = axis_offsets(p4, torch.tensor([[True, True, False]]))
    assert torch.allclose(offsets[0, :, 1], torch.tensor([-0.05, 0.05, 0.0]), atol=1e-5)
    assert torch.allclose(offsets[0, 1, 0] - offsets[0, 0, 0], torch.tensor(0.2))
    assert offsets[0, 0, 0] < 0 < offsets[0, 1, 0] and offsets[0, 2, 0] == 0


def test_interaction_bias_is_zero_for_padded_pairs(specs):
    spec = specs["four_vectors"]
    model = build("ParticleTransformer", spec).train()
    batch = make_batch(spec)
    p4, mask = candidate_four_vectors(batch, spec, model.particle_groups)
    bias = model.interaction(p4, mask)
    assert bias.shape == (BATCH, 8, mask.shape[1], mask.shape[1])
    pair_mask = (mask.unsqueeze(2) & mask.unsqueeze(1)).unsqueeze(1).expand_as(bias)
    assert (bias[~pair_mask] == 0).all() and (bias[pair_mask] != 0).all()
    assert torch.allclose(bias, bias.transpose(2, 3), atol=1e-5)  # symmetric features


def test_attention_mask_hides_padded_keys_but_never_a_whole_row():
    mask = torch.tensor([[True, True, False], [False, False, False]])
    bias = self_attention_mask(mask)[:, 0]
    assert torch.isinf(bias[0, :, 2][:2]).all() and (bias[0, :2, :2] == 0).all()
    assert (torch.isfinite(bias).sum(-1) >= 1).all()


def test_deepjet_lstm_reads_the_real_candidates_backwards():
    torch.manual_seed(0)
    summary = SequenceSummary(3, 5)
    x = torch.randn(3, 6, 3)
    lengths = torch.tensor([4, 0, 6])
    mask = torch.arange(6) < lengths[:, None]
    out = summary(x * mask.unsqueeze(-1), mask)
    for jet, n in enumerate(lengths.tolist()):
        if n == 0:
            assert (out[jet] == 0).all()
        else:
            _, (hidden, _) = summary.lstm(x[jet : jet + 1, :n].flip(1))
            assert torch.allclose(out[jet], hidden[-1, 0], atol=1e-6)
    # a batch in which no jet has a candidate of the group (e.g. no secondary vertex)
    empty = torch.zeros(4, 6, 3, requires_grad=True)
    out = summary(empty, torch.zeros(4, 6, dtype=torch.bool))
    assert out.shape == (4, 5) and (out == 0).all()


def test_original_config_names_and_lost_tracks_in_particle_transformer():
    """part_run3 has the original's 860 inputs; with part_run3_lt ParT takes the lost tracks
    as a fourth particle group (they change its output), DeepJet leaves them out."""
    part, lt = load_config("part_run3"), load_config("part_run3_lt")
    assert sum(g.width for g in part.groups) == 15 + 26 * 20 + 25 * 10 + 5 * 15
    assert lt.group("lt").length == 5 and lt.group("lt").four_vector[0] == "LT_pt"
    assert [p.name for p in load_config("default").processes] == ["default"]
    spec = InputSpec.from_config(lt)
    model = build("ParticleTransformer", spec)
    assert model.input_groups == ("global", "cpf", "npf", "vtx", "lt")
    assert "lt" in model.embeddings
    assert get_model("DeepJet")(spec).input_groups == ("global", "cpf", "npf", "vtx")
    batch = make_batch(spec, 32, seed=3)
    with torch.no_grad():
        model(batch)  # batch-norm statistics
        model.eval()
        nominal = model(batch)
        without_lt = model({**batch, "lt": torch.zeros_like(batch["lt"])})
    has_lt = (batch["lt"] != 0).any(-1).any(-1)
    changed = (nominal - without_lt).abs().amax(-1) > 1e-5
    assert torch.equal(changed, has_lt) and has_lt.any()


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_nn_linear_on_both_paths(bias, monkeypatch):
    """:class:`Linear` gives nn.Linear's outputs and gradients (float32 rounding) on the
    oneDNN path for large CPU batches, keeps nn.Linear's parameter names (checkpoints load
    either way), and takes F.linear for small batches, float64 and the ONNX export form."""
    calls = []
    apply = layers._OneDNNLinear.apply
    monkeypatch.setattr(layers._OneDNNLinear, "apply",
                        lambda *args: calls.append(args[0].shape) or apply(*args))
    torch.manual_seed(0)
    ours, reference = Linear(48, 96, bias=bias), nn.Linear(48, 96, bias=bias)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(20, 150, 48, requires_grad=True)  # 3000 rows
    outputs, gradients = [], []
    for layer in (ours, reference):
        out = layer(x)
        out.backward(torch.linspace(0.5, 1, out.numel()).view_as(out))
        outputs.append(out.detach())
        gradients.append([x.grad.clone()] + [p.grad.clone() for p in layer.parameters()])
        x.grad = None
    expected = [(3000, 48)] if layers._ONEDNN_CPU else []
    assert calls == expected
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for ours_grad, reference_grad in zip(*gradients, strict=True):
        torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        ours(x[:1])  # 150 rows: below the size where oneDNN pays
        ours.double()(x.double())
        with export_mode():
            ours.float()(x)
    assert calls == expected


def count_batch_norm_calls(monkeypatch: pytest.MonkeyPatch) -> list[BatchNorm]:
    """The BatchNorms that run from now on, one entry per call (no hook: a hook would stop
    the folding)."""
    calls: list[BatchNorm] = []
    forward = BatchNorm.forward
    monkeypatch.setattr(BatchNorm, "forward",
                        lambda self, x: calls.append(self) or forward(self, x))
    return calls


@pytest.mark.parametrize("activation", [nn.ReLU, nn.GELU])
def test_eval_mode_folds_batch_norm_into_the_next_linear(activation, monkeypatch):
    """In eval mode a CandidateEncoder's stack runs with every BatchNorm folded into the next
    Linear (no BatchNorm module runs) and gives the unfolded outputs and input gradients
    (what adversarial attacks need), also on raw inputs with a mean far above their spread;
    the ONNX export form runs the modules one by one."""
    torch.manual_seed(0)
    encoder = CandidateEncoder(5, (32, 16), activation, dropout=0.3)
    norms = [m for m in encoder.modules() if isinstance(m, BatchNorm)]
    for norm in norms:
        nn.init.uniform_(norm.weight, 0.5, 2.0)
        nn.init.uniform_(norm.bias, -1.0, 1.0)
    x = torch.randn(64, 10, 5) * torch.tensor([1.0, 0.01, 3.0, 1e-3, 5.0]) \
        + torch.tensor([0.0, 1000.0, -2.0, 5e3, 1.0])
    mask = torch.rand(64, 10) < 0.7
    with torch.no_grad():
        for _ in range(20):
            encoder(x, mask)  # running statistics
    encoder.eval()
    calls = count_batch_norm_calls(monkeypatch)
    outputs, gradients = [], []
    for form in (contextlib.nullcontext, export_mode):
        inputs = x.clone().requires_grad_()
        with form():
            out = encoder(inputs, mask)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        outputs.append(out.detach())
        gradients.append(inputs.grad)
    assert calls == norms  # the export form only
    assert outputs[0].abs().max() > 1  # not a vanishing output
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-4, atol=1e-4)
    assert (outputs[0][~mask] == 0).all()


def test_folded_input_norm_under_float16_autocast_keeps_large_raw_values_finite():
    """Under autocast the input BatchNorm runs unfolded: the first layer's float16 cast then
    sees standardised values, not raw ones beyond float16's range (65504)."""
    torch.manual_seed(0)
    encoder = CandidateEncoder(3, (16, 8))
    x = torch.randn(32, 6, 3) * torch.tensor([3e4, 1.0, 1e5])
    mask = torch.ones(32, 6, dtype=torch.bool)
    with torch.no_grad():
        encoder(x, mask)
        encoder.eval()
        reference = encoder(x, mask)
        with torch.autocast("cpu", dtype=torch.float16):
            out = encoder(x, mask)
    assert out.isfinite().all()
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)


def test_particle_net_eval_mode_folds_its_batch_norms(specs, monkeypatch):
    """ParticleNet in eval mode runs no BatchNorm of its EdgeConv blocks (each is folded into
    the Linear before it) and gives the module-by-module export form's outputs and input
    gradients (float64: only a wrong folding could fail)."""
    spec = spec_for("ParticleNet", specs)
    model = build("ParticleNet", spec).double()
    with torch.no_grad():
        model({g: x.double() for g, x in make_batch(spec, 64, seed=1).items()})
    model.eval()
    edge_norms = {m for m in model.edge_convs.modules() if isinstance(m, BatchNorm)}
    all_calls = count_batch_norm_calls(monkeypatch)
    outputs, gradients = [], []
    for form in (contextlib.nullcontext, export_mode):
        batch = {g: x.double().requires_grad_() for g, x in make_batch(spec, 40, seed=2).items()}
        with form():
            out = model(batch)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        outputs.append(out.detach())
        gradients.append(batch["cpf"].grad)
        calls = [m for m in all_calls if m in edge_norms]
        if form is contextlib.nullcontext:
            assert calls == []
    assert len(calls) == 3 * 4  # the export form: 4 BatchNorms per block
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-10, rtol=1e-10)
    assert gradients[0].abs().max() > 0
    torch.testing.assert_close(gradients[0], gradients[1], atol=1e-10, rtol=1e-8)


def test_folded_dense_stack_on_the_onednn_path_matches_the_unfolded_one(monkeypatch):
    """A dense stack without input norm (DeepJet's head, the MLP's layers) in eval mode on
    a batch large enough for oneDNN: folded weights through oneDNN give the unfolded
    outputs, input gradients and parameter gradients (float32 rounding)."""
    calls = []
    apply = layers._OneDNNLinear.apply
    monkeypatch.setattr(layers._OneDNNLinear, "apply",
                        lambda *args: calls.append(args[0].shape) or apply(*args))
    torch.manual_seed(0)
    stack = dense_stack(32, (128, 64), nn.GELU, dropout=0.2)
    with torch.no_grad():
        for _ in range(5):
            stack(torch.randn(256, 32) * 2 + 1)
        for norm in (stack[2], stack[6]):
            nn.init.uniform_(norm.weight, 0.5, 2.0)
            nn.init.uniform_(norm.bias, -1.0, 1.0)
    stack.eval()
    x = torch.randn(4096, 32) * 2 + 1
    outputs, gradients = [], []
    for form in (contextlib.nullcontext, export_mode):
        inputs = x.clone().requires_grad_()
        with form():
            out = stack(inputs)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        outputs.append(out.detach())
        gradients.append([inputs.grad] + [p.grad.clone() for p in stack.parameters()])
        stack.zero_grad()
        if form is contextlib.nullcontext:
            assert calls == ([(4096, 32), (4096, 128)] if layers._ONEDNN_CPU else [])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)
    for folded, unfolded in zip(*gradients, strict=True):  # sums over 4096 rows: float32
        scale = unfolded.abs().max()  # rounding relative to the largest entry
        assert scale > 0
        assert (folded - unfolded).abs().max() <= 1e-4 * scale


def test_folding_steps_aside_for_modules_in_training_mode_or_with_hooks(specs):
    """Eval-mode folding only where it changes nothing observable: a Dropout kept on
    (Monte-Carlo dropout) still drops, a BatchNorm put back in training mode still updates
    its statistics, and forward hooks on the inner modules still run."""
    torch.manual_seed(0)
    stack = dense_stack(8, (16, 16), nn.ReLU, dropout=0.5)
    x = torch.randn(64, 8)
    with torch.no_grad():
        stack(x)
        stack.eval()
        for dropout in (stack[3], stack[7]):
            dropout.train()
        assert not torch.equal(stack(x), stack(x))  # a new dropout mask on every call
        stack.eval()
        stack[2].train()
        before = stack[2].running_mean.clone()
        stack(x + 5)
        assert not torch.equal(stack[2].running_mean, before)
        stack.eval()
        seen = []
        stack[4].register_forward_hook(lambda module, args, out: seen.append(out.shape))
        stack(x)
        assert seen == [(64, 16)]
    spec = spec_for("ParticleNet", specs)
    model = build("ParticleNet", spec)
    with torch.no_grad():
        model(make_batch(spec, 32, seed=1))
        model.eval()
        seen = []
        for block in model.edge_convs:
            block.centre.register_forward_hook(lambda module, args, out: seen.append(1))
            block.edge_layers[-1].register_forward_hook(lambda module, args, out: seen.append(2))
        model(make_batch(spec, 8, seed=2))
    assert seen == [1, 2] * 3


def test_folding_keeps_the_dtype_of_linears_whose_batch_norms_stay_float32(specs):
    """Float64 Linears with float32 BatchNorms (as in a half model keeping its BatchNorms in
    float32): the folded form runs and matches the module-by-module form."""
    spec = spec_for("ParticleNet", specs)
    torch.manual_seed(0)
    models = [CandidateEncoder(5, (16, 8)), build("ParticleNet", spec)]
    inputs = [(torch.randn(16, 6, 5).double(), torch.rand(16, 6) < 0.7),
              ({g: x.double() for g, x in make_batch(spec, 16, seed=3).items()},)]
    with torch.no_grad():
        models[0](torch.randn(16, 6, 5), torch.ones(16, 6, dtype=torch.bool))
        models[1](make_batch(spec, 32, seed=1))
        for model, args in zip(models, inputs, strict=True):
            model.eval().double()
            for norm in model.modules():
                if isinstance(norm, BatchNorm):
                    norm.float()
            folded = model(*args)
            with export_mode():
                reference = model(*args)
            assert folded.dtype == torch.float64
            torch.testing.assert_close(folded, reference)


def test_length_slices_partition_the_batch_at_minimal_modelled_cost():
    lengths = torch.tensor([0, 3, 3, 7, 1, 25, 3, 0, 7, 2]).repeat(4)
    for overhead, power in ((0.0, 1.0), (4.0, 1.0), (1e9, 1.0), (10.0, 2.0)):
        slices = length_slices(lengths, overhead, power)
        rows = torch.cat([r for r, _ in slices])
        assert sorted(rows.tolist()) == list(range(len(lengths)))  # every jet exactly once
        for r, longest in slices:
            assert longest == max(int(lengths[r].max()), 1)
        cost = sum(overhead + len(r) * longest ** power for r, longest in slices)
        # brute force over every cut of the 5 distinct lengths (0 counts as 1)
        distinct = sorted(set(lengths.clamp_min(1).tolist()))
        best = float("inf")
        for mask in range(2 ** (len(distinct) - 1)):
            total, start = 0.0, 0
            for i in range(len(distinct)):
                if i == len(distinct) - 1 or mask >> i & 1:
                    n = int(((lengths.clamp_min(1) >= distinct[start])
                             & (lengths.clamp_min(1) <= distinct[i])).sum())
                    total += overhead + n * distinct[i] ** power
                    start = i + 1
            best = min(best, total)
        assert cost == pytest.approx(best)
    assert len(length_slices(lengths, 0.0)) == 5 and len(length_slices(lengths, 1e9)) == 1
    small = length_slices(lengths[:10], 0.0)  # a small batch: one slice, trimmed
    assert len(small) == 1 and small[0][1] == 25 and len(small[0][0]) == 10


@pytest.mark.parametrize(("name", "train"), [
    ("DeepJet", False), ("DeepJet", True), ("ParticleTransformer", False),
    ("ParticleTransformer", True), ("ParticleNet", False)])  # ParticleNet: dense in eval only
def test_sliced_forward_equals_the_dense_export_form(name, train, specs):
    """The length-sorted slices (default path) compute what the dense ONNX-export path
    computes over all slots, in training (dropout off, batch statistics) and eval mode;
    in float64, so that only a different algorithm (not float32 rounding) could fail."""
    spec = spec_for(name, specs)
    model = build(name, spec).double()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    with torch.no_grad():
        model({g: x.double() for g, x in make_batch(spec, 128, seed=4).items()})
    model.train(train)
    batch = {g: x.double() for g, x in make_batch(spec, 300, seed=5).items()}
    with torch.no_grad():
        sliced = model(batch)
        with export_mode():
            dense = model(batch)
    torch.testing.assert_close(sliced, dense, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", ["DeepJet", "ParticleNet"])
def test_compiled_model_runs_under_inference_mode_with_eager_outputs(name, specs):
    """``torch.compile`` (dynamic shapes, as bench/gpu.py and ``--use-torch-compile`` use it)
    traces the models, whose length slices are cut on the host, also under
    ``torch.inference_mode`` (the cut's numpy arrays once failed dynamo's guards there)."""
    torch._dynamo.reset()
    spec = spec_for(name, specs)
    model = build(name, spec).eval()
    batch = make_batch(spec, 48, seed=4)
    compiled = torch.compile(model, dynamic=True, backend="eager")
    with torch.inference_mode():
        expected = model(batch)
        outputs = [compiled(batch), compiled(make_batch(spec, 40, seed=5))]
    torch.testing.assert_close(outputs[0], expected)
    assert outputs[1].shape == (40, spec.n_classes)
