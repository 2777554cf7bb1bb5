"""Snapshot and bit-exact restore of everything a probe (or a replay) may touch.

A :class:`Snapshot` captures, for one or more modules, an optional optimizer and the random number
generators:

- every parameter (the ``Parameter`` objects held by each module, their values, ``requires_grad``
  and their ``.grad``: the grad *object*, its values, or ``None``),
- every buffer (the buffer objects held by each module and their values, ``None`` buffers too),
- the ``training`` flag of every submodule,
- the optimizer's ``state`` (per-parameter dicts and their tensors) and ``param_groups``,
- the RNG streams: torch CPU, every CUDA device (when CUDA is initialised), MPS (when available),
  Python's ``random`` and NumPy's legacy global generator (when NumPy is importable).

:meth:`Snapshot.restore` puts all of that back *in place*: the same ``Parameter``, buffer, grad and
optimizer-state tensor objects end up with the same bits (values are copied back into the original
storage, so views and references the user holds stay valid). A value that did not change is not
written at all, so restoring an untouched model does not bump autograd version counters (a graph
the user built before the probe can still be backpropagated).

Typical use::

    snap = Snapshot.capture(model, optimizer)
    try:
        ...  # train, replay, poke around
    finally:
        snap.restore()

or ``with preserved(model, optimizer): ...``. The loop monitor uses the same class to replay a
failing step: capture before the step, restore, then call :func:`sentinel.probes.nonfinite.localize`.
"""

from __future__ import annotations

import copy
import random
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "RNGState",
    "Snapshot",
    "capture_rng",
    "preserved",
    "restore_rng",
    "same_bits",
]

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


#: A parameter whose gradient is this small relative to its own magnitude cannot move in float32 under
#: SGD-like updates (the bias of a layer followed by batch norm, whose true gradient is 0): it not
#: changing is expected, not a bug.
VANISHING_GRAD = 1e-6


#: For one optimizer step left bit-identical: below this ratio of gradient to weight norm, ``lr * grad``
#: at common learning rates (<= 1e-2) is under float32's resolution of the weights (~1e-7 relative).
BELOW_PRECISION = 1e-4


