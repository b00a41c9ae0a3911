"""Write the Python config equivalent to an original b-hive YAML config.

    python -m utils.config.convert config/name.yml > config/name.py

The module builds the same :class:`~utils.config.schema.Config` (same fingerprint, so
datasets exported with either are interchangeable); custom features and truth conditions
stay checked expressions (:class:`~utils.config.expressions.Expression`,
:class:`~utils.config.legacy.Condition`), which can then be replaced by ordinary functions.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from utils.config.legacy import read_yaml_config
from utils.config.schema import Config, ConfigError, Derived, FeatureGroup, Process


def _value(value: Any) -> str:
    """Python source of a config value."""
    if isinstance(value, float) and math.isinf(value):
        return "math.inf" if value > 0 else "-math.inf"
    if isinstance(value, tuple):
        inner = ", ".join(_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_value(k)}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Derived):
        return f"Derived({value.name!r}, {_value(value.uses)}, {value.function!r})"
    if isinstance(value, Process):
        return (f"Process({value.name!r}, {value.pattern!r}, pt_range={_value(value.pt_range)},"
                f" eta_range={_value(value.eta_range)})")
    if isinstance(value, FeatureGroup):
        parts = [repr(value.name), _value(value.branches)]
        if value.length is not None:
            parts.append(f"length={value.length}")
        if value.derived:
            parts.append(f"derived={_value(value.derived)}")
        if value.four_vector is not None:
            parts.append(f"four_vector={_value(value.four_vector)}")
        return f"FeatureGroup({', '.join(parts)})"
    return repr(value)


def python_source(config: Config, source: Path) -> str:
    """The module text defining ``config``."""
    keys = ("tree_name", "processes", "pt_bins", "eta_bins", "groups", "truths", "classes",
            "reference_flavour", "pt_key", "eta_key", "storage_dtype", "description")
    lines = [f'"""Converted from the original b-hive\'s {source.name} by '
             '``python -m utils.config.convert``."""', "",
             "import math  # noqa: F401", "",
             "from utils.config import Config, Derived, FeatureGroup, Process  # noqa: F401",
             "from utils.config.expressions import Expression  # noqa: F401",
             "from utils.config.legacy import Condition  # noqa: F401", "", "config = Config("]
    for key in keys:
        value = getattr(config, key)
        if isinstance(value, tuple) and value and isinstance(value[0], (Process, FeatureGroup,
                                                                         Derived)):
            lines.append(f"    {key}=(")
            lines += [f"        {_value(v)}," for v in value]
            lines.append("    ),")
        else:
            lines.append(f"    {key}={_value(dict(value) if key == 'classes' else value)},")
    lines.append(")")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        config = read_yaml_config(args[0])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(python_source(config, Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
