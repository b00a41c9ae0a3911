"""A small, safe interpreter for the original b-hive's ``*_custom_features`` expressions.

An expression such as ``np.cos(jet_phi) * jet_pt`` is parsed with :mod:`ast` and checked
against an allow-list: numbers, branch names, arithmetic (``+ - * / // % **``), comparisons,
``& | ~`` and calls of the numpy / awkward functions below (constant keyword arguments
allowed), plus ``np.pi`` and ``np.e``. Anything else (attributes, subscripts, lambdas,
other names or functions) is refused with the construct named. Nothing is ever passed to
``eval``: the checked tree is evaluated node by node.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

import awkward as ak
import numpy as np

NUMPY_FUNCTIONS = (
    "abs", "absolute", "sqrt", "square", "exp", "expm1", "log", "log10", "log2", "log1p",
    "sin", "cos", "tan", "arcsin", "arccos", "arctan", "arctan2", "sinh", "cosh", "tanh",
    "arcsinh", "arccosh", "arctanh", "hypot", "power", "sign", "floor", "ceil", "round",
    "where", "minimum", "maximum", "clip", "isfinite", "isnan", "nan_to_num", "logical_and",
    "logical_or", "logical_not",
)
AWKWARD_FUNCTIONS = ("num", "sum", "max", "min", "mean", "any", "all", "fill_none", "firsts",
                     "values_astype")
CONSTANTS = {"pi": math.pi, "e": math.e}
MODULES = {"np": np, "numpy": np, "ak": ak, "awkward": ak}
ALLOWED = {np: NUMPY_FUNCTIONS, ak: AWKWARD_FUNCTIONS}

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
          ast.Pow: operator.pow, ast.BitAnd: operator.and_, ast.BitOr: operator.or_,
          ast.BitXor: operator.xor}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
           ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}


class ExpressionError(ValueError):
    """An expression uses something outside the allow-list (the message says what)."""


Node = Callable[[Mapping[str, Any]], Any]


class Expression:
    """A checked expression: ``Expression(text)(**columns)`` evaluates it on the columns;
    ``names`` are the branch names it reads. Its ``repr`` is the text (what config
    fingerprints and the Python converter use)."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ExpressionError(f"an expression must be a non-empty string, got {text!r}")
        self.text = text.strip()
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"not a valid expression ({exc.msg})") from None
        self.names: list[str] = []
        self._node = self._compile(tree.body)

    def __call__(self, **columns: Any) -> Any:
        return self._node(columns)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    # -- the checked tree -> nested closures ----------------------------------------------
    def _compile(self, node: ast.AST) -> Node:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            value = node.value
            return lambda columns: value
        if isinstance(node, ast.Name):
            if node.id in MODULES:
                raise ExpressionError(f"'{node.id}' is only allowed in calls such as "
                                      f"{node.id}.sqrt(x)")
            name = node.id
            if name not in self.names:
                self.names.append(name)
            return lambda columns: columns[name]
        if isinstance(node, ast.Attribute):
            module = self._module(node.value)
            if module is np and node.attr in CONSTANTS:
                value = CONSTANTS[node.attr]
                return lambda columns: value
            raise ExpressionError(f"'{ast.unparse(node)}' is not allowed (constants: "
                                  f"np.pi, np.e)")
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            op, left, right = BINARY[type(node.op)], self._compile(node.left), \
                self._compile(node.right)
            return lambda columns: op(left(columns), right(columns))
        if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
            op, operand = UNARY[type(node.op)], self._compile(node.operand)
            return lambda columns: op(operand(columns))
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and \
                type(node.ops[0]) in COMPARE:
            op = COMPARE[type(node.ops[0])]
            left, right = self._compile(node.left), self._compile(node.comparators[0])
            return lambda columns: op(left(columns), right(columns))
        if isinstance(node, ast.Call):
            return self._call(node)
        raise ExpressionError(f"'{ast.unparse(node)}' is not allowed: use branch names, "
                              "numbers, arithmetic, comparisons, & | ~ and np./ak. functions")

    def _module(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Name) and node.id in MODULES:
            return MODULES[node.id]
        raise ExpressionError(f"'{ast.unparse(node)}' is not allowed: only np.<function> "
                              "and ak.<function> can be called")

    def _call(self, node: ast.Call) -> Node:
        if not isinstance(node.func, ast.Attribute):
            raise ExpressionError(f"'{ast.unparse(node.func)}' cannot be called: only "
                                  "np.<function> and ak.<function>")
        module = self._module(node.func.value)
        name = node.func.attr
        if name not in ALLOWED[module]:
            prefix = "np" if module is np else "ak"
            raise ExpressionError(f"'{prefix}.{name}' is not an allowed function; allowed: "
                                  f"{', '.join(f'{prefix}.{f}' for f in ALLOWED[module])}")
        function = getattr(module, name)
        args = [self._compile(a) for a in node.args]
        keywords = {}
        for keyword in node.keywords:
            if keyword.arg is None or not isinstance(keyword.value, ast.Constant):
                raise ExpressionError(f"'{ast.unparse(keyword)}': keyword arguments must be "
                                      "constants, e.g. axis=1")
            keywords[keyword.arg] = keyword.value.value
        return lambda columns: function(*(a(columns) for a in args), **keywords)
