"""Base task, parameter plumbing, error reporting and output conventions of every task.

Output directories follow ``$DATA_PATH/<TaskClass>/<config>[/debug]/<version parts...>``.
Each task directory holds ``parameters.json``; running again with other significant values
into a directory that holds a result is an error instead of a silent reuse of stale outputs.

Parameters come from the settings dataclasses of :mod:`utils.settings` (:func:`setting`):
defaults, ``--help`` texts and validity live there. A task resolves its values once, when
it is created (given, else stored for its version, else the default), validates them and
keeps them in ``self.settings``; task code reads plain values from there.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, ClassVar

import law
import luigi

from utils.errors import BHiveError
from utils.settings import PARAMETERS_FILE, StepSettings, cli_name, options, shown_default


class ParameterMismatchError(BHiveError):
    """Outputs exist for the same version but were made with other significant parameters."""


class StaleResultError(BHiveError):
    """Outputs made from an upstream file (e.g. a checkpoint) that has changed since."""


class ParameterValueError(BHiveError, ValueError):
    """A parameter value (command line or config file) that its parameter cannot read."""


def _parse_naming(parameter: luigi.Parameter, name: str) -> None:
    """Make ``parameter`` name its option in the error for a value it cannot read (luigi's
    own, e.g. ``invalid literal for int()``, names neither the option nor the task)."""
    if getattr(parameter, "_names_option", False):
        return
    parse = parameter.parse
    option = cli_name(name)
    if isinstance(parameter, luigi.IntParameter):
        expected = "an integer"
    elif isinstance(parameter, luigi.FloatParameter):
        expected = "a number"
    elif isinstance(parameter, luigi.BoolParameter):
        expected = "True or False"
    else:
        expected = None

    def parse_named(value: Any) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            reason = f"{value!r} is not {expected}" if expected else str(exc)
            raise ParameterValueError(f"{option}: {reason}") from None

    parameter.parse = parse_named
    parameter._names_option = True


# Tasks that run PyTorch on every core take one unit of law's "torch" resource, of which
# law.cfg holds one: ``--workers N`` runs them one after another (side by side their
# threads fight over the cores, several times slower each) and everything else in parallel.
# Raise ``torch`` in law.cfg's [luigi_resources] on machines with GPUs or many cores.
TORCH_RESOURCES = {"torch": 1}


def data_path() -> Path:
    """Root of all outputs: ``$DATA_PATH`` (set by setup.sh), else ``./output``."""
    return Path(os.environ.get("DATA_PATH") or Path.cwd() / "output").resolve()


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
RECENT_NS = 2_000_000_000  # files changed this recently are hashed afresh every time


def _sha256(path: Path) -> str:
    """SHA-256 of a file, cached for this process by (path, inode, size, modification and
    change times); not for a file changed in the last 2 s, which a coarse file-system
    clock (AFS, EOS, older ext4) could change again under the same times (as git does)."""
    import time

    from utils.io import file_sha256

    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    digest = file_sha256(path)
    if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > RECENT_NS:
        _DIGESTS[key] = digest
    return digest


def help_text(text: str) -> str:
    """A parameter description safe for argparse (which %-formats help strings)."""
    return text.replace("%", "%%")


_EXPLICIT = luigi.BoolParameter.EXPLICIT_PARSING  # `--flag` means True, `--flag False` False
_OPTIONAL = {"int": luigi.OptionalIntParameter, "float": luigi.OptionalFloatParameter,
             "str": luigi.OptionalParameter,
             "bool": functools.partial(luigi.OptionalBoolParameter, parsing=_EXPLICIT)}
_PLAIN = {"int": luigi.IntParameter, "float": luigi.FloatParameter, "str": luigi.Parameter,
          "bool": functools.partial(luigi.BoolParameter, parsing=_EXPLICIT)}


def setting(settings_class: type, name: str, significant: bool = True,
            description: str | None = None) -> luigi.Parameter:
    """The luigi parameter of field ``name`` of a :mod:`utils.settings` dataclass.

    A stored option becomes an optional parameter with default None ("the value stored for
    this version, else the default"); other options get their default directly. The
    description ends with the default.
    """
    opt, default, kind = options(settings_class)[name]
    text = description or opt.help
    if "default:" not in text:
        text += f"; default: {shown_default(default)}" + (
            " for a new version, else the stored value" if opt.stored else "") + "."
    kwargs: dict[str, Any] = {"description": help_text(text), "significant": significant}
    if opt.stored or default is None:
        if opt.choices is not None:
            return luigi.OptionalChoiceParameter(default=None, choices=opt.choices, **kwargs)
        return _OPTIONAL[kind](default=None, **kwargs)
    if opt.choices is not None:
        return luigi.ChoiceParameter(default=default, choices=opt.choices, **kwargs)
    return _PLAIN[kind](default=default, **kwargs)


class BaseTask(law.Task):
    """Common parameters, the output-path scheme and the parameter bookkeeping.

    ``settings_class`` names the :mod:`utils.settings` dataclass of the task's step; the
    parameters of the task that are fields of it are resolved into ``self.settings``.
    """

    settings_class: ClassVar[type] = StepSettings
    # parameters that are significant for luigi but need not match a previous run's values
    exclude_from_consistency: ClassVar[frozenset[str]] = frozenset()

    seed = setting(StepSettings, "seed")
    verbose = luigi.BoolParameter(
        default=False, significant=False,
        description="report more: NaN/inf counts per branch, jets per process and class, "
        "time per stage")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for klass in cls.__mro__:  # (get_params does not work while the class is made)
            for name, value in vars(klass).items():
                if isinstance(value, luigi.Parameter):
                    _parse_naming(value, name)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = self.settings_class(**self.resolved_values())
        self.validate_parameters()

    def validate_parameters(self) -> None:
        """Check task parameters that are not settings (raise a BHiveError); called when
        the task is created, before anything is written."""

    # -- paths ------------------------------------------------------------------------------
    def store_parts(self) -> tuple[str, ...]:
        return (self.__class__.__name__,)

    def local_path(self, *names: str) -> Path:
        return data_path().joinpath(*self.store_parts(), *names)

    def local_target(self, name: str) -> law.LocalFileTarget:
        return law.LocalFileTarget(str(self.local_path(name)))

    # -- parameter bookkeeping ------------------------------------------------------------
    @classmethod
    def stored_defaults(cls) -> dict[str, Any]:
        """Defaults of the stored parameters of this task (None-default parameters)."""
        names = set(cls.get_param_names(include_significant=True))
        return {name: default for name, (opt, default, _) in options(cls.settings_class).items()
                if opt.stored and name in names}

    def holds_result(self) -> bool:
        """True if this version holds a completed result (only then is it locked by its
        parameters.json). Tasks publish parameters.json together with their outputs."""
        return Path(self.parameters_target().path).is_file()

    def parameters_target(self) -> law.LocalFileTarget:
        return self.local_target(PARAMETERS_FILE)

    def stored_record(self) -> dict[str, Any]:
        """Contents of ``parameters.json`` if this version holds a result (else {})."""
        if not self.holds_result():
            return {}
        try:
            return json.loads(Path(self.parameters_target().path).read_text())
        except (OSError, ValueError):
            return {}

    def resolved_values(self) -> dict[str, Any]:
        """Values of the parameters that are settings fields: given, else stored for this
        version (stored options only), else the default."""
        fields = options(self.settings_class)
        params = dict(self.get_params())
        record = self.stored_record()
        stored = record.get("parameters", {})
        values = {}
        for name in fields:
            if name not in params:
                continue
            value = getattr(self, name)
            opt = fields[name][0]
            if value is None and opt.stored:
                if stored.get(name) is not None:
                    value = params[name].parse(stored[name])
                elif record and opt.absent is not None:  # recorded before the option existed
                    value = opt.absent
                else:
                    value = fields[name][1]
            values[name] = value
        return values

    def value(self, name: str) -> Any:
        """The resolved value of parameter ``name``."""
        if name in options(self.settings_class):
            return getattr(self.settings, name)
        return getattr(self, name)

    def significant_parameters(self) -> dict[str, str]:
        """Serialised (resolved) values of the significant parameters of this task."""
        values = {}
        for name, param in self.get_params():
            owner = next(c for c in type(self).__mro__ if name in vars(c))
            if (param.significant and name not in self.exclude_from_consistency
                    and owner.__module__.split(".")[0] in ("tasks", "workflows")):
                values[name] = param.serialize(self.value(name))
        return values

    def parameters_record(self) -> dict[str, Any]:
        """What ``parameters.json`` stores (subclasses add e.g. the config fingerprint)."""
        return {"task": self.__class__.__name__, "parameters": self.significant_parameters()}

    def record_differences(self, stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
        """Human-readable differences between a stored and the current record."""
        diffs = []
        for key, value in current.items():
            old = stored.get(key)
            if key not in stored:
                continue
            if key == "parameters":
                old = {**self._absent_values(), **old}
                diffs += [f"{cli_name(k)}: {old[k]!r} -> {v!r}" for k, v in value.items()
                          if k in old and old[k] != v]
            elif key != "task" and old != value:
                diffs.append(f"{key}: {old!r} -> {value!r}")
        return diffs

    def _absent_values(self) -> dict[str, str]:
        """Serialised values of options that records made before they existed imply."""
        params = dict(self.get_params())
        return {name: params[name].serialize(opt.absent)
                for name, (opt, _, _) in options(self.settings_class).items()
                if opt.absent is not None and name in params}

    def check_parameters(self) -> None:
        """Raise if this task's directory holds a result made with other significant
        values."""
        stored = self.stored_record()
        if stored:
            self._refuse_differences(self.record_differences(stored, self.parameters_record()))

    def _refuse_differences(self, diffs: list[str]) -> None:
        if diffs:
            raise ParameterMismatchError(
                f"{self.__class__.__name__} outputs in {self.local_path()} were produced with "
                f"other significant parameters ({'; '.join(diffs)}). Choose a new version "
                f"({self.version_hint}) or delete the old outputs with --remove-output 0,a")

    # what to choose instead of a version that holds another result
    version_hint: ClassVar[str] = "e.g. --dataset-version / --training-version"

    def check_result(self) -> None:
        """Raise if the result this version holds is damaged or was made from an upstream
        file that has changed since (see :meth:`made_from`)."""
        recorded = self.stored_record().get("made_from", {})
        changed = [key for key, path in self._sources().items()
                   if key in recorded and path.is_file() and _sha256(path) != recorded[key]]
        if changed:
            raise StaleResultError(
                f"{self.__class__.__name__} outputs in {self.local_path()} were made from "
                f"{', '.join(changed)}, which has changed since (e.g. a training continued "
                "with --extend-training): make them again by deleting them with "
                "--remove-output 0,a (given to this task; --remove-output 1,a to a task "
                "that needs them deletes both)")

    def made_from(self) -> list[Path]:
        """Upstream files whose contents this task's result depends on, e.g. the checkpoint
        of an inference: their SHA-256 is recorded with the result (taken when the task
        starts, :meth:`record_sources`), and a result made from a file that has changed
        since is refused (:meth:`check_result`). Default: none."""
        return []

    def _sources(self) -> dict[str, Path]:
        """:meth:`made_from` keyed by their paths under DATA_PATH (where they lie there)."""
        root = data_path().resolve()
        out = {}
        for path in self.made_from():
            resolved = Path(path).resolve()
            out[str(resolved.relative_to(root) if resolved.is_relative_to(root)
                    else resolved)] = resolved
        return out

    def record_sources(self) -> None:
        """Take the SHA-256 of :meth:`made_from` now, before the work reads those files (a
        file replaced while the task runs then makes its result stale, not current)."""
        self._source_digests = {key: _sha256(path) for key, path in self._sources().items()}

    def check_as_requirement(self, seen: set[str]) -> None:
        """What a task that needs this one checks (:meth:`check_requirements`): its
        parameters, its held result and, in turn, the tasks it needs."""
        self.check_parameters()
        if self.holds_result():
            self.check_result()
            self.check_requirements(seen)

    def check_requirements(self, seen: set[str] | None = None) -> None:
        """Check the parameters and held results of the tasks this one requires, and theirs
        (each task once). Once this task is complete nothing else asks them, so a value
        given for an upstream task (e.g. --learning-rate to ROCCurveTask) that contradicts
        its stored run, or an upstream result changed since, would otherwise pass
        unnoticed."""
        seen = set() if seen is None else seen
        for task in law.util.flatten(self.requires()):
            if not isinstance(task, BaseTask) or task.task_id in seen:
                continue
            seen.add(task.task_id)
            task.check_as_requirement(seen)

    def complete(self) -> bool:
        self.check_parameters()
        if self.holds_result():
            self.check_result()
            try:
                self.check_requirements()
            except ParameterMismatchError as exc:  # advice for the command that was run
                raise ParameterMismatchError(
                    f"{exc} -- found while checking what the finished "
                    f"{self.__class__.__name__} needs: to use that result, leave out the "
                    "options that differ; to make it anew with them, delete it first") from None
        return super().complete()

    def write_parameters(self, directory: Path, record: dict[str, Any] | None = None) -> None:
        """``parameters.json``: the record, with the digests of :meth:`record_sources`."""
        from utils.io import write_json

        record = dict(record or self.parameters_record())
        digests = getattr(self, "_source_digests", None)
        if digests is None:
            digests = {key: _sha256(path) for key, path in self._sources().items()}
        if digests:
            record["made_from"] = digests
        write_json(directory / PARAMETERS_FILE, record)

    def publishing(self, *markers: str) -> Any:
        """:func:`utils.io.publishing` into this task's directory: the ``markers`` (the
        files that say "complete") are moved after the other outputs and ``parameters.json``
        last, so a version is never locked without its result."""
        from utils.io import publishing

        return publishing(self.local_path(), last=(*markers, PARAMETERS_FILE))


class ConfigTask(BaseTask):
    """A task working with a configuration: outputs go to ``<TaskClass>/<config>[/debug]``.

    Its record holds the config fingerprint and the label -> class mapping, so outputs of
    an edited config are never reused."""

    config = luigi.Parameter(
        description="configuration module in config/ (e.g. offline_run3, hlt_run3, demo), "
        "an original b-hive YAML config there (config/<name>.yml), or the path of a config "
        ".py or .yml file",
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

    def parameters_record(self) -> dict[str, Any]:
        config = self.load_config()
        return {**super().parameters_record(), "config_fingerprint": config.fingerprint(),
                "classes": {k: list(v) for k, v in config.classes.items()}}

    def record_differences(self, stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
        diffs = []
        if "classes" in stored and list(stored["classes"].items()) != \
                list(current["classes"].items()):  # the order gives the class indices
            from utils.config import mapping_text

            diffs.append(f"label -> class mapping {mapping_text(stored['classes'])} -> "
                         f"{mapping_text(current['classes'])}")
        elif stored.get("config_fingerprint", current["config_fingerprint"]) != \
                current["config_fingerprint"]:
            diffs.append(f"config '{self.config}' was edited since these outputs were made")
        rest = {k: v for k, v in current.items() if k not in ("classes", "config_fingerprint")}
        return diffs + super().record_differences(stored, rest)


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
    legacy_dataset = luigi.Parameter(
        default="",
        significant=False,
        description="directory of a dataset exported by the original b-hive "
        "(processed_files.txt, file_<k>.lz4, ...): imported into this dataset version "
        "instead of exporting ROOT files, its columns derived from --config; only needed to "
        "create the dataset",
    )

    def store_parts(self) -> tuple[str, ...]:
        return super().store_parts() + (self.dataset_version,)


# -- how errors reach the user ---------------------------------------------------------------
def _user_error_classes() -> set[str]:
    names, todo = set(), [BHiveError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


_TRACE_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+): ", re.M)


def short_trace(text: str) -> str | None:
    """The exception lines of a formatted traceback whose last exception is a
    :class:`BHiveError` (None otherwise)."""
    if "Traceback (most recent call last)" not in text:
        return None
    names = _user_error_classes()
    matches = [m for m in _TRACE_LINE.finditer(text) if m.group(1) in names]
    if not matches:
        return None
    return text[matches[-1].start():].rstrip()


def parameter_message(exc: Exception) -> str:
    """luigi's parameter error (e.g. a required parameter not given) with the option named
    as typed: ``requires --process``."""
    return re.sub(r"requires the '(\w+)' parameter",
                  lambda m: f"requires {cli_name(m.group(1))}", str(exc))


def _task_names(message: str) -> str:
    """luigi's "Will not run <Task>(<every parameter value>) ..." with the task's class only
    (the values run over many lines and hide the error below them)."""
    return re.sub(r"^Will not run (\w+)\(.*\) or any dependencies",
                  r"Will not run \1 or any dependencies", message, flags=re.S)


class UserErrorFilter(logging.Filter):
    """Shows b-hive's own errors (:class:`BHiveError`) in luigi's log as their message,
    without the Python traceback luigi would print; other errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BHiveError | luigi.parameter.ParameterException):
            text = f"{type(exc).__name__}: {exc}" if isinstance(exc, BHiveError) else \
                parameter_message(exc)
            record.msg = f"{_task_names(record.getMessage())}\n{text}"
            record.args, record.exc_info, record.exc_text = (), None, None
            return True
        if isinstance(record.msg, str):
            message = record.getMessage()
            short = short_trace(message)
            if short is not None:
                head = message.split("Traceback (most recent call last)", 1)[0].rstrip()
                record.msg, record.args = f"{_task_names(head)}\n{short}", ()
        return True


def _excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """Uncaught errors of the law command line (e.g. an invalid parameter value found when
    the task is created): b-hive's own as one message, Ctrl-C as one line."""
    if isinstance(exc, BHiveError):
        print(f"b-hive: {type(exc).__name__}: {exc}", file=sys.stderr)
    elif isinstance(exc, luigi.parameter.ParameterException):
        print(f"b-hive: {parameter_message(exc)}", file=sys.stderr)
    elif isinstance(exc, KeyboardInterrupt):
        print("b-hive: interrupted; completed steps are kept, run the same command again to "
              "continue", file=sys.stderr)
    else:
        sys.__excepthook__(kind, exc, tb)


logging.getLogger("luigi-interface").addFilter(UserErrorFilter())
sys.excepthook = _excepthook
