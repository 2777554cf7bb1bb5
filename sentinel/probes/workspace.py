"""The probe's private copy of the user's model, loss, batch and optimizer.

Every probe runs inside :func:`workspace`: the user's modules, optimizer and RNGs are captured
(:class:`sentinel.probes.state.Snapshot`), the model (with the loss if it is a module, and a custom
``compute_loss``) is deep-copied and, when a device is asked for, moved there with the batch; the
probe trains the copy with a *fresh* optimizer of the user's class and hyperparameters. On exit
everything the user owns is restored bit-exactly, whatever happened.

If the model cannot be deep-copied, the probe runs on the user's objects in place; the snapshot
still restores them (moved tensors get their old storage back, so views held elsewhere may detach).
"""

from __future__ import annotations

import copy
import functools
import inspect
import types
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sentinel.probes.batch import ComputeLoss, LossTypeError, clone_to, compute
from sentinel.probes.errors import UserCodeError, call_user
from sentinel.probes.nonfinite import optimizer_step
from sentinel.probes.state import Snapshot

__all__ = [
    "DEFAULT_LR",
    "Workspace",
    "reference_device",
    "reference_dtype",
    "resolve_device",
    "synchronize",
    "user_param_names",
    "workspace",
]

DEFAULT_LR = 1e-2
"""Learning rate of the Adam optimizer the probes use when the user gives none: 10x the usual 1e-3,
because the probe gets ~100 steps to memorize one batch, not thousands to generalize."""

DeviceLike = str | torch.device | None


def resolve_device(device: DeviceLike) -> torch.device | None:
    """``None`` -> None (leave tensors where they are); ``"auto"`` -> ``cuda`` if available else ``cpu``."""
    if device is None:
        return None
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine (use --device cpu or auto)")
    return dev


def synchronize(device: torch.device | None = None) -> None:
    """Wait for queued GPU work (so wall-clock timings are honest); a no-op on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        if device is None or device.type == "cuda":
            torch.cuda.synchronize(device if device is not None and device.index is not None else None)


def _majority(values: list[Any]) -> Any:
    if not values:
        return None
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)  # ties: the first one met


def reference_device(model: nn.Module) -> torch.device | None:
    """The model's device: where most of its parameters live (buffers if it has none)."""
    devs = [p.device for p in model.parameters()] or [b.device for b in model.buffers()]
    return _majority(devs)


def reference_dtype(model: nn.Module) -> torch.dtype | None:
    """The model's floating dtype: that of most of its floating-point parameters (or buffers)."""
    dts = [p.dtype for p in model.parameters() if p.is_floating_point()]
    dts = dts or [b.dtype for b in model.buffers() if b.is_floating_point()]
    return _majority(dts)


def _named_params(model: nn.Module, loss_fn: Any) -> list[tuple[str, torch.Tensor]]:
    out = list(model.named_parameters())
    if isinstance(loss_fn, nn.Module) and loss_fn is not model:
        seen = {id(p) for _, p in out}
        out += [(f"loss_fn.{n}", p) for n, p in loss_fn.named_parameters() if id(p) not in seen]
    return out


def user_param_names(model: nn.Module, loss_fn: Any = None) -> dict[int, str]:
    """``id(parameter) -> name`` (as ``named_parameters()`` spells it; ``loss_fn.`` prefix for the loss)."""
    return {id(p): n for n, p in _named_params(model, loss_fn)}


def _move_module(module: nn.Module, device: torch.device) -> None:
    """Move parameters and buffers one by one; those that cannot move (``meta``) stay."""
    for m in module.modules():
        for p in m._parameters.values():
            if p is not None and p.device != device and not p.is_meta:
                p.data = p.data.to(device)
        for k, b in list(m._buffers.items()):
            if b is not None and b.device != device and not b.is_meta:
                m._buffers[k] = b.to(device)


