"""Find where a NaN or Inf first appears in one training step (SEN105).

Two layers, so that healthy steps cost almost nothing:

- :func:`first_nonfinite` / :func:`all_finite`: one sum per tensor and a single host sync per
  device over a list of tensors. A training loop calls it on the loss, on all gradients after
  ``backward()`` and on all parameters after ``step()``.
- :func:`localize`: called only when that cheap check failed. It replays the step once, from the
  state the caller restored (see :mod:`sentinel.probes.state`), with light instrumentation:

  1. inputs: every floating tensor of the batch;
  2. forward: every module's ``forward`` is wrapped to record its inputs and outputs (references
     and autograd versions) and the range of autograd sequence numbers created while it ran. Only
     when the step failed are the recorded values checked (one sum each, one host sync). The origin
     is the first module (in completion order, so the innermost) whose output is non-finite while
     its inputs were finite. If a recorded value was overwritten in place before that check, the
     forward is replayed once more with a sum taken of every value as it is seen;
  3. loss: non-finite although the model output is finite;
  4. backward: autograd nodes are hooked on demand (a node gets its hook when a node above it has
     run, so only the part of the graph the backward reaches is visited); a hook checks the node's
     outgoing gradients; the origin is the first node, in execution order, that emits a non-finite
     gradient (its incoming gradient was finite: every earlier node emitted finite ones), and the
     backward pass is abandoned there. The node is mapped to the innermost module that was running
     when it was created (by autograd sequence number);
  5. update: the first parameter that is non-finite after ``optimizer.step()``.

  Then the model, optimizer and RNGs are restored as they were when ``localize`` was called.

In-place ops are handled: a value is keyed by tensor and autograd version, so a tensor overwritten
in place is a new value, and a value that is gone by the time it is checked triggers the eager replay.

Cost: one forward with a thin wrapper per module call, the backward up to the origin with one hook
per (non pass-through) node it reached, one sum per recorded value only when the step failed, and
(only when the gradients were finite) the optimizer step. Parameter values and optimizer state are
copied only right before that step; buffers, grads (by reference), flags and RNGs are captured up
front.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sentinel.findings import Finding
from sentinel.probes.batch import ComputeLoss, compute, tensor_items
from sentinel.probes.state import Snapshot

__all__ = ["STAGES", "all_finite", "first_nonfinite", "localize", "optimizer_step"]

STAGES = ("input", "forward", "loss", "backward", "update")


def _checkable(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and not t.is_meta and t.numel() > 0


def _values(t: torch.Tensor) -> torch.Tensor:
    if t.is_sparse:
        return t.coalesce().values()
    return t.detach()


def _sum_of(t: torch.Tensor) -> torch.Tensor:
    """A float32 scalar that is non-finite whenever an element of ``t`` is (call under no_grad)."""
    if t.is_sparse:
        t = t.coalesce().values()
    if t.dtype is torch.float32:
        return t.sum()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.sum(dtype=torch.float32)
    return t.sum().float()


def _finite_flags(tensors: Sequence[torch.Tensor]) -> list[bool]:
    """Per tensor: True when every element is finite.

    One sum per tensor and one host sync per device: a sum is non-finite whenever an element is
    (Inf cannot cancel into a finite value), so a finite sum proves the tensor finite. A non-finite
    sum may also be an overflow of large finite values: those tensors are re-checked exactly.
    """
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    flags = [True] * len(tensors)
    with torch.no_grad():
        for idx in by_device.values():
            ok = torch.isfinite(torch.stack([_sum_of(tensors[i]) for i in idx])).tolist()
            for i, f in zip(idx, ok, strict=True):
                if not f:
                    flags[i] = bool(torch.isfinite(_values(tensors[i])).all())
    return flags


def first_nonfinite(tensors: Sequence[Any]) -> int | None:
    """Index of the first tensor holding a NaN or Inf (None-s and non-float tensors are skipped)."""
    pos = [i for i, t in enumerate(tensors) if _checkable(t)]
    if not pos:
        return None
    flags = _finite_flags([tensors[i] for i in pos])
    for i, ok in zip(pos, flags, strict=True):
        if not ok:
            return i
    return None


def all_finite(tensors: Sequence[Any]) -> bool:
    """True when no tensor in ``tensors`` holds a NaN or Inf (one sum per tensor, one sync per device)."""
    if len(tensors) == 1:
        t = tensors[0]
        if not _checkable(t):
            return True
        with torch.no_grad():
            return bool(torch.isfinite(_sum_of(t))) or bool(torch.isfinite(_values(t)).all())
    return first_nonfinite(tensors) is None


_BULK_LIMIT = 1 << 24  # elements per (device, dtype) group that _bulk_finite may copy


def _bulk_finite(tensors: Sequence[torch.Tensor]) -> bool | None:
    """Whether all ``tensors`` (checkable) are finite, from one concatenation and one sum per
    (device, dtype) group; None when a group is too large to copy (then use per-tensor checks)."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    sums = []
    with torch.no_grad():
        for group in groups.values():
            if any(t.is_sparse for t in group) or sum(t.numel() for t in group) > _BULK_LIMIT:
                return None
            sums.append(_sum_of(torch.cat([t.reshape(-1) for t in group])))
    return bool(torch.isfinite(torch.stack([s.cpu() for s in sums])).all()) if sums else True


