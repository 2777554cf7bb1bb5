"""The gradients that reach module boundaries in a step's own backward (SEN105 stage ``backward``).

:func:`sentinel.probes.nonfinite.checked_step` records every module call's input and output values
(its ``_Tracer``). :class:`BoundaryGrads` hooks the autograd node that made each recorded value that
requires grad, and sees the gradient that reaches the value just before that node runs. From that,
:func:`module_origin` names the module call where the gradient turned non-finite: its outputs
received a finite gradient, its inputs (or its parameters) a non-finite one. Only that call's part
of the kept graph is then run again, node by node (:func:`sentinel.probes.backprop.run_module_backward`),
to name the op.

Two ways to hold the gradients:

- **CPU** (checking a value costs no host-device synchronisation): each gradient is checked as it
  arrives (one sum). The first non-finite one stops the backward at once (the rest of the graph is
  never run: a failing step costs less than a plain one when the origin is near the loss; when
  little is left below it, it is dropped instead, see ``DROP_NODES``), and a
  gradient is only kept while a module call it leaves could still be the origin: once every input
  of a call received a finite gradient, that call is cleared and the gradients of its outputs are
  dropped. Keeping every boundary gradient alive instead makes each later one a fresh allocation
  (page faults): on a small ResNet it costs a third of the whole backward.
- **Other devices**: every gradient is kept by reference and screened after the backward (one
  fused reduction, one synchronisation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any, Protocol

import torch

from sentinel.probes.backprop import BackwardOrigin, run_module_backward
from sentinel.probes.screen import _checkable, _exactly_finite, _screen, _sum_of

__all__ = ["BoundaryGrads", "StopBackward", "module_origin"]

Key = tuple[int, int]  # (id, version) of a recorded value


class StopBackward(BaseException):
    """Raised from a gradient hook to abandon the step's backward at its first non-finite boundary
    gradient. A ``BaseException``, so that code wrapping the user's ``backward()`` (``except
    Exception``) lets it through."""


class _Call(Protocol):
    module: torch.nn.Module
    start: int
    end: int
    inputs: list[Key]
    outputs: list[Key]
    begun: float  # perf_counter() when the call started
    done: float  # perf_counter() when the call returned


# On CPU, the backward is abandoned at the first non-finite boundary gradient: an exception through
# the autograd engine, whose unwinding costs tens of microseconds. When what is left of the backward
# is cheaper than that (at most DROP_NODES autograd nodes made before the value, by a forward that
# had run for less than DROP_SECONDS when the value was made), the gradient is dropped instead:
# replaced by None, so the nodes below it compute nothing.
DROP_NODES = 4
DROP_SECONDS = 100e-6


def _sum_finite(g: torch.Tensor) -> bool:
    """For a CPU tensor: a sum is non-finite whenever an element is (and, rarely, when large finite
    values overflow: the caller tells that apart afterwards, see ``BoundaryGrads.overflowed``)."""
    if g.dtype is torch.float32 and not g.is_sparse:
        return math.isfinite(g.sum().item())
    return not _checkable(g) or math.isfinite(_sum_of(g.detach()).item())


def _top_outputs(calls: Sequence[_Call]) -> set[Key]:
    """The outputs of the calls that no other call encloses (the model's own output): the gradient
    that reaches them comes straight from the loss. They are not hooked; an origin at the top of the
    model (or in the loss) is found by backpropagating the kept graph again from the loss, which
    reaches it within a few nodes."""
    top: set[Key] = set()
    start = end = None
    for c in reversed(calls):  # completion order: an enclosing call completes after the calls it encloses
        if start is not None and start <= c.start and c.end <= end:
            continue
        start, end = c.start, c.end
        top.update(c.outputs)
    return top


class BoundaryGrads:
    """What reached the recorded values in the backward (see the module docstring)."""

    def __init__(self) -> None:
        # recorded values that require grad, with the sequence number of the node that made them
        self.pending: list[tuple[Key, torch.Tensor, int]] = []
        self.grads: dict[Key, torch.Tensor] = {}
        self.arrival: dict[Key, int] = {}
        self.flags: dict[Key, bool] | None = None  # CPU: finite as it arrived
        self.bad: Key | None = None  # CPU: the first value whose gradient was non-finite
        self.bad_grad: torch.Tensor | None = None
        self.stopped = False  # CPU: a non-finite gradient arrived (the backward stopped, or it was dropped)
        self.start = 0.0  # perf_counter() when the forward started
        self.handles: list[Any] = []
        self._open: dict[Key, int] = {}  # output value -> calls producing it not cleared yet
        self._waiting: list[int] = []  # per call: inputs whose gradient has not arrived yet
        self._consumers: dict[Key, list[int]] = {}
        self._seq: dict[Key, int] = {}
        self._blocked: set[int] = set()  # calls with an input overwritten in place, not passed yet
        self._thresholds: list[tuple[int, int]] = []  # (sequence number, call) of those, highest first
        self._calls: Sequence[_Call] = ()

    def hook(self, calls: Sequence[_Call]) -> bool:
        """Hook the recorded values, once the forward is over and its loss is finite (a step that
        fails in the forward never pays for it). A value overwritten in place since it was recorded
        is left out: its tensor now stands for another node. False when nothing was hooked.

        One pre-hook per autograd node that made recorded values (what ``Tensor.register_hook``
        does for a non-leaf, without its Python bookkeeping per tensor); leaves get a tensor hook."""
        top = _top_outputs(calls)
        live: list[tuple[Key, torch.Tensor]] = []
        stale: dict[Key, int] = {}
        seqs: dict[Key, int] = {}
        eager = True
        for key, t, seq in self.pending:
            seqs[key] = seq
            if t._version != key[1]:
                stale[key] = seq
            elif key not in top:
                live.append((key, t))
                if eager and not t.is_cpu:
                    eager = False
        self.pending.clear()
        if not live:
            return False
        if eager:
            self._seq = seqs
            self._track(calls, {key for key, _ in live}, stale)
        got = self._got_now if eager else self._got
        by_node: dict[int, tuple[Any, list[tuple[int, Key]]]] = {}
        handles = self.handles
        for key, t in live:
            node = t.grad_fn
            if node is None or not hasattr(node, "register_prehook"):
                try:
                    handles.append(t.register_hook(partial(self._tensor_hook, got, key)))
                except RuntimeError:  # a tensor type that takes no hooks: its module is not a candidate
                    pass
                continue
            entry = by_node.get(id(node))
            if entry is None:
                entry = by_node[id(node)] = (node, [])
            entry[1].append((t.output_nr, key))
        one = self._one_now if eager else self._one
        for node, outputs in by_node.values():
            if len(outputs) == 1:
                fn = partial(one, *outputs[0])
            else:
                fn = partial(self._got_many, got, outputs)
            try:
                handles.append(node.register_prehook(fn))
            except RuntimeError:  # pragma: no cover - a node that takes no hooks
                pass
        return True

    def _track(self, calls: Sequence[_Call], hooked: set[Key], stale: dict[Key, int]) -> None:
        """CPU: check gradients as they arrive and drop those no candidate needs.

        A call is cleared once every input got a finite gradient. An input overwritten in place since
        (the input of an ``inplace=True`` ReLU) cannot be hooked; the engine runs the nodes of a CPU
        backward in decreasing sequence number, so its gradient has been passed on once a value made
        by an earlier node (a lower number than the node that made the input) receives its own."""
        self.flags = {}
        self._calls = calls
        consumers, opened = self._consumers, self._open
        waiting = []
        blocked: list[tuple[int, int]] = []
        for i, c in enumerate(calls):
            ins, outs = c.inputs, c.outputs
            made = None
            if len(ins) == 1:  # the usual call: no set, no list
                k = ins[0]
                if k in hooked:
                    waiting.append(1)
                    consumers.setdefault(k, []).append(i)
                else:
                    waiting.append(0)
                made = stale.get(k)
            else:
                uniq = hooked.intersection(ins)
                waiting.append(len(uniq))
                for k in uniq:
                    consumers.setdefault(k, []).append(i)
                for k in ins:
                    s = stale.get(k)
                    if s is not None and (made is None or s < made):
                        made = s
            if made is not None:
                blocked.append((made if made >= 0 else -1, i))
            for k in outs if len(outs) == 1 else set(outs):
                opened[k] = opened.get(k, 0) + 1
        self._waiting = waiting
        self._blocked = {i for _, i in blocked}
        self._thresholds = sorted(blocked, reverse=True)

    @staticmethod
    def _tensor_hook(got: Any, key: Key, grad: torch.Tensor) -> None:
        got(key, grad)  # a leaf: nothing is below it, a gradient to drop goes on to its .grad

    def _one(self, nr: int, key: Key, grad_outputs: tuple[Any, ...]) -> None:
        g = grad_outputs[nr] if nr < len(grad_outputs) else None
        if g is not None:
            self._got(key, g)

    def _one_now(self, nr: int, key: Key, grad_outputs: tuple[Any, ...]) -> tuple[Any, ...] | None:
        g = grad_outputs[nr] if nr < len(grad_outputs) else None
        if g is not None and self._got_now(key, g):
            return grad_outputs[:nr] + (None,) + grad_outputs[nr + 1 :]
        return None

    @staticmethod
    def _got_many(got: Any, outputs: list[tuple[int, Key]], grad_outputs: tuple[Any, ...]) -> tuple[Any, ...] | None:
        dropped = None
        for nr, key in outputs:
            g = grad_outputs[nr] if nr < len(grad_outputs) else None
            if g is not None and got(key, g):
                if dropped is None:
                    dropped = list(grad_outputs)
                dropped[nr] = None
        return None if dropped is None else tuple(dropped)

    def _got(self, key: Key, grad: torch.Tensor) -> bool:
        """Keep everything, screen after the backward."""
        if key not in self.grads:
            self.arrival[key] = len(self.arrival)
        self.grads[key] = grad
        return False

    def _got_now(self, key: Key, grad: torch.Tensor) -> bool:
        """CPU: check the gradient now, keep it only while it may be needed, stop at a bad one
        (raise :class:`StopBackward`, or answer True: drop it, see ``DROP_BELOW``)."""
        flags = self.flags
        if flags is None:  # a second run (see overflowed)
            return self._got(key, grad)
        if key in flags:
            return False
        self.arrival[key] = len(self.arrival)
        if grad.dtype is torch.float32 and not grad.is_sparse:
            ok = math.isfinite(grad.sum().item())
        else:
            ok = _sum_finite(grad)
        flags[key] = ok
        opened = self._open
        if key in opened:
            self.grads[key] = grad
        if not ok:
            if self.stopped:  # another one, after a dropped one
                return True
            self.bad = key
            self.bad_grad = grad
            self.stopped = True
            if self._cheap_below(key):
                return True
            raise StopBackward
        waiting, blocked = self._waiting, self._blocked
        for i in self._consumers.get(key, ()):
            waiting[i] -= 1
            if waiting[i] == 0 and i not in blocked:  # every input got a finite gradient: not the origin
                self._clear(i)
        thresholds = self._thresholds
        if thresholds:
            seq = self._seq.get(key, -1)
            while thresholds and seq >= 0 and thresholds[0][0] > seq:
                _, i = thresholds.pop(0)
                blocked.discard(i)
                if waiting[i] == 0:
                    self._clear(i)
        return False

    def _cheap_below(self, key: Key) -> bool:
        """What is left of the backward when value ``key`` gets its gradient is cheap: few autograd
        nodes were made before it, and the forward had not run for long when it was first seen (a
        call that made it returned, or one that takes it started)."""
        seq = self._seq.get(key, -1)
        calls = self._calls
        if seq < 0 or not calls:
            return False
        first = min(c.start for c in calls)
        if seq - first >= DROP_NODES:
            return False
        seen = None
        for c in calls:
            if key in c.outputs:
                t = c.done
            elif key in c.inputs:
                t = c.begun
            else:
                continue
            if seen is None or t < seen:
                seen = t
        return seen is not None and seen - self.start < DROP_SECONDS

    def _clear(self, i: int) -> None:
        """Call ``i`` is not the origin: drop the gradients of its outputs that no other call needs."""
        opened, grads = self._open, self.grads
        outs = self._calls[i].outputs
        for k in outs if len(outs) == 1 else set(outs):
            n = opened.get(k, 0)
            if n > 1:
                opened[k] = n - 1
            elif n == 1:
                del opened[k]
                grads.pop(k, None)

    def overflowed(self) -> bool:
        """The backward was stopped on a gradient whose sum overflowed although every element was
        finite (values near the float32 limit): the caller runs it again, and this time every
        gradient is kept and screened afterwards."""
        g = self.bad_grad
        if g is None or not _exactly_finite(g):
            return False
        self.flags = None
        self.bad = self.bad_grad = None
        self.stopped = False
        self.grads.clear()
        self.arrival.clear()
        return True

    def release(self) -> None:
        """Remove the hooks (the gradients stay readable)."""
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def clear(self) -> None:
        self.release()
        self.grads.clear()
        self.pending.clear()
        self._calls = ()


def _run(c: _Call, outs: list[Key], tensors: dict[Key, torch.Tensor], grads: dict[Key, torch.Tensor]) -> Any:
    """Run call ``c``'s part of the kept graph again from its outputs' gradients: the origin, None,
    or ``False`` when it cannot be run (an output overwritten in place since, a node that cannot
    run twice)."""
    roots = []
    for k in outs:
        t = tensors[k]
        node = t.grad_fn
        if t._version != k[1] or node is None:
            return None  # overwritten in place since: its node is not the one the gradient reached
        roots.append((node, t.output_nr, grads[k]))
    try:
        return run_module_backward(roots, c.start, c.end)
    except Exception:  # a node that cannot run twice: let the caller hook the whole backward
        return False


def _encloses(c: _Call, inner: Sequence[_Call]) -> bool:
    """Call ``c`` encloses one of the calls ``inner`` (other than itself)."""
    for m in inner:
        if m is not c and c.start <= m.start and m.end <= c.end:
            return True
    return False


def _stopped_origin(calls: Sequence[_Call], tensors: dict[Key, torch.Tensor], boundary: BoundaryGrads) -> Any:
    """CPU, the backward stopped at the first value whose gradient was non-finite: the calls that
    take it as an input, or enclose a call that made it, whose outputs' gradients were all finite,
    innermost first."""
    bad, flags, grads = boundary.bad, boundary.flags, boundary.grads
    assert flags is not None
    makers = [c for c in calls if bad in c.outputs]
    found = []
    for c in calls:
        if bad not in c.inputs and not _encloses(c, makers):
            continue
        outs = [k for k in c.outputs if k in grads]
        if outs:
            for k in outs:
                if not flags.get(k, True):
                    break
            else:
                found.append((c.end - c.start, c, outs))
    if len(found) > 1:
        found.sort(key=lambda item: item[0])
    for _, c, outs in found:
        origin = _run(c, outs, tensors, grads)
        if origin is False:
            return None
        if origin is not None:
            return origin
    return None


def module_origin(
    calls: Sequence[_Call],
    tensors: dict[Key, torch.Tensor],
    boundary: BoundaryGrads,
    params: Sequence[tuple[str, torch.Tensor]],
) -> BackwardOrigin | None:
    """The backward origin, found from the gradients the live backward left at module boundaries.

    A module call is a candidate when the gradient that reached its outputs is finite and the one it
    passed on to its inputs (or, failing that, to its parameters) is not; on CPU also a call
    enclosing the one that made the first value whose gradient was non-finite (the op that turned it
    non-finite may be the enclosing module's own code). Candidates are tried innermost first: only
    that call's part of the kept graph is backpropagated again (:func:`run_module_backward`), from
    its outputs with the gradient they received, and the first op emitting a NaN/Inf is the origin.
    None when no candidate reproduces it (the caller then hooks the whole backward).
    """
    grads = boundary.grads
    if not grads:
        return None
    flags = boundary.flags
    if flags is not None and boundary.bad is not None:
        found = _stopped_origin(calls, tensors, boundary)
        if found is not None:
            return found
    if flags is not None:
        finite = lambda k: flags.get(k, True)  # noqa: E731
    else:
        # Screened only: a gradient whose norm overflows counts as non-finite here; if that hides
        # the origin, no candidate reproduces and the caller's exact search runs.
        keys = list(grads)
        finite = dict(zip(keys, _screen([grads[k] for k in keys]), strict=True)).__getitem__
    bad = boundary.bad
    makers = [c for c in calls if bad is not None and bad in c.outputs]

    def candidates(bad_params: set[int] | None) -> list[tuple[int, int, _Call, list[Key]]]:
        found = []
        for c in calls:
            outs = [k for k in c.outputs if k in grads]
            if not outs or not all(finite(k) for k in outs):
                continue
            if bad_params is not None:
                hit = any(id(p) in bad_params for p in c.module.parameters())
            elif flags is not None:
                hit = any(not finite(k) for k in c.inputs) or _encloses(c, makers)
            else:
                hit = any(not finite(k) for k in c.inputs if k in grads)
            if hit:
                first = min(boundary.arrival[k] for k in outs)
                # CPU: the innermost call first (the smallest part of the graph to run again)
                found.append((c.end - c.start if flags is not None else 0, first, c, outs))
        found.sort(key=lambda item: (item[0], item[1]))
        return found

    def bad_parameters() -> set[int]:
        with_grad = [p for _, p in params if p.grad is not None and _checkable(p.grad)]
        ok = _screen([p.grad for p in with_grad]) if with_grad else []
        return {id(p) for p, fine in zip(with_grad, ok, strict=True) if not fine}

    for bad_params in (None, bad_parameters):
        for _, _, c, outs in candidates(None if bad_params is None else bad_params()):
            origin = _run(c, outs, tensors, grads)
            if origin is False:
                return None
            if origin is not None:
                return origin
    return None
