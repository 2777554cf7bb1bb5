"""Abstract values of the training-code interpreter.

A :class:`V` describes what a Python value is known to be at one program point: a model, an optimizer,
a loss function, a tensor that carries an autograd graph or holds softmax probabilities, a state dict
that aliases a model's live storage, a constant (for partial evaluation of ``phase == "train"``), ...
Values are immutable; ``join`` merges the values two control-flow paths give a name.

Properties that trigger findings are *definite* (``act``, ``graph is True``): a join keeps them only
when both paths agree, so an uncertain value never produces a finding.

``act`` is the output activation a value carries (:class:`Act`: softmax, log_softmax or sigmoid, where it
was applied and over which dimension); for a model it is the activation its ``forward`` or
``nn.Sequential`` ends in. ``shape`` is what is known of a tensor's layout: ``(rank, batch)`` with
``batch`` true when dimension 0 is the batch of a batched input (a DataLoader batch, ``torch.randn(64,
10)``); for a model it is how the model maps shapes, ``(rank change, keeps the batch at dimension 0)``.
Inside a model's own methods ranks are relative to the model's first input.
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
#: ``ref`` of a leaf tensor that requires grad (``torch.randn(..., requires_grad=True)``, ``nn.Parameter``): the
#: weights of a model written as a plain function
TRAINABLE = "trainable"
STATE_DICT = "state_dict"
PARAMS = "params"
CLASS = "class"
FUNC = "func"
INSTANCE = "instance"
GRAD_CTX = "grad_ctx"  # const: "on" | "off" | None (unknown)
SOFTMAX = "softmax"  # a callable applying an activation layer (nn.Softmax/LogSoftmax/Sigmoid instance; see act)
LIST = "list"
DICT = "dict"
TUPLE = "tuple"
QUAL = "qual"  # a (possibly dotted) imported name, const = qualified name
CONST = "const"
LOADER = "loader"
MODULE = "module"  # a project module the analysis can read (ref: imports.Unit)


_EMPTY: frozenset = frozenset()

# activation kinds
ACT_SOFTMAX = "softmax"
ACT_LOG_SOFTMAX = "log_softmax"
ACT_SIGMOID = "sigmoid"


class Act:
    """An activation applied to produce a value: its kind, the node applying it (a call or an
    ``nn.Softmax``-style layer), the ``dim`` it was given (None: implicit), and the rank and batch flag of
    its input (rank relative to the model's input when it was applied inside a model)."""

    __slots__ = ("kind", "node", "dim", "rank", "batch", "layer")

    def __init__(
        self,
        kind: str,
        node: Any,
        dim: int | None = None,
        rank: int | None = None,
        batch: bool = False,
        layer: Any = None,  # the `nn.Softmax(...)`-style constructor, when a layer applied it
    ) -> None:
        self.kind = kind
        self.node = node
        self.dim = dim
        self.rank = rank
        self.batch = batch
        self.layer = layer

    def shifted(self, shape: tuple | None, node: Any = None) -> Act:
        """The activation as seen from the caller of a model whose input had ``shape`` (applied at ``node``)."""
        rank = self.rank + shape[0] if shape is not None and shape[0] is not None and self.rank is not None else None
        batch = bool(self.batch and shape is not None and shape[1])
        return Act(self.kind, self.node if node is None else node, self.dim, rank, batch, self.layer)

    def resolved_dim(self) -> int | None:
        """The dimension PyTorch normalizes over (implicit ``dim``: 0 for 0-, 1- and 3-D inputs, else 1)."""
        if self.dim is None:
            if self.rank is None:
                return None
            return 0 if self.rank in (0, 1, 3) else 1
        if self.dim >= 0:
            return self.dim
        return self.dim % self.rank if self.rank else None

    @property
    def over_batch(self) -> bool:
        return self.batch and self.resolved_dim() == 0

    def __repr__(self) -> str:
        return f"Act({self.kind}, dim={self.dim}, rank={self.rank}, batch={self.batch})"


def join_act(a: Act | None, b: Act | None) -> Act | None:
    if a is None or b is None or a.kind != b.kind:
        return None
    if a is b or (a.node is b.node and a.dim == b.dim and a.rank == b.rank and a.batch == b.batch):
        return a
    return Act(a.kind, a.node, a.dim if a.dim == b.dim else None, None, False, a.layer if a.layer is b.layer else None)


class V:
    """An abstract value. Treat as immutable: derive new ones with :meth:`with_`.

    A plain ``__slots__`` class rather than a frozen dataclass: the interpreter creates hundreds of
    thousands of these, and frozen dataclasses pay ``object.__setattr__`` per field.
    """

    __slots__ = (
        "kind",
        "ident",
        "act",
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
        "shape",
        "wrapper",
        "tail",
    )

    def __init__(
        self,
        kind: str = UNKNOWN,
        ident: Any = None,  # object identity: models, optimizers, instances, lists
        act: Act | None = None,  # the activation it is the output of (model: its forward ends in one)
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
        shape: tuple | None = None,  # tensor: (rank, batch at dim 0); model: (rank change, keeps batch)
        wrapper: str | None = None,  # models: "ddp" a DistributedDataParallel wrapper, "inner"/"module" what it wraps
        tail: V | None = None,  # lists: the last element, known even when the earlier ones are not
    ) -> None:
        self.kind = kind
        self.ident = ident
        self.act = act
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
        self.shape = shape
        self.wrapper = wrapper
        self.tail = tail

    def with_(self, **c: Any) -> V:
        g = c.get
        return V(
            g("kind", self.kind),
            g("ident", self.ident),
            g("act", self.act),
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
            g("shape", self.shape),
            g("wrapper", self.wrapper),
            g("tail", self.tail),
        )

    @property
    def probs(self) -> Any:
        """The node of the softmax whose probabilities this value holds (None: not softmax output)."""
        act = self.act
        return act.node if act is not None and act.kind == ACT_SOFTMAX else None

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
    for one, other in ((a, b), (b, a)):
        if one.label == "sampler" and one.ident is not None and (other.label != "sampler" or other.ident is None):
            # `DistributedSampler(ds) if distributed else RandomSampler(ds)`: on the distributed path the
            # loader shuffles with that sampler, whose epoch must be set
            return one.with_(taints=taints)
    if a.kind != b.kind:
        # a constant None/0 initialiser joined with a real value: keep the real one's identity facts
        if a.kind == CONST and a.const in (None, 0, 0.0):
            return b.with_(taints=taints)
        if b.kind == CONST and b.const in (None, 0, 0.0):
            return a.with_(taints=taints)
        return V(
            taints=taints, label=a.label or b.label, graph=a.graph if a.graph is False and b.graph is False else None
        )
    if a.kind in (QUAL, GRAD_CTX) and a.const != b.const and a.kind == QUAL:
        return V(taints=taints, label=a.label or b.label)
    ident = a.ident if a.ident is b.ident else None
    if ident is None and a.kind in (MODEL, OPTIMIZER) and a.ident is not None and b.ident is not None:
        ident = Alt(_members(a.ident) | _members(b.ident))  # either object, depending on the path
    return V(
        kind=a.kind,
        ident=ident,
        act=join_act(a.act, b.act),
        graph=a.graph if a.graph == b.graph else None,
        taints=taints,
        const=a.const if (a.is_const and b.is_const and a.const == b.const) else NOCONST,
        elems=_join_elems(a, b),
        items=a.items if a.items == b.items else None,
        ref=a.ref if a.ref is b.ref else None,
        alias=a.alias if a.alias is b.alias or isinstance(a.alias, frozenset) and a.alias == b.alias else None,
        label=a.label or b.label,
        sensitive=a.sensitive if a.sensitive == b.sensitive else None,
        origin=a.origin,
        shape=a.shape if a.shape == b.shape else None,
        wrapper=a.wrapper if a.wrapper == b.wrapper else None,
        tail=_join_tail(a.tail, b.tail),
    )


def _join_elems(a: V, b: V) -> tuple | None:
    """Tuples of one length join element by element (`return x, y` on two paths, `yield x, y` on every
    pass); lists, which are mutated and iterated, do not."""
    if a.kind != TUPLE or a.elems is None or b.elems is None or len(a.elems) != len(b.elems):
        return None
    return tuple(join(x, y) for x, y in zip(a.elems, b.elems))


def _join_tail(a: V | None, b: V | None) -> V | None:
    if a is b:
        return a
    return join(a, b) if a is not None and b is not None else None


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


def is_param(v: V) -> bool:
    """Is ``v`` one parameter of ``model.parameters()`` (what iterating them binds)?"""
    return isinstance(v.ref, tuple) and len(v.ref) == 2 and v.ref[0] == PARAMS


def param_models(v: V) -> frozenset | None:
    """The models the parameter ``v`` belongs to (None: not a parameter, or owners unknown)."""
    return v.ref[1] if is_param(v) else None


def graph_of(*values: V) -> bool | None:
    """Graph flag of an arithmetic result: True if any operand definitely has one."""
    result: bool | None = False
    for v in values:
        if v.graph is True:
            return True
        if v.graph is None and v.kind in (TENSOR, UNKNOWN):
            result = None
    return result
