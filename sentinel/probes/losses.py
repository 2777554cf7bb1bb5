"""Which standard losses a forward pass computed, and what they imply.

:func:`recording` watches one forward pass and the loss (a ``TorchFunctionMode``: it sees
``F.cross_entropy`` whether the user calls it, ``nn.CrossEntropyLoss`` calls it, or the model calls
it inside ``forward``) and keeps each call of a classification loss with its arguments. From those:

- :func:`loss_floor`: the lowest value the recorded losses can reach. Not always 0: binary
  cross-entropy against soft targets (pixel intensities in a VAE) bottoms out at the targets'
  entropy, cross-entropy with label smoothing or probability targets at theirs. The overfit probe
  (SEN101) measures progress towards this floor, not towards 0.
- :func:`classification_call`: the one classification loss that *is* the loss (its value is the
  loss the step backpropagates), for SEN110 (:mod:`sentinel.probes.initial`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["LossCall", "classification_call", "loss_floor", "recording"]

T = TypeVar("T")

_KINDS: dict[Any, str] = {
    F.cross_entropy: "cross_entropy",
    F.nll_loss: "nll_loss",
    F.binary_cross_entropy: "binary_cross_entropy",
    F.binary_cross_entropy_with_logits: "binary_cross_entropy_with_logits",
}


@dataclass
class LossCall:
    """One call of a classification loss: its kind, bound arguments (defaults applied) and result."""

    kind: str
    args: dict[str, Any]
    output: torch.Tensor

    @property
    def input(self) -> torch.Tensor:
        return self.args["input"]

    @property
    def target(self) -> torch.Tensor:
        return self.args["target"]

    @property
    def reduction(self) -> str:
        return str(self.args.get("reduction", "mean"))


class _Recorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[LossCall] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        kind = _KINDS.get(func)
        if kind is not None and isinstance(out, torch.Tensor):
            try:
                bound = inspect.signature(func).bind(*args, **kwargs)
                bound.apply_defaults()
                values = dict(bound.arguments)
            except TypeError:  # pragma: no cover - unexpected signature
                values = {}
            if isinstance(values.get("input"), torch.Tensor) and isinstance(values.get("target"), torch.Tensor):
                self.calls.append(LossCall(kind, values, out))
        return out


def recording(fn: Callable[[], T]) -> tuple[T, list[LossCall]]:
    """Run ``fn()`` and return its result with the classification-loss calls it made."""
    recorder = _Recorder()
    with recorder:
        result = fn()
    return result, recorder.calls


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Elementwise Bernoulli entropy of ``p`` (0 log 0 = 0)."""
    p = p.detach().double().clamp(0.0, 1.0)
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def _reduce(values: torch.Tensor, reduction: str) -> float:
    return float(values.sum()) if reduction == "sum" else float(values.mean())


def _call_floor(call: LossCall) -> float:
    """The minimum of one recorded loss over its input (0 when unknown or when it is 0)."""
    a = call.args
    t = call.target
    if call.kind in ("binary_cross_entropy", "binary_cross_entropy_with_logits"):
        if not t.is_floating_point() or a.get("pos_weight") is not None:
            return 0.0
        h = _entropy(t)
        w = a.get("weight")
        if isinstance(w, torch.Tensor):
            h = h * w.detach().double()
        return _reduce(h, call.reduction)
    if call.kind != "cross_entropy":
        return 0.0
    x = call.input
    classes = x.shape[1] if x.dim() >= 2 else x.shape[0]
    smoothing = float(a.get("label_smoothing") or 0.0)
    if a.get("weight") is not None:
        return 0.0
    if t.is_floating_point() and t.shape == x.shape:  # class probabilities
        dim = 1 if x.dim() >= 2 else 0
        p = t.detach().double()
        if smoothing > 0:
            p = p * (1 - smoothing) + smoothing / classes
        h = -torch.special.xlogy(p, p).sum(dim)
        return _reduce(h, call.reduction)
    if smoothing <= 0 or classes < 2:
        return 0.0
    hi = 1 - smoothing + smoothing / classes
    lo = smoothing / classes
    per = -(hi * math.log(hi) + (classes - 1) * lo * math.log(lo))
    if call.reduction == "sum":
        ignore = a.get("ignore_index", -100)
        return per * int((t != ignore).sum())
    return per


def loss_floor(calls: list[LossCall], loss: float) -> float:
    """A lower bound of the loss: the sum of the recorded losses' own minima, when that is below
    the current ``loss`` (a loss that scales or rearranges them is then still bounded by it); else 0.

    A per-sample sum averaged over the batch by hand (a VAE's ``(bce_sum + kld) / len(x)``) is
    bounded by that sum's minimum over the batch size: used when only that is below the loss."""
    floor = sum(_call_floor(c) for c in calls)
    if 0.0 < floor < loss:
        return floor
    sizes = {c.target.shape[0] for c in calls if c.reduction == "sum" and c.target.dim() >= 2}
    if floor > 0.0 and len(sizes) == 1 and len(calls) == sum(c.reduction == "sum" for c in calls):
        per_sample = floor / sizes.pop()
        if 0.0 < per_sample < loss:
            return per_sample
    return 0.0


def classification_call(calls: list[LossCall], loss: torch.Tensor) -> LossCall | None:
    """The recorded classification loss whose value is ``loss`` itself (the step optimizes nothing
    else), or None: no such loss, or the loss is a combination of several terms."""
    if len(calls) != 1:
        return None
    call = calls[0]
    out = call.output
    if out.numel() != 1 and out.numel() != loss.numel():
        return None
    value = out.detach().float().mean() if out.numel() != 1 else out.detach().float().reshape(())
    lv = loss.detach().float().reshape(())
    if not bool(torch.isclose(value, lv, rtol=1e-5, atol=1e-6)):
        return None
    return call
