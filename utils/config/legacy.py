"""The original b-hive's YAML configurations (``config/<name>.yml``) read into a
:class:`~utils.config.schema.Config`.

Keys (see README "Coming from the original b-hive"): ``bins_pt``, ``bins_eta``,
``processes`` (names matched as substrings of the file paths; ``["default"]`` takes every
file), per-process evaluation windows ``<PROCESS>: {pt_min, pt_max, eta_min, eta_max}``,
``treename``, the feature lists ``global_features``, ``cpf_candidates``,
``npf_candidates``, ``vtx_features``, ``lt_candidates`` with their lengths
``n_<group>_candidates`` (``n_vtx_features`` is read too), the ``<group>_custom_features``
expressions (:mod:`utils.config.expressions`), ``truths`` (a list of flag branches, or a map
label -> conditions: ``[{branch: [v1, v2]}, {branch: {">": 0}}]``, values of one condition
OR-ed, conditions AND-ed, or label -> a branch name), ``reference_flavour``,
``pt_key``/``eta_key`` and ``data_precision``. Keys of the original that only selected its
implementation (``processor``, ``dataset``, ``process-weights``, ...) are accepted and
ignored. The classes are the original models' grouping: the six DeepJet classes for the
``isB ... isG`` flags, otherwise one class per label (``label_b`` -> ``b``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils.config.expressions import Expression, ExpressionError
from utils.config.schema import Config, ConfigError, Derived, FeatureGroup, Process

# original key -> our group name, and the key of its length
GROUPS = (("global_features", "global", None), ("cpf_candidates", "cpf", "n_cpf_candidates"),
          ("npf_candidates", "npf", "n_npf_candidates"),
          ("vtx_features", "vtx", "n_vtx_candidates"), ("lt_candidates", "lt", "n_lt_candidates"))
CUSTOM = {"global": "global_custom_features", "cpf": "cpf_custom_features",
          "npf": "npf_custom_features", "vtx": "vtx_custom_features", "lt": "lt_custom_features"}
IGNORED = ("processor", "dataset", "process-weights", "process_weights", "cpf_points",
           "vtx_points", "pair_candidates", "n_pair_candidates")
KNOWN = {"bins_pt", "bins_eta", "processes", "treename", "truths", "reference_flavour",
         "pt_key", "eta_key", "data_precision", "n_vtx_features", *IGNORED, *CUSTOM.values(),
         *(k for k, _, _ in GROUPS), *(n for _, _, n in GROUPS if n)}
# four-vector features the original's ParT configs append, per group prefix
FOUR_VECTOR_SUFFIXES = ("pt", "eta", "phi", "e")
DEEPJET_CLASSES = (("b", ("isB",)), ("bb", ("isBB", "isGBB")),
                   ("lepb", ("isLeptonicB", "isLeptonicB_C")), ("c", ("isC", "isCC", "isGCC")),
                   ("uds", ("isUD", "isU", "isD", "isS")), ("g", ("isG",)))
OPERATORS = {"==": np.equal, "!=": np.not_equal, ">": np.greater, "<": np.less,
             ">=": np.greater_equal, "<=": np.less_equal}


def read_yaml_config(path: str | Path) -> Config:
    """The :class:`Config` of the original's YAML file ``path``; any problem is a
    :class:`ConfigError` naming the file, the key and (for expressions) the expression."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot be read as YAML: {exc}") from None
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{path}: empty or not a mapping of keys")
    return _build(path, dict(raw))


def _error(path: Path, key: str, message: str) -> ConfigError:
    """The error for ``key`` of the YAML file ``path`` (to be raised)."""
    return ConfigError(f"{path}: key '{key}': {message}")


