"""The one home of every step's parameters: defaults, help texts and validity (torch-free).

Each step has a frozen dataclass whose fields are its parameters (:class:`ExportSettings`,
:class:`GenerationSettings`, :class:`TrainSettings`). A field made with :func:`option`
carries its help text, its validity check and whether it is *stored*: a stored parameter
left out on the command line takes the value recorded for the version (``parameters.json``),
else the default written here. The law tasks build their parameters, ``--help`` texts
("default: ...") and ``stored_defaults`` from these fields (tasks/base.py), and the library
code receives the validated objects. Building an object validates every value and raises
:class:`SettingsError` naming the command-line option.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from utils.attacks import ATTACKS, ITERATIONS_DEFAULT, MULTI_STEP
from utils.errors import BHiveError

PARAMETERS_FILE = "parameters.json"  # a version's record of its parameters
DEFAULT_SEED = 123456
SCHEDULERS = ("none", "epoch_lin_decay", "batch_lin_decay", "batch_cosine_warmup")
PRECISIONS = ("float32", "float16", "bfloat16")
EXECUTORS = ("iterative", "futures", "dask")
# built-in samples: events per file by process (about 7,000 jets per file each)
DEFAULT_EVENTS = {"TT": 1200, "QCD": 3000}
PILEUP_MU = 30.0  # default mean pileup of the built-in samples


class SettingsError(BHiveError, ValueError):
    """A parameter value is invalid (the message names the command-line option)."""


@dataclass(frozen=True)
class Option:
    """What a parameter is: help text, validity check (``check(value)`` true if valid, with
    ``requirement`` describing it), choices, and whether it is stored per version."""

    help: str
    check: Callable[[Any], bool] | None = None
    requirement: str = ""
    choices: tuple[str, ...] | None = None
    stored: bool = True
    absent: Any = None  # the value of versions recorded before the option existed


def option(default: Any, help: str, check: Callable[[Any], bool] | None = None,
           requirement: str = "", choices: tuple[str, ...] | None = None,
           stored: bool = True, absent: Any = None) -> Any:
    """A dataclass field that is a step parameter (see :class:`Option`)."""
    return field(default=default, metadata={"option": Option(help, check, requirement,
                                                             choices, stored, absent)})


def at_least(low: float) -> Callable[[Any], bool]:
    return lambda value: value >= low


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _betas(value: str) -> bool:
    try:
        pair = [float(b) for b in str(value).split(",")]
    except ValueError:
        return False
    return len(pair) == 2 and all(0 <= b < 1 for b in pair)


def shown_default(value: Any) -> str:
    """A default as the help texts and README show it: ``on``/``off``, numbers with
    ``:g``, text as is."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def cli_name(name: str) -> str:
    return "--" + name.replace("_", "-")


