"""Training: models on real exported batches, the loop, schedules, resume and errors."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from utils.config import label_to_class
from utils.evaluation.discriminants import by_name, evaluate, softmax
from utils.evaluation.roc import auc, roc_curve
from utils.models import available_models
from utils.settings import TrainSettings
from utils.torch.checkpoint import load_checkpoint
from utils.torch.data import TEST, TRAIN, ChunkDataset, dataset_shards, make_loader
from utils.torch.optim import (
    OptimConfigError,
    make_loss,
    make_optimizer,
    make_scheduler,
    schedule_factor,
)
from utils.torch.run import build_model, run_training


def real_batch(config, directory, model, classes, size=96):
    shards = dataset_shards(directory)
    data = ChunkDataset(shards, model.input_groups, label_to_class(classes), size, TEST)
    return next(iter(make_loader(data, 0)))


@pytest.mark.parametrize("name", available_models())
def test_models_on_exported_batches(demo_dataset, name):
    config, directory = demo_dataset
    torch.manual_seed(0)
    model, classes = build_model(config, name)
    batch = real_batch(config, directory, model, classes)
    model.train()
    logits = model(batch["inputs"])
    assert logits.shape == (96, len(classes))
    loss = model.loss(logits, batch["target"])
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # padding invariance on real jets: extra zero candidates change nothing (eval mode)
    model.eval()
    padded = {k: torch.cat([v, torch.zeros(v.shape[0], 5, v.shape[2])], dim=1)
              if v.ndim == 3 else v for k, v in batch["inputs"].items()}
    with torch.no_grad():
        diff = (model(batch["inputs"]) - model(padded)).abs().max()
    assert diff < 1e-5


def test_schedule_factors():
    # epoch_lin_decay over 10 epochs: constant for 7, then x0.1^(1/3) per epoch to 0.1
    values = [schedule_factor("epoch_lin_decay", s, 10, 0.1) for s in range(10)]
    assert values[:7] == [1.0] * 7
    np.testing.assert_allclose(values[7:], [0.1 ** (1 / 3), 0.1 ** (2 / 3), 0.1])
    cosine = [schedule_factor("batch_cosine_warmup", s, 100, 0.01, warmup=10)
              for s in range(100)]
    assert cosine[0] == pytest.approx(0.01) and cosine[10] == pytest.approx(1.0)
    assert cosine[-1] == pytest.approx(0.01) and max(cosine) == pytest.approx(1.0)
    assert cosine[55] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 45 / 89)))
    assert schedule_factor("none", 5, 10, 0.1) == 1.0
    # very short runs still end at the final factor (warm-up at most half, never the end)
    sgd = make_optimizer("SGD", [torch.nn.Parameter(torch.zeros(1))], 1.0)
    for steps in (1, 2, 3):
        scheduler, _ = make_scheduler("batch_cosine_warmup", sgd, 1, steps, 0.05)
        factors = [scheduler.lr_lambdas[0](s) for s in range(steps)]
        assert factors[-1] == pytest.approx(0.05), steps
    # short trainings keep the full learning rate (no decay step for < 4 steps)
    assert [schedule_factor("epoch_lin_decay", s, 3, 0.01) for s in range(3)] == [1.0] * 3
    assert [schedule_factor("epoch_lin_decay", s, 4, 0.01) for s in range(4)] == \
        [1.0, 1.0, 1.0, pytest.approx(0.01)]
    # extended trainings keep the final value
    assert schedule_factor("epoch_lin_decay", 14, 10, 0.1) == pytest.approx(0.1)


def test_optimiser_scheduler_and_loss_factories():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(make_optimizer("RAdam", params, 1e-3), torch.optim.RAdam)
    sgd = make_optimizer("SGD", params, 0.1, weight_decay=0.01)
    assert sgd.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(OptimConfigError, match="'Adamm' is not a torch.optim optimiser"):
        make_optimizer("Adamm", params, 1e-3)
    # the fused AdamW (one kernel for all tensors) takes the same steps as the per-tensor one
    torch.manual_seed(0)
    fused = [torch.nn.Parameter(torch.randn(100)), torch.nn.Parameter(torch.randn(3, 7))]
    plain = [torch.nn.Parameter(p.detach().clone()) for p in fused]
    adamw = make_optimizer("AdamW", fused, 1e-2, (0.9, 0.99), 1e-6, 0.01)
    assert adamw.param_groups[0]["fused"] is True
    reference = torch.optim.AdamW(plain, lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    for _ in range(5):
        for a, b in zip(fused, plain, strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        adamw.step()
        reference.step()
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert make_optimizer("RAdam", params, 1e-3).param_groups[0].get("fused") is None
    scheduler, per_batch = make_scheduler("batch_lin_decay", sgd, 2, 10, 0.1)
    assert per_batch and isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    with pytest.raises(OptimConfigError, match="lr-scheduler 'cyclic'"):
        make_scheduler("cyclic", sgd, 2, 10, 0.1)
    assert make_loss("CrossEntropyLoss")(torch.zeros(2, 3), torch.tensor([0, 1])).shape == (2,)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(OptimConfigError, match="MSELoss"):
            make_loss("MSELoss")
    assert not caught  # only our error: no warning from the probe call


def test_weighted_loss_is_weighted_mean(demo_dataset):
    config, _ = demo_dataset
    model, _ = build_model(config, "MLP")
    logits = torch.randn(5, 6)
    target = torch.tensor([0, 1, 2, 3, 4])
    weight = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.25])
    per_jet = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    expected = (per_jet * weight).sum() / weight.sum()
    assert torch.isclose(model.loss(logits, target, weight), expected)
    assert torch.isclose(model.loss(logits, target), per_jet.mean())


def test_deepjet_learns_b_vs_light(demo_dataset, tmp_path):
    config, directory = demo_dataset
    settings = TrainSettings(epochs=4, batch_size=128, learning_rate=3e-3, seed=5,
                             lr_scheduler="none", n_threads=1)
    trainer = run_training(config, "DeepJet", directory, tmp_path, settings)
    val_loss = trainer.history.validation["loss"]
    assert len(val_loss) == 4 and val_loss[-1] < val_loss[0]
    pred = trainer.predict(trainer.val_data)
    classes = list(config.classes)
    _, score, signal = evaluate(by_name("BvsL"), softmax(pred["logits"]), pred["target"],
                                classes)
    fpr, tpr, _ = roc_curve(score, signal)
    assert auc(fpr, tpr) > 0.85
    for name in ("model_0.pt", "model_3.pt", "best_model.pt", "training_metrics.npz",
                 "validation_metrics.npz", "loss.png", "accuracy.pdf"):
        assert (tmp_path / name).exists(), name
    state = load_checkpoint(tmp_path / "model_3.pt")
    assert state["epoch"] == 4 and state["class_names"] == classes
    assert state["model_name"] == "DeepJet" and state["config_name"] == config.name
    best = load_checkpoint(tmp_path / "best_model.pt")
    assert best["epoch"] == int(np.argmin(val_loss)) + 1
    metrics = np.load(tmp_path / "validation_metrics.npz")
    np.testing.assert_allclose(metrics["loss"], val_loss)


def test_same_seed_same_validation_loss(demo_dataset, tmp_path):
    config, directory = demo_dataset
    losses = []
    for name in ("a", "b"):
        settings = TrainSettings(epochs=1, batch_size=128, seed=9, n_threads=1)
        trainer = run_training(config, "DeepJet", directory, tmp_path / name, settings)
        losses.append(trainer.history.validation["loss"][0])
    assert losses[0] == losses[1]


def test_loss_weighting_trains_on_all_jets(demo_dataset, tmp_path):
    config, directory = demo_dataset
    settings = TrainSettings(epochs=1, batch_size=64, seed=3, loss_weighting=True,
                             n_threads=0)
    trainer = run_training(config, "MLP", directory, tmp_path, settings)
    rows = sum(s.rows for s in trainer.train_data.shards)
    assert not trainer.train_data.sampling
    assert rows - 64 < trainer.history.train["jets"][0] <= rows


def test_checkpoints_of_other_settings_are_not_resumed(demo_dataset, tmp_path):
    config, directory = demo_dataset
    settings = TrainSettings(epochs=2, batch_size=64, seed=3, n_threads=0)
    run_training(config, "MLP", directory, tmp_path, dataclasses.replace(settings, epochs=1),
                 parameters={"learning_rate": "0.001"})
    with pytest.raises(ValueError, match="learning_rate: '0.001' -> '0.01'"):
        run_training(config, "MLP", directory, tmp_path, settings,
                     parameters={"learning_rate": "0.01"})


def test_checkpoints_of_another_class_mapping_are_refused(demo_dataset, tmp_path):
    from utils.torch.checkpoint import CheckpointError
    from utils.torch.inference import run_inference

    config, directory = demo_dataset
    settings = TrainSettings(epochs=1, batch_size=64, seed=3, n_threads=0)
    run_training(config, "MLP", directory, tmp_path / "train", settings)
    classes = dict(config.classes)
    classes["uds"], classes["g"] = classes["g"], classes["uds"]  # same names, other labels
    swapped = config.replace(classes=classes)
    expected = ("uds: isUD+isS, g: isG}, but the config now maps {b: isB, bb: isBB+isGBB, "
                "lepb: isLeptonicB+isLeptonicB_C, c: isC+isCC+isGCC, uds: isG, g: isUD+isS}")
    with pytest.raises(CheckpointError, match="trained with the label -> class mapping") as info:
        run_training(swapped, "MLP", directory, tmp_path / "train",
                     dataclasses.replace(settings, epochs=2))
    assert expected in str(info.value)
    model, model_classes = build_model(swapped, "MLP")
    with pytest.raises(CheckpointError) as info:
        run_inference(swapped, model, model_classes, tmp_path / "train" / "best_model.pt",
                      directory, tmp_path)
    assert expected in str(info.value) and "best_model.pt" in str(info.value)


@pytest.mark.parametrize("threads", [0, 1, 3])
@pytest.mark.parametrize("schedule", ["batch_lin_decay", "batch_cosine_warmup"])
def test_per_batch_schedules_end_on_the_last_batch(demo_dataset, tmp_path, threads, schedule):
    """Every epoch has the same, precomputed number of steps (whatever the loader threads
    drop), so the last batch of the last epoch runs at the final learning rate."""
    config, directory = demo_dataset
    settings = TrainSettings(epochs=2, batch_size=64, learning_rate=0.01, seed=2,
                             lr_scheduler=schedule, lr_decay_factor=0.05, n_threads=threads)
    model, classes = build_model(config, "MLP")
    from utils.torch.data import VALIDATION
    from utils.torch.training import Trainer

    shards = dataset_shards(directory)
    train = ChunkDataset(shards[:-1], model.input_groups, label_to_class(classes), 64, TRAIN,
                         seed=2)
    val = ChunkDataset(shards[-1:], model.input_groups, label_to_class(classes), 64,
                       VALIDATION)
    trainer = Trainer(model, train, val, tmp_path, settings, torch.device("cpu"))
    steps = trainer.batches_per_epoch
    assert steps == int(train.expected_jets() // 64) > 2
    rates = []
    trainer.optimizer.register_step_pre_hook(lambda *_: rates.append(trainer.lr))
    trainer.fit()
    assert len(rates) == 2 * steps
    assert rates[-1] == pytest.approx(0.01 * 0.05)
    if schedule == "batch_cosine_warmup":  # warm-up: one epoch at most, half the run at most
        assert int(np.argmax(rates)) <= steps
    assert trainer.history.train["jets"] == [steps * 64] * 2


def test_gradient_clipping(demo_dataset, tmp_path):
    config, directory = demo_dataset
    changes = {}
    for clip in (1e-4, 0.0):
        settings = TrainSettings(epochs=1, batch_size=64, learning_rate=1.0, optimizer="SGD",
                                 seed=4, grad_clip=clip, lr_scheduler="none", n_threads=0,
                                 weight_decay=0.0)
        model, classes = build_model(config, "MLP")
        from utils.torch.data import VALIDATION
        from utils.torch.training import Trainer

        shards = dataset_shards(directory)
        mapping = label_to_class(classes)
        trainer = Trainer(model, ChunkDataset(shards[:-1], model.input_groups, mapping, 64,
                                              TRAIN, seed=4),
                          ChunkDataset(shards[-1:], model.input_groups, mapping, 64,
                                       VALIDATION), tmp_path / str(clip), settings,
                          torch.device("cpu"))
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        batch = next(iter(make_loader(trainer.train_data, 0)))
        trainer.training_step(batch)
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        changes[clip] = float((after - before).norm())
    assert changes[1e-4] == pytest.approx(1e-4, rel=1e-3)  # SGD lr 1: the step is the grad
    assert changes[0.0] > 100 * changes[1e-4]


def test_sampled_epoch_size_matches_weights(demo_dataset):
    config, directory = demo_dataset
    shards = dataset_shards(directory)
    model, classes = build_model(config, "MLP")
    data = ChunkDataset(shards, model.input_groups, label_to_class(classes), 32, TRAIN)
    sizes = []
    for epoch in range(10):
        data.set_epoch(epoch)
        sizes.append(sum(len(b["target"]) for b in make_loader(data, 1)))
    assert np.mean(sizes) == pytest.approx(data.expected_jets(), rel=0.05)


# -- through law ---------------------------------------------------------------------------

DEMO = ("--config", "demo", "--dataset-version", "d1", "--DatasetConstructorTask-chunk-size",
        1500, "--GenerateSamplesTask-n-files", 2, "--GenerateSamplesTask-events-per-file", 250)


@pytest.mark.slow
def test_resume_after_kill_and_parameter_errors(run_law, law_env):
    run_law("DatasetConstructorTask", *DEMO, "--workers", 2)
    train = ("TrainingTask", *DEMO, "--training-version", "t1", "--model-name", "DeepJet",
             "--epochs", 3, "--batch-size", 128, "--n-threads", 1)
    out = (run_law.data_path / "TrainingTask" / "demo" / "d1" / "t1" / "DeepJet" / "epochs_3" /
           "nominal")
    # SIGKILL when epoch 2 starts (deterministic: tests/faults.py)
    env = dict(law_env, DATA_PATH=str(run_law.data_path))
    killed = subprocess.run([sys.executable, "-m", "tests.faults", "signal-at-epoch:KILL:1",
                             "run", *map(str, train)], env=env, cwd=law_env["B_HIVE_DIR"],
                            capture_output=True, text=True, timeout=900)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "model_0.pt").exists() and not (out / "model_1.pt").exists()
    resumed = run_law(*train)
    assert "Resuming after epoch" in resumed.stdout
    metrics = np.load(out / "training_metrics.npz")
    assert len(metrics["loss"]) == 3 and len(np.load(out / "validation_metrics.npz")["loss"]) == 3
    assert (out / "model_2.pt").exists() and not list(out.glob(".*tmp*"))
    params = json.loads((out / "parameters.json").read_text())["parameters"]
    assert params["batch_size"] == "128" and params["learning_rate"] == "0.001"
    # a different hyper-parameter into the same training version is an error
    clash = run_law(*train, "--learning-rate", 0.01, check=False)
    assert clash.returncode != 0
    assert "--learning-rate: '0.001' -> '0.01'" in clash.stdout + clash.stderr
    assert "Traceback" not in clash.stdout + clash.stderr
    # unspecified hyper-parameters take the stored values: complete, nothing runs
    again = run_law("TrainingTask", *DEMO, "--training-version", "t1", "--model-name",
                    "DeepJet", "--epochs", 3)
    assert "complete ones were encountered" in again.stdout + again.stderr
    # --extend-training trains more epochs in the same directory, continuing the schedule
    lr_before = np.load(out / "training_metrics.npz")["learning_rate"]
    extended = run_law("TrainingTask", *DEMO, "--training-version", "t1", "--model-name",
                       "DeepJet", "--epochs", 3, "--extend-training", 1)
    assert "Resuming after epoch 3" in extended.stdout
    metrics = np.load(out / "training_metrics.npz")
    assert len(metrics["loss"]) == 4 and (out / "model_3.pt").exists()
    np.testing.assert_array_equal(metrics["learning_rate"][:3], lr_before)
    # epoch_lin_decay over 3 epochs has no decay step; the extension keeps the final value
    assert metrics["learning_rate"][3] == pytest.approx(lr_before[-1]) == pytest.approx(1e-3)
    assert load_checkpoint(out / "model_3.pt")["epoch"] == 4
    # --remove-output deletes every checkpoint: a new training starts from scratch
    run_law("TrainingTask", *DEMO, "--training-version", "t1", "--model-name", "DeepJet",
            "--epochs", 3, "--extend-training", 1, "--remove-output", "0,a")
    assert not list(out.glob("*.pt"))
    fresh = run_law(*train, "--learning-rate", 0.01)
    assert "Resuming" not in fresh.stdout
    assert json.loads((out / "parameters.json").read_text())["parameters"][
        "learning_rate"] == "0.01"


@pytest.mark.slow
def test_distributed_training_matches_single_process(demo_dataset, tmp_path):
    """DistributedDataParallel on 2 CPU processes (gloo): completes, writes loadable
    checkpoints, and ends close to a single-process run with the same global batch size."""
    from utils.dataset.export import export_dataset
    from utils.torch.ddp import launch, training_spec

    config, exported = demo_dataset
    # many small files, so that the ranks' shares are balanced
    directory = tmp_path / "dataset"
    directory.mkdir()
    export_dataset(config, [str(exported.parent / "TT_0.root"),
                            str(exported.parent / "QCD_0.root")], directory, directory,
                   chunk_size=250, seed=3, executor="iterative")
    settings = TrainSettings(epochs=3, batch_size=128, learning_rate=1e-3, seed=4,
                             lr_scheduler="epoch_lin_decay", n_threads=1)
    launch(training_spec("demo_part", settings, model_name="DeepJet", dataset_dir=directory,
                         out_dir=tmp_path / "ddp"), 2, tmp_path / "ddp")
    single = run_training(config, "DeepJet", directory, tmp_path / "single", settings)
    ddp_loss = np.load(tmp_path / "ddp" / "validation_metrics.npz")["loss"]
    assert len(ddp_loss) == 3 and ddp_loss[-1] < ddp_loss[0]
    assert not list((tmp_path / "ddp").glob(".ddp_spec.json"))
    single_loss = single.history.validation["loss"][-1]
    print(f"validation loss: DDP {ddp_loss[-1]:.4f}, single process {single_loss:.4f}")
    # per-rank batch-norm statistics and a different data order: close, not identical
    assert ddp_loss[-1] == pytest.approx(single_loss, rel=0.15)
    model, _ = build_model(config, "DeepJet")
    state = load_checkpoint(tmp_path / "ddp" / "model_2.pt")
    model.load_state_dict(state["model_state_dict"])  # plain keys, no DDP "module." prefix
    assert state["epoch"] == 3
    # resuming works as for one process: one more epoch continues from the checkpoint
    launch(training_spec("demo_part", settings, model_name="DeepJet", dataset_dir=directory,
                         out_dir=tmp_path / "ddp", total_epochs=4), 2, tmp_path / "ddp")
    resumed = np.load(tmp_path / "ddp" / "validation_metrics.npz")["loss"]
    assert len(resumed) == 4 and np.array_equal(resumed[:3], ddp_loss)
    # batches of 2 jets per rank: often one without any secondary vertex, whose DeepJet
    # vtx layers then get no gradient there (the ranks fell out of step before)
    small = TrainSettings(epochs=1, batch_size=4, learning_rate=1e-3, seed=4, n_threads=1,
                          n_train_files=2)
    launch(training_spec("demo_part", small, model_name="DeepJet", dataset_dir=directory,
                         out_dir=tmp_path / "small"), 2, tmp_path / "small")
    assert len(np.load(tmp_path / "small" / "validation_metrics.npz")["loss"]) == 1
    # an expected error in the ranks reaches the launcher as one message (rank 0's)
    from utils.torch.ddp import DistributedTrainingError

    with pytest.raises(DistributedTrainingError) as info:
        launch(training_spec("demo_part", settings, model_name="NoSuchModel",
                             dataset_dir=directory, out_dir=tmp_path / "bad"), 2,
               tmp_path / "bad")
    assert str(info.value).startswith("ModelInputError: --model-name 'NoSuchModel' is unknown")
    assert not list((tmp_path / "bad").iterdir())


def test_attack_path_parts_and_trainings_made_before_attacks(tmp_path, monkeypatch):
    import luigi

    from tasks.inference import InferenceTask
    from tasks.training import TrainingTask

    monkeypatch.setenv("DATA_PATH", str(tmp_path))
    luigi.task_register.Register.clear_instance_cache()
    common = dict(config="demo", dataset_version="d", training_version="t",
                  model_name="DeepJet", epochs=2)
    base = tmp_path / "TrainingTask" / "demo" / "d" / "t" / "DeepJet" / "epochs_2"
    assert TrainingTask(**common).local_path() == base / "nominal"
    attacked = TrainingTask(**common, attack="pgd", attack_magnitude=0.01,
                            attack_iterations=4)
    assert attacked.local_path() == base / "pgd" / "epsilon_0.01" / "iterations_4"
    jetfool = TrainingTask(**common, attack="jetfool", attack_magnitude=0.05)
    assert jetfool.local_path() == base / "jetfool" / "epsilon_0.05" / "iterations_10" / \
        "overshoot_0.02"
    inference = InferenceTask(**common, test_dataset_version="td", test_attack="minimizer",
                              test_attack_magnitude=0.02, test_attack_uncertainty=2.0)
    assert inference.local_path().relative_to(tmp_path).parts[-5:] == (
        "nominal", "test_attack_minimizer", "test_epsilon_0.02", "test_iterations_10",
        "test_uncertainty_2")
    # a nominal training made before attacks existed keeps being found in epochs_<N>/
    base.mkdir(parents=True)
    (base / "model_0.pt").write_bytes(b"")
    luigi.task_register.Register.clear_instance_cache()
    assert TrainingTask(**common).local_path() == base
    assert attacked.local_path() == base / "pgd" / "epsilon_0.01" / "iterations_4"
    # ... unless the new layout holds a training too
    (base / "nominal").mkdir()
    (base / "nominal" / "model_0.pt").write_bytes(b"")
    luigi.task_register.Register.clear_instance_cache()
    assert TrainingTask(**common).local_path() == base / "nominal"
