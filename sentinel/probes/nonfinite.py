"""Find where a NaN or Inf first appears in one training step (SEN105).

Two layers, so that healthy steps cost almost nothing:

- :func:`first_nonfinite` / :func:`all_finite`: one fused reduction (``torch._foreach_norm`` with
  ``ord=inf``, one host sync per device) over a list of tensors. A training loop calls it on the
  loss, on all gradients after ``backward()`` and on all parameters after ``step()``.
- :func:`localize`: called only when that cheap check failed. It replays the step once, from the
  state the caller restored (see :mod:`sentinel.probes.state`), with light instrumentation:

  1. inputs: every floating tensor of the batch;
  2. forward: pre/post hooks on every module record its inputs, outputs and the range of autograd
     sequence numbers created while it ran; nothing is reduced unless something downstream turns
     out non-finite. The origin is the first module (in completion order, so the innermost) whose
     output is non-finite while its inputs were finite;
  3. loss: non-finite although the model output is finite;
  4. backward: a hook on every autograd node of the graph keeps its outgoing gradients; the origin
     is the first node, in execution order, that emits a non-finite gradient (its incoming gradient
     was finite: every earlier node emitted finite ones). The node is mapped to the innermost module
     that was running when it was created (by sequence number);
  5. update: the first parameter that is non-finite after ``optimizer.step()``.

  Then the model, optimizer and RNGs are restored as they were when ``localize`` was called.

Known limits: a module output that something *later* modifies in place is not trusted as evidence
(the blame may move one level up, to the parent), except when the in-place op is a module that
declares ``inplace=True`` (``nn.ReLU(inplace=True)``, ...): those have their inputs checked eagerly,
which also vouches for the module that produced them. Keeping every node's gradient until the end
of the replayed backward costs about one extra copy of the activation gradients.
"""

from __future__ import annotations

import math
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

_INF = math.inf


def _checkable(t: Any) -> bool:
    return (
        isinstance(t, torch.Tensor)
        and (t.is_floating_point() or t.is_complex())
        and not t.is_meta
        and t.numel() > 0
    )


def _values(t: torch.Tensor) -> torch.Tensor:
    if t.is_sparse:
        return t.coalesce().values()
    return t.detach()