def _kind(t: torch.Tensor) -> str:
    return "NaN" if bool(torch.isnan(_values(t)).any()) else "Inf"


def optimizer_step(optimizer: torch.optim.Optimizer, closure: Any = None) -> None:
    """``optimizer.step()``; optimizers that need a closure (LBFGS) get ``closure``."""
    if isinstance(optimizer, torch.optim.LBFGS):
        optimizer.step(closure)
    else:
        optimizer.step()


# ------------------------------------------------------------------------------------ localization


def _sequence_nr_fallback() -> int:  # pragma: no cover - torch without the private helper
    probe = torch.zeros((), requires_grad=True)
    with torch.enable_grad():
        return (probe * 1).grad_fn._sequence_nr() + 1  # type: ignore[union-attr]


# The number the next autograd node created on this thread will get.
_sequence_nr = getattr(torch.autograd, "_get_sequence_nr", None) or _sequence_nr_fallback


@dataclass(slots=True)
class _Call:
    name: str
    module: nn.Module
    start: int
    inputs: list[tuple[int, int]]  # (id, version) keys into _Tracer.sums
    end: int = -1
    outputs: list[tuple[int, int]] = field(default_factory=list)


def _tensors_of(obj: Any) -> list[torch.Tensor]:
    if type(obj) is tuple and len(obj) == 1 and isinstance(obj[0], torch.Tensor):
        return [obj[0]]
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, tuple) and all(isinstance(t, torch.Tensor) for t in obj):
        return list(obj)
    return [t for _, t in tensor_items(obj, "")]


_MISSING = object()


_UNKNOWN = object()  # _Tracer.origin(): a value the lazy tracer saw was overwritten in place since


