"""Abstract values of the training-code interpreter.

A :class:`V` describes what a Python value is known to be at one program point: a model, an optimizer,
a loss function, a tensor that carries an autograd graph or holds softmax probabilities, a state dict
that aliases a model's live storage, a constant (for partial evaluation of ``phase == "train"``), ...
Values are immutable; ``join`` merges the values two control-flow paths give a name.

Properties that trigger findings are *definite* (``probs``, ``graph is True``): a join keeps them only
when both paths agree, so an uncertain value never produces a finding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

NOCONST: Any = object()  # "not a known constant"

# kinds
UNKNOWN = "unknown"
MODEL = "model"
OPTIMIZER = "optimizer"
LOSS = "loss"  # a loss-function object (const "ce" for cross entropy)
SCALER = "scaler"
SCHEDULER = "scheduler"
TENSOR = "tensor"
STATE_DICT = "state_dict"
PARAMS = "params"
CLASS = "class"
FUNC = "func"
INSTANCE = "instance"
GRAD_CTX = "grad_ctx"  # const: "on" | "off" | None (unknown)
SOFTMAX = "softmax"  # a callable applying softmax (nn.Softmax() instance)
LIST = "list"
DICT = "dict"
TUPLE = "tuple"
QUAL = "qual"  # a (possibly dotted) imported name, const = qualified name
CONST = "const"
LOADER = "loader"


@dataclass(frozen=True)
class V:
    kind: str = UNKNOWN
    ident: Any = None  # object identity: models, optimizers, instances, lists
    probs: Any = None  # node of the softmax this tensor's probabilities come from (model: forward returns probs)
    graph: bool | None = None  # True: definitely carries an autograd graph; False: definitely not
    taints: frozenset = frozenset()  # ids of forward / accumulation events this value derives from
    const: Any = NOCONST
    elems: tuple | None = None  # tuple/list literal elements
    items: tuple | None = None  # dict literal: ((key constant, value), ...)
    ref: Any = None  # ClassInfo / FunctionDef info / Instance / ListObj
    alias: Any = None  # ident of the model/optimizer whose live storage this (state dict, tensor) aliases
    label: str = ""  # the name the value was first bound to (e.g. "val_loader"), for eval heuristics
    # models: does it hold dropout / batch-norm style layers whose behaviour depends on train/eval?
    sensitive: bool | None = None
    origin: Any = field(default=None, compare=False, repr=False)  # node that created it

    def with_(self, **changes: Any) -> V:
        return replace(self, **changes)

    @property
    def is_const(self) -> bool:
        return self.const is not NOCONST


TOP = V()


def join(a: V | None, b: V | None) -> V:
    """Merge two paths' values: definite facts survive only where both paths agree."""
    if a is None:
        return b if b is not None else TOP
    if b is None or a is b:
        return a
    if a == b:
        return a
    taints = a.taints | b.taints
    # an empty list literal (before the loop that fills it) joins as whatever the loop put in it
    if a.kind == LIST and a.elems == ():
        return b.with_(taints=taints)
    if b.kind == LIST and b.elems == ():
        return a.with_(taints=taints)
    if a.kind != b.kind:
        # a constant None/0 initialiser joined with a real value: keep the real one's identity facts
        if a.kind == CONST and a.const in (None, 0, 0.0):
            return b.with_(taints=taints)
        if b.kind == CONST and b.const in (None, 0, 0.0):
            return a.with_(taints=taints)
        return V(taints=taints, label=a.label or b.label)
    if a.kind in (QUAL, GRAD_CTX) and a.const != b.const and a.kind == QUAL:
        return V(taints=taints, label=a.label or b.label)
    ident = a.ident if a.ident is b.ident else None
    if ident is None and a.kind == MODEL and a.ident is not None and b.ident is not None:
        ident = Alt(_members(a.ident) | _members(b.ident))  # either model, depending on the path
    return V(
        kind=a.kind,
        ident=ident,
        probs=a.probs if (a.probs is not None and b.probs is not None) else None,
        graph=a.graph if a.graph == b.graph else None,
        taints=taints,
        const=a.const if (a.is_const and b.is_const and a.const == b.const) else NOCONST,
        elems=None,
        items=a.items if a.items == b.items else None,
        ref=a.ref if a.ref is b.ref else None,
        alias=a.alias if a.alias is b.alias else None,
        label=a.label or b.label,
        sensitive=a.sensitive if a.sensitive == b.sensitive else None,
        origin=a.origin,
    )


class Alt(frozenset):
    """The identity of a value that is one of several objects (a model chosen by a branch)."""


def _members(ident: Any) -> frozenset:
    return ident if isinstance(ident, Alt) else frozenset({ident})


def join_modes(a: frozenset | None, b: frozenset | None) -> frozenset | None:
    if a is None or b is None:
        return None
    return a | b


def join_grad(a: str | None, b: str | None) -> str | None:
    return a if a == b else None


def merge_taints(*values: V) -> frozenset:
    out: frozenset = frozenset()
    for v in values:
        if v.taints:
            out = out | v.taints
    return out


def graph_of(*values: V) -> bool | None:
    """Graph flag of an arithmetic result: True if any operand definitely has one."""
    result: bool | None = False
    for v in values:
        if v.graph is True:
            return True
        if v.graph is None and v.kind in (TENSOR, UNKNOWN):
            result = None
    return result
