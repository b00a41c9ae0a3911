"""ONNX deployment: every model exports and agrees with PyTorch in onnxruntime, the export
paths compute the same function, the validation refuses a graph that differs, the model
card describes inputs, classes and discriminants."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from utils.config import Derived, FeatureGroup, label_to_class
from utils.deploy import CARD_FILE, MODEL_FILE, OPSET_DEFAULT, OUTPUTS, DeployError
from utils.deploy.card import inputs_section
from utils.deploy.export import run_export
from utils.deploy.onnx import OnnxTagger, export_bytes, input_shapes, validate
from utils.evaluation.discriminants import available
from utils.io import file_sha256
from utils.models import available_models, get_model
from utils.models.layers import BatchNorm, export_mode
from utils.settings import TrainSettings
from utils.torch.checkpoint import save_checkpoint
from utils.torch.data import VALIDATION, ChunkDataset, dataset_shards
from utils.torch.run import build_model

MODELS = available_models()


def warmed_model(config, dataset_dir, name: str, seed: int = 0):
    """``name`` with its batch-norm statistics taken from real jets (train-mode forwards,
    no optimiser step), in eval mode, and its classes."""
    torch.manual_seed(seed)
    model, classes = build_model(config, name)
    data = ChunkDataset(dataset_shards(dataset_dir), model.input_groups,
                        label_to_class(classes), 512, VALIDATION)
    model.train()
    with torch.no_grad():
        for i, batch in enumerate(data):
            model({g: x.float() for g, x in batch["inputs"].items()})
            if i == 2:
                break
    return model.eval(), classes


def checkpoint_of(model, classes, path):
    save_checkpoint({"epoch": 3, "model_state_dict": model.state_dict(),
                     "classes": {k: list(v) for k, v in classes.items()},
                     "class_names": list(classes), "best_loss": 0.5,
                     "parameters": {"epochs": "3"}}, path)
    return path


@pytest.fixture(scope="module")
def exported(demo_dataset, tmp_path_factory):
    """``exported(name)``: (model, classes, out_dir, card) of a checkpoint exported by
    :func:`run_export` on the demo dataset (cached per model)."""
    config, dataset_dir = demo_dataset
    cache = {}

    def get(name):
        if name not in cache:
            work = tmp_path_factory.mktemp(f"onnx_{name}")
            model, classes = warmed_model(config, dataset_dir, name)
            checkpoint = checkpoint_of(model, classes, work / "best_model.pt")
            out = work / "export"
            out.mkdir()
            card = run_export(config, name, checkpoint, dataset_dir, out,
                              TrainSettings(train_val_split=0.5), OPSET_DEFAULT,
                              {"dataset_version": "v1", "training_version": "t1"})
            cache[name] = model, classes, out, card
        return cache[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_every_model_exports_and_agrees_with_pytorch(exported, demo_dataset, name):
    config, dataset_dir = demo_dataset
    model, classes, out, card = exported(name)
    assert {p.name for p in out.iterdir()} == {CARD_FILE, MODEL_FILE}
    graph = onnx.load(out / MODEL_FILE)
    onnx.checker.check_model(graph, full_check=True)
    assert [(o.domain, o.version) for o in graph.opset_import] == [("", OPSET_DEFAULT)]
    # inputs: one per group, named and shaped as the card says; batch (and candidates) dynamic
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in graph.graph.input}
    assert list(shapes) == list(model.input_groups)
    assert shapes == {i["name"]: i["shape"] for i in card["inputs"]}
    for entry in card["inputs"]:
        group = next(g for g in config.groups if g.name == entry["name"])
        assert [f["name"] for f in entry["features"]] == list(group.features)
        assert entry["shape"][0] == "batch" and entry["shape"][-1] == len(group.features)
        if group.is_candidates:
            assert entry["length"] == group.length and entry["padding_value"] == 0.0
            assert entry["dynamic_length"] == get_model(name).onnx_variable_length
            assert entry["shape"][1] == (f"n_{group.name}" if entry["dynamic_length"]
                                         else group.length)
            assert entry.get("min_length") == (1 if entry["dynamic_length"] else None)
    assert [o.name for o in graph.graph.output] == list(OUTPUTS)
    assert card["outputs"][0]["classes"] == list(classes)
    # the validation: every check within 1e-5, at batch sizes 1, 7 and 1024 of real jets
    validation = card["validation"]
    assert validation["passed"] and validation["tolerance"] == 1e-5
    checks = validation["checks"]
    has_candidates = any(g.is_candidates for g in config.groups if g.name in model.input_groups)
    assert set(checks) >= {"batch 1", "batch 7", "batch 1024", "all-zero jet"} | (
        {"no candidates"} if has_candidates else set())
    assert checks["batch 1"]["jets"] == 32 and checks["batch 1"]["batches"] == 32
    assert checks["batch 7"]["jets"] == 56 and checks["batch 1024"]["jets"] == 1024
    assert ("other candidate lengths" in checks) == (
        has_candidates and get_model(name).onnx_variable_length)
    assert all(c["passed"] and c["max_abs_difference"] <= 1e-5 for c in checks.values())
    assert validation["max_abs_difference"] == max(c["max_abs_difference"]
                                                   for c in checks.values())
    # independently: onnxruntime on other jets at another batch size, and an empty jet
    tagger = OnnxTagger(out / MODEL_FILE, model)
    data = ChunkDataset(dataset_shards(dataset_dir)[:1], model.input_groups,
                        label_to_class(classes), 300, VALIDATION)
    inputs = {g: x.float() for g, x in next(iter(data))["inputs"].items()}
    probabilities, logits = tagger.run(inputs)
    with torch.no_grad():
        expected = model(inputs)
    assert np.abs(probabilities - expected.softmax(-1).numpy()).max() <= 1e-5
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-6)
    assert tagger(inputs).shape == (300, len(classes))
    empty = {g: torch.zeros_like(x[:1]) for g, x in inputs.items()}
    p_empty, _ = tagger.run(empty)
    assert np.isfinite(p_empty).all() and abs(p_empty.sum() - 1) < 1e-6


def test_graph_accepts_other_candidate_lengths(exported):
    """Dynamic candidate axes: fewer and more slots than the config gives (more slots are
    padding and change nothing)."""
    model, _, out, _ = exported("ParticleTransformer")
    spec = {g.name: g for g in model.spec.groups}
    tagger = OnnxTagger(out / MODEL_FILE, model)
    generator = torch.Generator().manual_seed(1)
    inputs = {}
    for name in model.input_groups:
        group = spec[name]
        if group.length is None:
            inputs[name] = torch.rand(5, group.n_features, generator=generator) + 0.5
        else:
            x = torch.rand(5, 4, group.n_features, generator=generator) + 0.5
            inputs[name] = torch.cat((x, torch.zeros(5, group.length + 6, group.n_features)), 1)
    longer, _ = tagger.run(inputs)
    short = {g: x[:, :4] if x.ndim == 3 else x for g, x in inputs.items()}
    shorter, _ = tagger.run(short)
    np.testing.assert_allclose(longer, shorter, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(shorter, model(short).softmax(-1).numpy(), atol=1e-5)


def test_export_paths_compute_the_same_function(exported):
    """The traced paths (dense LSTM read at the last real step, ParticleNet's dense edges)
    equal the packed PyTorch paths in eval mode."""
    for name in ("DeepJet", "ParticleNet"):
        model, _, _, _ = exported(name)
        generator = torch.Generator().manual_seed(2)
        inputs = {}
        for group in model.spec.groups:
            if group.name not in model.input_groups:
                continue
            if group.length is None:
                inputs[group.name] = torch.rand(64, group.n_features, generator=generator)
                continue
            x = torch.rand(64, group.length, group.n_features, generator=generator) + 0.1
            n_real = torch.randint(0, group.length + 1, (64,), generator=generator)
            n_real[:2] = torch.tensor([0, group.length])
            inputs[group.name] = x * (torch.arange(group.length) < n_real[:, None])[..., None]
        with torch.no_grad():
            packed = model(inputs)
            with export_mode():
                dense = model(inputs)
        torch.testing.assert_close(dense, packed, rtol=0, atol=2e-5)
        assert (dense.softmax(-1) - packed.softmax(-1)).abs().max() < 1e-6


def test_batchnorm_eval_subtracts_the_mean_first():
    """Raw inputs with a large mean and a small spread: the eval-mode normalisation stays
    float32-precise (a fused scale-and-shift can be off by ~1e-3 here)."""
    norm = BatchNorm(1).eval()
    norm.running_mean.fill_(1000.0)
    norm.running_var.fill_(1e-4)
    x = 1000.0 + 0.01 * torch.linspace(-3, 3, 101).unsqueeze(1)
    exact = (x.double() - 1000.0) / math.sqrt(1e-4 + norm.eps)
    assert (norm(x).double() - exact).abs().max() < 1e-4
    assert norm(x.bfloat16()).dtype == torch.bfloat16  # the input's dtype is kept


def test_validation_refuses_a_graph_that_differs(demo_dataset, tmp_path, monkeypatch):
    config, dataset_dir = demo_dataset
    model, classes = warmed_model(config, dataset_dir, "MLP")
    checkpoint = checkpoint_of(model, classes, tmp_path / "best_model.pt")
    run = OnnxTagger.run

    def shifted(self, inputs):
        probabilities, logits = run(self, inputs)
        probabilities[:, 0] += 2e-5
        return probabilities, logits

    monkeypatch.setattr(OnnxTagger, "run", shifted)
    out = tmp_path / "export"
    out.mkdir()
    with pytest.raises(DeployError, match=r"differs from PyTorch by up to 2\.0\de-05 in the "
                       r"probabilities \(tolerance 1e-05\) in \['batch 1', 'batch 7', "
                       r"'batch 1024', 'all-zero jet'\]; nothing was written"):
        run_export(config, "MLP", checkpoint, dataset_dir, out, TrainSettings(), 17, {})
    assert list(out.iterdir()) == []


def test_validation_reports_non_normalised_outputs(exported):
    model, _, out, _ = exported("MLP")
    tagger = OnnxTagger(out / MODEL_FILE, model)

    class Halved:
        def run(self, inputs):
            probabilities, logits = tagger.run(inputs)
            return probabilities / 2, logits

    jets = {"global": torch.rand(20, model.spec.group("global").n_features)}
    report = validate(model, Halved(), jets)
    assert "all-zero jet" in report.failures
    assert report.checks["all-zero jet"]["reason"].startswith("probabilities sum to 0.5")


def test_opset_and_graph_mismatch_errors(exported):
    model, _, out, _ = exported("MLP")
    with pytest.raises(DeployError, match="--opset 12 is not supported: choose 14 to 20"):
        export_bytes(model, 12)
    export_bytes(model, 20)
    assert not model.training  # the export leaves the model in eval mode
    deepjet, _, _, _ = exported("DeepJet")
    with pytest.raises(DeployError, match=r"takes inputs \['global'\] .* DeepJet on this "
                       r"config needs inputs \['global', 'cpf', 'npf', 'vtx'\]"):
        OnnxTagger(out / MODEL_FILE, deepjet)


def test_model_card_classes_discriminants_and_versions(exported, demo_dataset):
    config, _ = demo_dataset
    model, classes, out, card = exported("DeepJet")
    assert card["classes"] == {k: list(v) for k, v in config.classes.items()}
    assert card["config"]["name"] == config.name
    assert card["config"]["fingerprint"] == config.fingerprint()
    assert set(card["discriminants"]) == {d.name for d in available(list(classes))}
    assert card["discriminants"]["BvsL"] == {
        "formula": "(p_b + p_bb + p_lepb) / (p_b + p_bb + p_lepb + p_uds + p_g)",
        "signal": ["b"], "background": ["l"]}
    assert card["discriminants"]["BvsAll"] == {
        "formula": "(p_b + p_bb + p_lepb) / (p_b + p_bb + p_lepb + p_c + p_uds + p_g)",
        "signal": ["b"], "background": ["c", "l"], "cms_branch_suffix": "B"}
    assert card["discriminants"]["CvsL"]["formula"] == "p_c / (p_c + p_uds + p_g)"
    assert card["discriminants"]["UDSvsG"]["cms_branch_suffix"] == "QvG"
    assert card["export"]["opset"] == 17 and card["export"]["torch"] == torch.__version__
    assert card["export"]["onnx"] == onnx.__version__
    assert card["versions"] == {"dataset_version": "v1", "training_version": "t1"}
    assert card["training"]["epoch"] == 3 and card["training"]["checkpoint"] == "best_model.pt"
    assert card["training"]["checkpoint_sha256"] == file_sha256(out.parent / "best_model.pt")
    assert card["model"]["parameters"] == model.n_parameters()
    import hashlib

    assert card["model"]["sha256"] == hashlib.sha256((out / MODEL_FILE).read_bytes()).hexdigest()
    assert card["truth_labels"] == {label: f"branch {label} != 0" for label in config.truths}
    assert json.loads((out / CARD_FILE).read_text()) == card
    assert input_shapes(model)["cpf"] == ["batch", "n_cpf", len(config.groups[1].features)]


def test_card_lists_derived_features_and_candidate_order():
    def ratio(a, b):
        return a / b

    group = FeatureGroup("cpf", ("c_pt", "c_eta"), length=10,
                         derived=(Derived("c_ratio", ("c_pt", "c_eta"), ratio),),
                         sort_by="c_pt", integer_features=("c_eta",),
                         default_values={"c_pt": -1.0})
    jet = FeatureGroup("global", ("jet_pt",))
    entries = inputs_section(SimpleNamespace(groups=(jet, group)), ("cpf", "global"),
                             {"cpf": ["batch", "n_cpf", 3], "global": ["batch", 1]})
    assert [e["name"] for e in entries] == ["cpf", "global"]
    cpf = entries[0]
    assert cpf["order"] == "descending c_pt; the first 10 are kept"
    assert cpf["dynamic_length"] and cpf["per"] == "candidate"
    assert cpf["features"][0] == {"index": 0, "name": "c_pt", "source": "branch",
                                  "default_value": -1.0}
    assert cpf["features"][1] == {"index": 1, "name": "c_eta", "source": "branch",
                                  "integer": True}
    derived = cpf["features"][2]
    assert derived["source"] == "derived" and derived["uses"] == ["c_pt", "c_eta"]
    assert derived["definition"].startswith("def ratio(a, b):") and "a / b" in \
        derived["definition"]
    assert entries[1]["per"] == "jet" and "length" not in entries[1]


def test_onnx_backend_refuses_a_stale_graph_or_other_classes(exported, demo_dataset, tmp_path):
    from utils.torch.checkpoint import CheckpointError
    from utils.torch.inference import onnx_tagger

    config, dataset_dir = demo_dataset
    model, classes, out, _ = exported("MLP")
    checkpoint = out.parent / "best_model.pt"
    cpu = torch.device("cpu")
    assert onnx_tagger(out / MODEL_FILE, model, classes, checkpoint, cpu).input_groups == \
        ("global",)
    retrained, _ = warmed_model(config, dataset_dir, "MLP", seed=1)
    newer = checkpoint_of(retrained, classes, tmp_path / "best_model.pt")
    with pytest.raises(DeployError, match="was exported from another best_model.pt than the "
                       "one in .*: export it again"):
        onnx_tagger(out / MODEL_FILE, model, classes, newer, cpu)
    swapped = dict(reversed(list(classes.items())))
    with pytest.raises(CheckpointError, match="label -> class mapping"):
        onnx_tagger(out / MODEL_FILE, model, swapped, checkpoint, cpu)


def test_export_task_validates_on_the_trainings_split(tmp_path, monkeypatch):
    """ExportONNXTask takes the split (hence the validation jets) from the training it
    exports, and does not record the training's settings again."""
    import luigi

    from tasks.deploy import ExportONNXTask
    from tasks.training import TrainingTask

    monkeypatch.setenv("DATA_PATH", str(tmp_path))
    luigi.task_register.Register.clear_instance_cache()
    training = TrainingTask(config="demo", model_name="MLP", training_version="split",
                            train_val_split=0.5)
    training.local_path().mkdir(parents=True)
    (training.local_path() / "parameters.json").write_text(
        json.dumps(training.parameters_record()))
    (training.local_path() / "model_0.pt").write_bytes(b"")
    luigi.task_register.Register.clear_instance_cache()
    export = ExportONNXTask(config="demo", model_name="MLP", training_version="split")
    assert export.requires().settings.train_val_split == 0.5
    assert "train_val_split" not in export.parameters_record()["parameters"]
    assert export.parameters_record()["parameters"]["opset"] == "17"
    with pytest.raises(DeployError, match="--opset 21 is not supported"):
        ExportONNXTask(config="demo", model_name="MLP", training_version="split", opset=21)
