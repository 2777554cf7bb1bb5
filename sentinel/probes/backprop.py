"""Backward localization (SEN105 stage ``backward``): which autograd node first emits a NaN/Inf.

Two ways, both used by :func:`sentinel.probes.nonfinite.checked_step`: re-run only the nodes one
module call created (:func:`run_module_backward`), or backpropagate the kept graph once more with
node hooks added on demand (:class:`BackwardWatch`), stopping at the first bad node
(:class:`BackwardOrigin`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sentinel.probes.screen import _checkable, _nonfinite_kind, _screen

__all__ = ["ACCUMULATE_GRAD", "BackwardOrigin", "BackwardWatch", "run_module_backward"]


class BackwardOrigin(Exception):
    """Raised from an autograd node hook to stop the replayed backward at the first bad node."""

    def __init__(self, node: Any, index: int, grad: torch.Tensor, kind: str | None = None) -> None:
        super().__init__(node.name())
        self.node, self.index, self.grad = node, index, grad
        self.kind = kind  # "NaN" or "Inf" when known


# Backward nodes that only move, select or sum gradients: they cannot turn finite values into
# NaN/Inf, so they need no hook (a non-finite gradient they pass on was emitted, and caught, earlier).
_PASS_THROUGH = frozenset(
    {
        "TBackward0",
        "ViewBackward0",
        "UnsafeViewBackward0",
        "ReshapeAliasBackward0",
        "ExpandBackward0",
        "PermuteBackward0",
        "TransposeBackward0",
        "SliceBackward0",
        "SelectBackward0",
        "CloneBackward0",
        "CatBackward0",
        "SplitBackward0",
        "SplitWithSizesBackward0",
        "UnbindBackward0",
        "StackBackward0",
        "SqueezeBackward0",
        "SqueezeBackward1",
        "UnsqueezeBackward0",
        "AsStridedBackward0",
        "NegBackward0",
        "AliasBackward0",
        "IndexBackward0",
        "ToCopyBackward0",
        "AddBackward0",
        "SubBackward0",
    }
)


ACCUMULATE_GRAD = "torch::autograd::AccumulateGrad"


class BackwardWatch:
    """Hooks autograd nodes on demand: a node gets its hook just before it can run, when a hooked
    node above it has run (nodes only run after every node feeding them a gradient), so a backward
    abandoned early hooks only the few nodes it reached instead of walking the whole graph.
    Pass-through nodes (see ``_PASS_THROUGH``) and ``AccumulateGrad`` get no hook: their inputs are
    looked through at once. The hook checks the node's outgoing gradients and raises
    :class:`BackwardOrigin` at the first non-finite one."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.nodes: list[Any] = []  # keeps the Python node objects (and so their ids) alive
        self.handles: list[Any] = []

    def add(self, *roots: Any) -> None:
        seen, nodes = self.seen, self.nodes
        stack = list(roots)
        while stack:
            n = stack.pop()
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            nodes.append(n)
            name = n.name()
            if name == ACCUMULATE_GRAD:
                continue
            if name in _PASS_THROUGH:
                stack.extend(nxt for nxt, _ in n.next_functions if nxt is not None)
                continue
            self.handles.append(n.register_hook(self._hook(n)))

    def _hook(self, node: Any) -> Any:
        add = self.add

        def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            bad = _first_bad(grad_inputs)
            if bad is not None:
                raise BackwardOrigin(node, *bad)
            add(*(nxt for nxt, _ in node.next_functions))

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.nodes.clear()
        self.seen.clear()


def _first_bad(outs: Any) -> tuple[int, torch.Tensor, str] | None:
    """The first gradient in a node's outputs holding a NaN/Inf, exactly: (index, gradient, kind)."""
    if type(outs) is not tuple:
        outs = (outs,)
    if len(outs) == 1:  # the common case: one output, checked without building lists
        g = outs[0]
        if g is None or not _checkable(g):
            return None
        if g.is_cpu and not g.is_sparse:
            s = g.sum() if g.dtype is torch.float32 else g.float().sum()
            if math.isfinite(s.item()):
                return None
            kind = _nonfinite_kind(g)
            return None if kind is None else (0, g, kind)
    present = [(i, g) for i, g in enumerate(outs) if g is not None and _checkable(g)]
    if present:
        for (i, g), ok in zip(present, _screen([g for _, g in present]), strict=True):
            if not ok:
                kind = _nonfinite_kind(g)
                if kind is not None:
                    return i, g, kind
    return None


def run_module_backward(roots: list[tuple[Any, int, torch.Tensor]], lo: int, hi: int) -> BackwardOrigin | None:
    """Backpropagate once more through the part of the kept graph made by one module call (autograd
    nodes numbered ``lo..hi``), starting from ``roots`` ``(node, input slot, gradient)``, by calling
    the nodes themselves in the engine's order (highest sequence number first). Returns the first
    node emitting a NaN/Inf, or None. Raises when a node cannot be called again (freed buffers)."""
    buffers: dict[int, tuple[Any, list[Any]]] = {}

    def feed(node: Any, slot: int, grad: torch.Tensor) -> None:
        entry = buffers.get(id(node))
        if entry is None:
            metadata = getattr(node, "_input_metadata", None)
            size = len(metadata) if metadata is not None else slot + 1
            entry = buffers[id(node)] = (node, [None] * max(size, slot + 1))
        slots = entry[1]
        slots[slot] = grad if slots[slot] is None else slots[slot] + grad

    for node, slot, grad in roots:
        feed(node, slot, grad)
    enabled = torch.is_grad_enabled()
    torch._C._set_grad_enabled(False)
    try:
        while buffers:
            if len(buffers) == 1:
                key = next(iter(buffers))
            else:
                key = max(buffers, key=lambda k: buffers[k][0]._sequence_nr())
            node, slots = buffers.pop(key)
            out = node(*slots)
            bad = _first_bad(out)
            if bad is not None:
                return BackwardOrigin(node, *bad)
            outs = out if isinstance(out, tuple) else (out,)
            for (nxt, slot), g in zip(node.next_functions, outs, strict=False):
                if nxt is None or g is None or nxt.name() == ACCUMULATE_GRAD:
                    continue
                if lo <= nxt._sequence_nr() <= hi:
                    feed(nxt, slot, g)
    finally:
        torch._C._set_grad_enabled(enabled)
    return None
