"""Small tensor helpers of the loop monitor (:mod:`sentinel.probes.watch`).

Everything here is read-only on the user's tensors: no in-place op, no RNG, no autograd graph.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import nn

from sentinel.probes.batch import tensor_items
from sentinel.probes.devices import dtype_name
from sentinel.probes.nonfinite import all_finite

__all__ = [
    "ScalarRing",
    "all_finite",
    "autocast_enabled",
    "bit_sums",
    "call_tensors",
    "detach_tree",
    "dtype_name",
    "eval_sensitive",
    "fused_norms",
    "param_hashes",
    "grad_norms",
    "graph_tensors",
    "is_eval_sensitive_type",
    "is_finite",
    "norm32",
    "moved",
    "norm_list",
    "quick_finite",
    "tensor_hash",
    "tensor_items",
    "uniform",
]

# How deep to look into nested args (tuples of dicts of tensors).
_MAX_DEPTH = 4

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def call_tensors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """The tensors a model was called with, named as batch fields: ``batch[0]`` (positional) or
    ``batch["x"]`` (keyword)."""
    out = list(tensor_items(tuple(args), "batch"))
    if kwargs:
        out.extend(tensor_items(kwargs, "batch"))
    return out


def detach_tree(obj: Any, depth: int = 0) -> Any:
    """``obj`` with every tensor detached (shares storage; drops references to the caller's graph)."""
    if type(obj) is tuple and all(type(x) is torch.Tensor for x in obj):  # the common case, fast
        return tuple(x.detach() if x.requires_grad else x for x in obj)
    if isinstance(obj, torch.Tensor):
        return obj.detach() if obj.requires_grad else obj  # no graph to drop: no new tensor
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
    if uniform(tensors):
        return torch.stack(fused_norms(tensors))
    device = tensors[0].device
    return torch.stack([torch.linalg.vector_norm(t.detach()).float().to(device) for t in tensors])


def norm_list(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`grad_norms` as a list of 0-dim tensors (one op less: no ``stack``)."""
    if uniform(tensors):
        return fused_norms(tensors)
    return [norm32(t).float() for t in tensors]


def uniform(tensors: list[torch.Tensor]) -> bool:
    """Do ``tensors`` (at least one) share one device and one dtype (one fused reduction for all)?"""
    first = tensors[0]
    return all(t.device == first.device and t.dtype == first.dtype for t in tensors)


def fused_norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The 2-norms of :func:`uniform` ``tensors`` in one fused reduction, as 0-dim tensors (16-bit
    floats accumulated, and returned, in float32)."""
    if tensors[0].dtype in (torch.float16, torch.bfloat16):
        return list(torch._foreach_norm(tensors, 2, dtype=torch.float32))
    return list(torch._foreach_norm(tensors))


def norm32(t: torch.Tensor) -> torch.Tensor:
    """The 2-norm of ``t`` as a 0-dim tensor on its device (16-bit floats accumulated in float32)."""
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.vector_norm(t, dtype=torch.float32)
    return torch.linalg.vector_norm(t)


class ScalarRing:
    """0-dim values kept on their device until the monitor reads them (the norm of each forward's
    output, of each gradient arrival, the gradient norms of a step not read at once), written into
    rows of one buffer per device and dtype allocated once.

    Kept as they come (a fresh 0-dim tensor each), thousands of tiny long-lived allocations land
    among the large short-lived activations on the C heap and keep it from shrinking: under glibc's
    default allocator settings a gradient-accumulation run watched peaked at seven times the memory
    training added unwatched. Norms are computed straight into a row (``out=``): no fresh tensor,
    and one op instead of a norm and a copy. A row is reused only once nothing refers to it any
    more; until then a value keeps a fresh tensor of its own.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.bufs: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self.rows: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}  # views, made once
        self.next: dict[tuple[torch.device, torch.dtype], int] = {}

    def _free(self, device: torch.device, dtype: torch.dtype, n: int) -> tuple[list[torch.Tensor], int] | None:
        """``n`` consecutive rows nobody refers to any more (the buffer's rows and their first index),
        taken; None if they are still read by someone."""
        key = (device, dtype)
        rows = self.rows.get(key)
        if rows is None:
            try:
                buf = torch.empty(self.size, dtype=dtype, device=device)
            except (RuntimeError, TypeError):  # pragma: no cover - a device without such tensors
                return None
            self.bufs[key] = buf
            rows = self.rows[key] = list(buf.unbind(0))
            self.next[key] = 0
        i = self.next[key]
        if i + n > self.size:
            i = 0
        for j in range(i, i + n):
            if sys.getrefcount(rows[j]) > 2:  # the list and the call's argument: still read by someone
                return None
        self.next[key] = (i + n) % self.size
        return rows, i

    def norm(self, t: torch.Tensor) -> torch.Tensor:
        """:func:`norm32` of ``t``, written into a row."""
        t = t.detach()
        dtype = _NORM_DTYPE.get(t.dtype)
        free = None if dtype is None else self._free(t.device, dtype, 1)
        if free is None:
            return norm32(t)
        rows, i = free
        row = rows[i]
        if dtype is t.dtype:
            torch.linalg.vector_norm(t, out=row)
        else:
            torch.linalg.vector_norm(t, dtype=dtype, out=row)
        return row

    def norms(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The 2-norms of ``tensors`` (one device and dtype) in one fused reduction, written into
        consecutive rows."""
        dtype = _NORM_DTYPE.get(tensors[0].dtype)
        values = fused_norms(tensors)
        n = len(values)
        free = None if dtype is None or 4 * n > self.size else self._free(tensors[0].device, dtype, n)
        if free is None:
            return values
        rows, i = free
        torch.stack(values, out=self.bufs[(tensors[0].device, dtype)][i : i + n])
        return rows[i : i + n]

    def keep(self, value: torch.Tensor) -> torch.Tensor:
        """A 0-dim tensor holding ``value`` (a 0-dim float tensor) until nothing refers to it."""
        free = self._free(value.device, value.dtype, 1)
        if free is None:
            return value
        rows, i = free
        rows[i].copy_(value)
        return rows[i]


# The dtype a norm is computed and kept in, by the dtype of the tensor (16-bit floats accumulate in
# float32); other dtypes are not kept in rows.
_NORM_DTYPE = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.float32: torch.float32,
    torch.float64: torch.float64,
}


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


# Odd 64-bit constants of a multiply-xorshift mixer (as signed int64: torch has no uint64 arithmetic).
_MIX1 = -7046029254386353131  # 0x9E3779B97F4A7C15
_MIX2 = -4658895280553007687  # 0xBF58476D1CE4E5B9
# Elements hashed at a time: bounds the int64 temporaries. On the CPU small enough to stay in cache
# and to be reused by the allocator (larger temporaries are fresh pages every time: several times
# slower); on accelerators large, for few kernel launches.
_CHUNK_CPU = 1 << 16
_CHUNK = 1 << 20


def tensor_hash(t: torch.Tensor) -> torch.Tensor | None:
    """An exact-change detector for a tensor, as a 0-dim int64 tensor on its device (no host sync).

    Each element's bit pattern goes through a multiply-xorshift mixer before the (wrapping) sum, so
    the equal and opposite moves that blind a plain sum of bit patterns (Adam moving the two logits
    of a classifier head by +u and -u) change the hash; only a 2**-64 coincidence can hide a change.
    ``None`` for dtypes that are not hashed (complex, sparse, meta).
    """
    view = _INT_VIEW.get(t.element_size())
    if view is None or t.is_sparse or t.is_complex() or t.is_meta:
        return None
    flat = t.detach().reshape(-1).view(view)
    n = flat.numel()
    chunk = _CHUNK_CPU if t.device.type == "cpu" else _CHUNK
    total: torch.Tensor | None = None
    for start in range(0, n, chunk):
        x = (flat[start : start + chunk] if n > chunk else flat).to(torch.int64, copy=True)
        x.mul_(_MIX1)  # in place: one temporary per chunk besides the shifted copy
        x.bitwise_xor_(x >> 31)
        x.mul_(_MIX2)
        x.bitwise_xor_(x >> 29)
        part = x.sum(dtype=torch.int64)
        total = part if total is None else total + part
    if total is None:  # an empty tensor
        return torch.zeros((), dtype=torch.int64, device=t.device)
    return total


def param_hashes(params: list[torch.Tensor]) -> torch.Tensor | None:
    """:func:`tensor_hash` of each tensor as one int64 vector on the first tensor's device (an
    unhashable tensor contributes 0). ``None`` for an empty list."""
    if not params:
        return None
    device = params[0].device
    zero = torch.zeros((), dtype=torch.int64, device=device)
    out = []
    for p in params:
        h = tensor_hash(p)
        out.append(zero if h is None else h.to(device))
    return torch.stack(out)


def bit_sums(params: list[torch.Tensor]) -> torch.Tensor | None:
    """The wrapping int64 sum of each tensor's bit patterns, as one vector on the first tensor's
    device (no host sync): one cheap pass per tensor. Integer sums do not depend on the order of
    summation, so a different sum proves a changed tensor; an equal one proves nothing (two
    elements moved by +u and -u). ``None`` when some tensor is not hashed (see :func:`tensor_hash`).
    """
    if not params:
        return None
    out = []
    for p in params:
        view = _INT_VIEW.get(p.element_size())
        if view is None or p.is_sparse or p.is_complex() or p.is_meta:
            return None
        out.append(p.detach().reshape(-1).view(view).sum(dtype=torch.int64))
    device = params[0].device
    return torch.stack([v.to(device) for v in out])


def moved(params: list[torch.Tensor], before: torch.Tensor) -> list[bool]:
    """Per tensor: its :func:`bit_sums` entry differs from ``before`` (so it changed; one host read)."""
    now = bit_sums(params)
    if now is None or now.shape != before.shape:
        return [False] * len(params)
    return [bool(d) for d in (now != before).tolist()]


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
