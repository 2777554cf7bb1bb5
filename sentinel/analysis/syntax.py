"""Syntax-level helpers the interpreter shares: dotted names, literal strings, call and condition keys,
and the fixed vocabularies (builtins, container methods, dummy-tensor factories) it matches against."""

from __future__ import annotations

import functools
import re
from typing import Any

import libcst as cst

from sentinel.analysis import torchapi as api
from sentinel.analysis.values import (
    CONST,
    LIST,
    MODEL,
    NOCONST,
    SOFTMAX,
    TUPLE,
    V,
)


def _dotted(node: cst.BaseExpression) -> str | None:
    t = type(node)
    if t is cst.Name:
        return node.value
    if t is cst.Attribute:
        base = _dotted(node.value)
        return f"{base}.{node.attr.value}" if base else None
    return None


def _code(node: cst.CSTNode) -> str:
    return _EMPTY_MODULE.code_for_node(node)


_EMPTY_MODULE = cst.Module([])


def _target_text(node: cst.BaseExpression) -> str:
    d = _dotted(node)
    if d:
        return d
    if isinstance(node, cst.Subscript):
        base = _dotted(node.value)
        return f"{base}[]" if base else "<subscript>"
    return "<expr>"


def _string_value(node: cst.BaseExpression) -> Any:
    if type(node) is cst.SimpleString:
        raw = node.value
        q = raw[-1]
        # the common case, a plain 'text' or "text" without escapes, without ast.literal_eval
        if raw[0] == q and "\\" not in raw and len(raw) >= 2 and not raw.startswith(q * 3):
            return raw[1:-1]
        try:
            return node.evaluated_value
        except Exception:  # pragma: no cover - malformed escapes
            return NOCONST
    if isinstance(node, cst.ConcatenatedString):
        left, right = _string_value(node.left), _string_value(node.right)
        if isinstance(left, str) and isinstance(right, str):
            return left + right
    return NOCONST


_CALLED = re.compile(r"(?<!def )\b([A-Za-z_]\w*)\s*\(")
_MODE_FUNCS = frozenset(
    {
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "feature_alpha_dropout",
        "batch_norm",
        "instance_norm",
    }
)


def _layer_sensitive(qual: str, kwargs: dict[str, V], args: list[V] | None = None) -> bool | None:
    """Whether a layer constructor builds a module whose output depends on train/eval mode."""
    name = api.last(qual)
    if qual.startswith("einops."):
        return False  # einops' layers rearrange, reduce or (EinMix) multiply: the same in both modes
    if not qual.startswith("torch.nn."):
        return True  # zoo models (torchvision, timm, transformers) have dropout and batch norm
    if "Dropout" in name:
        p = kwargs.get("p", (args or [None])[0] if args else None)
        return not (p is not None and p.is_const and p.const == 0)  # `nn.Dropout(0.0)` is the identity
    if "BatchNorm" in name:
        return True
    if name.startswith("Transformer"):
        d = kwargs.get("dropout")
        return not (d is not None and d.is_const and d.const == 0)
    if name in ("MultiheadAttention", "RNN", "LSTM", "GRU"):
        d = kwargs.get("dropout")
        if d is None:
            return False
        if name != "MultiheadAttention":
            # dropout only acts between stacked layers: one layer (the default) has none
            layers = kwargs.get("num_layers", (args or [])[2] if len(args or []) > 2 else None)
            if layers is None or layers.is_const and layers.const == 1:
                return False
        return bool(d.const) if d.is_const else None
    if name.startswith("InstanceNorm"):
        # each sample normalized by its own statistics, as in training: evaluating in train mode is what
        # image-to-image models do on purpose (with track_running_stats, eval() would switch to averages)
        return False
    if name in ("Sequential", "ModuleList", "ModuleDict"):
        return None
    return False


def _any_sensitive(values) -> bool | None:
    result: bool | None = False
    for v in values or ():
        if v.kind in (LIST, TUPLE):  # `nn.Sequential(*layers)`, `nn.ModuleList(blocks)`
            s = list_sensitive(v)
            if s:
                return True
            if s is None:
                result = None
        elif v.kind == MODEL:
            if v.sensitive:
                return True
            if v.sensitive is None:
                result = None
        elif v.kind not in (SOFTMAX, CONST):
            result = None
    return result


def list_sensitive(v: V) -> bool | None:
    """Whether a list of layers holds a dropout/batch-norm style layer: its elements when known, else
    what every ``append``/``+=`` that built it added (a list built in a loop)."""
    return _any_sensitive(v.elems) if v.elems is not None else v.sensitive


def state_dict_call(node: cst.BaseExpression) -> cst.Call | None:
    """``model.state_dict()`` itself, or the first such call among a tuple/list literal's elements
    (``(-loss, epoch, model.state_dict())``: a record holding the live state dict)."""
    parts = [e.value for e in node.elements] if isinstance(node, (cst.Tuple, cst.List)) else [node]
    for part in parts:
        if isinstance(part, cst.Call) and isinstance(part.func, cst.Attribute) and part.func.attr.value == "state_dict":
            return part
    return None


