"""Find where a NaN or Inf first appears in one training step (SEN105).

Two layers, so that healthy steps cost almost nothing (the cheap checks live in
:mod:`sentinel.probes.screen`, the search for the autograd node that emits a NaN/Inf in
:mod:`sentinel.probes.backprop`; both names below are re-exported here):

- :func:`first_nonfinite` / :func:`all_finite`: one fused norm per (device, dtype) and one host sync
  over a list of tensors. A training loop calls it on the loss, on all gradients after
  ``backward()`` and on all parameters after ``step()``.
- :func:`checked_step`: one training step run with those checks and light tracing, so that when a
  check fails the origin is found from what that very step left behind, without running the
  forward again. The triage order is:

  1. inputs: every floating tensor of the batch;
  2. forward: every module's ``forward`` is wrapped to record its inputs and outputs (references
     and autograd versions) and the range of autograd sequence numbers created while it ran. Only
     when the step failed are the recorded values checked. The origin is the first module (in
     completion order, so the innermost) whose output is non-finite while its inputs were finite.
     Inputs of in-place modules (``inplace=True``) are summed before they are overwritten; if some
     other recorded value was overwritten in place, the step is replayed with a sum taken of every
     value as it is seen;
  3. loss: non-finite although the model output is finite;
  4. backward: the step keeps its graph and sees the gradient that reaches every recorded value
     below the model's own output (:mod:`sentinel.probes.boundary`: on CPU each one is checked as
     it arrives and nothing below the first non-finite one is computed; elsewhere they are kept and
     screened after). The origin is a module call whose outputs received a finite gradient while
     its inputs (or its parameters) received a non-finite one; only that call's part of the graph
     is backpropagated again, node by node, to name the first op emitting a NaN/Inf. When that
     finds nothing (the origin is in the loss or at the model's top), the whole kept graph is
     backpropagated again with autograd nodes hooked on demand (a node gets its hook when a node
     above it has run), abandoning the pass at the first node emitting a non-finite gradient.
     Either way the node is mapped to the innermost module that was running when it was created
     (by autograd sequence number);
  5. update: the first parameter that is non-finite after ``optimizer.step()``.

- :func:`localize`: the same search on a replay of a step known to fail, from the state the caller
  restored (see :mod:`sentinel.probes.state`), for loops that no longer hold the failing step's
  graph; the model, optimizer and RNGs are restored afterwards.

In-place ops are handled: a value is keyed by tensor and autograd version, so a tensor overwritten
in place is a new value, and a value that is gone by the time it is checked triggers the eager replay.

Cost on a healthy step: a thin wrapper per module call and a gradient hook per recorded value that
requires grad (on CPU one sum per gradient), benchmarks/probe_speed.py prints it. On a failing step:
the backward only down to the first bad boundary (CPU), one sum per recorded value, the re-run of
the origin module's nodes (or of the backward up to the origin) and the finding.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sentinel.findings import Finding
from sentinel.probes.backprop import BackwardOrigin, BackwardWatch
from sentinel.probes.batch import ComputeLoss, compute, tensor_items
from sentinel.probes.boundary import BoundaryGrads, StopBackward, module_origin
from sentinel.probes.masks import ATTENTION, mask_names, neg_inf_only
from sentinel.probes.screen import _exactly_finite, _kind, _screen, _sum_of, all_finite, first_nonfinite
from sentinel.probes.state import Snapshot

__all__ = ["STAGES", "all_finite", "checked_step", "first_nonfinite", "localize", "optimizer_step"]

STAGES = ("input", "forward", "loss", "backward", "update")


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
    begun: float  # perf_counter() when the call started
    end: int = -1
    outputs: list[tuple[int, int]] = field(default_factory=list)
    done: float = 0.0  # perf_counter() when the call returned


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


def _named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``list(model.named_modules())`` (same names, same order), without its recursive generators."""
    out: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        out.append((name, module))
        children = module._modules
        if children:
            stack.extend(reversed([(f"{name}.{k}" if name else k, c) for k, c in children.items() if c is not None]))
    return out