def _finite_flags(tensors: Sequence[torch.Tensor]) -> list[bool]:
    """Per tensor: True when every element is finite. One fused reduction per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    flags = [True] * len(tensors)
    for idx in by_device.values():
        vals = [_values(tensors[i]) for i in idx]
        try:
            norms = torch._foreach_norm(vals, _INF)
        except Exception:  # pragma: no cover - older torch or an exotic dtype
            norms = [torch.linalg.vector_norm(v.abs() if v.is_complex() else v, _INF) for v in vals]
        ok = torch.isfinite(torch.stack([n.float() for n in norms])).tolist()
        for i, f in zip(idx, ok, strict=True):
            flags[i] = bool(f)
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
    """True when no tensor in ``tensors`` holds a NaN or Inf (cheap: one fused check per device)."""
    return first_nonfinite(tensors) is None


def _kind(t: torch.Tensor) -> str:
    return "NaN" if bool(torch.isnan(_values(t)).any()) else "Inf"


def optimizer_step(optimizer: torch.optim.Optimizer, closure: Any = None) -> None:
    """``optimizer.step()``; optimizers that need a closure (LBFGS) get ``closure``."""
    if isinstance(optimizer, torch.optim.LBFGS):
        optimizer.step(closure)
    else:
        optimizer.step()


# ------------------------------------------------------------------------------------ localization


def _sequence_nr() -> int:
    get = getattr(torch.autograd, "_get_sequence_nr", None)
    if get is not None:
        return int(get())
    probe = torch.zeros((), requires_grad=True)  # pragma: no cover - torch without the helper
    with torch.enable_grad():  # pragma: no cover
        return (probe * 1).grad_fn._sequence_nr() + 1  # type: ignore[union-attr]


@dataclass
class _Call:
    name: str
    module: nn.Module
    start: int
    inputs: list[tuple[torch.Tensor, int]]
    inputs_ok: bool | None = None  # checked eagerly for in-place modules
    end: int = -1
    outputs: list[tuple[torch.Tensor, int]] = field(default_factory=list)


def _tensors_of(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, tuple) and all(isinstance(t, torch.Tensor) for t in obj):
        return list(obj)
    return [t for _, t in tensor_items(obj, "")]


class _Tracer:
    """Forward hooks on every module of ``model``: records calls, cheap unless asked."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(m): n for n, m in model.named_modules()}
        self.stack: list[_Call] = []
        self.calls: list[_Call] = []  # completion order
        self.handles: list[Any] = []
        self.known: dict[tuple[int, int], bool] = {}  # (id, version) -> finite, seen before an in-place op
        for _, m in model.named_modules():
            self.handles.append(m.register_forward_pre_hook(self._pre, with_kwargs=True))
            self.handles.append(m.register_forward_hook(self._post, with_kwargs=True, always_call=True))

    def _pre(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        ins = _tensors_of(args) + (_tensors_of(kwargs) if kwargs else [])
        call = _Call(self.names.get(id(module), ""), module, _sequence_nr(), [(t, t._version) for t in ins])
        if getattr(module, "inplace", False) is True:
            # this module will overwrite its input: look at it now, and remember what we saw
            checkable = [t for t in ins if _checkable(t)]
            flags = _finite_flags(checkable) if checkable else []
            for t, ok in zip(checkable, flags, strict=True):
                self.known[(id(t), t._version)] = ok
            call.inputs_ok = all(flags)
        self.stack.append(call)

    def _post(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if not self.stack:  # pragma: no cover - hooks registered mid-forward
            return
        call = self.stack.pop()
        call.end = _sequence_nr() - 1
        call.outputs = [(t, t._version) for t in _tensors_of(output)]
        self.calls.append(call)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def origin(self) -> tuple[_Call, torch.Tensor] | None:
        """The first call whose (unmodified) output is non-finite while its inputs were finite."""
        pool: dict[int, torch.Tensor] = {}
        for c in self.calls:
            for t, _ in c.inputs + c.outputs:
                if _checkable(t):
                    pool.setdefault(id(t), t)
        ids = list(pool)
        flags = dict(zip(ids, _finite_flags([pool[i] for i in ids]), strict=True)) if ids else {}

        def finite(t: torch.Tensor, version: int) -> bool | None:
            """Was ``t`` finite at ``version``? None: unknown (overwritten in place since)."""
            if t._version == version:
                return flags.get(id(t), True)
            return self.known.get((id(t), version))

        for c in self.calls:
            bad = [t for t, v in c.outputs if finite(t, v) is False]
            if not bad:
                continue
            if c.inputs_ok is not None:
                inputs_ok = c.inputs_ok
            else:  # unknown inputs count as finite: their producer, if hooked, was checked first
                inputs_ok = all(finite(t, v) is not False for t, v in c.inputs)
            if inputs_ok:
                return c, bad[0]
        return None

    def module_at(self, seq: int) -> _Call | None:
        """The innermost module call during which autograd node number ``seq`` was created."""
        best: _Call | None = None
        for c in self.calls:
            if c.start <= seq <= c.end and (best is None or c.start >= best.start):
                best = c
        return best


def _graph_nodes(root: Any) -> list[Any]:
    seen: set[int] = set()
    out = []
    stack = [root]
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        out.append(n)
        for nxt, _ in n.next_functions:
            if nxt is not None and id(nxt) not in seen:
                stack.append(nxt)
    return out


def _bad_param(module: nn.Module | None, prefix: str, *, grads: bool) -> str | None:
    if module is None:
        return None
    named = [(n, (p.grad if grads else p)) for n, p in module.named_parameters()]
    i = first_nonfinite([t for _, t in named])
    if i is None:
        return None
    return f"{prefix}.{named[i][0]}" if prefix else named[i][0]


def _finding(stage: str, step: int, module: str | None, parameter: str | None, message: str,
             **extra: Any) -> Finding:
    details: dict[str, Any] = {"stage": stage, "module": module, "parameter": parameter, "step": step}
    details.update(extra)
    return Finding("SEN105", message, details)


def _describe(name: str | None, module: nn.Module | None) -> str:
    if name is None:
        return "the loss function"
    cls = type(module).__name__ if module is not None else "?"
    return f"the model itself ({cls}.forward)" if name == "" else f"module `{name}` ({cls})"


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
    snap = Snapshot.capture([model, loss_fn], optimizer)
    try:
        return _localize(model, loss_fn, batch, optimizer, step, compute_loss, zero_grad)
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
) -> Finding | None:
    items = list(tensor_items(batch))
    i = first_nonfinite([t for _, t in items])
    if i is not None:
        name, t = items[i]
        kind = _kind(t)
        return _finding(
            "input", step, None, None,
            f"{name} holds {kind} values before the model runs (step {step}): the data pipeline "
            "produced them; filter or clean the batch.",
            tensor=name, value=kind.lower(),
        )
    params = [p for p in model.parameters()]
    if zero_grad:
        for p in params:
            p.grad = None
    tracer = _Tracer(model)
    node_records: list[tuple[Any, tuple[Any, ...]]] = []
    handles: list[Any] = []
    try:
        with torch.enable_grad():
            loss, _ = compute(model, loss_fn, batch, compute_loss)
        tracer.remove()
        loss_ok = all_finite([loss])
        grads_ok = True
        if loss_ok and loss.grad_fn is not None:
            for node in _graph_nodes(loss.grad_fn):
                handles.append(node.register_hook(lambda gi, go, node=node: node_records.append((node, gi))))
            loss.backward()
            grads_ok = all_finite([p.grad for p in params])
    finally:
        tracer.remove()
        for h in handles:
            h.remove()

    if not loss_ok or not grads_ok:
        found = tracer.origin()
        if found is not None:
            call, out = found
            kind = _kind(out)
            parameter = _bad_param(call.module, call.name, grads=False)
            why = f"; its parameter `{parameter}` is already non-finite" if parameter else ""
            return _finding(
                "forward", step, call.name, parameter,
                f"{kind} first appears in the output of {_describe(call.name, call.module)} at step {step}"
                f" although its inputs were finite{why}. Look for log/sqrt/pow/division of values that"
                " can reach 0 or below for some inputs, or overflowing exp.",
                value=kind.lower(),
            )
    if not loss_ok:
        kind = _kind(loss)
        return _finding(
            "loss", step, None, None,
            f"the loss is {kind} at step {step} although the model output is finite: check the loss"
            " (log of 0, division by zero, targets out of range, probabilities outside [0, 1]).",
            value=kind.lower(),
        )
    if not grads_ok:
        flat: list[Any] = []
        owner: list[int] = []
        for k, (_, gi) in enumerate(node_records):
            for g in gi:
                flat.append(g)
                owner.append(k)
        j = first_nonfinite(flat)
        if j is not None:
            node = node_records[owner[j]][0]
            call = tracer.module_at(node._sequence_nr())
            mod_name = call.name if call is not None else None
            kind = _kind(flat[j])
            where = _describe(mod_name, call.module if call is not None else None)
            parameter = _bad_param(call.module, call.name, grads=True) if call is not None else None
            return _finding(
                "backward", step, mod_name, parameter,
                f"the gradient becomes {kind} in {node.name()} inside {where}"
                f" at step {step}, although the gradient flowing into it was finite. The forward value"
                " was finite, its derivative is not: typically sqrt/pow/log/div evaluated at 0 (add an"
                " epsilon, e.g. sqrt(x + 1e-12)) or a torch.where whose unused branch is non-finite.",
                op=node.name(), value=kind.lower(),
            )
        named = list(model.named_parameters())
        k = first_nonfinite([p.grad for _, p in named])
        pname = named[k][0] if k is not None else None
        return _finding(
            "backward", step, None, pname,
            f"gradients are non-finite at step {step} but no autograd node produced them in this"
            " step (they were already non-finite before backward: gradient accumulation?).",
        )
    if optimizer is not None:
        optimizer_step(optimizer)
        named = list(model.named_parameters())
        k = first_nonfinite([p for _, p in named])
        if k is not None:
            pname, p = named[k]
            kind = _kind(p)
            mod_name = pname.rpartition(".")[0]
            return _finding(
                "update", step, mod_name, pname,
                f"parameter `{pname}` becomes {kind} in optimizer step {step} although loss and gradients"
                " were finite: the learning rate is probably too high (or eps/weight decay is invalid).",
                value=kind.lower(),
            )
    return None
