"""Adversarial attacks: the registry, what may move (integer features, default entries,
padding, 4-vectors, restrict-impact, the epsilon box), the attacks' defining properties,
every model under every attack, and the per-feature scales stored with a dataset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.test_models import MODELS, make_batch, spec_for, with_four_vectors
from utils.attacks import ATTACKS, MULTI_STEP
from utils.attacks.methods import (
    Attack,
    AttackError,
    ChangeMonitor,
    attack_mode,
    cross_entropy,
    registered_attacks,
)
from utils.config import load_config
from utils.dataset.directory import DatasetDirectory
from utils.dataset.scales import compute_scales, config_defaults, dataset_scales, group_scales
from utils.models import get_model
from utils.settings import AttackSettings, EvaluationSettings, SettingsError, TrainSettings
from utils.torch.checkpoint import load_checkpoint

BOUNDED = ("fgsm", "pgd", "jetfool", "minimizer")  # the attacks that stay in the epsilon box


PLAIN = load_config("offline_run3")
FOUR_VECTORS = with_four_vectors(PLAIN)


@pytest.fixture(scope="module")
def config():
    """The config of the 4-vector spec (for the masks; both configs mark the same integers)."""
    return FOUR_VECTORS


@pytest.fixture(scope="module")
def specs():
    from utils.models import InputSpec

    return {"plain": InputSpec.from_config(PLAIN),
            "four_vectors": InputSpec.from_config(FOUR_VECTORS)}


def batch_scales(batch: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Robust spreads of a batch's features, computed as the export does."""
    out = {}
    for group, x in batch.items():
        length = x.shape[1] if x.ndim == 3 else None
        out[group] = group_scales(x.reshape(len(x), -1).numpy(), length)
    return out


def make_attack(config, spec, name, magnitude=0.05, batch=None, **kw) -> Attack:
    """The attack on every group of ``spec`` with ``batch``'s spreads as scales (``config``
    without 4-vectors for a plain spec)."""
    if spec.group("cpf").four_vector is None:
        config = PLAIN
    settings = AttackSettings(name, magnitude, kw.pop("iterations", 3 if name in MULTI_STEP
                                                     else 1), **kw)
    groups = [g.name for g in spec.groups]
    raw = batch_scales(batch)
    scales = {g: dict(zip(config.group(g).features, raw[g], strict=True)) for g in groups}
    return Attack.from_config(settings, config, groups, scales)


