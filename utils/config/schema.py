"""Configuration schema: the declarative object that drives export, training and evaluation.

A configuration is a Python module in ``config/`` that defines one object ``config`` of
class :class:`Config`. Every value is validated when the object is built, so a broken
configuration fails at load time with a message naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from utils.errors import BHiveError

STORAGE_DTYPES = ("float32", "float16")
# settings a config may give per process for built-in (Pythia8) samples
GENERATOR_SETTINGS = ("n_files", "events_per_file", "pthat_min")
REWEIGHTING_METHODS = ("reference", "flat", "none", "legacy_max")


class ConfigError(BHiveError, ValueError):
    """A configuration value is missing, unknown or invalid."""


def _config_source() -> str:
    """Return the config file that is building the object (first frame outside this package)."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    while frame is not None:
        raw = frame.f_code.co_filename
        filename = os.path.abspath(raw)
        internal = (raw.startswith("<") or filename.startswith(here) or "importlib" in filename
                    or os.path.basename(filename) == "dataclasses.py")
        if not internal:
            return _short_path(filename)
        frame = frame.f_back
    return "<config>"


def _short_path(path: str) -> str:
    root = os.environ.get("B_HIVE_DIR")
    if root and path.startswith(os.path.abspath(root) + os.sep):
        return os.path.relpath(path, root)
    return path


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"{_config_source()}: key '{key}': {message}")


@dataclass(frozen=True)
class Derived:
    """A column computed from branches: ``function(**{name: array for name in uses})``
    (numpy ufuncs and builtins such as ``np.abs`` get the arrays positionally).

    Used for derived features (the result is a per-jet or per-candidate array with the
    shape of its inputs) and for truth-label conditions (the result is a boolean per jet).
    Functions are ordinary Python callables; strings are never evaluated.
    """

    name: str
    uses: tuple[str, ...]
    function: Callable[..., Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "uses", tuple(self.uses))
        if not isinstance(self.name, str) or not self.name.isidentifier():
            _fail("derived", f"name {self.name!r} must be a valid identifier")
        if not self.uses or not all(isinstance(u, str) and u for u in self.uses):
            _fail(self.name, "'uses' must list the branch names the function reads")
        if not callable(self.function):
            _fail(self.name, f"'function' must be callable, got {type(self.function).__name__}")

    def __call__(self, columns: Mapping[str, Any]) -> Any:
        if inspect.isbuiltin(self.function) or type(self.function).__name__ == "ufunc":
            return self.function(*(columns[name] for name in self.uses))  # e.g. np.abs
        return self.function(**{name: columns[name] for name in self.uses})


