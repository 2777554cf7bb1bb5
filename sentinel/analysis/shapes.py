"""Activations and tensor layouts: which activation (softmax, log_softmax, sigmoid) a value or a model's
output is, over which dimension it was taken, and what is known of a tensor's rank and whether its
dimension 0 is the batch. Also the functional-dropout calls inside a module's code.

The layout model is deliberately small and conservative: a batch is known only where the code makes
one (a ``DataLoader`` batch, ``torch.randn(64, 10)``), it survives layers and operations that keep
dimension 0 in place, and anything else (an integer index, ``view(-1)``, ``transpose(0, 1)``, an
unknown call) forgets it. Inside a model's methods the first input of ``forward`` stands for "a batch of
relative rank 0", so a model's class can be summarised once as a transform of its input's layout.
"""

from __future__ import annotations

from typing import Any

import libcst as cst

from sentinel.analysis import torchapi as api
from sentinel.analysis.facts import ActivationEvent, DropoutCallEvent
from sentinel.analysis.objects import Ctx, Instance
from sentinel.analysis.syntax import _dotted
from sentinel.analysis.values import (
    ACT_LOG_SOFTMAX,
    ACT_SOFTMAX,
    LIST,
    MODEL,
    SOFTMAX,
    TENSOR,
    Act,
    V,
)

_SIZE_ARG_FACTORIES = frozenset({"randn", "rand", "zeros", "ones", "empty"})
_SHAPE_ARG_FACTORIES = frozenset({"randint", "full", "normal"})


def apply_shape(transform: tuple | None, shape: tuple | None) -> tuple | None:
    """The layout of a model's output given its input's (``transform`` = the model's shape; a third
    element ``"tuple"`` says the layer returns ``(output, state)`` and this is the output's layout)."""
    if transform is None or shape is None:
        return None
    delta, keeps = transform[0], transform[1]
    rank = shape[0] + delta if shape[0] is not None and delta is not None else None
    batch = bool(keeps and shape[1])
    return (rank, batch) if (rank is not None or batch) else None


def compose(transforms: list[tuple | None]) -> tuple | None:
    delta: int | None = 0
    for t in transforms:
        if t is None or len(t) != 2:
            return None
        delta = delta + t[0] if delta is not None and t[0] is not None else None
        if not t[1]:
            return None
    return (delta, True)


def _const_int(v: V | None) -> int | None:
    if v is not None and v.is_const and isinstance(v.const, int) and not isinstance(v.const, bool):
        return v.const
    return None