class _Tracer:
    """Records every call of ``model``'s modules: which tensors went in and came out and the range
    of autograd sequence numbers created meanwhile. Each module's ``forward`` is wrapped by an
    instance attribute for the duration (cheaper than module hooks, which also push every call onto
    torch's slow path) and put back by :meth:`remove`.

    Every distinct tensor value seen is keyed by ``(id, version)``, so a tensor overwritten in place
    counts as a new value. Lazy (default): only the reference and its version are kept, and
    :meth:`origin` checks them all at the end (one sum each, one host sync per device); if a value
    was overwritten in place meanwhile it answers ``_UNKNOWN`` (replay with an eager tracer).
    Eager: one sum per value, taken when it is seen, before anything can overwrite it.
    """

    def __init__(self, model: nn.Module, eager: bool = False) -> None:
        self.thread = threading.get_ident()
        self.eager = eager
        self.calls: list[_Call] = []  # completion order
        self.sums: dict[tuple[int, int], torch.Tensor] = {}
        self.tensors: dict[tuple[int, int], torch.Tensor] = {}
        self.saved: list[tuple[nn.Module, Any]] = []
        try:
            for name, module in model.named_modules():
                original = module.__dict__.get("forward", _MISSING)
                wrapper = self._wrap(module, name, module.forward)
                self.saved.append((module, original))
                module.__dict__["forward"] = wrapper
        except BaseException:
            self.remove()
            raise

    def _keys(self, tensors: list[torch.Tensor]) -> list[tuple[int, int]]:
        keys = []
        kept, eager, sums = self.tensors, self.eager, self.sums
        for t in tensors:
            key = (id(t), t._version)
            if key not in kept:
                if not _checkable(t):
                    continue
                kept[key] = t
                if eager:
                    sums[key] = _sum_of(t.detach())
            keys.append(key)
        return keys

    def _wrap(self, module: nn.Module, name: str, forward: Any) -> Any:
        calls, thread, keys, get_ident, seq = self.calls, self.thread, self._keys, threading.get_ident, _sequence_nr

        def traced_forward(*args: Any, **kwargs: Any) -> Any:
            if get_ident() != thread:
                return forward(*args, **kwargs)
            ins = _tensors_of(args)
            if kwargs:
                ins += _tensors_of(kwargs)
            call = _Call(name, module, seq(), keys(ins))
            output = forward(*args, **kwargs)
            call.end = seq() - 1
            call.outputs = keys(_tensors_of(output))
            calls.append(call)
            return output

        return traced_forward

    def remove(self) -> None:
        for module, original in reversed(self.saved):
            if original is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = original
        self.saved.clear()

    def _flags(self) -> dict[tuple[int, int], bool] | None:
        """Finite flag per value seen; None when all are finite."""
        keys = list(self.tensors)
        if not self.eager:
            ok = _finite_flags([self.tensors[k] for k in keys])  # one sum each, one sync per device
            return None if all(ok) else dict(zip(keys, ok, strict=True))
        by_device: dict[torch.device, list[int]] = {}
        for i, k in enumerate(keys):
            by_device.setdefault(self.sums[k].device, []).append(i)
        ok = [True] * len(keys)
        for idx in by_device.values():
            for i, f in zip(idx, torch.isfinite(torch.stack([self.sums[keys[i]] for i in idx])).tolist(), strict=True):
                ok[i] = bool(f)
        if all(ok):
            return None
        flags = dict(zip(keys, ok, strict=True))
        for k, f in flags.items():  # a non-finite sum may be an overflow: re-check what still exists
            t = self.tensors[k]
            if not f and t._version == k[1] and bool(torch.isfinite(_values(t)).all()):
                flags[k] = True
        return flags

    def origin(self) -> Any:
        """The first call whose output was non-finite while its inputs were finite, as
        ``(call, tensor)``; None if there is none; ``_UNKNOWN`` (lazy tracer only) when a value it
        saw has been overwritten in place since, so its flag cannot be known any more."""
        if not self.tensors:
            return None
        if not self.eager and any(t._version != k[1] for k, t in self.tensors.items()):
            return _UNKNOWN
        flags = self._flags()
        if flags is None:
            return None
        for c in self.calls:
            bad = [k for k in c.outputs if not flags[k]]
            if bad and all(flags[k] for k in c.inputs):
                return c, self.tensors[bad[0]]
        return None

    def module_at(self, seq: int) -> _Call | None:
        """The innermost module call during which autograd node number ``seq`` was created."""
        best: _Call | None = None
        for c in self.calls:  # completion order: on equal ranges the inner call comes first
            if c.start <= seq <= c.end and (
                best is None or c.start > best.start or (c.start == best.start and c.end < best.end)
            ):
                best = c
        return best


def _bad_param(module: nn.Module | None, prefix: str) -> str | None:
    """The first parameter of ``module`` (qualified with ``prefix``) holding a NaN/Inf."""
    if module is None:
        return None
    named = list(module.named_parameters())
    i = first_nonfinite([p for _, p in named])
    if i is None:
        return None
    return f"{prefix}.{named[i][0]}" if prefix else named[i][0]