@dataclass(frozen=True)
class FeatureGroup:
    """An input group: per-jet scalars (``length=None``) or candidates padded to ``length``.

    ``four_vector`` optionally names the features holding each candidate's (pt, eta, phi,
    energy); models that need momenta (ParticleTransformer, ParticleNet) look them up there.
    ``sort_by`` optionally names a feature to order the candidates by (descending) before
    they are clipped; otherwise the input order is kept.

    For adversarial attacks (README "Adversarial attacks and robustness"):
    ``integer_features`` names the integer-valued or categorical features (multiplicities,
    categories, flags), which attacks leave at their nominal value (``--attack-reduce``);
    ``default_values`` maps features to the value the ntupliser writes when there is nothing
    to measure (e.g. -1 for "no track above charm"; 0, the padding value, is always a
    default): attacks leave such entries nominal too, and the feature spreads leave them out;
    ``attack_four_vector`` lets attacks move the ``four_vector`` features too (by default
    they stay nominal, so pair features and neighbour graphs built from them are unchanged).
    """

    name: str
    branches: tuple[str, ...]
    length: int | None = None
    derived: tuple[Derived, ...] = ()
    four_vector: tuple[str, str, str, str] | None = None
    sort_by: str | None = None
    integer_features: tuple[str, ...] = ()
    default_values: Mapping[str, float] | None = None
    attack_four_vector: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "branches", tuple(self.branches))
        object.__setattr__(self, "derived", tuple(self.derived))
        key = f"groups.{self.name}"
        if not isinstance(self.name, str) or not self.name.isidentifier():
            _fail("groups", f"group name {self.name!r} must be a valid identifier")
        if self.length is not None and (
            isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1
        ):
            _fail(f"{key}.length", f"must be a positive integer or None, got {self.length!r}")
        if not all(isinstance(b, str) and b for b in self.branches):
            _fail(f"{key}.branches", "must be a list of non-empty branch names")
        if not all(isinstance(d, Derived) for d in self.derived):
            _fail(f"{key}.derived", "entries must be Derived(name, uses, function)")
        if not self.features:
            _fail(key, "group has no features")
        dupes = sorted({f for f in self.features if self.features.count(f) > 1})
        if dupes:
            _fail(f"{key}.branches", f"duplicate features {dupes}")
        if self.sort_by is not None and (not self.is_candidates or
                                         self.sort_by not in self.features):
            _fail(f"{key}.sort_by", f"{self.sort_by!r} must be a feature of this candidate "
                  "group")
        if self.four_vector is not None:
            object.__setattr__(self, "four_vector", tuple(self.four_vector))
            unknown = [f for f in self.four_vector if f not in self.features]
            if len(self.four_vector) != 4 or unknown:
                _fail(f"{key}.four_vector", "must name the (pt, eta, phi, energy) features of "
                      f"the group; not features of the group: {unknown}")
        integers = (self.integer_features,) if isinstance(self.integer_features, str) else \
            tuple(self.integer_features)
        object.__setattr__(self, "integer_features", integers)
        unknown = [f for f in integers if f not in self.features]
        if unknown:
            _fail(f"{key}.integer_features", f"{unknown} are not features of the group; its "
                  f"features are {list(self.features)}")
        defaults = dict(self.default_values or {})
        object.__setattr__(self, "default_values", defaults)
        unknown = [f for f in defaults if f not in self.features]
        bad = [f for f, v in defaults.items() if not _is_number(v) or not math.isfinite(v)]
        if unknown or bad:
            _fail(f"{key}.default_values", f"must map features of the group to finite numbers; "
                  f"not features: {unknown}, not finite numbers: {bad}")
        if not isinstance(self.attack_four_vector, bool):
            _fail(f"{key}.attack_four_vector", f"must be True or False, got "
                  f"{self.attack_four_vector!r}")

    @property
    def features(self) -> tuple[str, ...]:
        """Feature names in storage order: branches first, then derived features."""
        return self.branches + tuple(d.name for d in self.derived)

    @property
    def is_candidates(self) -> bool:
        return self.length is not None

    @property
    def width(self) -> int:
        return len(self.features) * (self.length or 1)

    def rename(self, mapping: Mapping[str, str]) -> FeatureGroup:
        """Return a copy with branches renamed (e.g. HLT counter names)."""
        return dataclasses.replace(
            self, branches=tuple(mapping.get(b, b) for b in self.branches),
            integer_features=tuple(mapping.get(f, f) for f in self.integer_features),
            default_values={mapping.get(f, f): v for f, v in self.default_values.items()})

    def frozen_features(self, reduce: bool) -> tuple[str, ...]:
        """Features an attack leaves at their nominal value: the 4-vector (unless
        ``attack_four_vector``) and, with ``reduce``, the integer features."""
        frozen = set(self.integer_features) if reduce else set()
        if self.four_vector is not None and not self.attack_four_vector:
            frozen.update(self.four_vector)
        return tuple(f for f in self.features if f in frozen)