def list_tail(v: V) -> V | None:
    """The last element of a list or tuple, when known (also after a loop that built the rest)."""
    return v.elems[-1] if v.elems else v.tail


def extended_tail(v: V, more: V) -> V | None:
    """The last element of ``v`` after ``v += more`` / ``v.extend(more)``."""
    if more.kind not in (LIST, TUPLE):
        return None
    return list_tail(v) if more.elems == () else list_tail(more)


def union_sensitive(a: bool | None, b: bool | None) -> bool | None:
    if a or b:
        return True
    return None if a is None or b is None else False


def _is_factory(node: Any) -> bool:
    """Was this tensor made by ``torch.randn(...)``-style factories (a smoke test, a shape probe)?"""
    return isinstance(node, cst.Call) and (_dotted(node.func) or "").rsplit(".", 1)[-1] in _DUMMY_FACTORIES


_MISSING = object()
_CONVENTIONAL = {"torch": "torch", "nn": "torch.nn", "F": "torch.nn.functional", "optim": "torch.optim"}
_MODULE_ONLY_METHODS = frozenset(
    {
        "parameters",
        "named_parameters",
        "train",
        "eval",
        "load_state_dict",
        "modules",
        "named_modules",
        "children",
        "named_children",
        "register_forward_hook",
        "register_forward_pre_hook",
    }
)
_JOIN_FUNCS = frozenset({"stack", "cat", "concat", "concatenate", "hstack", "vstack", "dstack"})
_CONTAINER_API = frozenset({"update", "add", "append", "extend", "record", "push", "accumulate", "log", "put"})
_STORE_METHODS = frozenset({"update", "append", "extend", "insert", "setdefault", "add"})
_DUMMY_FACTORIES = frozenset({"zeros", "ones", "randn", "rand", "empty", "full", "randint", "zeros_like", "ones_like"})

_BUILTINS = frozenset(
    {
        "len",
        "range",
        "enumerate",
        "zip",
        "print",
        "float",
        "int",
        "str",
        "bool",
        "sum",
        "max",
        "min",
        "abs",
        "round",
        "list",
        "tuple",
        "dict",
        "set",
        "sorted",
        "reversed",
        "iter",
        "next",
        "isinstance",
        "getattr",
        "format",
        "repr",
        "open",
        "map",
        "filter",
        "any",
        "all",
        "super",
        "type",
        "hasattr",
        "setattr",
    }
)

_BINOPS: dict[type, Any] = {
    cst.Add: lambda a, b: a + b,
    cst.Subtract: lambda a, b: a - b,
    cst.Multiply: lambda a, b: a * b,
    cst.Divide: lambda a, b: a / b,
    cst.FloorDivide: lambda a, b: a // b,
    cst.Modulo: lambda a, b: a % b,
    cst.Power: lambda a, b: a**b if abs(b) < 64 else NOCONST,
}
_CMPOPS: dict[type, Any] = {
    cst.Equal: lambda a, b: a == b,
    cst.NotEqual: lambda a, b: a != b,
    cst.LessThan: lambda a, b: a < b,
    cst.LessThanEqual: lambda a, b: a <= b,
    cst.GreaterThan: lambda a, b: a > b,
    cst.GreaterThanEqual: lambda a, b: a >= b,
    cst.Is: lambda a, b: a is b,
    cst.IsNot: lambda a, b: a is not b,
    cst.In: lambda a, b: a in b,
    cst.NotIn: lambda a, b: a not in b,
}


@functools.lru_cache(maxsize=8192)
def _cond_key(test: cst.BaseExpression) -> str:
    """A key under which two guards count as the same condition.

    ``i % accum == 0`` and ``(i + 1) % accum == 0`` both pace on ``accum``: gradient accumulation written
    with the reset at the top and the step at the bottom of the iteration shares one key. Remembered per
    node (nodes compare by identity): an inlined helper's guards are keyed once, not once per call.
    """
    if isinstance(test, cst.Comparison) and isinstance(test.left, cst.BinaryOperation):
        if isinstance(test.left.operator, cst.Modulo):
            return "% " + _code(test.left.right).strip()
    if isinstance(test, cst.BinaryOperation) and isinstance(test.operator, cst.Modulo):
        return "% " + _code(test.right).strip()
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
        return negated(_cond_key(test.expression))
    if isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
        # `opt is not None` is the else-branch of `opt is None`: one condition, negated
        positive = _POSITIVE.get(type(test.comparisons[0].operator))
        if positive is not None:
            return negated(f"{_code(test.left).strip()} {positive} {_code(test.comparisons[0].comparator).strip()}")
    return _code(test).strip()


_POSITIVE = {cst.IsNot: "is", cst.NotEqual: "==", cst.NotIn: "in"}


