"""How a probe calls the model and the loss on a batch, and how batch tensors are named.

The batch convention (documented in the README):

=============================================  ==========================================================
``batch``                                      what the probe runs
=============================================  ==========================================================
``(inputs, targets)`` (tuple or list of 2)     ``loss_fn(model(inputs), targets)``
``(a, b, ..., targets)`` (3 or more)           ``loss_fn(model(a, b, ...), targets)``
``(inputs,)`` or a single tensor               ``loss_fn(model(inputs))``
``{"inputs": ..., "targets": ...}``            ``loss_fn(model(inputs), targets)``; input keys tried in
                                               order ``inputs``, ``input``, ``x``; target keys
                                               ``targets``, ``target``, ``labels``, ``label``, ``y``
``{"x": ..., "weights": ..., "y": ...}``       other fields are inputs too: ``model(x=..., weights=...)``
                                               when ``forward`` takes ``x`` by name (or ``**kwargs``),
                                               else ``model(x, weights=...)`` for the names it takes
``{"input_ids": ..., "labels": ...}``          no input key: ``loss_fn(model(**rest), labels)`` where
                                               ``rest`` is every key but the target key
=============================================  ==========================================================

Where "inputs" itself is a tuple/list it is splatted (``model(*inputs)``), a dict is passed as
keyword arguments (``model(**inputs)``). A loss that is not a scalar is averaged. For anything
else, pass ``compute_loss(model, loss_fn, batch) -> loss`` (the factory may return it as
``compute_loss``).

Tensor names used in findings: ``batch[0]``, ``batch[1]``, ``batch["x"]``, nested
``batch[0]["ids"]``; a bare tensor batch is ``batch``.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "INPUT_KEYS",
    "TARGET_KEYS",
    "ComputeLoss",
    "LossTypeError",
    "Plan",
    "clone_to",
    "compute",
    "plan",
    "tensor_items",
]

INPUT_KEYS = ("inputs", "input", "x")
TARGET_KEYS = ("targets", "target", "labels", "label", "y")

ComputeLoss = Callable[[nn.Module, Any, Any], torch.Tensor]


@dataclass
class Plan:
    """How to call the model (``args``/``kwargs``) and whether/which targets go to the loss."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    has_targets: bool = False
    targets: Any = None
    target_name: str | None = None
    input_names: list[str] = field(default_factory=list)


def _key(k: Any) -> str:
    if isinstance(k, str):
        return f"[{json.dumps(k)}]"
    return f"[{k!r}]"


def _spread(inputs: Any, prefix: str) -> tuple[tuple[Any, ...], dict[str, Any], list[str]]:
    if isinstance(inputs, Mapping):
        return (), dict(inputs), [prefix]
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}, [prefix]
    return (inputs,), {}, [prefix]


