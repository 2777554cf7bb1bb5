"""Abstract values of the training-code interpreter.

A :class:`V` describes what a Python value is known to be at one program point: a model, an optimizer,
a loss function, a tensor that carries an autograd graph or holds softmax probabilities, a state dict
that aliases a model's live storage, a constant (for partial evaluation of ``phase == "train"``), ...
Values are immutable; ``join`` merges the values two control-flow paths give a name.

Properties that trigger findings are *definite* (``probs``, ``graph is True``): a join keeps them only
when both paths agree, so an uncertain value never produces a finding.
"""

from __future__ import annotations

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
MODULE = "module"  # a project module the analysis can read (ref: imports.Unit)


_EMPTY: frozenset = frozenset()


class V:
    """An abstract value. Treat as immutable: derive new ones with :meth:`with_`.

    A plain ``__slots__`` class rather than a frozen dataclass: the interpreter creates hundreds of
    thousands of these, and frozen dataclasses pay ``object.__setattr__`` per field.
    """

    __slots__ = (
        "kind",
        "ident",
        "probs",
        "graph",
        "taints",
        "const",
        "elems",
        "items",
        "ref",
        "alias",
        "label",
        "sensitive",
        "origin",
        "wrapper",
    )

    def __init__(
        self,
        kind: str = UNKNOWN,
        ident: Any = None,  # object identity: models, optimizers, instances, lists
        probs: Any = None,  # node of the softmax its probabilities come from (model: forward returns probs)
        graph: bool | None = None,  # True: definitely carries an autograd graph; False: definitely not
        taints: frozenset = _EMPTY,  # ids of forward / accumulation events this value derives from
        const: Any = NOCONST,
        elems: tuple | None = None,  # tuple/list literal elements
        items: tuple | None = None,  # dict literal: ((key constant, value), ...)
        ref: Any = None,  # ClassInfo / FuncInfo / Instance / lambda node
        alias: Any = None,  # ident of the model/optimizer whose live storage this (state dict, tensor) aliases
        label: str = "",  # the name the value was first bound to (e.g. "val_loader"), for eval heuristics
        sensitive: bool | None = None,  # models: holds dropout/batch-norm style layers (None: unknown)
        origin: Any = None,  # node that created it
        wrapper: str | None = None,  # models: "ddp" a DistributedDataParallel wrapper, "inner"/"module" what it wraps
    ) -> None:
        self.kind = kind
        self.ident = ident
        self.probs = probs
        self.graph = graph
        self.taints = taints
        self.const = const
        self.elems = elems
        self.items = items
        self.ref = ref
        self.alias = alias
        self.label = label
        self.sensitive = sensitive
        self.origin = origin
        self.wrapper = wrapper

    def with_(self, **c: Any) -> V:
        g = c.get
        return V(
            g("kind", self.kind),
            g("ident", self.ident),
            g("probs", self.probs),
            g("graph", self.graph),
            g("taints", self.taints),
            g("const", self.const),
            g("elems", self.elems),
            g("items", self.items),
            g("ref", self.ref),
            g("alias", self.alias),
            g("label", self.label),
            g("sensitive", self.sensitive),
            g("origin", self.origin),
            g("wrapper", self.wrapper),
        )

    @property
    def is_const(self) -> bool:
        return self.const is not NOCONST

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}={getattr(self, k)!r}"
            for k in self.__slots__
            if k != "origin" and getattr(self, k) not in (None, "", _EMPTY, NOCONST)
        )
        return f"V({fields})"


TOP = V()


def join(a: V | None, b: V | None) -> V:
    """Merge two paths' values: definite facts survive only where both paths agree."""
    if a is None:
        return b if b is not None else TOP
    if b is None or a is b:
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
        wrapper=a.wrapper if a.wrapper == b.wrapper else None,
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