class _Tracer:
    """Records every call of ``model``'s modules: which tensors went in and came out and the range
    of autograd sequence numbers created meanwhile. Each module's ``forward`` is wrapped by an
    instance attribute for the duration (cheaper than module hooks, which also push every call onto
    torch's slow path) and put back by :meth:`remove`.

    Every distinct tensor value seen is keyed by ``(id, version)``, so a tensor overwritten in place
    counts as a new value. Lazy (default): only the reference and its version are kept, and
    :meth:`origin` checks them all at the end (one sum each, one host sync per device). The inputs
    of a module that works in place (``inplace=True``: ReLU, Dropout, ...) are summed when the call
    starts, before the module overwrites them. If some other value was overwritten in place meanwhile
    (an in-place op inside a ``forward``), :meth:`origin` answers ``_UNKNOWN``: replay with an eager
    tracer, which takes one sum per value when it is seen.
    """

    def __init__(self, model: nn.Module, eager: bool = False, grads: bool = False) -> None:
        self.thread = threading.get_ident()
        self.eager = eager
        self.calls: list[_Call] = []  # completion order
        self.sums: dict[tuple[int, int], torch.Tensor] = {}
        self.tensors: dict[tuple[int, int], torch.Tensor] = {}
        self.saved: list[tuple[nn.Module, Any]] = []
        # grads=True: the gradient that reaches every value that requires grad is seen in the
        # backward (see sentinel.probes.boundary); the values are hooked by hook_values()
        self.hook_grads = grads
        self.boundary = BoundaryGrads()
        self.proven: set[tuple[int, int]] = set()  # values known to be finite (the checked batch)
        try:
            for name, module in _named_modules(model):
                original = module.__dict__.get("forward", _MISSING)
                wrapper = self._wrap(module, name, module.forward)
                self.saved.append((module, original))
                module.__dict__["forward"] = wrapper
        except BaseException:
            self.remove()
            raise
        self.boundary.start = time.perf_counter()

    def _keys(self, obj: Any, eager: bool) -> list[tuple[int, int]]:
        """The keys of the tensors in ``obj`` (a module's positional arguments or its output),
        recording the values not seen yet."""
        if type(obj) is tuple and len(obj) == 1:  # the usual call: one positional argument
            obj = obj[0]
        tensors = (obj,) if isinstance(obj, torch.Tensor) else _tensors_of(obj)
        keys = []
        kept, sums = self.tensors, self.sums
        for t in tensors:
            key = (id(t), t._version)
            if key not in kept:
                if not (t.is_floating_point() or t.is_complex()) or t.is_meta or t.numel() == 0:
                    continue
                kept[key] = t
                if self.hook_grads and t.requires_grad:
                    node = t.grad_fn
                    self.boundary.pending.append((key, t, -1 if node is None else node._sequence_nr()))
            if eager and key not in sums:
                sums[key] = _sum_of(t.detach())
            keys.append(key)
        return keys

    def _wrap(self, module: nn.Module, name: str, forward: Any) -> Any:
        calls, thread, keys, get_ident, seq = self.calls, self.thread, self._keys, threading.get_ident, _sequence_nr
        clock = time.perf_counter
        eager_out = self.eager
        eager_in = eager_out or module.__dict__.get("inplace") is True

        def traced_forward(*args: Any, **kwargs: Any) -> Any:
            if get_ident() != thread:
                return forward(*args, **kwargs)
            ins = keys(args, eager_in)
            if kwargs:
                ins += keys(kwargs, eager_in)
            call = _Call(name, module, seq(), ins, clock())
            output = forward(*args, **kwargs)
            call.end = seq() - 1
            call.done = clock()
            call.outputs = keys(output, eager_out)
            calls.append(call)
            return output

        return traced_forward

    def hook_values(self) -> bool:
        """Hook the recorded values' gradients, once the forward is over and its loss is finite
        (False: none to hook)."""
        return self.boundary.hook(self.calls)

    def release(self) -> None:
        """Remove the gradient hooks (the module wrappers are removed by :meth:`remove`)."""
        self.boundary.release()

    def remove(self) -> None:
        for module, original in reversed(self.saved):
            if original is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = original
        self.saved.clear()

    def _screened(self) -> dict[tuple[int, int], bool]:
        """Per value seen: True when proven finite (from its sum if one was taken, else from the
        tensor, which still holds that value), False when it may not be."""
        proven, sums = self.proven, self.sums
        live: list[tuple[int, int]] = []
        values: list[torch.Tensor] = []
        screened: dict[tuple[int, int], bool] = {}
        by_device: dict[torch.device, list[tuple[int, int]]] = {}
        for k, t in self.tensors.items():
            if k in sums:
                by_device.setdefault(sums[k].device, []).append(k)
            elif k in proven:
                screened[k] = True
            else:
                live.append(k)
                values.append(t)
        if live:
            screened.update(zip(live, _screen(values), strict=True))
        for ks in by_device.values():
            screened.update(zip(ks, torch.isfinite(torch.stack([sums[k] for k in ks])).tolist(), strict=True))
        return screened

    def origin(self, masked: bool = False) -> Any:
        """The first call whose output was non-finite while its inputs were finite (an input whose
        only non-finite entries are -inf counts as finite when it is an attention mask: the batch
        holds masks (``masked``), it is square in its last two dimensions, or the module is an
        attention module), as
        ``(call, tensor, whether the tensor still holds that value)``; None if there is none;
        ``_UNKNOWN`` when a value that was not summed has been overwritten in place since, so its
        flag cannot be known any more."""
        if not self.tensors:
            return None
        sums = self.sums
        for k, t in self.tensors.items():
            if t._version != k[1] and k not in sums:
                return _UNKNOWN
        screened = self._screened()
        if False not in screened.values():
            return None
        exact: dict[tuple[int, int], bool] = {}

        def finite(k: tuple[int, int]) -> bool:
            if screened[k]:
                return True
            if k not in exact:  # a non-finite sum may be an overflow: re-check what is still there
                t = self.tensors[k]
                exact[k] = t._version == k[1] and _exactly_finite(t)
            return exact[k]

        masks: dict[tuple[int, int], bool] = {}

        def mask(k: tuple[int, int], module: nn.Module | None = None) -> bool:
            """Non-finite only by -inf entries (an additive attention mask, see sentinel.probes.masks)."""
            t = self.tensors[k]
            square = 2 <= t.dim() <= 3 and t.shape[-1] == t.shape[-2]
            shaped = masked or square or isinstance(module, ATTENTION)
            if not shaped:
                return False
            if k not in masks:
                if t._version == k[1]:
                    masks[k] = neg_inf_only(t)
                else:
                    masks[k] = k in self.sums and self.sums[k].item() == -math.inf
            return masks[k]

        for c in self.calls:
            masked_in = False
            ok_in = True
            for k in c.inputs:
                if not finite(k):
                    if mask(k, c.module):
                        masked_in = True
                    else:
                        ok_in = False
                        break
            if not ok_in:
                continue
            # a module that only passes a mask on (its outputs -inf where an input was) is no origin
            bad = next((k for k in c.outputs if not finite(k) and not (masked_in and mask(k, c.module))), None)
            if bad is not None:
                t = self.tensors[bad]
                return c, t, t._version == bad[1]
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