def _param_fed_by(node: Any, index: int, names: dict[int, str]) -> str | None:
    """The parameter that output ``index`` of autograd ``node`` flows into, through at most a few
    single-input nodes (``t()``, views); None when it flows elsewhere."""
    nxt = node.next_functions[index][0] if index < len(node.next_functions) else None
    for _ in range(4):
        if nxt is None:
            return None
        variable = getattr(nxt, "variable", None)
        if variable is not None:
            return names.get(id(variable))
        following = [n for n, _ in nxt.next_functions if n is not None]
        if len(following) != 1:
            return None
        nxt = following[0]
    return None


def _finding(stage: str, step: int, module: str | None, parameter: str | None, message: str, **extra: Any) -> Finding:
    details: dict[str, Any] = {"stage": stage, "module": module, "parameter": parameter, "step": step}
    details.update(extra)
    return Finding("SEN105", message, details)


def _describe(name: str | None, module: nn.Module | None) -> str:
    if name is None:
        return "the loss function"
    cls = type(module).__name__ if module is not None else "?"
    return f"the model itself ({cls}.forward)" if name == "" else f"module `{name}` ({cls})"


class _BackwardOrigin(Exception):
    """Raised from an autograd node hook to stop the replayed backward at the first bad node."""

    def __init__(self, node: Any, index: int, grad: torch.Tensor) -> None:
        super().__init__(node.name())
        self.node, self.index, self.grad = node, index, grad


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


def _needs_watch(node: Any) -> bool:
    return not hasattr(node, "variable") and node.name() not in _PASS_THROUGH


class _BackwardWatch:
    """Hooks autograd nodes on demand: a node gets its hook just before it can run, when a hooked
    node above it has run (nodes only run after every node feeding them a gradient), so a backward
    abandoned early hooks only the few nodes it reached instead of walking the whole graph.
    Pass-through nodes (see ``_PASS_THROUGH``) and ``AccumulateGrad`` get no hook: their inputs are
    looked through at once. The hook checks the node's outgoing gradients and raises
    :class:`_BackwardOrigin` at the first non-finite one."""

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
            if hasattr(n, "variable"):
                continue
            if n.name() in _PASS_THROUGH:
                stack.extend(nxt for nxt, _ in n.next_functions if nxt is not None)
                continue
            self.handles.append(n.register_hook(self._hook(n)))

    def _hook(self, node: Any) -> Any:
        add = self.add

        def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            present = [(i, g) for i, g in enumerate(grad_inputs) if _checkable(g)]
            if present:
                if len(present) == 1:
                    i, g = present[0]
                    with torch.no_grad():
                        bad = not (bool(torch.isfinite(_sum_of(g))) or bool(torch.isfinite(_values(g)).all()))
                    if bad:
                        raise _BackwardOrigin(node, i, g)
                else:
                    for (i, g), ok in zip(present, _finite_flags([g for _, g in present]), strict=True):
                        if not ok:
                            raise _BackwardOrigin(node, i, g)
            add(*(nxt for nxt, _ in node.next_functions))

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.nodes.clear()
        self.seen.clear()


def localize(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    *,
    compute_loss: ComputeLoss | None = None,
    zero_grad: bool = True,
) -> Finding | None:
    """Replay one training step and report the first place a NaN/Inf appears (SEN105), or None.

    Call it with ``model``/``optimizer`` (and the RNGs) in the state they had *before* the failing
    step; ``step`` is only copied into the finding. The step is: (``zero_grad``: set grads to None),
    forward, loss, backward, ``optimizer.step()`` (skipped when ``optimizer`` is None). Everything
    it touches (model, ``loss_fn`` if it is a module, optimizer, RNGs) is restored before returning.
    Exceptions raised by the user's model or loss propagate.
    """
    snap = Snapshot.capture([model, loss_fn], None, grads="ref" if zero_grad else True, values=False)
    try:
        return _localize(model, loss_fn, batch, optimizer, step, compute_loss, zero_grad, snap)
    finally:
        snap.restore()