class ShapesMixin:
    """Activations, layouts and functional dropout; part of :class:`~sentinel.analysis.interpreter.Interpreter`."""

    # -- activations --------------------------------------------------------------------------------
    def activation(self, kind: str, node, x: V, dim: V | None, ctx: Ctx, grad: str | None = None) -> V:
        """The value of applying activation ``kind`` to ``x`` (``dim``: its dim argument, None if absent;
        ``grad``: the grad mode, "off" under no_grad, where the result carries no graph)."""
        self._where(node)
        known_dim = True
        d: int | None = None
        if dim is not None and not (dim.is_const and dim.const is None):
            d = _const_int(dim)
            known_dim = d is not None
        shape = x.shape
        act = Act(
            kind,
            node,
            d,
            shape[0] if shape is not None else None,
            bool(known_dim and shape is not None and shape[1]),
        )
        if self._outside_forward(ctx):
            self._note_over_batch(act, x, ctx)
        graph = False if grad == "off" else x.graph
        return V(TENSOR, act=act, graph=graph, taints=x.taints, origin=node, shape=shape)

    def activation_layer(self, qual: str, node, args: list[V], kwargs: dict[str, V]) -> V:
        """``nn.Softmax(dim=...)`` and friends: a callable that applies the activation."""
        kind = api.ACTIVATION_CLASSES[qual]
        dim = args[0] if args else kwargs.get("dim")
        known = dim is None or (dim.is_const and dim.const is None) or _const_int(dim) is not None
        self._where(node)
        act = Act(kind, node, _const_int(dim) if dim is not None else None, 0, known, layer=node)
        return V(SOFTMAX, origin=node, act=act, shape=(0, True))

    def apply_activation_layer(self, layer: V, node, x: V, ctx: Ctx) -> V:
        """``self.softmax(h)``: the activation is applied at this call (its layer is the constructor)."""
        act = layer.act
        if act is None:
            return V(TENSOR, graph=x.graph, taints=x.taints)
        applied = act.shifted(x.shape, self._where(node))
        if self._outside_forward(ctx):
            self._note_over_batch(applied, x, ctx)
        return V(TENSOR, act=applied, graph=x.graph, taints=x.taints, origin=node, shape=x.shape)

    def model_output_act(self, act: Act | None, x: V, node, ctx: Ctx) -> Act | None:
        """The activation a model's output carries, seen from the caller (its input was ``x``)."""
        if act is None:
            return None
        applied = act.shifted(x.shape)
        if self._outside_forward(ctx):
            self._note_over_batch(applied, x, ctx, model_output=True)
        return applied

    @staticmethod
    def _outside_forward(ctx: Ctx) -> bool:
        """Are layouts here the caller's own: code outside a model, or a model's other method run on the
        caller's data (``def predict_proba(self, x): return torch.softmax(self(x), dim=0)``)? A forward
        (and what it calls) is judged from its summary, where ranks count from its input."""
        c: Ctx | None = ctx
        while c is not None and c.model_method:
            if c.summary or c.name == "forward" or c.func is None or c.func.cls is None or not c.func.cls.is_module:
                return False
            c = c.parent
        return True

    def _note_over_batch(self, act: Act, x: V, ctx: Ctx, model_output: bool = False) -> None:
        """Record a softmax/log_softmax that normalizes over the batch of a model's batched output."""
        if act.kind not in (ACT_SOFTMAX, ACT_LOG_SOFTMAX) or not act.over_batch:
            return
        if not model_output and not self._is_model_output(x) and not (ctx.model_method and _self_forward(x.origin)):
            return
        self.facts.activations.append(self._ev(ActivationEvent, act.node, ctx, act=act))

    def _is_model_output(self, x: V) -> bool:
        if not x.taints:
            return False
        ids = {ev.id for ev in self.facts.forwards}
        return bool(x.taints & ids)

    # -- layouts ------------------------------------------------------------------------------------
    def factory_shape(self, name: str, args: list[V], kwargs: dict[str, V], ctx: Ctx) -> tuple | None:
        """``torch.randn(64, 10)``: rank 2, and dimension 0 is a batch (more than one row, rank >= 2)."""
        if ctx.model_method:
            return None
        sizes: list[V] | None = None
        if name in _SIZE_ARG_FACTORIES:
            if len(args) == 1 and args[0].elems is not None:
                sizes = list(args[0].elems)
            elif args and all(_const_int(a) is not None for a in args):
                sizes = list(args)
            elif "size" in kwargs and kwargs["size"].elems is not None:
                sizes = list(kwargs["size"].elems)
        elif name == "randint":
            shape = kwargs.get("size") or (args[-1] if args and args[-1].elems is not None else None)
            sizes = list(shape.elems) if shape is not None and shape.elems is not None else None
        elif name in ("arange", "linspace") and args:
            return (1, False)  # one row of values: rank 1, no batch
        if not sizes or not all(_const_int(s) is not None for s in sizes):
            return None
        rank = len(sizes)
        first = _const_int(sizes[0]) or 0
        return (rank, rank >= 2 and first > 1)

    def layer_shape(self, qual: str, kwargs: dict[str, V]) -> tuple | None:
        """How a torch layer (or zoo model) maps its input's layout."""
        name = api.last(qual)
        if not qual.startswith("torch.nn."):
            return (None, True) if api.is_module_class(qual) else None
        if name in api.RANK_KEEPING_LAYERS:
            return (0, True)
        if name == "Flatten":
            start = _const_int(kwargs.get("start_dim")) if "start_dim" in kwargs else 1
            return (None, True) if start is not None and start >= 1 else None
        if name == "Embedding":
            return (1, True)
        if name in ("RNN", "LSTM", "GRU"):
            # `(output, hidden)`: output keeps the input's layout index for index (batch_first or not)
            return (0, True, "tuple")
        return None

    def sequential_shape(self, layers: list[V]) -> tuple | None:
        return compose([self._layer_transform(m) for m in layers])

    def _layer_transform(self, m: V) -> tuple | None:
        """How one layer of a Sequential maps its input's layout: a torch layer's own, a project block's
        from its ``forward``; ``*[Block() for _ in range(n)]`` repeats one that keeps the layout."""
        if m.kind == SOFTMAX:
            return m.shape
        if m.kind == MODEL:
            if m.shape is None and isinstance(m.ref, Instance) and m.ref.cls.is_module:
                summary = self.class_forward(m.ref)
                return summary.shape if summary is not None else None
            return m.shape
        element = getattr(m.ref, "value", None) if m.kind == LIST else None
        if isinstance(element, V) and element.kind == MODEL:
            each = self._layer_transform(element)
            return each if each == (0, True) else None
        return None

    def tensor_method_shape(self, recv: V, meth: str, args: list[V], kwargs: dict[str, V], node) -> tuple | None:
        """The layout after ``recv.meth(...)``: kept only where dimension 0 provably stays the batch."""
        shape = recv.shape
        if shape is None:
            return None
        rank, batch = shape
        if meth in api.ELEMENTWISE:
            return shape
        if meth == "repeat" and rank is not None:
            # `row.repeat(48, 1)`: one size per dimension, leading ones added; dim 0 repeated > 1 times is a batch
            sizes = list(args[0].elems) if len(args) == 1 and args[0].elems is not None else args
            counts = [_const_int(a) for a in sizes]
            if len(counts) >= rank and all(c is not None for c in counts):
                return (len(counts), len(counts) >= 2 and (counts[0] > 1 or (len(counts) == rank and batch)))
            return None
        if not batch:
            return None
        if meth in ("view", "reshape"):
            return self._view_shape(args, node)
        if meth == "flatten":
            start = _const_int(args[0]) if args else _const_int(kwargs.get("start_dim"))
            return (None, True) if start is not None and start >= 1 else None
        if meth == "permute":
            dims = list(args[0].elems) if len(args) == 1 and args[0].elems is not None else args
            return (len(dims), True) if dims and _const_int(dims[0]) == 0 else None
        if meth in ("transpose", "swapaxes"):
            a, b = (_const_int(args[0]), _const_int(args[1])) if len(args) == 2 else (None, None)
            if a is None or b is None or rank is None and (a < 0 or b < 0):
                return None
            if rank:  # only negative dims need the rank (a forward's summary counts it from its input)
                a, b = a % rank if a < 0 else a, b % rank if b < 0 else b
            return shape if 0 not in (a, b) else None
        if meth in ("unsqueeze", "squeeze"):
            d = _const_int(args[0]) if args else _const_int(kwargs.get("dim"))
            if d is None or d == 0 or d < 0 and not (meth == "unsqueeze" or _past_batch(rank)):
                return None
            return (rank + (1 if meth == "unsqueeze" else -1) if rank is not None else None, True)
        if meth in ("sum", "mean", "amax", "amin", "logsumexp", "norm", "std", "var", "prod"):
            d = _const_int(args[0]) if args else _const_int(kwargs.get("dim"))
            if d is None or d == 0 or d < 0 and not _past_batch(rank):
                return None
            keep = kwargs.get("keepdim")
            keepdim = bool(keep is not None and keep.is_const and keep.const)
            return (rank if keepdim or rank is None else rank - 1, True) if rank is not None else (None, True)
        return None

    def _view_shape(self, args: list[V], node) -> tuple | None:
        """``x.view(x.size(0), -1)`` / ``x.view(-1, 320)`` keep the batch; ``x.view(-1)`` does not."""
        if len(args) < 2 or not isinstance(node, cst.Call) or len(node.args) != len(args):
            return None
        first = node.args[0].value
        text = _dotted(first.func) if isinstance(first, cst.Call) else None
        batch_first = (
            (text is not None and text.endswith((".size", ".shape")) and len(first.args) == 1)
            or (isinstance(first, cst.Subscript) and (_dotted(first.value) or "").endswith(".shape"))
            or (_const_int(args[0]) == -1 and all(_const_int(a) not in (None, -1) for a in args[1:]))
        )
        if isinstance(first, cst.Call) and text is not None and text.endswith(".size"):
            idx = first.args[0].value if first.args else None
            batch_first = batch_first and isinstance(idx, cst.Integer) and idx.value == "0"
        if isinstance(first, cst.Subscript):
            sl = first.slice[0].slice if len(first.slice) == 1 else None
            batch_first = batch_first and isinstance(sl, cst.Index) and isinstance(sl.value, cst.Integer)
            batch_first = batch_first and sl.value.value == "0"  # type: ignore[union-attr]
        return (len(args), True) if batch_first else None

    def subscript_shape(self, base: V, node: cst.Subscript, index: V) -> tuple | None:
        """``out[:, -1]`` keeps the batch (rank unknown); ``batch["x"]`` of a loader batch is a batch."""
        shape = base.shape
        if shape is not None and not shape[1] and base.kind == TENSOR:
            # `stream[s : s + seq]`: a slice of an unbatched tensor keeps its rank
            return shape if all(isinstance(e.slice, cst.Slice) for e in node.slice) else None
        if shape is None or not shape[1]:
            return None
        if base.kind != TENSOR:
            # an element of a loader batch: `batch["input_ids"]`; `batch[0]` may be the first sample
            return shape if index.is_const and isinstance(index.const, str) else None
        parts = [e.slice for e in node.slice]
        if not isinstance(parts[0], cst.Slice):
            return None  # an index (or a mask, an index tensor) on dimension 0
        rank = shape[0]
        for part in parts[1:]:
            if isinstance(part, cst.Slice):
                continue
            if isinstance(part, cst.Index) and isinstance(part.value, (cst.Integer, cst.UnaryOperation)):
                rank = rank - 1 if rank is not None else None  # `out[:, -1]` drops a dimension
                continue
            rank = None  # `...`, `None`, a tensor index: the rank is unknown
        return (rank, True)

    # -- functional dropout -------------------------------------------------------------------------
    def note_dropout(self, qual: str, node, ctx: Ctx) -> None:
        """Record ``F.dropout(...)``-style calls in a module's methods, with how ``training`` is given."""
        name = api.last(qual)
        if not qual.startswith("torch.nn.functional.") or not isinstance(node, cst.Call):
            return
        if name not in api.FUNCTIONAL_DROPOUT and name not in api.FUNCTIONAL_ALPHA_DROPOUT:
            return
        func = ctx.func
        if func is None or func.cls is None or not func.cls.is_module:
            return
        positional = [a for a in node.args if a.keyword is None and not a.star]
        keyword = next((a for a in node.args if a.keyword is not None and a.keyword.value == "training"), None)
        if any(a.star for a in node.args):
            training = "other"
        elif keyword is not None:
            training = self._training_text(keyword.value)
        elif len(positional) >= 3:
            training = self._training_text(positional[2].value)
        else:
            training = "missing"
        in_forward = False
        c: Ctx | None = ctx
        while c is not None:
            if training == "missing" and c.func is not None and self._mentions_training(c.func.node):
                training = "guarded"  # `if self.training: x = F.dropout(x, p)`, an early return in eval
            if c.name == "forward" and c.func is not None and c.func.cls is not None and c.func.cls.is_module:
                in_forward = True
                break
            c = c.parent
        if training == "missing" and any("training" in key for key in self.cond_stack):
            training = "guarded"
        self.facts.dropouts.append(
            self._ev(
                DropoutCallEvent,
                node,
                ctx,
                function=name,
                training=training,
                in_forward=in_forward,
                owner=func.cls.name,
            )
        )

    def _mentions_training(self, func: cst.FunctionDef) -> bool:
        """Does the function read the module's mode (``self.training``) anywhere?"""
        cache = self.__dict__.setdefault("_reads_training_cache", {})
        if func not in cache:
            cache[func] = ".training" in cst.Module([]).code_for_node(func.body)
        return cache[func]

    @staticmethod
    def _training_text(expr: cst.BaseExpression) -> str:
        if isinstance(expr, cst.Name) and expr.value in ("True", "False"):
            return expr.value.lower()
        return "other"


def _past_batch(rank: int | None) -> bool:
    """Is the last dimension of a batched tensor of this rank surely not the batch (dimension 0)?

    Ranks inside a forward's summary count from its input (0: as many dimensions as the input), and a
    batched input has a dimension past the batch; an absolute rank 1 is the batch alone."""
    return rank is None or rank <= 0 or rank >= 2


def _self_forward(node: Any) -> bool:
    """Is ``node`` a model's call of itself (``self(x)``, ``self.forward(x)``) in one of its methods?"""
    if not isinstance(node, cst.Call):
        return False
    func = node.func
    if isinstance(func, cst.Name):
        return func.value == "self"
    return isinstance(func, cst.Attribute) and _dotted(func) == "self.forward"
