"""Cheap finiteness checks over lists of tensors: one fused norm per (device, dtype) and one host sync
(a few CPU tensors: one sum each). Used on every step by the finite probe and the loop monitor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["all_finite", "first_nonfinite"]


def _checkable(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and not t.is_meta and t.numel() > 0


def _values(t: torch.Tensor) -> torch.Tensor:
    if t.is_sparse:
        return t.coalesce().values()
    return t.detach()


def _sum_of(t: torch.Tensor) -> torch.Tensor:
    """A float32 scalar that is non-finite whenever an element of ``t`` is (pass a detached ``t``)."""
    if t.is_sparse:
        t = t.coalesce().values()
    if t.dtype is torch.float32:
        return t.sum()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.sum(dtype=torch.float32)
    return t.sum().float()


def _extremes(t: torch.Tensor) -> tuple[float, float] | None:
    """The smallest and largest entry (real and imaginary parts of a complex tensor), which a NaN
    propagates into (both are NaN then) and an Inf is one of; None when ``t`` has no entries. One
    pass, no allocation: the infinity norm costs ten times more (it takes magnitudes first)."""
    v = t.detach()
    if v.is_sparse:
        v = v.coalesce().values()
    if v.is_complex():
        v = torch.view_as_real(v)
    if v.numel() == 0:
        return None
    lo, hi = torch.aminmax(v)
    if v.is_cpu:
        return lo.item(), hi.item()
    both = torch.stack((lo, hi)).tolist()  # one host sync
    return both[0], both[1]


def _nonfinite_kind(t: torch.Tensor) -> str | None:
    """Exact (no overflow): None when every entry of ``t`` is finite, else ``"NaN"`` when one is a
    NaN, ``"Inf"`` when none is but one is infinite."""
    ends = _extremes(t)
    if ends is None or (math.isfinite(ends[0]) and math.isfinite(ends[1])):
        return None
    return "NaN" if math.isnan(ends[1]) else "Inf"


def _exactly_finite(t: torch.Tensor) -> bool:
    """Exact (no overflow): the extremes are finite."""
    ends = _extremes(t)
    return ends is None or (math.isfinite(ends[0]) and math.isfinite(ends[1]))


_FEW = 8  # up to this many CPU tensors, one sum and .item() each is cheaper than a fused norm


def _screen(tensors: Sequence[torch.Tensor]) -> list[bool]:
    """Per tensor: True when it is proven finite, False when it may not be.

    A norm (or a sum) is non-finite whenever an element is (Inf cannot cancel into a finite value),
    so a finite one proves the tensor finite; a non-finite one may also be an overflow of large
    finite values, which :func:`_exactly_finite` tells apart. One fused ``torch._foreach_norm`` per
    (device, dtype) group and one host sync per group: no Python work per element, little per tensor
    (a few CPU tensors: one sum each).
    """
    if len(tensors) <= _FEW:
        flags = []
        for t in tensors:  # a few CPU tensors: no sync to save, one sum each
            if not t.is_cpu:
                break
            flags.append(math.isfinite(_sum_of(t.detach()).item()))
        else:
            return flags
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    flags = [True] * len(tensors)
    with torch.no_grad():
        for idx in groups.values():
            group = [_values(tensors[i]) if tensors[i].is_sparse else tensors[i].detach() for i in idx]
            try:
                norms = torch._foreach_norm(group)
            except (RuntimeError, TypeError, AttributeError):  # pragma: no cover - exotic tensor types
                norms = [_sum_of(t) for t in group]
            for i, ok in zip(idx, torch.isfinite(torch.stack(norms)).tolist(), strict=True):
                flags[i] = bool(ok)
    return flags


def first_nonfinite(tensors: Sequence[Any]) -> int | None:
    """Index of the first tensor holding a NaN or Inf (None-s and non-float tensors are skipped)."""
    pos = [i for i, t in enumerate(tensors) if _checkable(t)]
    if not pos:
        return None
    for i, ok in zip(pos, _screen([tensors[i] for i in pos]), strict=True):
        if not ok and not _exactly_finite(tensors[i]):
            return i
    return None


def all_finite(tensors: Sequence[Any]) -> bool:
    """True when no tensor in ``tensors`` holds a NaN or Inf (one fused norm per device and dtype,
    one host sync each)."""
    return first_nonfinite(tensors) is None


def _kind(t: torch.Tensor) -> str:
    """``"NaN"`` when ``t`` holds a NaN, else ``"Inf"`` (for a tensor known not to be finite)."""
    return _nonfinite_kind(t) or "Inf"