def _localize(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    compute_loss: ComputeLoss | None,
    zero_grad: bool,
    snap: Snapshot,
) -> Finding | None:
    items = list(tensor_items(batch))
    i = first_nonfinite([t for _, t in items])
    if i is not None:
        name, t = items[i]
        kind = _kind(t)
        return _finding(
            "input",
            step,
            None,
            None,
            f"{name} holds {kind} values before the model runs (step {step}): the data pipeline "
            "produced them; filter or clean the batch.",
            tensor=name,
            value=kind.lower(),
        )
    params = [pr.param for pr in snap.params]  # model's (and a module loss's) parameters
    if zero_grad:
        for p in params:
            p.grad = None
    tracer = _Tracer(model)
    watch = _BackwardWatch()
    origin: _BackwardOrigin | None = None
    try:
        with torch.enable_grad():
            loss, _ = compute(model, loss_fn, batch, compute_loss)
        tracer.remove()
        loss_ok = all_finite([loss])
        if loss_ok and loss.grad_fn is not None:
            watch.add(loss.grad_fn)
            try:
                loss.backward()
            except _BackwardOrigin as found:
                origin = found
    finally:
        tracer.remove()
        watch.remove()
    grads_ok = origin is None and all_finite([p.grad for p in params])
    bad_grad: str | None = None
    if not grads_ok and origin is None:
        named = list(model.named_parameters())
        k = first_nonfinite([p.grad for _, p in named])
        bad_grad = named[k][0] if k is not None else None

    if not loss_ok or not grads_ok:
        found = tracer.origin()
        if found is _UNKNOWN:  # a module overwrote a value in place: replay the forward, summing eagerly
            snap.restore()
            eager = _Tracer(model, eager=True)
            try:
                with torch.enable_grad():
                    compute(model, loss_fn, batch, compute_loss)
            finally:
                eager.remove()
            found = eager.origin()
        if found is not None:
            call, out = found
            kind = _kind(out)
            parameter = _bad_param(call.module, call.name)
            why = f"; its parameter `{parameter}` is already non-finite" if parameter else ""
            return _finding(
                "forward",
                step,
                call.name,
                parameter,
                f"{kind} first appears in the output of {_describe(call.name, call.module)} at step {step}"
                f" although its inputs were finite{why}. Look for log/sqrt/pow/division of values that"
                " can reach 0 or below for some inputs, or overflowing exp.",
                value=kind.lower(),
            )
    if not loss_ok:
        kind = _kind(loss)
        return _finding(
            "loss",
            step,
            None,
            None,
            f"the loss is {kind} at step {step} although the model output is finite: check the loss"
            " (log of 0, division by zero, targets out of range, probabilities outside [0, 1]).",
            value=kind.lower(),
        )
    if origin is not None:
        node = origin.node
        call = tracer.module_at(node._sequence_nr())
        mod_name = call.name if call is not None else None
        kind = _kind(origin.grad)
        where = _describe(mod_name, call.module if call is not None else None)
        parameter = _param_fed_by(node, origin.index, {id(p): n for n, p in model.named_parameters()})
        return _finding(
            "backward",
            step,
            mod_name,
            parameter,
            f"the gradient becomes {kind} in {node.name()} inside {where}"
            f" at step {step}, although the gradient flowing into it was finite. The forward value"
            " was finite, its derivative is not: typically sqrt/pow/log/div evaluated at 0 (add an"
            " epsilon, e.g. sqrt(x + 1e-12)) or a torch.where whose unused branch is non-finite.",
            op=node.name(),
            value=kind.lower(),
        )
    if not grads_ok:
        return _finding(
            "backward",
            step,
            None,
            bad_grad,
            f"gradients are non-finite at step {step} but no autograd node produced them in this"
            " step (they were already non-finite before backward: gradient accumulation?).",
        )
    if optimizer is not None:
        before_step = Snapshot.capture([model], optimizer, rng=False, grads=False, buffers=False)
        try:
            optimizer_step(optimizer)
            if all_finite(params):
                return None
            named = list(model.named_parameters())
            k = first_nonfinite([p for _, p in named])
            if k is not None:
                pname, p = named[k]
                kind = _kind(p)
                return _finding(
                    "update",
                    step,
                    pname.rpartition(".")[0],
                    pname,
                    f"parameter `{pname}` becomes {kind} in optimizer step {step} although loss and"
                    " gradients were finite: the learning rate is probably too high (or eps/weight"
                    " decay is invalid).",
                    value=kind.lower(),
                )
        finally:
            before_step.restore()
    return None