def _param_fed_by(node: Any, index: int, params: Sequence[tuple[str, torch.Tensor]]) -> str | None:
    """The parameter that output ``index`` of autograd ``node`` flows into, through at most a few
    single-input nodes (``t()``, views); None when it flows elsewhere."""
    nxt = node.next_functions[index][0] if index < len(node.next_functions) else None
    for _ in range(4):
        if nxt is None:
            return None
        variable = getattr(nxt, "variable", None)
        if variable is not None:
            return next((n for n, p in params if p is variable), None)
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


Backward = Callable[[torch.Tensor, bool], None]


def _plain_backward(loss: torch.Tensor, retain_graph: bool) -> None:
    loss.backward(retain_graph=retain_graph)


def checked_step(
    model: nn.Module,
    batch: Any,
    forward: Callable[[], torch.Tensor],
    params: Sequence[tuple[str, torch.Tensor]],
    *,
    backward: Backward = _plain_backward,
    update: Callable[[], None] | None = None,
    step: int = 0,
    replay: Callable[[], Finding | None] | None = None,
    eager: bool = False,
    expect_failure: bool = False,
) -> Finding | None:
    """Run one training step with the cheap checks and, if one fails, localize the failure from
    what this very step left behind, without running the forward again (SEN105); None when the
    step was finite.

    ``forward()`` runs the model and the loss and returns the scalar loss; ``params`` are the named
    parameters to check (their grads must be None on entry, except with ``expect_failure``, which
    never backpropagates twice); ``backward(loss, retain_graph)`` runs
    the user's backward; ``update()`` the optimizer step. The step is: finiteness of the batch,
    forward under a lazy :class:`_Tracer`, finiteness of the loss, backward keeping the graph,
    finiteness of all gradients, update, finiteness of all parameters. When a check fails:

    - forward or loss: the recorded module inputs and outputs name the origin;
    - backward: the gradients the step left at module boundaries name the origin module, whose
      nodes are run again to name the op (:func:`sentinel.probes.boundary.module_origin`); failing that, the grads are
      cleared and the kept graph is backpropagated once more with autograd node hooks
      (:class:`BackwardWatch`), which stop at the first node emitting a NaN/Inf;
    - update: the first parameter that is no longer finite.

    Only when a module overwrote a recorded value in place (so its flag is lost) is ``replay()``
    called, to redo the step from the state before it with an eager tracer. ``expect_failure``
    (a replay of a step known to fail) hooks the backward at once instead of keeping the graph.
    Exceptions raised by the user's code propagate.
    """
    found_input, masked, finite_batch = _input_finding(batch, step, model)
    if found_input is not None:
        return found_input
    tracer = _Tracer(model, eager=eager, grads=not expect_failure)
    tracer.proven.update((id(t), t._version) for t in finite_batch)
    watch: BackwardWatch | None = None  # made when needed
    origin: BackwardOrigin | None = None
    hooked = False
    try:
        try:
            loss = forward()
        except Exception as exc:
            # The user's own code may reject the NaN it was handed (BCELoss: "input should be between
            # 0 and 1", torch.distributions: "invalid values"): localize it all the same.
            tracer.remove()
            found = tracer.origin(masked)
            if found is _UNKNOWN and replay is not None:
                return replay()
            if found is None or found is _UNKNOWN:
                raise
            return _forward_finding(*found, step, error=_error_text(exc))
        finally:
            tracer.remove()
        loss_ok = _finite_loss(loss)
        grads_ok = True
        if loss_ok and loss.grad_fn is not None:
            if expect_failure:
                watch = BackwardWatch()
                watch.add(loss.grad_fn)
                try:
                    loss.backward()
                except BackwardOrigin as found:
                    origin = found
            else:
                hooked = tracer.hook_values()
                try:
                    backward(loss, True)
                    cut = tracer.boundary.stopped  # a non-finite boundary gradient was dropped (CPU)
                except StopBackward:  # a boundary gradient was non-finite (CPU): the rest is not needed
                    cut = True
                if cut and tracer.boundary.overflowed():  # no: large finite values; run it all
                    for _, p in params:
                        p.grad = None
                    backward(loss, True)
            stopped = tracer.boundary.stopped
            grads_ok = origin is None and not stopped and all_finite([p.grad for _, p in params])
        if not loss_ok or not grads_ok:
            found_fwd = tracer.origin(masked)
            if found_fwd is _UNKNOWN:
                if replay is not None:
                    return replay()
                found_fwd = None
            if found_fwd is not None:
                return _forward_finding(*found_fwd, step)
            if not loss_ok:
                return _loss_finding(loss, step)
            if origin is None and not expect_failure:
                if hooked:
                    origin = module_origin(tracer.calls, tracer.tensors, tracer.boundary, params)
            if origin is None and not expect_failure:
                tracer.release()  # its hooks would stop this backward at the same place
                for _, p in params:
                    p.grad = None
                watch = BackwardWatch()
                watch.add(loss.grad_fn)
                try:
                    loss.backward()
                except BackwardOrigin as found:
                    origin = found
            if origin is not None:
                return _backward_finding(origin, tracer, params, step)
            named = list(params)
            k = first_nonfinite([p.grad for _, p in named])
            return _finding(
                "backward",
                step,
                None,
                named[k][0] if k is not None else None,
                f"gradients are non-finite at step {step} but no autograd node produced them in this"
                " step (they were already non-finite before backward: gradient accumulation?).",
            )
    finally:
        if watch is not None:
            watch.remove()
        tracer.remove()
        tracer.release()
    del loss, tracer
    if update is None:
        return None
    update()
    named = list(params)
    k = first_nonfinite([p for _, p in named])
    if k is None:
        return None
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