@functools.lru_cache(maxsize=256)
def _keywords(cls: type) -> tuple[frozenset[str], bool]:
    """The keyword names ``cls.forward`` accepts, and whether it takes ``**kwargs`` (the class's
    own ``forward``: an instance may be wrapped while a probe traces it)."""
    try:
        params = list(inspect.signature(cls.forward).parameters.values())[1:]  # skip self
    except (TypeError, ValueError):
        return frozenset(), True
    names = frozenset(
        p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _plan_mapping(batch: Mapping[str, Any], name: Callable[[Any], str], model: Any = None) -> Plan:
    tkey = next((k for k in TARGET_KEYS if k in batch), None)
    ikey = next((k for k in INPUT_KEYS if k in batch), None)
    extra = [k for k in batch if k not in (tkey, ikey)]
    if ikey is not None and extra and isinstance(model, nn.Module):
        # {"x": ..., "weights": ..., "y": ...}: the other fields are inputs too, passed by keyword
        names, var_kw = _keywords(type(model))
        if var_kw or ikey in names:
            kwargs = {k: v for k, v in batch.items() if k != tkey and (var_kw or k in names)}
            args: tuple[Any, ...] = ()
            input_names = [name(k) for k in kwargs]
        else:
            args, kwargs, input_names = _spread(batch[ikey], name(ikey))
            kwargs.update({k: batch[k] for k in extra if k in names})
            input_names += [name(k) for k in extra if k in names]
        p = Plan(args=args, kwargs=kwargs, input_names=input_names)
    elif ikey is not None:
        args, kwargs, names = _spread(batch[ikey], name(ikey))
        p = Plan(args=args, kwargs=kwargs, input_names=names)
    else:
        kwargs = {k: v for k, v in batch.items() if k != tkey}
        p = Plan(args=(), kwargs=kwargs, input_names=[name(k) for k in kwargs])
    if tkey is not None:
        p.has_targets, p.targets, p.target_name = True, batch[tkey], name(tkey)
    return p


def plan(batch: Any, model: Any = None) -> Plan:
    """Decide how ``batch`` is fed to the model and the loss (see the module docstring); ``model``
    tells which extra fields of a mapping batch its ``forward`` takes by keyword."""
    if isinstance(batch, tuple) and hasattr(batch, "_asdict"):  # namedtuple
        fields = batch._asdict()
        if any(k in fields for k in INPUT_KEYS + TARGET_KEYS):
            return _plan_mapping(fields, lambda k: f"batch.{k}", model)
        batch = tuple(batch)
    if isinstance(batch, Mapping):
        return _plan_mapping(batch, lambda k: "batch" + _key(k), model)
    if isinstance(batch, (tuple, list)):
        items = list(batch)
        if len(items) == 0:
            raise ValueError("the batch is an empty sequence")
        if len(items) == 1:
            args, kwargs, names = _spread(items[0], "batch[0]")
            return Plan(args=args, kwargs=kwargs, input_names=names)
        if len(items) == 2:
            args, kwargs, names = _spread(items[0], "batch[0]")
        else:
            args, kwargs = tuple(items[:-1]), {}
            names = [f"batch[{i}]" for i in range(len(items) - 1)]
        last = len(items) - 1
        return Plan(args, kwargs, True, items[-1], f"batch[{last}]", names)
    return Plan(args=(batch,), input_names=["batch"])


class LossTypeError(TypeError):
    """The loss (or ``compute_loss``) did not return a tensor."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message)
        self.what = what


def _direct(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def compute(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    compute_loss: ComputeLoss | None = None,
    *,
    call: Callable[..., Any] = _direct,
) -> tuple[torch.Tensor, Any]:
    """Run one forward pass and the loss. Returns ``(scalar loss, model output or None)``.

    ``call(what, fn, *args, **kwargs)`` runs each piece of user code (``what`` is ``"model"``,
    ``"loss_fn"`` or ``"compute_loss"``); the probes use it to tell whose code raised.
    """
    if compute_loss is not None:
        loss = call("compute_loss", compute_loss, model, loss_fn, batch)
        output = None
    else:
        p = plan(batch, model)
        output = call("model", model, *p.args, **p.kwargs)
        if p.has_targets:
            loss = call("loss_fn", loss_fn, output, p.targets)
        else:
            loss = call("loss_fn", loss_fn, output)
    if not isinstance(loss, torch.Tensor):
        what = "compute_loss" if compute_loss is not None else "loss_fn"
        raise LossTypeError(what, f"{what} returned a {type(loss).__name__}, not a tensor")
    if loss.numel() != 1:
        loss = loss.mean()
    elif loss.dim() != 0:
        loss = loss.reshape(())
    return loss, output


def tensor_items(obj: Any, prefix: str = "batch") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a nested structure of tuples, lists and mappings, with its name."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from tensor_items(v, prefix + _key(k))
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        for k in obj._fields:
            yield from tensor_items(getattr(obj, k), f"{prefix}.{k}")
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from tensor_items(v, f"{prefix}[{i}]")


def clone_to(obj: Any, device: torch.device | None) -> Any:
    """A copy of ``obj`` where every tensor is cloned (and moved to ``device`` unless None).

    Tensors on ``meta`` cannot be moved: they stay where they are (the device probe reports them).
    Leaf tensors keep ``requires_grad``.
    """
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if device is not None and t.device != device and not t.is_meta:
            t = t.to(device)
            if t.data_ptr() == obj.data_ptr():  # pragma: no cover - same storage
                t = t.clone()
        else:
            t = t.clone()
        if obj.requires_grad and obj.is_leaf:
            t.requires_grad_(True)
        return t
    if isinstance(obj, Mapping):
        items = {k: clone_to(v, device) for k, v in obj.items()}
        try:
            return type(obj)(items)
        except Exception:
            return items
    if isinstance(obj, tuple):
        items_t = [clone_to(v, device) for v in obj]
        if hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*items_t)
        return tuple(items_t)
    if isinstance(obj, list):
        return [clone_to(v, device) for v in obj]
    return obj