@dataclass(frozen=True)
class Process:
    """A physics process: files whose path matches ``pattern`` (fnmatch) belong to it.

    ``pt_range``/``eta_range`` define the evaluation window used by ROC curves and working
    points (half-open: ``low <= x < high``).
    """

    name: str
    pattern: str
    pt_range: tuple[float, float] = (0.0, math.inf)
    eta_range: tuple[float, float] = (-math.inf, math.inf)

    def __post_init__(self) -> None:
        key = f"processes.{self.name}"
        if not isinstance(self.name, str) or not self.name.isidentifier():
            _fail("processes", f"process name {self.name!r} must be a valid identifier")
        if not isinstance(self.pattern, str) or not self.pattern:
            _fail(f"{key}.pattern", "must be a non-empty fnmatch pattern such as '*TTTo*'")
        for attr in ("pt_range", "eta_range"):
            value = tuple(getattr(self, attr))
            if len(value) != 2 or not all(_is_number(v) for v in value) or not value[0] < value[1]:
                _fail(f"{key}.{attr}", f"must be (low, high) with low < high, got {value!r}")
            object.__setattr__(self, attr, (float(value[0]), float(value[1])))


@dataclass(frozen=True)
class Reweighting:
    """How the export weights jets for the rejection sampling (``utils/dataset/reweighting``).

    ``method``: ``reference`` (each class's pT-eta shape matched to the reference's),
    ``flat`` (flat in the pT-eta bins), ``none`` (weights 1) or ``legacy_max`` (the original
    b-hive's max-normalised per-label weights). ``reference``: a class or truth label
    (default: the config's ``reference_flavour``). ``quantile``: the percentile of a class's
    density ratios, counted over its jets, that maps to acceptance 1 (larger ones are
    clipped). ``min_jets_per_bin``: bins with fewer jets of a class do not set its scale.
    ``class_fractions``: ``"equal"`` or ``{class: fraction}`` of the jets after sampling
    (default: as many jets per class as the shape matching allows).
    """

    method: str = "reference"
    reference: str | None = None
    quantile: float = 0.9
    min_jets_per_bin: int = 10
    class_fractions: str | Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.method not in REWEIGHTING_METHODS:
            _fail("reweighting.method", f"must be one of {REWEIGHTING_METHODS}, got "
                  f"{self.method!r}")
        if not _is_number(self.quantile) or not 0 < self.quantile <= 1:
            _fail("reweighting.quantile", f"must be in (0, 1], got {self.quantile!r}")
        if isinstance(self.min_jets_per_bin, bool) or not isinstance(
                self.min_jets_per_bin, int) or self.min_jets_per_bin < 0:
            _fail("reweighting.min_jets_per_bin", f"must be an integer >= 0, got "
                  f"{self.min_jets_per_bin!r}")
        fractions = self.class_fractions
        if fractions is not None and fractions != "equal":
            if not isinstance(fractions, Mapping) or not all(
                    _is_number(v) and v >= 0 for v in fractions.values()) or \
                    not any(v > 0 for v in fractions.values()):
                _fail("reweighting.class_fractions", "must be 'equal' or {class: fraction "
                      f">= 0}} with a positive fraction, got {fractions!r}")
            object.__setattr__(self, "class_fractions", dict(fractions))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _check_edges(key: str, edges: Sequence[float]) -> tuple[float, ...]:
    edges = tuple(edges) if isinstance(edges, Sequence) and not isinstance(edges, str) else ()
    if len(edges) < 2:
        _fail(key, "needs at least two bin edges")
    if not all(_is_number(e) and math.isfinite(e) for e in edges):
        _fail(key, f"bin edges must be finite numbers, got {list(edges)}")
    if any(b <= a for a, b in itertools.pairwise(edges)):
        _fail(key, f"bin edges must be strictly increasing, got {list(edges)}")
    return tuple(float(e) for e in edges)


_REQUIRED = ("tree_name", "processes", "pt_bins", "eta_bins", "groups", "truths", "classes",
             "reference_flavour")


