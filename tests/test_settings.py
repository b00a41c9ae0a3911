"""utils/settings.py: one home for every parameter's default, help and validity."""

from __future__ import annotations

import argparse

import luigi
import pytest

from tasks.base import setting
from tasks.dataset import DatasetConstructorTask
from tasks.training import TrainingTask
from tests.conftest import REPO
from utils.settings import (
    ExportSettings,
    GenerationSettings,
    SettingsError,
    TrainSettings,
    cli_name,
    options,
    shown_default,
    stored_defaults,
)


@pytest.mark.parametrize("changes, message", [
    ({"batch_size": 0}, "--batch-size must be >= 1; got 0"),
    ({"epochs": 0}, "--epochs must be >= 1; got 0"),
    ({"learning_rate": -1.0}, "--learning-rate must be > 0; got -1.0"),
    ({"learning_rate": float("nan")}, "--learning-rate must be > 0; got nan"),
    ({"betas": "0.9"}, "--betas must be two comma-separated numbers in [0, 1); got '0.9'"),
    ({"lr_decay_factor": 0.0}, "--lr-decay-factor must be in (0, 1]; got 0.0"),
    ({"train_val_split": 1.0}, "--train-val-split must be in (0, 1); got 1.0"),
    ({"lr_scheduler": "cyclic"}, "--lr-scheduler must be one of none, epoch_lin_decay"),
    ({"batch_size": 1.5}, "--batch-size must be >= 1; got 1.5"),
])
def test_invalid_training_values_name_the_option(changes, message):
    with pytest.raises(SettingsError) as info:
        TrainSettings(**changes)
    assert str(info.value).startswith(message)


def test_other_steps_validate_too():
    with pytest.raises(SettingsError, match="--chunk-size must be >= 1; got 0"):
        ExportSettings(chunk_size=0)
    with pytest.raises(SettingsError, match="--executor must be one of iterative"):
        ExportSettings(executor="spark")
    with pytest.raises(SettingsError, match="--n-files must be >= 1; got 0"):
        GenerationSettings(n_files=0)
    assert GenerationSettings().events("QCD") == 3000
    assert GenerationSettings(events_per_file=10).events("TT") == 10


def test_task_options_checked_when_the_task_is_made(tmp_path, monkeypatch):
    """Options that only a task knows are checked when it is created, before any process
    starts: the distributed batch split (was found after torchrun had started them)."""
    monkeypatch.setenv("DATA_PATH", str(tmp_path))
    with pytest.raises(SettingsError, match="--batch-size 256 must be divisible by --ddp 3"):
        TrainingTask(config="demo", training_version="t", model_name="DeepJet",
                     batch_size=256, ddp=3)
    assert TrainingTask(config="demo", training_version="t", model_name="DeepJet",
                        batch_size=256, ddp=4).ddp == 4
    from tasks.evaluation import CompareTrainingsTask

    with pytest.raises(SettingsError, match="must list at least two trainings .* got 'a,b,c' "
                       "and 'X,Y'"):
        CompareTrainingsTask(config="demo", training_versions="a,b,c", model_names="X,Y")
    assert len(CompareTrainingsTask(config="demo", training_versions="a,b",
                                    model_names="DeepJet").entries()) == 2
    from workflows.presets import DemoRun

    training = DemoRun(version="x", seed=7).requires()["roc"].requires().requires()["training"]
    assert training.settings.seed == 7  # DemoRun's --seed reaches the training (was dropped)


def test_tasks_take_defaults_and_help_from_the_settings():
    assert TrainingTask.stored_defaults() == {
        name: default for name, default in stored_defaults(TrainSettings).items()}
    assert TrainingTask.stored_defaults()["weight_decay"] == TrainSettings().weight_decay
    assert DatasetConstructorTask.stored_defaults() == {"chunk_size": 100_000,
                                                        "seed": 123456}
    params = dict(TrainingTask.get_params())
    assert params["batch_size"].description == ("jets per batch; default: 1024 for a new "
                                                 "version, else the stored value.")
    assert params["n_threads"].description.endswith("default: 1.")
    assert not params["n_threads"].significant
    for name, (opt, _, _) in options(TrainSettings).items():
        assert opt.help.split(";")[0] in params[name].description.replace("%%", "%")


