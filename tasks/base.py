"""Base task, shared parameter mixins and output conventions of every b-hive task.

Output directories follow ``$DATA_PATH/<TaskClass>/<config>[/debug]/<version parts...>``.
Each task directory holds ``parameters.json``; running again with other significant values
into an existing directory is an error instead of a silent reuse of stale outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import law
import luigi

PARAMETERS_FILE = "parameters.json"


class ParameterMismatchError(Exception):
    """Outputs exist for the same version but were made with other significant parameters."""


def data_path() -> Path:
    """Root of all outputs: ``$DATA_PATH`` (set by setup.sh), else ``./output``."""
    return Path(os.environ.get("DATA_PATH") or Path.cwd() / "output").resolve()


class BaseTask(law.Task):
    """Common parameters, the output-path scheme and the parameter bookkeeping.

    Parameters listed in ``stored_defaults`` are declared with default ``None``, meaning
    "the value this version was made with, or the documented default for a new version".
    Downstream commands therefore only need the version names; a value given explicitly
    that differs from the stored one is an error.
    """

    seed = luigi.OptionalIntParameter(
        default=None,
        description="random seed of this step (shuffling, sampling, initialisation); default: "
        "123456 for a new version, else the stored value",
    )

    # documented defaults of the parameters declared with default None (see class doc)
    stored_defaults: ClassVar[dict[str, Any]] = {"seed": 123456}
    # parameters that are significant for luigi but need not match a previous run's values
    exclude_from_consistency: ClassVar[frozenset[str]] = frozenset()

    def store_parts(self) -> tuple[str, ...]:
        return (self.__class__.__name__,)

    def local_path(self, *names: str) -> Path:
        return data_path().joinpath(*self.store_parts(), *names)

    def local_target(self, name: str) -> law.LocalFileTarget:
        return law.LocalFileTarget(str(self.local_path(name)))

    # -- parameter bookkeeping ------------------------------------------------------------
    def parameters_target(self) -> law.LocalFileTarget:
        return self.local_target(PARAMETERS_FILE)

    def stored_record(self) -> dict[str, Any]:
        """Contents of ``parameters.json`` of this task's directory ({} if absent)."""
        path = Path(self.parameters_target().path)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def resolved(self, name: str) -> Any:
        """Value of parameter ``name``: given, else stored for this version, else default."""
        value = getattr(self, name)
        if value is not None or name not in self.stored_defaults:
            return value
        stored = self.stored_record().get("parameters", {}).get(name)
        if stored is not None:
            return dict(self.get_params())[name].parse(stored)
        return self.stored_defaults[name]

    def significant_parameters(self) -> dict[str, str]:
        """Serialised (resolved) values of the significant parameters of this task."""
        values = {}
        for name, param in self.get_params():
            owner = next(c for c in type(self).__mro__ if name in vars(c))
            if (param.significant and name not in self.exclude_from_consistency
                    and owner.__module__.split(".")[0] in ("tasks", "workflows")):
                values[name] = param.serialize(self.resolved(name))
        return values

    def parameters_record(self) -> dict[str, Any]:
        """What ``parameters.json`` stores (subclasses may add e.g. a config fingerprint)."""
        return {"task": self.__class__.__name__, "parameters": self.significant_parameters()}

    def check_parameters(self) -> None:
        """Raise if this task's directory was produced with other significant values."""
        stored = self.stored_record()
        if not stored:
            return
        current = self.parameters_record()
        diffs = []
        for key, value in current.items():
            old = stored.get(key)
            if isinstance(value, dict) and isinstance(old, dict):
                diffs += [f"{k}: {old[k]!r} -> {v!r}" for k, v in value.items()
                          if k in old and old[k] != v]
            elif key == "config_fingerprint" and key in stored and old != value:
                diffs.append(f"config '{self.config}' was edited since these outputs were made")
            elif key in stored and old != value:
                diffs.append(f"{key}: {old!r} -> {value!r}")
        if diffs:
            raise ParameterMismatchError(
                f"{self.__class__.__name__} outputs in {self.local_path()} were produced with "
                f"other significant parameters ({'; '.join(diffs)}). Choose a new version "
                "(e.g. --dataset-version / --training-version) or delete the old outputs with "
                "--remove-output.")

    def complete(self) -> bool:
        self.check_parameters()
        return super().complete()

    def write_parameters(self, directory: Path) -> None:
        from utils.io import write_json

        write_json(directory / PARAMETERS_FILE, self.parameters_record())


class ConfigTask(BaseTask):
    """A task working with a configuration: outputs go to ``<TaskClass>/<config>[/debug]``."""

    config = luigi.Parameter(
        description="configuration module in config/ (e.g. offline_run3, hlt_run3, demo) "
        "or the path of a config .py file",
    )
    debug = luigi.BoolParameter(
        default=False,
        description="debug mode: one input file per process and only a few chunks; outputs "
        "go to a separate 'debug' directory",
    )

    def store_parts(self) -> tuple[str, ...]:
        parts = super().store_parts() + (Path(self.config).stem,)
        return parts + (("debug",) if self.debug else ())

    def load_config(self) -> Any:
        from utils.config import load_config

        return load_config(self.config)


class DatasetDependency(ConfigTask):
    """Parameters that select an exported dataset."""

    dataset_version = luigi.Parameter(
        default="dataset_version_01",
        description="version tag of the exported dataset (a directory name); default: "
        "dataset_version_01",
    )
    filelist = luigi.Parameter(
        default="",
        significant=False,
        description="text file listing the input ROOT files (local paths or root:// URLs, one "
        "per line; blank and '#' lines ignored); only needed to create the dataset",
    )

    def store_parts(self) -> tuple[str, ...]:
        return super().store_parts() + (self.dataset_version,)