def _build(path: Path, raw: dict[str, Any]) -> Config:
    processes = raw.get("processes")
    if not isinstance(processes, list) or not processes or \
            not all(isinstance(p, str) and p for p in processes):
        raise _error(path, "processes", f"must be a list of process names, got {processes!r}")
    process_names = set(processes)
    unknown = sorted(k for k in raw if k not in KNOWN and k not in process_names)
    if unknown:
        raise _error(path, unknown[0], f"unknown key (keys of the original b-hive's configs: "
                    f"{', '.join(sorted(KNOWN))}, and one window per process)")
    for key in ("bins_pt", "bins_eta", "treename", "truths", "global_features"):
        if key not in raw:
            raise _error(path, key, "missing")
    truths, classes = _truths(path, raw["truths"])
    values: dict[str, Any] = dict(
        name=path.stem, tree_name=raw["treename"],
        processes=tuple(_process(path, name, raw.get(name)) for name in processes),
        pt_bins=_edges(path, "bins_pt", raw["bins_pt"]),
        eta_bins=_edges(path, "bins_eta", raw["bins_eta"]),
        groups=_groups(path, raw), truths=truths, classes=classes,
        reference_flavour=raw.get("reference_flavour", truths[0] if isinstance(
            truths[0], str) else truths[0].name),
        pt_key=raw.get("pt_key", "jet_pt"), eta_key=raw.get("eta_key", "jet_eta"),
        storage_dtype=raw.get("data_precision", "float32"),
        description=f"converted from the original b-hive's {path.name}")
    try:
        return Config(**values)
    except ConfigError as exc:  # the schema names the key; say which file it came from
        raise ConfigError(f"{path}: {str(exc).split(': ', 1)[-1]}") from None


def _edges(path: Path, key: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) < 2 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise _error(path, key, f"must be a list of at least two bin edges, got {value!r}")
    return tuple(float(v) for v in value)


def _process(path: Path, name: str, window: Any) -> Process:
    """The process ``name`` (files whose path contains it; ``default``: every file) with its
    evaluation window, if the file gives one."""
    pt, eta = (0.0, math.inf), (-math.inf, math.inf)
    if window is not None:
        if not isinstance(window, Mapping) or set(window) - {"pt_min", "pt_max", "eta_min",
                                                             "eta_max"}:
            raise _error(path, name, "a process window is {pt_min, pt_max, eta_min, eta_max}, "
                        f"got {window!r}")
        pt = (window.get("pt_min", 0.0), window.get("pt_max", math.inf))
        eta = (window.get("eta_min", -math.inf), window.get("eta_max", math.inf))
    if not name.isidentifier():
        raise _error(path, "processes", f"process name {name!r} must be a valid identifier")
    try:
        return Process(name, "*" if name == "default" else f"*{name}*", pt_range=pt,
                       eta_range=eta)
    except ConfigError as exc:  # name the YAML keys, not the schema's
        keys = "eta_min/eta_max" if ".eta_range'" in str(exc) else "pt_min/pt_max"
        raise _error(path, name, f"{keys} {str(exc).rsplit(': ', 1)[-1]}") from None


def _groups(path: Path, raw: Mapping[str, Any]) -> tuple[FeatureGroup, ...]:
    groups = []
    for key, name, length_key in GROUPS:
        branches = raw.get(key)
        if branches is None:
            continue
        if not isinstance(branches, list) or not all(isinstance(b, str) for b in branches):
            raise _error(path, key, f"must be a list of branch names, got {branches!r}")
        length = None
        if length_key is not None:
            length = raw.get(length_key, raw.get("n_vtx_features") if name == "vtx" else None)
            if length is None:
                raise _error(path, length_key, f"missing: the number of {name} candidates")
            if length == 0:
                continue  # the original's way of leaving a group out
        derived = _custom(path, CUSTOM[name], raw.get(CUSTOM[name]))
        if not branches and not derived:
            continue
        features = list(branches) + [d.name for d in derived]
        group = FeatureGroup(name, tuple(branches), length=length, derived=derived,
                             four_vector=_four_vector(features))
        groups.append(group)
    return tuple(groups)


def _four_vector(features: Sequence[str]) -> tuple[str, str, str, str] | None:
    """(pt, eta, phi, e) when a candidate group lists all four with one prefix."""
    for feature in features:
        if feature.endswith("_pt"):
            prefix = feature[:-len("pt")]
            names = tuple(prefix + s for s in FOUR_VECTOR_SUFFIXES)
            if all(n in features for n in names):
                return names  # type: ignore[return-value]
    return None