def test_options_added_later_take_their_old_value_for_old_versions(tmp_path, monkeypatch):
    """A training recorded before --grad-clip existed did not clip: it keeps doing so when
    resumed or extended, and asking for clipping is a parameter mismatch."""
    import json

    from tasks.base import ParameterMismatchError

    monkeypatch.setenv("DATA_PATH", str(tmp_path))
    old = TrainingTask(config="demo", model_name="MLP", training_version="old")
    record = old.parameters_record()
    del record["parameters"]["grad_clip"]
    old.local_path().mkdir(parents=True)
    (old.local_path() / "parameters.json").write_text(json.dumps(record))
    (old.local_path() / "model_0.pt").write_bytes(b"")  # holds a result: locked
    luigi.task_register.Register.clear_instance_cache()  # a new process would create anew
    again = TrainingTask(config="demo", model_name="MLP", training_version="old")
    assert again.settings.grad_clip == 0.0
    again.check_parameters()
    clipped = TrainingTask(config="demo", model_name="MLP", training_version="old",
                           grad_clip=1.0)
    with pytest.raises(ParameterMismatchError, match="--grad-clip: '0.0' -> '1.0'"):
        clipped.check_parameters()
    assert TrainingTask(config="demo", model_name="MLP",
                        training_version="new").settings.grad_clip == 1.0


def test_percent_in_a_description_survives_argparse():
    parameter = setting(TrainSettings, "lr_scheduler")
    assert "30%% of" in parameter.description
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr-scheduler", help=parameter.description)
    assert "30% of the epochs" in " ".join(parser.format_help().split())


def readme_defaults(section: str) -> dict[str, str]:
    """``{option: default}`` of the parameter table of README section ``section``."""
    text = (REPO / "README.md").read_text().split(f"\n### {section}\n", 1)[1]
    text = text.split("\n### ", 1)[0]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`--"):
            rows[cells[0].strip("`")] = cells[1].strip("`")
    return rows


@pytest.mark.parametrize("section, settings_class", [
    ("DatasetConstructorTask", ExportSettings), ("GenerateSamplesTask", GenerationSettings),
    ("TrainingTask", TrainSettings)])
def test_readme_tables_show_the_defaults(section, settings_class):
    rows = readme_defaults(section)
    for name, (_, default, _) in options(settings_class).items():
        if default is not None:
            assert rows.get(cli_name(name)) == shown_default(default), (section, name)


def test_config_chunk_size_is_the_default_of_new_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_PATH", str(tmp_path))
    demo = DatasetConstructorTask(config="demo", dataset_version="new")
    assert demo.settings.chunk_size == 5000
    assert DatasetConstructorTask(config="demo", dataset_version="new",
                                  chunk_size=700).settings.chunk_size == 700
    assert DatasetConstructorTask(config="offline_run3",
                                  dataset_version="new").settings.chunk_size == 100_000


def test_sources_are_hashed_when_the_task_starts(tmp_path, monkeypatch):
    """A result records the SHA-256 of what it is made from as it was when the task
    started: a file replaced while it ran (e.g. by a continued training) makes the result
    stale, not current. Keys are relative to DATA_PATH, so a moved DATA_PATH still checks."""
    import hashlib
    from pathlib import Path

    from tasks.base import BaseTask, StaleResultError

    monkeypatch.setenv("DATA_PATH", str(tmp_path / "data"))
    source = tmp_path / "data" / "Upstream" / "best_model.pt"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"epoch 5")

    class Downstream(BaseTask):
        def made_from(self) -> list[Path]:
            return [source]

        def run(self) -> None:  # (not run here)
            raise NotImplementedError

    task = Downstream()
    task.record_sources()
    source.write_bytes(b"epoch 6")  # replaced while the task ran
    task.local_path().mkdir(parents=True)
    task.write_parameters(task.local_path())
    assert task.stored_record()["made_from"] == {
        "Upstream/best_model.pt": hashlib.sha256(b"epoch 5").hexdigest()}
    with pytest.raises(StaleResultError, match=r"outputs in .*Downstream were made from "
                       r"Upstream/best_model.pt, which has changed since"):
        Downstream().complete()
    source.write_bytes(b"epoch 5")
    Downstream().check_result()  # the same bytes again: current