def negated(key: str) -> str:
    """The key of a condition's negation (``not not c`` is ``c``): what an ``else`` branch runs under."""
    return key[4:] if key.startswith("not ") else "not " + key


def _self_add(target: cst.BaseExpression, value: cst.BaseExpression) -> cst.BaseExpression | None:
    """For ``t = t + x`` (or ``x + t``, or a running average ``t = 0.9 * t + 0.1 * x``) return ``x``:
    an accumulation spelled without ``+=``."""
    if not isinstance(value, cst.BinaryOperation) or not isinstance(value.operator, cst.Add):
        return None
    text = _dotted(target)
    if text is None:
        return None
    if _is_scaled(value.left, text):
        return value.right
    if _is_scaled(value.right, text):
        return value.left
    return None


def _is_scaled(node: cst.BaseExpression, text: str) -> bool:
    """``t`` itself, or ``t`` times / divided by something (``0.9 * t``, ``t * momentum``)."""
    if _dotted(node) == text:
        return True
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, (cst.Multiply, cst.Divide)):
        return _dotted(node.left) == text or (isinstance(node.operator, cst.Multiply) and _dotted(node.right) == text)
    return False


def _is_len_call(node: cst.BaseExpression) -> bool:
    return type(node) is cst.Call and type(node.func) is cst.Name and node.func.value == "len"


def _is_one(node: cst.BaseExpression) -> bool:
    return type(node) is cst.Integer and node.value == "1"


def _equality(test: cst.BaseExpression) -> tuple[cst.BaseExpression, cst.BaseExpression] | None:
    """The two sides of ``a == b``."""
    if type(test) is cst.Comparison and len(test.comparisons) == 1 and type(test.comparisons[0].operator) is cst.Equal:
        return test.left, test.comparisons[0].comparator
    return None


def _first_index(test: cst.BaseExpression) -> str | None:
    """``i`` of ``if i == 0:`` / ``if not i:``."""
    if type(test) is cst.UnaryOperation and type(test.operator) is cst.Not:
        return test.expression.value if type(test.expression) is cst.Name else None
    sides = _equality(test)
    for zero, name in (sides, sides[::-1]) if sides else ():
        if type(zero) is cst.Integer and zero.value == "0" and type(name) is cst.Name:
            return name.value
    return None


def _last_index_of(test: cst.BaseExpression) -> str | None:
    """``i`` of ``if i == len(xs) - 1:`` / ``if i + 1 == len(xs):``."""
    sides = _equality(test)
    return (_last_index(*sides) or _last_index(*sides[::-1])) if sides else None


def _last_index(index: cst.BaseExpression, bound: cst.BaseExpression) -> str | None:
    """``i`` of ``i == len(xs) - 1`` or ``i + 1 == len(xs)`` (``index`` the side that holds ``i``)."""
    if type(index) is cst.Name and type(bound) is cst.BinaryOperation and type(bound.operator) is cst.Subtract:
        return index.value if _is_len_call(bound.left) and _is_one(bound.right) else None
    if type(index) is cst.BinaryOperation and type(index.operator) is cst.Add and _is_len_call(bound):
        return index.left.value if type(index.left) is cst.Name and _is_one(index.right) else None
    return None


def _target_names(target: cst.BaseExpression) -> set[str]:
    if type(target) is cst.Name:
        return {target.value}
    if isinstance(target, (cst.Tuple, cst.List)):
        return {n for e in target.elements for n in _target_names(e.value)}
    return set()


def _counter(loop: cst.For) -> str | None:
    """The name counting ``loop``'s iterations from 0: ``i`` of ``for i, x in enumerate(xs)`` (no
    ``start``) or of ``for i in range(n)`` / ``range(0, n)``."""
    it = loop.iter
    if not isinstance(it, cst.Call) or not isinstance(it.func, cst.Name):
        return None
    target = loop.target
    if it.func.value == "enumerate" and len(it.args) == 1 and isinstance(target, cst.Tuple) and target.elements:
        first = target.elements[0].value
        return first.value if isinstance(first, cst.Name) else None
    if it.func.value == "range" and isinstance(target, cst.Name) and it.args:
        if len(it.args) == 1 or (isinstance(it.args[0].value, cst.Integer) and it.args[0].value.value == "0"):
            if all(a.keyword is None for a in it.args):
                return target.value
    return None


def _none_test(test: cst.BaseExpression) -> tuple[str | None, bool]:
    """``(name, True)`` for ``if name is None:``, ``(name, False)`` for ``if name is not None:``: the
    branch where ``name`` is None (the body, or what runs when the test fails); ``(None, False)`` else."""
    if type(test) is cst.Comparison and type(test.left) is cst.Name and len(test.comparisons) == 1:
        comp = test.comparisons[0]
        if type(comp.comparator) is cst.Name and comp.comparator.value == "None":
            if type(comp.operator) is cst.Is:
                return test.left.value, True
            if type(comp.operator) is cst.IsNot:
                return test.left.value, False
    return None, False