@dataclass(frozen=True, init=False)
class Config:
    """One complete configuration (see README "Configuration reference").

    Build it with keyword arguments; unknown or missing keys raise :class:`ConfigError`.
    """

    tree_name: str
    processes: tuple[Process, ...]
    pt_bins: tuple[float, ...]
    eta_bins: tuple[float, ...]
    groups: tuple[FeatureGroup, ...]
    truths: tuple[str | Derived, ...]
    classes: Mapping[str, tuple[str, ...]]
    reference_flavour: str
    pt_key: str = "jet_pt"
    eta_key: str = "jet_eta"
    selection: Derived | None = None
    observers: tuple[str | Derived, ...] = ()
    reference_taggers: Mapping[str, Mapping[str, str]] | None = None
    processor: str = "jet_tuple"
    storage_dtype: str = "float32"
    generated_samples: Mapping[str, Mapping[str, float]] | None = None
    processor_options: Mapping[str, Any] | None = None
    reweighting: Reweighting = Reweighting()
    chunk_size: int | None = None
    figure_label: str = ""
    name: str = ""
    description: str = ""

    def __init__(self, **values: Any) -> None:
        names = [f.name for f in dataclasses.fields(self)]
        for key in values:
            if key not in names:
                _fail(key, f"unknown key; valid keys are {', '.join(names)}")
        for key in _REQUIRED:
            if key not in values:
                _fail(key, "is required")
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, values.get(f.name, f.default))
        self._normalise_and_validate()

    # -- validation: one method per key, in dependency order ------------------------------
    def _normalise_and_validate(self) -> None:
        for key in ("tree_name", "pt_bins", "eta_bins", "processes", "groups", "truths",
                    "classes", "reference_flavour", "pt_key", "eta_key", "selection",
                    "observers", "reference_taggers", "storage_dtype", "processor",
                    "generated_samples", "reweighting", "chunk_size", "figure_label"):
            getattr(self, f"_check_{key}")()

    def _set(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)

    def _check_tree_name(self) -> None:
        if not isinstance(self.tree_name, str) or not self.tree_name:
            _fail("tree_name", "must be the non-empty path of the TTree, e.g. 'deepntuplizer/tree'")

    def _check_pt_bins(self) -> None:
        self._set("pt_bins", _check_edges("pt_bins", self.pt_bins))

    def _check_eta_bins(self) -> None:
        self._set("eta_bins", _check_edges("eta_bins", self.eta_bins))

    def _check_processes(self) -> None:
        processes = tuple(self.processes) if isinstance(self.processes, Sequence) else ()
        if not processes or not all(isinstance(p, Process) for p in processes):
            _fail("processes", "must be a non-empty list of Process(name, pattern, ...)")
        _check_unique("processes", [p.name for p in processes])
        self._set("processes", processes)

    def _check_groups(self) -> None:
        groups = tuple(self.groups) if isinstance(self.groups, Sequence) else ()
        if not groups or not all(isinstance(g, FeatureGroup) for g in groups):
            _fail("groups", "must be a non-empty list of FeatureGroup(...)")
        _check_unique("groups", [g.name for g in groups])
        _check_unique("groups (feature names across groups)",
                      [f for g in groups for f in g.features])
        self._set("groups", groups)

    def _check_truths(self) -> None:
        truths = tuple(self.truths) if isinstance(self.truths, Sequence) else ()
        if not truths or not all(isinstance(t, str | Derived) for t in truths):
            _fail("truths", "must be a non-empty list of flag branch names or Derived conditions")
        self._set("truths", truths)
        _check_unique("truths", list(self.truth_labels))

    def _check_classes(self) -> None:
        labels = self.truth_labels
        if not isinstance(self.classes, Mapping) or not self.classes:
            _fail("classes", "must map class names to lists of truth labels")
        classes: dict[str, tuple[str, ...]] = {}
        seen: dict[str, str] = {}
        for cls, members in self.classes.items():
            members = (members,) if isinstance(members, str) else tuple(members)
            if not members:
                _fail(f"classes.{cls}", "has no truth labels")
            for label in members:
                if label not in labels:
                    _fail(f"classes.{cls}",
                          f"names unknown truth label {label!r}; truths are {list(labels)}")
                if label in seen:
                    _fail(f"classes.{cls}", f"truth label {label!r} is already in class "
                          f"{seen[label]!r}; each label belongs to one class")
                seen[label] = cls
            classes[cls] = members
        missing = [label for label in labels if label not in seen]
        if missing:
            _fail("classes", f"truth labels {missing} belong to no class")
        self._set("classes", classes)

    def _check_reference_flavour(self) -> None:
        if self.reference_flavour not in self.truth_labels:
            _fail("reference_flavour", f"{self.reference_flavour!r} is not one of the truth "
                  f"labels {list(self.truth_labels)}")

    def _scalar_features(self) -> list[str]:
        return [f for g in self.groups if not g.is_candidates for f in g.features]

    def _check_pt_key(self) -> None:
        self._check_scalar_key("pt_key")

    def _check_eta_key(self) -> None:
        self._check_scalar_key("eta_key")

    def _check_scalar_key(self, key: str) -> None:
        scalars = self._scalar_features()
        if getattr(self, key) not in scalars:
            _fail(key, f"{getattr(self, key)!r} must be a per-jet feature of a group "
                  f"without length; per-jet features are {scalars}")

    def _check_selection(self) -> None:
        if self.selection is not None and not isinstance(self.selection, Derived):
            _fail("selection", "must be a Derived condition or None")

    def _check_observers(self) -> None:
        observers = tuple(self.observers)
        if not all((isinstance(o, str) and o) or isinstance(o, Derived) for o in observers):
            _fail("observers", "must be a list of branch names or Derived per-jet values")
        self._set("observers", observers)
        names = list(self.observer_names)
        _check_unique("observers", names)
        clash = sorted(set(names) & set(f for g in self.groups for f in g.features))
        if clash:
            _fail("observers", f"{clash} are already input features")

    def _check_reference_taggers(self) -> None:
        if self.reference_taggers is None:
            return
        if not isinstance(self.reference_taggers, Mapping):
            _fail("reference_taggers", "must map discriminant names to {label: observer}")
        from utils.evaluation.discriminants import DISCRIMINANTS

        known = [d.name for d in DISCRIMINANTS]
        for disc, taggers in self.reference_taggers.items():
            if disc not in known:
                _fail("reference_taggers", f"unknown discriminant {disc!r}; known: {known}")
            for label, observer in dict(taggers).items():
                if observer not in self.observer_names:
                    _fail(f"reference_taggers.{disc}.{label}",
                          f"{observer!r} is not an observer; add it to 'observers'")

    def _check_storage_dtype(self) -> None:
        if self.storage_dtype not in STORAGE_DTYPES:
            _fail("storage_dtype", f"must be one of {STORAGE_DTYPES}, got {self.storage_dtype!r}")

    def _check_processor(self) -> None:
        if not isinstance(self.processor, str) or not self.processor:
            _fail("processor", "must be the name of a registered processor")

    def _check_reweighting(self) -> None:
        rw = self.reweighting
        if isinstance(rw, Mapping):  # a plain dict in a config file
            try:
                rw = Reweighting(**rw)
            except TypeError as exc:
                _fail("reweighting", f"{exc}; valid keys are method, reference, quantile, "
                      "min_jets_per_bin, class_fractions")
            self._set("reweighting", rw)
        if not isinstance(rw, Reweighting):
            _fail("reweighting", "must be Reweighting(...) or a dict of its keys")
        reference = self.reweighting_reference
        if reference not in self.classes and reference not in self.truth_labels:
            _fail("reweighting.reference", f"{reference!r} is neither a class "
                  f"{list(self.classes)} nor a truth label")
        if reference in self.classes and reference in self.truth_labels and \
                tuple(self.classes[reference]) != (reference,):
            _fail("reweighting.reference", f"{reference!r} is both a class and a truth label "
                  "of another class; name the one you mean unambiguously")
        if isinstance(rw.class_fractions, Mapping):
            unknown = sorted(set(rw.class_fractions) - set(self.classes))
            missing = [name for name in self.classes if name not in rw.class_fractions]
            if unknown or missing:
                _fail("reweighting.class_fractions", f"must give every class a fraction (0 to "
                      f"leave a class out); unknown classes {unknown}, missing {missing}")

    @property
    def reweighting_reference(self) -> str:
        """The class or truth label the shapes are matched to."""
        return self.reweighting.reference or self.reference_flavour

    def _check_chunk_size(self) -> None:
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or not
                                            isinstance(self.chunk_size, int) or
                                            self.chunk_size < 1):
            _fail("chunk_size", f"must be a positive integer (the default --chunk-size of "
                  f"this config's datasets) or None, got {self.chunk_size!r}")

    def _check_figure_label(self) -> None:
        if not isinstance(self.figure_label, str):
            _fail("figure_label", "must be a string such as 'CMS Simulation Private Work' "
                  "(empty: chosen from the inputs)")

    def _check_generated_samples(self) -> None:
        if self.generated_samples is None:
            return
        if not isinstance(self.generated_samples, Mapping) or not self.generated_samples:
            _fail("generated_samples", "must map process names to generator settings")
        for process, settings in self.generated_samples.items():
            if process not in self.process_names:
                _fail("generated_samples", f"{process!r} is not one of the processes "
                      f"{list(self.process_names)}")
            unknown = set(settings) - set(GENERATOR_SETTINGS)
            if unknown:
                _fail(f"generated_samples.{process}", f"unknown settings {sorted(unknown)}; "
                      f"valid are {list(GENERATOR_SETTINGS)}")
            for key, value in settings.items():
                if not _is_number(value) or value <= 0:
                    _fail(f"generated_samples.{process}.{key}",
                          f"must be a positive number, got {value!r}")

    # -- convenience ------------------------------------------------------------------------
    def replace(self, **changes: Any) -> Config:
        """Return a validated copy with some keys changed (derive configs from a base)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in changes:
            if key not in values:
                _fail(key, f"unknown key; valid keys are {', '.join(values)}")
        values.update(changes)
        return Config(**values)

    def replace_group(self, name: str, **changes: Any) -> Config:
        """Return a copy where feature group ``name`` has some attributes changed."""
        self.group(name)
        groups = tuple(dataclasses.replace(g, **changes) if g.name == name else g
                       for g in self.groups)
        return self.replace(groups=groups)

    def with_four_vector(self, group: str, names: Sequence[str]) -> Config:
        """Return a copy whose group ``group`` declares ``names`` = (pt, eta, phi, energy) as
        its candidates' 4-vector (branches not yet in the group are appended)."""
        branches = self.group(group).branches
        extra = tuple(n for n in names if n not in self.group(group).features)
        return self.replace_group(group, branches=branches + extra, four_vector=tuple(names))

    def group(self, name: str) -> FeatureGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise ConfigError(f"config {self.name!r}: no feature group {name!r}; groups are "
                          f"{[g.name for g in self.groups]}")

    @property
    def figure_text(self) -> str:
        """The experiment label of figures: ``figure_label``, else "Private work (Pythia8
        sample)" for configs with built-in samples and "CMS Simulation Private Work"
        otherwise."""
        if self.figure_label:
            return self.figure_label
        return "Private work (Pythia8 sample)" if self.generated_samples else \
            "CMS Simulation Private Work"

    @property
    def truth_labels(self) -> tuple[str, ...]:
        return tuple(t if isinstance(t, str) else t.name for t in self.truths)

    @property
    def observer_names(self) -> tuple[str, ...]:
        return tuple(o if isinstance(o, str) else o.name for o in self.observers)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.classes)

    @property
    def process_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.processes)

    @property
    def branches(self) -> tuple[str, ...]:
        """Every ROOT branch the export reads, in a stable order."""
        names: list[str] = []
        derived: list[Derived] = [d for g in self.groups for d in g.derived]
        derived += [t for t in self.truths if isinstance(t, Derived)]
        derived += [o for o in self.observers if isinstance(o, Derived)]
        if self.selection is not None:
            derived.append(self.selection)
        for g in self.groups:
            names.extend(g.branches)
        names.extend(t for t in self.truths if isinstance(t, str))
        names.extend(o for o in self.observers if isinstance(o, str))
        for d in derived:
            names.extend(d.uses)
        computed = {d.name for d in derived}  # a Derived may use another Derived
        return tuple(n for n in dict.fromkeys(names) if n not in computed)

    @property
    def tagger_branches(self) -> dict[str, tuple[str, ...]]:
        """Reference tagger label -> the branches its observers are read or computed from."""
        derived = {o.name: o for o in self.observers if isinstance(o, Derived)}
        out: dict[str, list[str]] = {}
        for taggers in (self.reference_taggers or {}).values():
            for label, observer in taggers.items():
                sources = derived[observer].uses if observer in derived else (observer,)
                out.setdefault(label, []).extend(sources)
        return {label: tuple(dict.fromkeys(names)) for label, names in out.items()}

    @property
    def optional_branches(self) -> frozenset[str]:
        """Branches only reference taggers read: a file without them is exported with the
        taggers' scores as NaN, and the evaluation leaves those taggers out."""
        tagger_observers = {o for taggers in (self.reference_taggers or {}).values()
                            for o in taggers.values()}
        if not tagger_observers:
            return frozenset()
        required = self.replace(reference_taggers=None, observers=tuple(
            o for o, name in zip(self.observers, self.observer_names, strict=True)
            if name not in tagger_observers))
        return frozenset(self.branches) - frozenset(required.branches)

    @property
    def optional_observers(self) -> frozenset[str]:
        """Observers computed from optional branches only (NaN where a file lacks them)."""
        optional = self.optional_branches
        return frozenset(
            (o if isinstance(o, str) else o.name) for o in self.observers
            if (o in optional if isinstance(o, str) else set(o.uses) <= optional))

    def fingerprint(self) -> str:
        """Hash of everything that determines the exported data and its training classes
        (the label -> class mapping included), for version checks."""
        def describe(obj: Any) -> Any:
            if isinstance(obj, Derived):
                return {"derived": obj.name, "uses": obj.uses,
                        "code": _function_fingerprint(obj.function)}
            return obj

        payload = {
            "tree_name": self.tree_name,
            "pt_bins": self.pt_bins, "eta_bins": self.eta_bins,
            "pt_key": self.pt_key, "eta_key": self.eta_key,
            "groups": [(g.name, g.length, g.branches, [describe(d) for d in g.derived],
                        g.four_vector, g.sort_by) for g in self.groups],
            "processor_options": dict(self.processor_options or {}),
            "truths": [describe(t) for t in self.truths],
            "processes": [(p.name, p.pattern) for p in self.processes],
            "selection": describe(self.selection),
            "observers": [describe(o) for o in self.observers],
            "processor": self.processor,
            "storage_dtype": self.storage_dtype,
            "reference_flavour": self.reference_flavour,
            "reweighting": {**dataclasses.asdict(self.reweighting),
                            "reference": self.reweighting_reference},
            # a list: the order of the classes is their index (json sorts dict keys)
            "classes": [[name, list(labels)] for name, labels in self.classes.items()],
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def mapping_text(classes: Mapping[str, Sequence[str]]) -> str:
    """A label -> class mapping as text, e.g. ``{b: isB, c: isC+isCC, ...}``."""
    return "{" + ", ".join(f"{name}: {'+'.join(labels)}" for name, labels in
                           classes.items()) + "}"


def label_to_class(classes: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """The one place the label -> class map is built: truth label -> index of its class
    (classes in their given order)."""
    return {label: i for i, labels in enumerate(classes.values()) for label in labels}


def _function_fingerprint(function: Any, depth: int = 0) -> str:
    """A stable description of a callable: byte code, constants (nested code objects
    included), names, defaults and closure values, so that e.g. ``lambda x: x > 30`` and
    ``lambda x: x > 300`` differ."""
    code = getattr(function, "__code__", function)
    if not hasattr(code, "co_code") or depth > 5:
        return repr(function)

    def constant(value: Any) -> str:
        return _function_fingerprint(value, depth + 1) if hasattr(value, "co_code") \
            else repr(value)

    parts = [code.co_code.hex(), repr(code.co_names), *map(constant, code.co_consts)]
    parts.append(repr(getattr(function, "__defaults__", None)))
    parts.append(repr(getattr(function, "__kwdefaults__", None)))
    for cell in getattr(function, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # empty cell
            value = None
        parts.append(_function_fingerprint(value, depth + 1) if callable(value)
                     else repr(value))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _check_unique(key: str, names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        _fail(key, f"duplicate names {dupes}")