def _finite_loss(loss: torch.Tensor) -> bool:
    """The loss is finite: a scalar is read once (exact, no reduction), anything else screened."""
    if isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.is_floating_point() and not loss.is_meta:
        return math.isfinite(loss.item())
    return all_finite([loss])


def _input_finding(
    batch: Any, step: int, model: nn.Module | None = None
) -> tuple[Finding | None, bool, list[torch.Tensor]]:
    """The SEN105 input finding (or None), whether the batch holds attention masks, and the batch's
    tensors when all of them are finite."""
    if type(batch) is tuple and all(type(t) is torch.Tensor for t in batch):  # (inputs, targets): no walk
        if first_nonfinite(batch) is None:
            return None, False, list(batch)
    items = list(tensor_items(batch))
    i = first_nonfinite([t for _, t in items])
    if i is None:
        return None, False, [t for _, t in items]
    masks = mask_names(items, batch, model)  # -inf by design (see sentinel.probes.masks)
    if masks:
        items = [(n, t) for n, t in items if n not in masks]
        i = first_nonfinite([t for _, t in items])
        if i is None:
            return None, True, []
    name, t = items[i]
    kind = _kind(t)
    finding = _finding(
        "input",
        step,
        None,
        None,
        f"{name} holds {kind} values before the model runs (step {step}): the data pipeline "
        "produced them; filter or clean the batch.",
        tensor=name,
        value=kind.lower(),
    )
    return finding, bool(masks), []