def _custom(path: Path, key: str, entries: Any) -> tuple[Derived, ...]:
    if entries is None:
        return ()
    if isinstance(entries, Mapping):
        entries = [{k: v} for k, v in entries.items()]
    if not isinstance(entries, list):
        raise _error(path, key, f"must be a list of {{name: expression}} maps, got {entries!r}")
    derived = []
    for entry in entries:
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise _error(path, key, f"each entry is one {{name: expression}} map, got {entry!r}")
        (name, text), = entry.items()
        try:
            expression = Expression(text)
        except ExpressionError as exc:
            raise _error(path, f"{key}.{name}", f"expression {text!r}: {exc}") from None
        if not expression.names:
            raise _error(path, f"{key}.{name}", f"expression {text!r} reads no branch")
        derived.append(Derived(str(name), tuple(expression.names), expression))
    return tuple(derived)


class Condition:
    """A truth label from the original's condition list: each condition is
    ``{branch: values}``, one value or a list of them (OR-ed; a value may be an operator
    map such as ``{">": 0}``); the conditions are AND-ed. Its ``repr`` is the conditions
    (what config fingerprints use)."""

    def __init__(self, conditions: list[tuple[str, list[Any]]]) -> None:
        self.conditions = conditions

    def __call__(self, **columns: Any) -> np.ndarray:
        result = None
        for branch, values in self.conditions:
            column = np.asarray(columns[branch])
            passed = np.zeros(column.shape, dtype=bool)
            for value in values:
                if isinstance(value, Mapping):
                    (op, threshold), = value.items()
                    passed |= OPERATORS[op](column, threshold)
                else:
                    passed |= column == value
            result = passed if result is None else result & passed
        return result

    def __repr__(self) -> str:
        return f"Condition({self.conditions!r})"


def _truths(path: Path, truths: Any) -> tuple[tuple[str | Derived, ...],
                                                dict[str, tuple[str, ...]]]:
    if isinstance(truths, list) and truths and all(isinstance(t, str) for t in truths):
        labels = tuple(truths)
        return labels, _classes(labels)
    if not isinstance(truths, Mapping) or not truths:
        raise _error(path, "truths", "must be a list of flag branches or a map label -> "
                    f"conditions, got {truths!r}")
    out: list[str | Derived] = []
    for label, spec in truths.items():
        key = f"truths.{label}"
        if isinstance(spec, str):
            out.append(Derived(str(label), (spec,), Condition([(spec, [{"!=": 0}])])))
            continue
        if not isinstance(spec, list) or not spec:
            raise _error(path, key, f"must be a list of {{branch: values}} conditions, got "
                        f"{spec!r}")
        conditions = []
        for item in spec:
            if not isinstance(item, Mapping) or len(item) != 1:
                raise _error(path, key, f"each condition is one {{branch: values}} map, got "
                            f"{item!r}")
            (branch, values), = item.items()
            values = values if isinstance(values, list) else [values]
            for value in values:
                if isinstance(value, Mapping) and (len(value) != 1 or
                                                   next(iter(value)) not in OPERATORS):
                    raise _error(path, key, f"operator maps take one of {list(OPERATORS)}, got "
                                f"{value!r}")
                number = next(iter(value.values())) if isinstance(value, Mapping) else value
                if not isinstance(number, (int, float)) or isinstance(number, bool):
                    raise _error(path, key, f"condition values are numbers or operator maps, "
                                f"got {value!r}")
            conditions.append((str(branch), list(values)))
        out.append(Derived(str(label), tuple(dict.fromkeys(b for b, _ in conditions)),
                           Condition(conditions)))
    labels = tuple(t.name for t in out)  # type: ignore[union-attr]
    return tuple(out), _classes(labels)


def _classes(labels: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The original models' class grouping of the config's truth labels."""
    if {"isB", "isC", "isG"} <= set(labels):
        classes = {name: tuple(label for label in members if label in labels)
                   for name, members in DEEPJET_CLASSES}
        grouped = {label for members in classes.values() for label in members}
        classes = {name: members for name, members in classes.items() if members}
        classes.update({label: (label,) for label in labels if label not in grouped})
        return classes
    return {label.removeprefix("label_"): (label,) for label in labels}
