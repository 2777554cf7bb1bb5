"""Reading a loss curve: did the model memorize one batch, and if not, what did the curve look like?

Torch-free on purpose (plain floats in, plain data out) so the loop monitor and the pytest plugin
can reuse it.

Memorized: the loss fell to ``REL_TARGET`` (10%) of its initial distance to the loss floor, or below
``ABS_FLOOR``. The floor is 0 except where the loss has a known non-zero minimum (cross-entropy with
label smoothing). A failing curve is one of:

- ``diverging``: went up (or became NaN/Inf);
- ``flat``: never moved by more than 1% of the initial loss;
- ``slow``: still going down when the steps ran out: the line fitted to its last quarter falls by
  more than three standard errors (so a curve jittering from dropout or sampling noise counts as
  falling when it falls on average);
- ``noisy``: stopped falling and bounces up and down far more than it went down overall;
- ``plateau``: went down, then stopped moving well above the floor.

A ``slow`` curve is projected (:func:`projected_steps`): the probe does not call a model broken
because its optimizer is slow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sentinel.findings import sparkline

__all__ = [
    "ABS_FLOOR",
    "HORIZON",
    "REL_TARGET",
    "Cause",
    "classify",
    "likely_causes",
    "projected_steps",
    "recent_trend",
    "smoothed_ce_floor",
    "sparkline",
    "still_falling",
    "subsample",
    "threshold",
]

REL_TARGET = 0.1
ABS_FLOOR = 1e-6
HORIZON = 40
"""A ``slow`` curve passes when its recent rate reaches the target within HORIZON x the step budget."""


def threshold(initial: float, floor: float = 0.0) -> float:
    """The loss value below which the batch counts as memorized."""
    return max(floor + REL_TARGET * max(initial - floor, 0.0), ABS_FLOOR)


def smoothed_ce_floor(classes: int, smoothing: float) -> float:
    """Minimum of cross-entropy with label smoothing ``smoothing`` over ``classes`` classes."""
    if smoothing <= 0 or classes < 2:
        return 0.0
    hi = 1 - smoothing + smoothing / classes
    lo = smoothing / classes
    return -(hi * math.log(hi) + (classes - 1) * lo * math.log(lo))


def subsample(curve: Sequence[float], points: int = 21) -> list[float]:
    """At most ``points`` values, evenly spaced, first and last included, 6 significant digits."""
    n = len(curve)
    if n <= points:
        idx = list(range(n))
    else:
        idx = sorted({round(i * (n - 1) / (points - 1)) for i in range(points)})
    return [float(f"{curve[i]:.6g}") for i in idx]


def _fit(values: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares line through ``values``: (slope per step, its standard error, fitted last value)."""
    n = len(values)
    xm = (n - 1) / 2
    ym = sum(values) / n
    sxx = sum((i - xm) ** 2 for i in range(n))
    slope = sum((i - xm) * (v - ym) for i, v in enumerate(values)) / sxx
    fitted_end = ym + slope * (n - 1 - xm)
    resid = sum((v - (ym + slope * (i - xm))) ** 2 for i, v in enumerate(values))
    se = math.sqrt(resid / max(n - 2, 1) / sxx)
    return slope, se, fitted_end