def _bad_positions(t: torch.Tensor) -> tuple[int, list[int]] | None:
    """``(size of dim 0, the indices along dim 0 holding a NaN/Inf)`` when only some of them do
    (typically: some samples of the batch); None otherwise."""
    if t.is_sparse or t.dim() < 1 or t.shape[0] < 2:
        return None
    with torch.no_grad():
        bad = (~torch.isfinite(t.detach())).reshape(t.shape[0], -1).any(1)
    idx = bad.nonzero().flatten().tolist()
    return (t.shape[0], idx) if 0 < len(idx) < t.shape[0] else None


def _error_text(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__


def _forward_finding(call: _Call, out: torch.Tensor, fresh: bool, step: int, error: str | None = None) -> Finding:
    kind = _kind(out)
    parameter = _bad_param(call.module, call.name)
    why = f"; its parameter `{parameter}` is already non-finite" if parameter else ""
    extra: dict[str, Any] = {}
    where = ""
    positions = _bad_positions(out) if fresh else None
    if positions is not None:
        size, idx = positions
        shown = ", ".join(map(str, idx[:8])) + (", ..." if len(idx) > 8 else "")
        where = f" for {len(idx)} of {size} entries along dim 0 (index {shown})"
        extra["indices"] = idx[:32]
    then = ""
    if error is not None:
        extra["error"] = error
        then = f" The step then failed: {error}."
    return _finding(
        "forward",
        step,
        call.name,
        parameter,
        f"{kind} first appears in the output of {_describe(call.name, call.module)} at step {step}{where}"
        f" although its inputs were finite{why}. Look for log/sqrt/pow/division of values that"
        f" can reach 0 or below for some inputs, or overflowing exp.{then}",
        value=kind.lower(),
        **extra,
    )


def _loss_finding(loss: torch.Tensor, step: int) -> Finding:
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


def _backward_finding(
    origin: BackwardOrigin, tracer: _Tracer, params: Sequence[tuple[str, torch.Tensor]], step: int
) -> Finding:
    node = origin.node
    call = tracer.module_at(node._sequence_nr())
    mod_name = call.name if call is not None else None
    kind = origin.kind or _kind(origin.grad)
    where = _describe(mod_name, call.module if call is not None else None)
    parameter = _param_fed_by(node, origin.index, params)
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


def localize(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    *,
    compute_loss: ComputeLoss | None = None,
    zero_grad: bool = True,
    eager: bool = False,
) -> Finding | None:
    """Replay one training step and report the first place a NaN/Inf appears (SEN105), or None.

    Call it with ``model``/``optimizer`` (and the RNGs) in the state they had *before* the failing
    step; ``step`` is only copied into the finding. The step is: (``zero_grad``: set grads to None),
    forward, loss, backward, ``optimizer.step()`` (skipped when ``optimizer`` is None). Everything
    it touches (model, ``loss_fn`` if it is a module, optimizer, RNGs) is restored before returning.
    ``eager`` sums every module input and output as it is seen (for models that overwrite values in
    place; otherwise that is only done when needed, by a second replay). Exceptions raised by the
    user's model or loss propagate. A training loop that still holds the failing step's graph
    should use :func:`checked_step` instead, which does not run the forward again.
    """
    snap = Snapshot.capture([model, loss_fn], None, grads="ref" if zero_grad else True, values=False)
    before_step: list[Snapshot] = []
    named = list(model.named_parameters())
    if isinstance(loss_fn, nn.Module) and loss_fn is not model:
        seen = {id(p) for _, p in named}
        named += [(f"loss_fn.{n}", p) for n, p in loss_fn.named_parameters() if id(p) not in seen]
    pre_grads = {id(p): p.grad for _, p in named}

    def forward() -> torch.Tensor:
        with torch.enable_grad():
            loss, _ = compute(model, loss_fn, batch, compute_loss)
        return loss

    def update() -> None:
        assert optimizer is not None
        before_step.append(Snapshot.capture([model], optimizer, rng=False, grads=False, buffers=False))
        optimizer_step(optimizer)

    def run(eager_now: bool) -> Finding | None:
        for _, p in named:
            p.grad = None if zero_grad else pre_grads[id(p)]
        return checked_step(
            model,
            batch,
            forward,
            named,
            update=update if optimizer is not None else None,
            step=step,
            replay=None if eager_now else replay,
            eager=eager_now,
            expect_failure=True,
        )

    def replay() -> Finding | None:
        snap.restore()
        return run(True)

    try:
        return run(eager)
    finally:
        for s in reversed(before_step):
            s.restore()
        snap.restore()
