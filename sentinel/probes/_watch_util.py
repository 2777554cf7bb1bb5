"""Small tensor helpers of the loop monitor (:mod:`sentinel.probes.watch`).

Everything here is read-only on the user's tensors: no in-place op, no RNG, no autograd graph.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sentinel.probes.batch import tensor_items
from sentinel.probes.devices import dtype_name
from sentinel.probes.nonfinite import all_finite

__all__ = [
    "all_finite",
    "autocast_enabled",
    "call_tensors",
    "detach_tree",
    "dtype_name",
    "eval_sensitive",
    "fingerprint",
    "grad_norms",
    "graph_tensors",
    "is_eval_sensitive_type",
    "is_finite",
    "quick_finite",
    "tensor_items",
]

# How deep to look into nested args (tuples of dicts of tensors).
_MAX_DEPTH = 4

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def call_tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """The tensors a module was called with, named ``input[0]`` (positional) or ``input["x"]`` (keyword)."""
    out = list(tensor_items(tuple(args), "input"))
    if kwargs:
        out.extend(tensor_items(kwargs, "input"))
    return out


def detach_tree(obj: Any, depth: int = 0) -> Any:
    """``obj`` with every tensor detached (shares storage; drops references to the caller's graph)."""
    if type(obj) is tuple and all(type(x) is torch.Tensor for x in obj):  # the common case, fast
        return tuple(x.detach() for x in obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if depth >= _MAX_DEPTH:
        return obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(detach_tree(x, depth + 1) for x in obj)
    if isinstance(obj, list):
        return [detach_tree(x, depth + 1) for x in obj]
    if type(obj) is dict:
        return {k: detach_tree(v, depth + 1) for k, v in obj.items()}
    return obj


def graph_tensors(output: Any) -> list[torch.Tensor]:
    """Tensors of a forward output that carry an autograd graph (have a ``grad_fn``)."""
    if isinstance(output, torch.Tensor):  # the common case, fast
        return [output] if output.grad_fn is not None else []
    return [t for _, t in tensor_items(output, "") if t.grad_fn is not None]


def is_finite(t: torch.Tensor) -> bool:
    return all_finite([t])


def grad_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of each tensor as one vector (no host synchronisation; float32 for 16-bit grads).

    Zero iff the tensor is all zeros; non-finite if it holds a NaN or an Inf (and, on accelerators
    that accumulate in float32, if its values are so large that their squares overflow: confirm a
    non-finite result with :func:`all_finite`). ``torch._foreach_norm`` with the default order is
    the fused fast path; ``ord=inf`` is ~10x slower on CPU.
    """
    first = tensors[0]
    if all(t.device == first.device and t.dtype == first.dtype for t in tensors):
        if first.dtype in (torch.float16, torch.bfloat16):  # accumulate (and return) in float32
            return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32))
        return torch.stack(torch._foreach_norm(tensors))
    device = first.device
    return torch.stack([torch.linalg.vector_norm(t.detach()).float().to(device) for t in tensors])


def quick_finite(tensors: list[torch.Tensor]) -> bool:
    """Exactly :func:`all_finite`, via the fast 2-norm reduction (the slower exact check only runs to
    confirm a non-finite result)."""
    floats = [t.detach() for t in tensors if t.is_floating_point() and t.numel() and not t.is_meta]
    floats = [t for t in floats if not t.is_sparse]
    if not floats:
        return True
    if math.isfinite(sum(grad_norms(floats).tolist())):
        return True
    return all_finite(floats)


def fingerprint(t: torch.Tensor) -> int | None:
    """An exact-change detector for a parameter: the sum of its elements' bit patterns.

    Any update that changes one element changes the sum (only exactly compensating changes of several
    elements could collide). ``None`` for dtypes we do not fingerprint.
    """
    view = _INT_VIEW.get(t.element_size())
    if view is None or t.is_sparse or t.is_complex():
        return None
    return int(t.detach().view(view).sum(dtype=torch.int64))


_EVAL_SENSITIVE = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)


def eval_sensitive(module: nn.Module) -> bool:
    """Dropout or batch-norm-like modules whose output differs between train and eval mode."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return bool(module.track_running_stats)
    return False


def is_eval_sensitive_type(module: nn.Module) -> bool:
    return isinstance(module, _EVAL_SENSITIVE)


def autocast_enabled() -> bool:
    for device_type in ("cpu", "cuda"):
        try:
            if torch.is_autocast_enabled(device_type):
                return True
        except (TypeError, RuntimeError):  # older torch: no device_type argument
            return bool(torch.is_autocast_enabled())
    return False