def recent_trend(curve: Sequence[float]) -> tuple[float, float, float] | None:
    """The line fitted to the last quarter of ``curve`` (at least 8 points): ``(slope, standard
    error, fitted last value)``; None for a shorter or non-finite curve."""
    n = len(curve)
    q = max(8, n // 4)
    if n < 8 or not all(math.isfinite(v) for v in curve[-q:]):
        return None
    return _fit(curve[-q:])


def still_falling(curve: Sequence[float], floor: float = 0.0) -> bool:
    """Whether the loss is still going down at the end of ``curve``, beyond its noise: the slope of
    the line fitted to the last half is negative by more than 3 standard errors (a noisy curve, from
    dropout or a sampling step, passes this when it falls on average) and the fitted drop over that
    half is worth at least 2% of the progress so far."""
    n = len(curve)
    half = max(8, n // 2)
    if n < 8 or not all(math.isfinite(v) for v in curve[-half:]):
        return False
    slope, se, _ = _fit(curve[-half:])
    if slope >= 0 or slope > -3 * se:
        return False
    net = curve[0] - min(curve)
    return net > 0 and -slope * half >= 0.02 * net


def classify(curve: Sequence[float], floor: float = 0.0) -> str:
    """``diverging``, ``flat``, ``noisy``, ``plateau`` or ``slow`` (see the module docstring).
    Noise-aware: a curve whose recent trend is still downwards (:func:`still_falling`) is ``slow``
    however much it jitters; ``noisy`` and ``plateau`` are for curves that stopped falling."""
    if not curve:
        return "flat"
    if not all(math.isfinite(v) for v in curve):
        return "diverging"
    init, low = curve[0], min(curve)
    n = len(curve)
    tail = curve[-max(2, min(10, n // 10)) :]
    final = sum(tail) / len(tail)
    scale = max(abs(init - floor) if floor else abs(init), 1e-12)
    if final > init + 0.05 * scale:
        return "diverging"
    if (init - low) / scale < 0.01:
        return "flat"
    if still_falling(curve, floor):
        return "slow"
    diffs = [b - a for a, b in zip(curve, curve[1:], strict=False)]
    total_variation = sum(abs(d) for d in diffs)
    net = max(init - final, 0.0)
    ups = sum(1 for d in diffs if d > 0)
    if diffs and total_variation > 3 * net + 1e-12 and ups >= 0.3 * len(diffs):
        return "noisy"
    return "plateau"


def projected_steps(curve: Sequence[float], target: float) -> int | None:
    """Steps from the start until ``curve`` reaches ``target`` if it keeps falling at the rate of
    the line fitted to its last quarter (optimistic for a curve that is slowing down, which is why
    only ``slow`` curves without other evidence of a bug are projected); None if it is not falling."""
    trend = recent_trend(curve)
    if trend is None:
        return None
    slope, _, end = trend
    if slope >= 0:
        return None
    return len(curve) - 1 + math.ceil(max(end - target, 0.0) / -slope)


@dataclass
class Cause:
    """One likely cause: a stable id (for tools and tests) and a human sentence."""

    id: str
    text: str
    evidence: bool = False


def likely_causes(
    trend: str,
    *,
    optimizer: str,
    lr_zero: bool,
    cross_entropy: bool | None,
    probabilities: bool,
    no_grad: Sequence[str],
    not_in_optimizer: Sequence[str],
    shape_mismatch: str | None,
) -> list[Cause]:
    """Causes in order: those with evidence first, then learning rate, probabilities into
    CrossEntropyLoss, detached graph, labels. ``cross_entropy`` None means "unknown loss"."""
    causes: list[Cause] = []
    if lr_zero:
        causes.append(Cause("learning-rate", f"the learning rate is 0 ({optimizer})", True))
    elif trend in ("diverging", "noisy"):
        causes.append(Cause("learning-rate", f"learning rate too high ({optimizer}): try 3-10x lower"))
    elif trend == "flat":
        causes.append(Cause("learning-rate", f"learning rate far too small ({optimizer})"))
    else:
        causes.append(
            Cause(
                "learning-rate",
                f"learning rate too low ({optimizer}) or too few steps: try 3-10x higher or more --steps",
            )
        )
    if probabilities:
        causes.append(
            Cause(
                "probabilities-into-cross-entropy",
                "the model outputs probabilities (each row >= 0 and sums to 1) but CrossEntropyLoss applies"
                " log_softmax itself and needs raw logits: remove the final softmax (see SEN001)",
                True,
            )
        )
    elif cross_entropy is not False:
        causes.append(
            Cause(
                "probabilities-into-cross-entropy",
                "a softmax or sigmoid before CrossEntropyLoss (it expects raw logits)",
            )
        )
    if no_grad:
        shown = ", ".join(no_grad[:4]) + (f" and {len(no_grad) - 4} more" if len(no_grad) > 4 else "")
        causes.append(
            Cause(
                "detached-graph",
                f"{len(no_grad)} trainable parameter{'s' if len(no_grad) != 1 else ''} got no gradient ({shown}):"
                " the graph is cut before them (.detach(), .data, torch.no_grad(), a numpy/.item() round trip)"
                " or they are unused (see SEN102)",
                True,
            )
        )
    else:
        causes.append(
            Cause(
                "detached-graph",
                "part of the graph is detached (.detach(), .data, torch.no_grad(), numpy round trip)",
            )
        )
    if not_in_optimizer:
        shown = ", ".join(not_in_optimizer[:4]) + (
            f" and {len(not_in_optimizer) - 4} more" if len(not_in_optimizer) > 4 else ""
        )
        causes.append(Cause("not-in-optimizer", f"parameters missing from the optimizer: {shown}", True))
    if shape_mismatch:
        causes.append(Cause("labels", shape_mismatch, True))
    else:
        causes.append(Cause("labels", "targets of the wrong dtype/shape or not aligned with the inputs"))
    return [c for c in causes if c.evidence] + [c for c in causes if not c.evidence]