@pytest.fixture(scope="module")
def trained(specs):
    """An MLP trained (200 steps) on a learnable toy task: class = which of the first six
    global features is largest (in units of its scale)."""
    torch.manual_seed(0)
    spec = specs["plain"]
    model = get_model("MLP")(spec)
    batch = make_batch(spec, 2048, seed=7)
    scale = torch.tensor(batch_scales(batch)["global"])
    target = (batch["global"][:, :6] / scale[:6]).argmax(1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        optimiser.zero_grad()
        model.loss(model(batch), target).backward()
        optimiser.step()
    return model.eval(), batch, target


def nominal_entries(config, batch, attack_settings: AttackSettings) -> dict[str, torch.Tensor]:
    """Entries an attack with ``reduce`` must leave bit-identical: frozen features, zeros,
    padding."""
    if len(config.group("cpf").features) != batch["cpf"].shape[-1]:
        config = PLAIN
    out = {}
    for group, x in batch.items():
        spec = config.group(group)
        frozen = spec.frozen_features(attack_settings.reduce)
        column = torch.tensor([f in frozen for f in spec.features])
        default = torch.tensor([spec.default_values.get(f, math.nan) for f in spec.features])
        keep = column.expand_as(x) | (x == 0) | (x == default)
        if x.ndim == 3:
            keep = keep | ~(x != 0).any(-1, keepdim=True)
        out[group] = keep
    return out


# -- registry and settings ----------------------------------------------------------------
def test_registry_has_every_attack():
    assert set(registered_attacks()) == set(ATTACKS)
    with pytest.raises(AttackError, match="unknown attack 'nope'"):
        Attack(AttackSettings("nope", 0.1), {})


def test_attack_settings_errors_name_the_option():
    with pytest.raises(SettingsError, match="--attack fgsm needs --attack-magnitude > 0"):
        TrainSettings(attack="fgsm")
    with pytest.raises(SettingsError, match="--attack nominal takes no --attack-magnitude"):
        TrainSettings(attack_magnitude=0.1)
    with pytest.raises(SettingsError, match="--attack-iterations applies to pgd, jetfool, "
                                            "minimizer; fgsm takes one step; got 5"):
        TrainSettings(attack="fgsm", attack_magnitude=0.1, attack_iterations=5)
    with pytest.raises(SettingsError, match="--test-attack-restrict-impact must be -1 or"):
        EvaluationSettings(test_attack_restrict_impact=0)
    with pytest.raises(SettingsError, match="--test-attack must be one of"):
        EvaluationSettings(test_attack="deepfool")
    pgd = EvaluationSettings(test_attack="pgd", test_attack_magnitude=0.02).attack_settings("test_")
    assert pgd.iterations == 10 and pgd.active
    assert pgd.path_parts("test_") == ("test_attack_pgd", "test_epsilon_0.02",
                                       "test_iterations_10")
    jetfool = AttackSettings("jetfool", 0.05, 4, overshoot=0.1)
    assert jetfool.path_parts() == ("jetfool", "epsilon_0.05", "iterations_4", "overshoot_0.1")
    assert AttackSettings("minimizer", 1e-5, 2).path_parts()[-1] == "uncertainty_1"
    assert AttackSettings().path_parts() == ("nominal",)


def test_settings_record_what_they_do_and_refuse_what_does_not_apply():
    # the effective number of steps is recorded: leaving it out and giving it are the same
    assert TrainSettings(attack="pgd", attack_magnitude=0.1).attack_iterations == 10
    assert TrainSettings(attack="fgsm", attack_magnitude=0.1).attack_iterations == 1
    assert TrainSettings().attack_iterations == 1
    with pytest.raises(SettingsError, match="--attack-overshoot do.es. not apply to --attack "
                                            "fgsm"):
        TrainSettings(attack="fgsm", attack_magnitude=0.1, attack_overshoot=0.5)
    with pytest.raises(SettingsError, match="--test-attack-reduce, "
                                            "--test-attack-restrict-impact do.es. not apply"):
        EvaluationSettings(test_attack_reduce=False, test_attack_restrict_impact=0.5)
    # settings that change the result and are not in the original's path get their own part
    parts = AttackSettings("fgsm", 0.1, reduce=False, restrict_impact=0.25,
                           individual_factors=False).path_parts("test_")
    assert parts == ("test_attack_fgsm", "test_epsilon_0.1", "test_iterations_1",
                     "test_individual_factors_off", "test_reduce_off",
                     "test_restrict_impact_0.25")


def test_missing_scales_are_an_error(config, specs):
    with pytest.raises(AttackError, match="no per-feature scales for global features"):
        Attack.from_config(AttackSettings("fgsm", 0.1), config, ["global"], {})
    # without individual factors the scales are 1 and none are needed
    attack = Attack.from_config(AttackSettings("fgsm", 0.1, individual_factors=False),
                                config, ["global"], {})
    assert attack.scales["global"] == [1.0] * len(config.group("global").features)


# -- the defining properties --------------------------------------------------------------
@pytest.mark.parametrize("name", ATTACKS)
def test_magnitude_zero_is_nominal(name, config, trained):
    model, batch, target = trained
    attack = make_attack(config, model.spec, name, 0.0, batch)
    moved = attack(model, batch, target)
    for group in batch:
        assert torch.equal(moved[group], batch[group])
    with torch.no_grad():
        assert torch.equal(model(moved), model(batch))


@pytest.mark.parametrize("name", ATTACKS)
def test_the_attack_functions_at_magnitude_zero_change_nothing(name, config, trained):
    model, batch, target = trained
    attack = make_attack(config, model.spec, name, 0.0, batch, iterations=3)
    torch.manual_seed(0)
    moved = registered_attacks()[name](model, batch, target, cross_entropy,
                                       attack.budget(batch))  # no early return
    for group in batch:
        assert torch.equal(moved[group], batch[group]), (name, group)


def test_projection_clamps_to_the_box_and_resets_what_may_not_move(config, trained):
    model, batch, target = trained
    attack = make_attack(config, model.spec, "pgd", 0.1, batch, restrict_impact=0.05)
    budget = attack.budget(batch)
    far = {g: x + 1e6 for g, x in batch.items()}
    projected = budget.project(batch, far)
    for group, x in batch.items():
        allowed = budget.allowed[group]
        expected = torch.minimum(0.1 * budget.scale[group], 0.05 * x.abs())
        # (x + change) - x equals the change up to the float32 rounding of x + change
        torch.testing.assert_close((projected[group] - x)[allowed], expected[allowed],
                                   rtol=1e-4, atol=1e-6)
        assert torch.equal(projected[group][~allowed], x[~allowed])


def test_fgsm_and_pgd_increase_the_loss_of_a_trained_model(config, trained):
    model, batch, target = trained
    with torch.no_grad():
        nominal = cross_entropy(model(batch), target).mean()
    accuracy = (model(batch).argmax(1) == target).float().mean()
    assert accuracy > 0.8  # the model did learn the task
    losses = {}
    for name in ("fgsm", "pgd"):
        moved = make_attack(config, model.spec, name, 0.1, batch, iterations=
                            1 if name == "fgsm" else 10)(model, batch, target)
        with torch.no_grad():
            losses[name] = cross_entropy(model(moved), target).mean()
        assert losses[name] > 1.5 * nominal, (name, losses[name], nominal)


def test_pgd_with_one_iteration_is_fgsm(config, trained):
    model, batch, target = trained
    fgsm = make_attack(config, model.spec, "fgsm", 0.07, batch)(model, batch, target)
    pgd = make_attack(config, model.spec, "pgd", 0.07, batch, iterations=1)(model, batch,
                                                                             target)
    for group in batch:
        assert torch.equal(fgsm[group], pgd[group])


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_the_epsilon_box_holds(name, config, trained):
    model, batch, target = trained
    magnitude = 0.08
    attack = make_attack(config, model.spec, name, magnitude, batch, iterations=
                         1 if name == "fgsm" else 7)
    moved = attack(model, batch, target)
    scale = torch.tensor(attack.scales["global"])
    change = (moved["global"] - batch["global"]).abs()
    assert torch.all(change <= magnitude * scale * (1 + 1e-5) + 1e-7)
    if name == "fgsm":  # every movable entry with a gradient moves by the full step
        moved_entries = change > 0
        np.testing.assert_allclose(change[moved_entries],
                                   (magnitude * scale).expand_as(change)[moved_entries],
                                   rtol=1e-5)


def test_fgsm_without_individual_factors_moves_by_the_magnitude(config, trained):
    model, batch, target = trained
    attack = make_attack(config, model.spec, "fgsm", 0.25, batch, individual_factors=False)
    x = batch["global"]
    moved = attack(model, batch, target)["global"]
    change = moved - x
    # every moved entry moved by exactly 0.25 (as float32 rounds x + 0.25 or x - 0.25)
    stepped = torch.where(change > 0, x + 0.25, x - 0.25)
    assert torch.equal(moved[change != 0], stepped[change != 0])
    assert (change != 0).float().mean() > 0.5


@pytest.mark.parametrize("name", [a for a in ATTACKS if a != "nominal"])
def test_restrict_impact_holds(name, config, trained):
    model, batch, target = trained
    attack = make_attack(config, model.spec, name, 0.5, batch, restrict_impact=0.03)
    moved = attack(model, batch, target)
    change = (moved["global"] - batch["global"]).abs()
    assert torch.all(change <= 0.03 * batch["global"].abs() * (1 + 1e-5))
    assert (change > 0).any()


def test_jetfool_flips_predictions_and_leaves_flipped_jets_alone(config, trained):
    model, batch, target = trained
    with torch.no_grad():
        start = model(batch).argmax(1)
    one = make_attack(config, model.spec, "jetfool", 0.5, batch, iterations=1)(
        model, batch, target)
    five = make_attack(config, model.spec, "jetfool", 0.5, batch, iterations=5)(
        model, batch, target)
    with torch.no_grad():
        flipped_one = model(one).argmax(1) != start
        flipped_five = model(five).argmax(1) != start
    assert flipped_one.float().mean() > 0.1
    assert flipped_five.sum() >= flipped_one.sum()
    # jets fooled after the first step are not moved by the later steps
    assert torch.equal(five["global"][flipped_one], one["global"][flipped_one])
    assert not torch.equal(five["global"][~flipped_one], one["global"][~flipped_one])


def test_minimizer_changes_the_prediction_and_its_prior_restrains_it(config, trained):
    model, batch, target = trained
    with torch.no_grad():
        nominal = model(batch).softmax(1)
    changes, sizes = {}, {}
    for name, kw in (("noise", {}), ("minimizer", {}), ("loose", {"uncertainty": 10.0})):
        torch.manual_seed(1)
        attack = make_attack(config, model.spec, "noise" if name == "noise" else "minimizer",
                             0.1, batch, iterations=10, **kw)
        moved = attack(model, batch, target)
        monitor = ChangeMonitor(attack)
        monitor.add(batch, moved)
        sizes[name] = monitor.report()["global"]["mean_abs_change"]
        with torch.no_grad():
            changes[name] = (model(moved).softmax(1) - nominal).abs().sum(1).mean()
    assert changes["loose"] > changes["minimizer"] > 1.5 * changes["noise"] > 0
    assert sizes["loose"] > 1.2 * sizes["minimizer"]  # a wider prior allows larger shifts
    assert sizes["loose"] <= 0.1 * (1 + 1e-5)


# -- what may move ------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_every_model_runs_every_attack(name, config, specs):
    spec = spec_for(name, specs)
    torch.manual_seed(0)
    model = get_model(name)(spec)
    batch = make_batch(spec, 48, seed=3)
    with torch.no_grad():
        model.train()(batch)  # batch-norm statistics from data
    model.eval()
    target = torch.randint(0, spec.n_classes, (48,))
    for attack_name in ATTACKS:
        attack = make_attack(config, spec, attack_name, 0.1, batch, iterations=2)
        monitor = ChangeMonitor(attack)
        with attack_mode(model):
            moved = attack(model, batch, target)
        assert not model.training
        monitor.add(batch, moved)
        keep = nominal_entries(config, batch, attack.settings)
        for group, x in batch.items():
            assert moved[group].shape == x.shape and moved[group].dtype == x.dtype
            assert torch.equal(moved[group][keep[group]], x[keep[group]]), (attack_name, group)
        with torch.no_grad():
            probs = model(moved).softmax(1)
        assert torch.isfinite(probs).all(), attack_name
        report = monitor.report()
        if attack_name in BOUNDED:
            assert all(r["max_abs_change"] <= 0.1 * (1 + 1e-4) for r in report.values()), \
                (attack_name, report)
        if attack_name != "nominal":
            assert any(r["fraction_changed"] > 0 for r in report.values()), attack_name


def test_padding_stays_padded_and_reduce_off_moves_integers_and_zeros(config, specs):
    spec = specs["plain"]
    model = get_model("DeepJet")(spec).eval()
    batch = make_batch(spec, 32, seed=5)
    target = torch.zeros(32, dtype=torch.long)
    attack = make_attack(config, spec, "fgsm", 0.1, batch, reduce=False)
    moved = attack(model, batch, target)
    cpf, moved_cpf = batch["cpf"], moved["cpf"]
    padded = ~(cpf != 0).any(-1)
    assert padded.any() and torch.equal(moved_cpf[padded], cpf[padded])
    real = ~padded
    integer = config.group("cpf").features.index("Cpfcan_quality")
    assert (moved_cpf[real][:, integer] != cpf[real][:, integer]).any()
    zeros = (cpf == 0) & real.unsqueeze(-1)
    assert (moved_cpf[zeros] != 0).any()
    # with reduce (the default) the same entries stay
    reduced = make_attack(config, spec, "fgsm", 0.1, batch)(model, batch, target)["cpf"]
    assert torch.equal(reduced[real][:, integer], cpf[real][:, integer])
    assert torch.equal(reduced[zeros], cpf[zeros])


def test_four_vectors_move_only_where_the_config_says(config, specs):
    spec = specs["four_vectors"]
    model = get_model("ParticleTransformer")(spec).eval()
    batch = make_batch(spec, 16, seed=9)
    target = torch.zeros(16, dtype=torch.long)
    pt = config.group("cpf").features.index("Cpfcan_pt")
    real = (batch["cpf"] != 0).any(-1)
    frozen = make_attack(config, spec, "fgsm", 0.1, batch)(model, batch, target)
    assert torch.equal(frozen["cpf"][..., pt], batch["cpf"][..., pt])
    free_config = config.replace_group("cpf", attack_four_vector=True)
    free = make_attack(free_config, spec, "fgsm", 0.1, batch)(model, batch, target)
    assert (free["cpf"][..., pt][real] != batch["cpf"][..., pt][real]).any()


@pytest.mark.parametrize("name", ["ParticleTransformer", "ParticleNet"])
def test_input_gradients_are_finite_for_four_vector_models(name, specs):
    spec = specs["four_vectors"]
    torch.manual_seed(0)
    model = get_model(name)(spec).eval()
    batch = make_batch(spec, 16, seed=4)  # jet 0 has no candidates at all
    x = {g: t.clone().requires_grad_(True) for g, t in batch.items()}
    model(x).logsumexp(1).sum().backward()
    for group, t in x.items():
        assert torch.isfinite(t.grad).all(), group


def test_mixed_precision_attacks_keep_their_masks(config, specs):
    spec = specs["plain"]
    torch.manual_seed(0)
    model = get_model("DeepJet")(spec).eval()
    batch = make_batch(spec, 32, seed=2)
    target = torch.randint(0, spec.n_classes, (32,))

    def autocast_model(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float()

    for name in ("fgsm", "pgd", "jetfool"):
        attack = make_attack(config, spec, name, 0.1, batch, iterations=2)
        moved = attack(autocast_model, batch, target)
        keep = nominal_entries(config, batch, attack.settings)
        for group, x in batch.items():
            assert moved[group].dtype == torch.float32
            assert torch.equal(moved[group][keep[group]], x[keep[group]])
        assert torch.isfinite(autocast_model(moved)).all()
        assert any(not torch.equal(moved[g], batch[g]) for g in batch), name


def test_declared_default_values_stay_nominal(config, specs):
    spec = specs["plain"]
    model = get_model("DeepJet")(spec).eval()
    batch = make_batch(spec, 32, seed=6)
    above_charm = PLAIN.group("global").features.index("TagVarCSV_trackSip2dSigAboveCharm")
    drminsv = PLAIN.group("cpf").features.index("Cpfcan_drminsv")
    batch["global"][::2, above_charm] = -1.0  # "no track above charm"
    batch["cpf"][:, :3, drminsv] = 0.4  # "no secondary vertex" on real candidates
    target = torch.zeros(32, dtype=torch.long)
    moved = make_attack(config, spec, "fgsm", 0.5, batch)(model, batch, target)
    assert torch.equal(moved["global"][::2, above_charm], batch["global"][::2, above_charm])
    assert not torch.equal(moved["global"][1::2, above_charm],
                           batch["global"][1::2, above_charm])
    real = (batch["cpf"][:, :3] != 0).any(-1)
    assert torch.equal(moved["cpf"][:, :3, drminsv][real], batch["cpf"][:, :3, drminsv][real])
    free = make_attack(config, spec, "fgsm", 0.5, batch, reduce=False)(model, batch, target)
    assert not torch.equal(free["global"][::2, above_charm], batch["global"][::2, above_charm])


def test_trainer_attacks_in_float32_under_float16_mixed_precision(demo_dataset, tmp_path):
    from utils.torch.data import TRAIN, ChunkDataset, dataset_shards
    from utils.torch.run import build_model
    from utils.torch.training import Trainer

    config, directory = demo_dataset
    model, classes = build_model(config, "MLP")
    data = ChunkDataset(dataset_shards(directory), model.input_groups,
                        {label: i for i, labels in enumerate(classes.values())
                         for label in labels}, 64, TRAIN)
    trainer = Trainer(model, data, data, tmp_path, TrainSettings(mixed_precision=True))
    inputs = {"global": torch.randn(8, len(config.group("global").features))}
    assert trainer.amp_dtype == torch.bfloat16  # CPU: the attack runs under autocast
    with torch.no_grad():
        assert trainer.attack_logits(inputs).dtype == torch.float32
    seen = []
    model.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    trainer.attack_logits(inputs)
    trainer.amp_dtype = torch.float16  # as on CUDA: float16 input gradients would underflow
    trainer.attack_logits(inputs)
    assert seen == [True, False]


def test_attack_mode_keeps_recurrent_layers_differentiable():
    model = nn.Sequential(nn.LSTM(3, 4, batch_first=True), nn.Dropout(0.5))
    model.train()
    with attack_mode(model):
        assert not model[1].training and model[0].training
    assert model[1].training
    model.eval()
    with attack_mode(model):
        pass
    assert not model.training


# -- per-feature scales -------------------------------------------------------------------
def test_scales_over_real_entries():
    rng = np.random.default_rng(0)
    n, length = 20000, 3
    block = np.zeros((n, length, 3), dtype=np.float32)
    real = rng.integers(0, length + 1, n)[:, None] > np.arange(length)
    block[..., 0] = np.where(real, rng.normal(5, 2, (n, length)), 0)
    # mostly a default value of 0, spread 0.5 elsewhere
    block[..., 1] = np.where(real & (rng.random((n, length)) < 0.2),
                             rng.normal(0, 0.5, (n, length)), 0)
    block[..., 2] = np.where(real, 7.0, 0)  # constant
    scales = group_scales(block.reshape(n, -1), length)
    assert scales[0] == pytest.approx(2.0, rel=0.03)  # padding does not shrink it
    assert scales[1] == pytest.approx(0.5, rel=0.05)
    assert scales[2] == 0.0
    flat = rng.normal(0, 3, (n, 2)).astype(np.float32)
    assert group_scales(flat, None) == pytest.approx([3.0, 3.0], rel=0.03)
    # half the jets at a declared default of -1: left out, the spread is the other half's
    flat[::2, 1] = -1.0
    with_default = group_scales(flat, None, [None, -1.0])
    assert with_default[1] == pytest.approx(3.0, rel=0.05)
    assert group_scales(flat, None)[1] < 0.8 * with_default[1]


def test_export_stores_the_scales(demo_dataset):
    config, directory = demo_dataset
    stored = json.loads((directory / "feature_scales.json").read_text())
    assert set(stored["groups"]) == {g.name for g in config.groups}
    for group in config.groups:
        assert list(stored["groups"][group.name]) == list(group.features)
    files = DatasetDirectory(directory).files()
    assert stored == json.loads(json.dumps(compute_scales(files, config_defaults(config))))
    # the declared defaults are left out of the spreads
    assert stored != json.loads(json.dumps(compute_scales(files)))
    assert stored["jets"] == min(DatasetDirectory(directory).n_jets, 100_000)
    scales = stored["groups"]["cpf"]
    assert scales["Cpfcan_BtagPf_trackSip2dSig"] > 0
    assert dataset_scales(directory) == stored["groups"]


def test_scales_of_a_dataset_exported_before_they_were_stored(demo_dataset, tmp_path):
    _, directory = demo_dataset
    copy = tmp_path / "old"
    copy.mkdir()
    for path in directory.iterdir():
        if path.name != "feature_scales.json":
            (copy / path.name).write_bytes(path.read_bytes())
    (copy / "processed_files.txt").write_text("".join(
        f"{copy / p.name}\n" for p in DatasetDirectory(directory).files()))
    config, _ = demo_dataset
    assert dataset_scales(copy, config) == dataset_scales(directory)
    assert not (copy / "feature_scales.json").exists()  # a published dataset is not modified


# -- training and inference under attack ----------------------------------------------------
def test_training_attacks_every_training_batch_and_inference_reports_the_changes(
        demo_dataset, tmp_path, monkeypatch):
    from utils.torch.inference import run_inference
    from utils.torch.run import build_model, run_training

    config, directory = demo_dataset
    settings = TrainSettings(epochs=1, batch_size=128, n_threads=0, attack="fgsm",
                             attack_magnitude=0.02)
    modes, changed = [], []
    original = Attack.__call__

    def spy(self, model, inputs, truth, loss=cross_entropy):
        modes.append(model.__self__.model.training)  # Trainer.logits of the bare model
        out = original(self, model, inputs, truth, loss)
        changed.append(any(not torch.equal(out[g], inputs[g]) for g in inputs))
        return out

    monkeypatch.setattr(Attack, "__call__", spy)
    trainer = run_training(config, "DeepJet", directory, tmp_path / "train", settings)
    assert len(modes) == trainer.batches_per_epoch  # every training batch, no validation one
    assert modes == [False] * len(modes) and all(changed)
    monkeypatch.setattr(Attack, "__call__", original)

    model, classes = build_model(config, "DeepJet")
    checkpoint = tmp_path / "train" / "best_model.pt"
    attack = Attack.from_config(AttackSettings("fgsm", 0.05), config, model.input_groups,
                                dataset_scales(directory))
    nominal = run_inference(config, model, classes, checkpoint, directory, _mkdir(tmp_path /
                                                                                  "nominal"))
    attacked = run_inference(config, model, classes, checkpoint, directory,
                             _mkdir(tmp_path / "fgsm"), attack_settings=attack.settings)
    np.testing.assert_array_equal(nominal["target"], attacked["target"])  # jets in == out
    assert not np.array_equal(nominal["logits"], attacked["logits"])
    report = json.loads((tmp_path / "fgsm" / "attack.json").read_text())
    assert report["attack"] == "fgsm" and report["settings"]["magnitude"] == 0.05
    assert set(report["changes"]) == set(model.input_groups)
    for group, values in report["changes"].items():
        # within the budget up to the float32 rounding of x + change (large x, small spread)
        assert 0 < values["mean_abs_change"] <= values["max_abs_change"] <= 0.05 * 1.01, group
    assert report["kept_nominal"]["cpf"]["frozen"] == ["Cpfcan_VTX_ass", "Cpfcan_quality"] + \
        ["Cpfcan_pt", "Cpfcan_eta", "Cpfcan_phi", "Cpfcan_e"]  # demo_part: 4-vectors too
    assert json.loads((tmp_path / "nominal" / "attack.json").read_text()) == {
        "attack": "nominal", "settings": {}, "kept_nominal": {}, "changes": {}}
    # the training keeps its dataset's spreads: evaluation magnitudes mean the same later
    assert load_checkpoint(checkpoint)["feature_scales"] == dataset_scales(directory)


def _mkdir(path):
    path.mkdir()
    return path


def test_robustness_task_checks_its_lists(tmp_path, monkeypatch):
    import luigi

    from tasks.evaluation import RobustnessTask

    monkeypatch.setenv("DATA_PATH", str(tmp_path))
    luigi.task_register.Register.clear_instance_cache()
    base = dict(config="demo", model_names="DeepJet", training_versions="s1")
    with pytest.raises(SettingsError, match="--attacks: 'fgm' is not an attack"):
        RobustnessTask(**base, attacks="nominal,fgm", attack_magnitudes="0,0.1")
    with pytest.raises(SettingsError, match="fgsm with magnitude 0; nominal takes 0"):
        RobustnessTask(**base, attacks="nominal,fgsm", attack_magnitudes="0,0")
    with pytest.raises(SettingsError, match="are not all different"):
        RobustnessTask(**base, attacks="fgsm,fgsm", attack_magnitudes="0.1")
    with pytest.raises(SettingsError, match="--test-magnitudes must be numbers > 0"):
        RobustnessTask(**base, test_magnitudes="0,0.1")
    with pytest.raises(SettingsError, match="--test-attacks: 'nominal' is not an attack"):
        RobustnessTask(**base, test_attacks="nominal")
    task = RobustnessTask(**base, attacks="nominal,pgd", attack_magnitudes="0,0.01",
                          attack_iterations=4, test_attacks="fgsm,jetfool",
                          test_magnitudes="0.1", test_attack_overshoot=0.1,
                          test_attack_restrict_impact=0.5)
    paths = [str(t.local_path().relative_to(tmp_path)) for t in task.requires()]
    assert len(paths) == 2 * 3 and len(set(paths)) == 6
    # each option only where it applies: iterations for the pgd training, the overshoot for
    # jetfool, restrict-impact for every test attack but the nominal evaluation
    assert paths[0].endswith("epochs_1/nominal/test_attack_nominal")
    assert paths[1].endswith("nominal/test_attack_fgsm/test_epsilon_0.1/test_iterations_1/"
                             "test_restrict_impact_0.5")
    assert paths[5].endswith("pgd/epsilon_0.01/iterations_4/test_attack_jetfool/"
                             "test_epsilon_0.1/test_iterations_10/test_overshoot_0.1/"
                             "test_restrict_impact_0.5")