def vanishing(grad_norm: float, param: torch.Tensor, ratio: float = VANISHING_GRAD) -> bool:
    """Is a gradient of norm ``grad_norm`` too small to move ``param`` (see :data:`VANISHING_GRAD`)?"""
    scale = float(torch.linalg.vector_norm(param.detach().float())) if param.numel() else 0.0
    return grad_norm <= ratio * scale


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` have the same dtype, shape, device type and identical bits.

    NaNs compare equal to themselves (bitwise), ``-0.0`` differs from ``0.0``. Tensors on ``meta``
    have no values: they compare equal when dtype and shape match.
    """
    if a.dtype != b.dtype or a.shape != b.shape or a.device.type != b.device.type:
        return False
    if a.is_meta or b.is_meta:
        return True
    if a.is_sparse or b.is_sparse:
        a, b = a.to_dense(), b.to_dense()
    if a.device != b.device:
        b = b.to(a.device)
    if a.is_floating_point() or a.is_complex():
        if a.is_complex():
            a, b = torch.view_as_real(a), torch.view_as_real(b)
        size = a.element_size()
        int_dtype = _INT_OF_SIZE.get(size)
        if int_dtype is None:  # pragma: no cover - no such float dtype today
            return bool(torch.equal(a, b))
        return bool(torch.equal(a.contiguous().view(int_dtype), b.contiguous().view(int_dtype)))
    return bool(torch.equal(a, b))


def _clone(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone()


def _put_back(original: torch.Tensor, saved: torch.Tensor) -> None:
    """Write ``saved`` into ``original`` in place unless the bits already match."""
    if same_bits(original, saved):
        return
    with torch.no_grad():
        same_layout = original.shape == saved.shape and original.dtype == saved.dtype
        if same_layout and original.device == saved.device:
            original.copy_(saved)
        else:  # the probe replaced the storage (e.g. moved it): give the object its old storage back
            original.data = saved.clone()


# --------------------------------------------------------------------------------------------- RNG


@dataclass
class RNGState:
    """The state of every random number generator a training step may draw from."""

    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor] | None = None
    mps: torch.Tensor | None = None
    python: Any = None
    numpy: Any = None


def _numpy() -> Any:
    if "numpy" in sys.modules:
        return sys.modules["numpy"]
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def capture_rng() -> RNGState:
    """Capture torch (CPU, CUDA when initialised, MPS), Python ``random`` and NumPy RNG states."""
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    mps = None
    mps_mod = getattr(torch, "mps", None)
    if mps_mod is not None and torch.backends.mps.is_available():  # pragma: no cover - macOS only
        mps = mps_mod.get_rng_state()
    np = _numpy()
    return RNGState(
        torch_cpu=torch.get_rng_state(),
        cuda=cuda,
        mps=mps,
        python=random.getstate(),
        numpy=np.random.get_state() if np is not None else None,
    )


def restore_rng(state: RNGState) -> None:
    """Restore what :func:`capture_rng` captured.

    If CUDA was not initialised at capture time but is now (the probe ran on the GPU), its
    generators are re-seeded with ``torch.initial_seed()``, which is what lazy initialisation
    would have given the user.
    """
    torch.set_rng_state(state.torch_cpu)
    if state.cuda is not None:
        torch.cuda.set_rng_state_all(state.cuda)
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(torch.initial_seed())
    if state.mps is not None:  # pragma: no cover - macOS only
        torch.mps.set_rng_state(state.mps)
    random.setstate(state.python)
    if state.numpy is not None:
        np = _numpy()
        if np is not None:
            np.random.set_state(state.numpy)


# ------------------------------------------------------------------------------------------ modules


@dataclass(slots=True)
class _ParamRecord:
    param: torch.Tensor
    value: torch.Tensor | None
    requires_grad: bool
    grad: torch.Tensor | None
    grad_value: torch.Tensor | None


@dataclass(slots=True)
class _ModuleRecord:
    module: nn.Module
    training: bool
    parameters: dict[str, Any]
    buffers: dict[str, Any]


@dataclass
class _OptimizerRecord:
    optimizer: torch.optim.Optimizer
    groups_list: list[dict[str, Any]]
    groups: list[tuple[dict[str, Any], dict[str, Any]]]
    state_obj: Any
    # per parameter: (its state dict object, {key: (original value object, saved copy)})
    state: list[tuple[Any, dict[str, Any], dict[str, tuple[Any, Any]]]]


def _same_entries(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same keys in the same order holding the very same objects (identity, not ``==``)."""
    if len(a) != len(b):
        return False
    for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
        if va is not vb or ka != kb:
            return False
    return True


def _same_items(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _copy_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _clone(value)
    try:
        return copy.deepcopy(value)
    except Exception:  # an exotic object: keep the reference
        return value


def _restore_value(original: Any, saved: Any) -> Any:
    """Return the object to store back: the original tensor with the saved bits, or the saved copy."""
    if isinstance(original, torch.Tensor) and isinstance(saved, torch.Tensor):
        _put_back(original, saved)
        return original
    return _copy_value(saved)


@dataclass
class Snapshot:
    """Everything needed to put modules, an optimizer and the RNGs back exactly as they were."""

    modules: list[_ModuleRecord] = field(default_factory=list)
    params: list[_ParamRecord] = field(default_factory=list)
    buffers: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    optimizer: _OptimizerRecord | None = None
    rng: RNGState | None = None
    grads: bool | str = True

    @classmethod
    def capture(
        cls,
        modules: nn.Module | Iterable[Any] | None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        rng: bool = True,
        grads: bool | str = True,
        values: bool = True,
        buffers: bool = True,
    ) -> Snapshot:
        """Capture ``modules`` (one module or an iterable; non-modules are ignored), ``optimizer``
        and, unless ``rng=False``, the RNG states.

        Cheaper partial snapshots, for callers that know what they will touch:
        ``grads="ref"`` keeps which grad *object* each parameter had (restored by re-assignment,
        enough when the caller only sets grads to None and lets backward create new ones);
        ``grads=False`` ignores grads; ``values=False`` does not copy parameter values (flags,
        ``requires_grad`` and identity are still restored); ``buffers=False`` does not copy buffers.
        """
        if modules is None:
            mods: list[nn.Module] = []
        elif isinstance(modules, nn.Module):
            mods = [modules]
        else:
            mods = [m for m in modules if isinstance(m, nn.Module)]
        snap = cls(grads=grads)
        seen_modules: set[int] = set()
        seen_tensors: set[int] = set()
        for root in mods:
            for module in root.modules():
                if id(module) in seen_modules:
                    continue
                seen_modules.add(id(module))
                snap.modules.append(
                    _ModuleRecord(module, module.training, dict(module._parameters), dict(module._buffers))
                )
                for p in module._parameters.values():
                    if p is None or id(p) in seen_tensors:
                        continue
                    seen_tensors.add(id(p))
                    g = p.grad if grads else None
                    g_value = None if g is None or grads == "ref" else _clone(g)
                    snap.params.append(_ParamRecord(p, _clone(p) if values else None, p.requires_grad, g, g_value))
                if not buffers:
                    continue
                for b in module._buffers.values():
                    if b is None or id(b) in seen_tensors:
                        continue
                    seen_tensors.add(id(b))
                    snap.buffers.append((b, _clone(b)))
        if optimizer is not None:
            snap.optimizer = _capture_optimizer(optimizer)
        if rng:
            snap.rng = capture_rng()
        return snap

    def restore(self) -> None:
        """Put everything back (in place, bit-exact). Safe to call more than once."""
        for rec in self.modules:
            m = rec.module
            if m.training != rec.training:
                m.training = rec.training
            if not _same_entries(m._parameters, rec.parameters):
                m._parameters.clear()
                m._parameters.update(rec.parameters)
            if not _same_entries(m._buffers, rec.buffers):
                m._buffers.clear()
                m._buffers.update(rec.buffers)
        for pr in self.params:
            p = pr.param
            if pr.value is not None:
                _put_back(p, pr.value)
            if p.requires_grad != pr.requires_grad:
                p.requires_grad_(pr.requires_grad)
            if not self.grads:
                continue
            if pr.grad is None:
                if p.grad is not None:
                    p.grad = None
            else:
                if pr.grad_value is not None:
                    _put_back(pr.grad, pr.grad_value)
                if p.grad is not pr.grad:
                    p.grad = pr.grad
        for b, value in self.buffers:
            _put_back(b, value)
        if self.optimizer is not None:
            _restore_optimizer(self.optimizer)
        if self.rng is not None:
            restore_rng(self.rng)


def _capture_optimizer(opt: torch.optim.Optimizer) -> _OptimizerRecord:
    groups = []
    for g in opt.param_groups:
        saved = {k: (list(v) if k == "params" else _copy_value(v)) for k, v in g.items()}
        groups.append((g, saved))
    state = []
    for key, per_param in opt.state.items():
        if isinstance(per_param, dict):
            entries = {k: (v, _copy_value(v)) for k, v in per_param.items()}
        else:  # pragma: no cover - exotic optimizers
            entries = {}
        state.append((key, per_param, entries))
    return _OptimizerRecord(opt, list(opt.param_groups), groups, opt.state, state)


def _restore_optimizer(rec: _OptimizerRecord) -> None:
    opt = rec.optimizer
    if not _same_items(opt.param_groups, rec.groups_list):
        opt.param_groups[:] = rec.groups_list
    for group, saved in rec.groups:
        for k in list(group):
            if k not in saved:
                del group[k]
        for k, v in saved.items():
            if k == "params":
                if not _same_items(group.get("params", []), v):
                    group["params"] = list(v)
            else:
                group[k] = _restore_value(group.get(k), v)
    if opt.state is not rec.state_obj:
        opt.state = rec.state_obj
    state = opt.state
    wanted = {id(key) for key, _, _ in rec.state}
    for key in [k for k in state if id(k) not in wanted]:
        del state[key]
    for key, per_param, entries in rec.state:
        if isinstance(per_param, dict):
            for k in [k for k in per_param if k not in entries]:
                del per_param[k]
            for k, (original, saved) in entries.items():
                per_param[k] = _restore_value(original, saved)
        state[key] = per_param


@contextmanager
def preserved(
    modules: nn.Module | Iterable[Any] | None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    rng: bool = True,
) -> Iterator[Snapshot]:
    """Context manager: capture on entry, restore on exit (also when the body raises)."""
    snap = Snapshot.capture(modules, optimizer, rng=rng)
    try:
        yield snap
    finally:
        snap.restore()