@functools.cache
def options(cls: type) -> Mapping[str, tuple[Option, Any, str]]:
    """``{name: (option, default, type name)}`` of a settings dataclass (read-only; computed
    once per class: it is needed for every parameter of every task created)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if "option" in f.metadata:
            kind = hints[f.name]
            args = [a for a in typing.get_args(kind) if a is not type(None)]
            out[f.name] = (f.metadata["option"], f.default, (args[0] if args else kind).__name__)
    return MappingProxyType(out)


def stored_defaults(cls: type) -> dict[str, Any]:
    """Defaults of the stored parameters of ``cls``."""
    return {name: default for name, (opt, default, _) in options(cls).items() if opt.stored}


def validate(settings: Any) -> None:
    """Raise :class:`SettingsError` for the first invalid value of a settings object."""
    for name, (opt, _, kind) in options(type(settings)).items():
        value = getattr(settings, name)
        if value is None:
            continue
        valid = True
        if kind in ("int", "float") and (isinstance(value, bool) or
                                         not isinstance(value, int | float)):
            valid = False
        elif kind == "int" and not float(value).is_integer():
            valid = False
        elif opt.choices is not None and value not in opt.choices:
            raise SettingsError(f"{cli_name(name)} must be one of {', '.join(opt.choices)}; "
                                f"got {value!r}")
        elif opt.check is not None:
            try:
                valid = bool(opt.check(value))
            except (TypeError, ValueError):
                valid = False
        if not valid:
            raise SettingsError(f"{cli_name(name)} must be {opt.requirement or kind}; got "
                                f"{value!r}")


class _Validated:
    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class AttackSettings:
    """One adversarial attack as :mod:`utils.attacks` applies it (built by
    :meth:`TrainSettings.attack_settings`, which checks that the values fit together).

    ``magnitude`` is in units of each feature's spread (``individual_factors``) or absolute;
    ``iterations`` is the number of steps of the iterative attacks; ``reduce`` keeps
    integer-valued features and default (zero) entries at their nominal value;
    ``restrict_impact`` > 0 clamps every change to that fraction of the entry's value;
    ``overshoot`` (jetfool) and ``uncertainty`` (minimizer) are their attacks' own knobs.
    """

    name: str = "nominal"
    magnitude: float = 0.0
    iterations: int = 1
    individual_factors: bool = True
    reduce: bool = True
    restrict_impact: float = -1.0
    overshoot: float = 0.02
    uncertainty: float = 1.0

    @property
    def active(self) -> bool:
        """False for the nominal (no) attack."""
        return self.name != "nominal" and self.magnitude > 0

    def path_parts(self, prefix: str = "") -> tuple[str, ...]:
        """Output-path parts as in the original b-hive: ``<name>``, then, for a magnitude
        > 0, ``epsilon_<e>``, ``iterations_<i>`` and ``overshoot_<x>`` (jetfool) or
        ``uncertainty_<x>`` (minimizer); ``prefix`` is ``test_`` for test attacks. Settings
        off their defaults add ``individual_factors_off``, ``reduce_off`` and
        ``restrict_impact_<r>``, so every setting that changes the result is in the path."""
        head = f"{prefix}attack_{self.name}" if prefix else self.name
        if self.magnitude <= 0:
            return (head,)
        parts = [head, f"{prefix}epsilon_{_number(self.magnitude)}",
                 f"{prefix}iterations_{self.iterations}"]
        if self.name == "jetfool":
            parts.append(f"{prefix}overshoot_{_number(self.overshoot)}")
        if self.name == "minimizer":
            parts.append(f"{prefix}uncertainty_{_number(self.uncertainty)}")
        if not self.individual_factors:
            parts.append(f"{prefix}individual_factors_off")
        if not self.reduce:
            parts.append(f"{prefix}reduce_off")
        if self.restrict_impact > 0:
            parts.append(f"{prefix}restrict_impact_{_number(self.restrict_impact)}")
        return tuple(parts)

    def describe(self) -> str:
        """One line for logs, e.g. ``pgd, magnitude 0.01 (per-feature spreads), 10 steps``."""
        if not self.active:
            return "nominal (no attack)"
        units = "in units of each feature's spread" if self.individual_factors else "absolute"
        text = f"{self.name}, magnitude {_number(self.magnitude)} ({units})"
        if self.name in MULTI_STEP:
            text += f", {self.iterations} steps"
        if self.name == "jetfool":
            text += f", overshoot {_number(self.overshoot)}"
        if self.name == "minimizer":
            text += f", uncertainty {_number(self.uncertainty)}"
        text += ", integer and default entries kept" if self.reduce else ", every entry moves"
        if self.restrict_impact > 0:
            text += f", |change| <= {_number(self.restrict_impact)}|x|"
        return text


def _number(value: float) -> str:
    """A float as a path part: the shortest text that reads back the same (0.01, 1e-05)."""
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _restrict(value: float) -> bool:
    return value == -1 or (math.isfinite(value) and value > 0)


def _attack_fields(prefix: str, target: str) -> list[tuple[str, Any, Any]]:
    """The ``--<prefix>attack*`` options (training: no prefix; evaluation: ``test_``)."""
    p = f"{prefix}attack"
    return [
        (p, str, option("nominal", f"adversarial attack on {target}: "
                        + ", ".join(ATTACKS)
                        + " (see README 'Adversarial attacks and robustness')",
                        choices=ATTACKS, stored=False)),
        (f"{p}_magnitude", float, option(
            0.0, "attack size (epsilon) in units of each feature's spread (with "
            f"--{p.replace('_', '-')}-individual-factors) or absolute; 0: no attack",
            lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0", stored=False)),
        (f"{p}_iterations", int | None, option(
            None, "steps of the iterative attacks "
            + ", ".join(f"{a}" for a in MULTI_STEP)
            + f"; default: {ITERATIONS_DEFAULT} for those, 1 (the only value) for the others",
            at_least(1), ">= 1", stored=False)),
        (f"{p}_individual_factors", bool, option(
            True, "scale the magnitude by each feature's spread (stored with the dataset); "
            "off: the same absolute size for every feature (path part "
            f"{prefix}individual_factors_off)", stored=False)),
        (f"{p}_reduce", bool, option(
            True, "keep integer-valued and categorical features and entries at their default "
            f"value (0, or as the config declares) nominal; off: path part {prefix}reduce_off",
            stored=False)),
        (f"{p}_restrict_impact", float, option(
            -1.0, "clamp every change to this fraction of the entry's absolute value (-1: "
            f"off; else path part {prefix}restrict_impact_<r>)", _restrict,
            "-1 or a number > 0", stored=False)),
        (f"{p}_overshoot", float, option(
            0.02, "jetfool: overshoot beyond the estimated class boundary", at_least(0),
            ">= 0", stored=False)),
        (f"{p}_uncertainty", float, option(
            1.0, "minimizer: width of the Gaussian prior on the shifts, in units of the "
            "magnitude", positive, "> 0", stored=False)),
    ]


@dataclass(frozen=True)
class StepSettings(_Validated):
    """A step whose only setting is its seed."""

    seed: int = option(DEFAULT_SEED, "random seed of this step (shuffling, sampling, "
                       "initialisation)", at_least(0), ">= 0")


@dataclass(frozen=True)
class ExportSettings(_Validated):
    """DatasetConstructorTask: how the exported dataset is cut and shuffled."""

    chunk_size: int = option(100_000, "jets per output file (the last file holds the "
                             "remainder)", at_least(1), ">= 1")
    seed: int = option(DEFAULT_SEED, "shuffling seed of the dataset", at_least(0), ">= 0")
    coffea_worker: int = option(1, "parallel worker processes for the coffea processor and "
                                "the merge", at_least(1), ">= 1", stored=False)
    executor: str = option("futures", "coffea executor: 'iterative' (in process), "
                           "'futures' (process pool of --coffea-worker workers) or 'dask' "
                           "(dask.distributed: --scheduler-address, or a local cluster of "
                           "--coffea-worker processes)", choices=EXECUTORS, stored=False)


@dataclass(frozen=True)
class GenerationSettings(_Validated):
    """GenerateSamplesTask: the built-in Pythia8 samples."""

    n_files: int = option(4, "number of files (workflow branches)", at_least(1), ">= 1",
                          stored=False)
    events_per_file: int | None = option(
        None, "events per file; default: "
        + ", ".join(f"{n} for {p}" for p, n in DEFAULT_EVENTS.items())
        + " (about 7,000 jets per file)", at_least(1), ">= 1")
    pthat_min: float = option(30.0, "QCD only: minimum pT-hat of the hard scattering in "
                              "GeV", positive, "> 0", stored=False)
    seed: int = option(DEFAULT_SEED, "base seed of the sample (each file gets its own)",
                       at_least(0), ">= 0")
    detector: str = option(
        "realistic", "detector model: realistic (tracking efficiency, impact-parameter tails, "
        "informative chi2, K0S/Lambda/hyperon decays in flight) or ideal (the easy sample of "
        "earlier versions)", choices=("realistic", "ideal"), absent="ideal")
    mpi: bool = option(True, "multi-parton interactions (the underlying event) in the hard "
                       "events", absent=False)
    pileup: float = option(
        PILEUP_MU, "mean number of pileup interactions (Poisson) overlaid on every event from "
        "a pool of minimum-bias events made once per sample version (0: no pileup)",
        lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0", absent=0.0)

    def events(self, process: str) -> int:
        return self.events_per_file or DEFAULT_EVENTS[process]


_TrainingAttack = dataclasses.make_dataclass(
    "_TrainingAttack", _attack_fields("", "every training batch (validation stays nominal)"),
    frozen=True)


@dataclass(frozen=True)
class TrainSettings(_TrainingAttack, _Validated):
    """Hyper-parameters of one training (the TrainingTask parameters), including its
    adversarial attack (``--attack*``)."""

    attack_prefixes: typing.ClassVar[tuple[str, ...]] = ("",)

    epochs: int = option(1, "number of epochs", at_least(1), ">= 1", stored=False)
    batch_size: int = option(1024, "jets per batch", at_least(1), ">= 1")
    learning_rate: float = option(1e-3, "initial learning rate", positive, "> 0")
    optimizer: str = option("AdamW", "any torch.optim optimiser name (AdamW, Adam, RAdam, "
                            "SGD, ...)")
    betas: str = option("0.95,0.999", "Adam-type betas as 'b1,b2'", _betas,
                        "two comma-separated numbers in [0, 1)")
    eps: float = option(1e-6, "optimiser epsilon", positive, "> 0")
    weight_decay: float = option(0.01, "weight decay (where the optimiser takes it)",
                                 at_least(0), ">= 0")
    lr_scheduler: str = option(
        "epoch_lin_decay", "learning-rate schedule: none; epoch_lin_decay / batch_lin_decay "
        "(constant, then a decay over the last 30% of the epochs / batches to "
        "lr * lr_decay_factor); batch_cosine_warmup (one-epoch warm-up, cosine decay)",
        choices=SCHEDULERS)
    lr_decay_factor: float = option(0.01, "final learning rate / initial",
                                    lambda v: 0 < v <= 1, "in (0, 1]")
    loss_function: str = option("CrossEntropyLoss", "torch.nn loss on (logits, class)")
    loss_weighting: bool = option(False, "use the per-jet pT-eta weights in the loss instead "
                                  "of rejection sampling")
    grad_clip: float = option(1.0, "clip the gradients' global norm to this value, as the "
                              "original b-hive does (0: no clipping)", at_least(0), ">= 0",
                              absent=0.0)  # trainings made before it existed: no clipping
    mixed_precision: bool = option(False, "automatic mixed precision (float16 on GPU, "
                                   "bfloat16 on CPU)")
    training_precision: str = option("float32", "dtype of the batches handed to the device",
                                     choices=PRECISIONS)
    train_val_split: float = option(0.85, "fraction of the jets (by chunk file) used for "
                                    "training, the rest validates (one file: split by rows)",
                                    lambda v: 0 < v < 1, "in (0, 1)")
    n_train_files: int = option(-1, "use at most this many training files (-1 or 0: all)",
                                at_least(-1), ">= -1")
    seed: int = option(DEFAULT_SEED, "seed of the initialisation, sampling and shuffling",
                       at_least(0), ">= 0")
    n_threads: int = option(1, "loader threads, each reading its own files (0: load in the "
                            "training thread)", at_least(0), ">= 0", stored=False)
    use_torch_compile: bool = option(False, "compile the model with torch.compile",
                                     stored=False)
    torch_compile_mode: str = option("default", "torch.compile mode", stored=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        for prefix in self.attack_prefixes:
            # raises for values that do not fit together; records the effective steps
            steps = self.attack_settings(prefix).iterations
            object.__setattr__(self, f"{prefix}attack_iterations", steps)

    @property
    def beta_pair(self) -> tuple[float, float]:
        first, second = (float(b) for b in self.betas.split(","))
        return first, second

    def attack_settings(self, prefix: str = "") -> AttackSettings:
        """The training attack (``prefix`` ``""``) or the test attack (``"test_"``)."""
        return make_attack_settings(dataclasses.asdict(self), prefix)


def make_attack_settings(values: Mapping[str, Any], prefix: str = "") -> AttackSettings:
    """The :class:`AttackSettings` of the ``<prefix>attack*`` entries of ``values`` (absent
    or None ones take their defaults); raises :class:`SettingsError` for values that do not
    fit together. The output paths are built from these (only the path parts are needed
    before the stored values are known)."""
    p = f"{prefix}attack"
    defaults = AttackSettings()

    def get(key: str, default: Any) -> Any:
        value = values.get(f"{p}_{key}" if key else p)
        return default if value is None else value

    name, magnitude = get("", defaults.name), float(get("magnitude", defaults.magnitude))
    iterations = get("iterations", None)
    option_name = cli_name(p)
    if name == "nominal" and magnitude > 0:
        raise SettingsError(f"{option_name} nominal takes no {option_name}-magnitude; got "
                            f"{magnitude:g} (name the attack, e.g. {option_name} fgsm)")
    if name != "nominal" and magnitude == 0:
        raise SettingsError(f"{option_name} {name} needs {option_name}-magnitude > 0 (the "
                            f"attack size; for no attack use {option_name} nominal)")
    if name not in MULTI_STEP and iterations not in (None, 1):
        raise SettingsError(f"{option_name}-iterations applies to {', '.join(MULTI_STEP)}; "
                            f"{name} takes one step; got {iterations}")
    if iterations is None:
        iterations = ITERATIONS_DEFAULT if name in MULTI_STEP else 1
    settings = AttackSettings(
        name, magnitude, int(iterations),
        bool(get("individual_factors", defaults.individual_factors)),
        bool(get("reduce", defaults.reduce)),
        float(get("restrict_impact", defaults.restrict_impact)),
        float(get("overshoot", defaults.overshoot)),
        float(get("uncertainty", defaults.uncertainty)))
    # an option the attack does not use would be recorded without changing anything
    unused = [key for key, used in (("overshoot", name == "jetfool"),
                                    ("uncertainty", name == "minimizer"),
                                    ("individual_factors", name != "nominal"),
                                    ("reduce", name != "nominal"),
                                    ("restrict_impact", name != "nominal"))
              if not used and getattr(settings, key) != getattr(defaults, key)]
    if unused:
        raise SettingsError(", ".join(f"{option_name}-{k.replace('_', '-')}" for k in unused)
                            + f" do(es) not apply to {option_name} {name}")
    return settings


EvaluationSettings = dataclasses.make_dataclass(
    "EvaluationSettings", _attack_fields("test_", "the test jets"), bases=(TrainSettings,),
    frozen=True, namespace={
        "attack_prefixes": ("", "test_"),
        "__doc__": "A training plus the attack applied to its test jets (``--test-attack*``)."})
EvaluationSettings.__module__ = __name__