def _copy_hparam(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


def _construct(cls: type, groups: list[dict[str, Any]], defaults: dict[str, Any]) -> torch.optim.Optimizer:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover
        params = {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = dict(defaults)
    else:
        kwargs = {k: _copy_hparam(v) for k, v in defaults.items() if k in params}
    return cls(groups, **kwargs)


def _captured_refs(value: Any) -> list[Any]:
    """Objects a function-like ``value`` keeps: closure cells, defaults, a partial's arguments, a
    bound method's ``self`` (``copy.deepcopy`` shares functions, so the copy keeps these too)."""
    if isinstance(value, functools.partial):
        return [value.func, *value.args, *value.keywords.values()]
    if isinstance(value, types.MethodType):
        return [value.__self__]
    if isinstance(value, types.FunctionType):
        refs = [c.cell_contents for c in value.__closure__ or () if c.cell_contents is not None]
        return refs + list(value.__defaults__ or ())
    return []


def _captured_original(original: nn.Module, copied: nn.Module) -> str | None:
    """The name of the first module of ``copied`` holding a function (attribute, or forward/backward
    hook) that captures a module, parameter or buffer of ``original``; None when the copy is
    independent."""
    owned = {id(m) for m in original.modules()}
    owned |= {id(t) for t in original.parameters()} | {id(t) for t in original.buffers()}
    for name, module in copied.named_modules():
        values: list[Any] = list(module.__dict__.values())
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            values += list(getattr(module, hooks, {}).values())
        values += [v for container in values if isinstance(container, (list, tuple)) for v in container]
        for value in values:
            for ref in _captured_refs(value):
                if id(ref) in owned or any(id(r) in owned for r in _captured_refs(ref)):
                    return f"module `{name}` of the model" if name else "the model"
    return None


@dataclass
class Workspace:
    """What a probe works on: copies of the user's objects (or the objects themselves, ``inplace``)."""

    model: nn.Module
    loss_fn: Any
    batch: Any
    device: torch.device | None
    compute_loss: ComputeLoss | None
    user_optimizer: torch.optim.Optimizer | None
    user_names: dict[int, str]
    inplace: bool = False
    notes: list[str] = field(default_factory=list)

    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return _named_params(self.model, self.loss_fn)

    def modules(self) -> list[Any]:
        return [self.model, self.loss_fn]

    def optimized_names(self) -> set[str] | None:
        """Names of the parameters the user's optimizer updates (None: no optimizer was given)."""
        if self.user_optimizer is None:
            return None
        return {
            self.user_names[id(p)]
            for g in self.user_optimizer.param_groups
            for p in g["params"]
            if id(p) in self.user_names
        }

    def make_optimizer(self) -> tuple[torch.optim.Optimizer | None, str]:
        """A fresh optimizer on the copy: the user's class and per-group hyperparameters, or Adam.

        Returns ``(optimizer or None when it would hold no parameter, description)``.
        """
        named = self.named_parameters()
        if self.user_optimizer is None:
            params = [p for _, p in named if p.requires_grad]
            if not params:
                return None, "no trainable parameters"
            return torch.optim.Adam(params, lr=DEFAULT_LR), f"Adam(lr={DEFAULT_LR:g}), the default: no optimizer given"
        by_name = dict(named)
        user = self.user_optimizer
        groups = []
        for g in user.param_groups:
            ps = [by_name[self.user_names[id(p)]] for p in g["params"] if id(p) in self.user_names]
            if ps:
                groups.append({"params": ps, **{k: _copy_hparam(v) for k, v in _base_hparams(g).items()}})
        desc = _describe_optimizer(user)
        if not groups:
            return None, desc
        try:
            return _construct(type(user), groups, dict(user.defaults)), desc
        except Exception as exc:
            params = [p for g in groups for p in g["params"]]
            note = f"could not re-create {type(user).__name__} ({exc}); used Adam(lr={DEFAULT_LR:g})"
            self.notes.append(note)
            return torch.optim.Adam(params, lr=DEFAULT_LR), note

    def forward(self) -> tuple[torch.Tensor, Any]:
        """Forward pass and loss on the workspace batch; user exceptions become UserCodeError."""
        try:
            return compute(self.model, self.loss_fn, self.batch, self.compute_loss, call=call_user)
        except LossTypeError as exc:
            raise UserCodeError(exc.what, exc) from exc

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        if loss.requires_grad:
            call_user("loss.backward()", loss.backward, retain_graph=retain_graph)

    def zero_grad(self) -> None:
        for _, p in self.named_parameters():
            p.grad = None

    def step(self, optimizer: torch.optim.Optimizer | None) -> None:
        if optimizer is None:
            return

        def closure() -> torch.Tensor:
            self.zero_grad()
            loss, _ = self.forward()
            self.backward(loss)
            return loss

        call_user("optimizer.step()", optimizer_step, optimizer, closure)


def _base_hparams(group: dict[str, Any]) -> dict[str, Any]:
    """A param group's hyperparameters (not its params) with the learning rate its scheduler started
    from: an LR scheduler records it as ``initial_lr``, and the current ``lr`` may be anything on
    the schedule (0 at the start of a linear warmup, a fraction of it at the end of a decay). The
    probes train from scratch, so they use the base rate."""
    hp = {k: v for k, v in group.items() if k != "params"}
    if "initial_lr" in hp:
        hp["lr"] = hp["initial_lr"]
    return hp


def _describe_optimizer(opt: torch.optim.Optimizer) -> str:
    lrs = []
    for g in opt.param_groups:
        lr = _base_hparams(g).get("lr")
        if isinstance(lr, torch.Tensor):
            lr = lr.item()
        lrs.append(f"{lr:g}" if isinstance(lr, (int, float)) else str(lr))
    lr_text = lrs[0] if len(set(lrs)) == 1 else "[" + ", ".join(lrs) + "]"
    return f"{type(opt).__name__}(lr={lr_text})"


@contextmanager
def workspace(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    device: torch.device | None = None,
    compute_loss: ComputeLoss | None = None,
) -> Iterator[Workspace]:
    """Yield a :class:`Workspace`; restore the user's model, loss, optimizer and RNGs on exit."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    snap = Snapshot.capture([model, loss_fn], optimizer)
    try:
        names = user_param_names(model, loss_fn)
        inplace = False
        note = "the model could not be deep-copied: probed in place and restored"
        try:
            model_c, loss_c, compute_c = copy.deepcopy((model, loss_fn, compute_loss))
        except Exception:
            model_c, loss_c, compute_c, inplace = model, loss_fn, compute_loss, True
        else:
            captured = _captured_original(model, model_c)
            if captured is not None:
                model_c, loss_c, compute_c, inplace = model, loss_fn, compute_loss, True
                note = (
                    f"{captured} holds a function that captures the model's own modules or"
                    " tensors (e.g. self.f = lambda x: self.fc(x)), which a copy would still share:"
                    " probed in place and restored"
                )
        for m in (model_c, loss_c):
            if isinstance(m, nn.Module):
                if not inplace:
                    for p in m.parameters():
                        p.grad = None
                if device is not None:
                    _move_module(m, device)
        ws = Workspace(
            model=model_c,
            loss_fn=loss_c,
            batch=clone_to(batch, device),
            device=device,
            compute_loss=compute_c,
            user_optimizer=optimizer,
            user_names=names,
            inplace=inplace,
        )
        if inplace:
            ws.notes.append(note)
        yield ws
    finally:
        snap.restore()
