"""SEN110 unexpected-initial-loss: at initialisation a classification loss should be near ln C.

A freshly initialised classifier predicts roughly uniform probabilities, so its cross-entropy is
close to ``ln C`` for ``C`` classes (``ln 2`` per element for binary cross-entropy). One forward
pass, without autograd and in the model's current mode, is watched (:mod:`sentinel.probes.losses`);
the probe applies only when the loss the step optimizes *is* one recognisable classification loss
(``nn.CrossEntropyLoss`` / ``F.cross_entropy``, ``nn.NLLLoss`` / ``F.nll_loss``, or binary
cross-entropy, with or without logits, on 0/1 targets) and is skipped with the reason otherwise.

Expected value (``details["expected_loss"]``): what uniform predictions give under the loss's own
options: label smoothing and class weights do not change it (a weighted mean of equal values);
``ignore_index`` targets are not counted; ``reduction="sum"`` multiplies it by the number of
(weighted) targets; ``pos_weight`` weighs the positive targets' ``ln 2``.

Far (reported), per target: above ``3 x expected + 2 nats`` (for 10 classes 8.9 instead of 2.3:
logits with a standard deviation around 5 at initialisation, i.e. a broken or rescaled
initialisation, unnormalised inputs, a missing scale; the margin is wide because healthy models
with a loose initialisation, such as an embedding of N(0, 1) tied to the output layer, start
several nats above ``ln C`` and still train), or below half of it while the loss input cannot
be what the loss needs (``NLLLoss`` fed values that are not log-probabilities: a missing
``log_softmax``) or the loss is negative. A model whose head ends in a softmax feeding
``CrossEntropyLoss`` also starts near ``ln C``: that bug is not visible here (SEN101 and the SEN001
lint rule find it).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sentinel.findings import Finding
from sentinel.probes.losses import LossCall, classification_call, recording
from sentinel.probes.workspace import Workspace

__all__ = ["ABOVE_FACTOR", "ABOVE_NATS", "NotApplicable", "initial_loss"]

ABOVE_NATS = 2.0
ABOVE_FACTOR = 3.0


class NotApplicable(Exception):
    """The probe does not apply to this model; the message says why."""


def _expected(call: LossCall) -> tuple[float, float, int, str | None]:
    """``(expected loss, number of (weighted) targets it sums over, classes, evidence)`` for ``call``."""
    a, x, t = call.args, call.input.detach(), call.target.detach()
    reduction = call.reduction
    if call.kind in ("cross_entropy", "nll_loss"):
        classes = int(x.shape[1] if x.dim() >= 2 else x.shape[0])
        if classes < 2:
            raise NotApplicable("the classification loss has a single class")
        dim = 1 if x.dim() >= 2 else 0
        if t.is_floating_point() and t.shape == x.shape:  # class probabilities
            count = float(t.sum()) if reduction == "sum" else 1.0
            per_target = float(t.sum(dim).mean())
            return math.log(classes) * per_target, count, classes, None
        ignore = int(a.get("ignore_index", -100))
        keep = t != ignore
        if not bool(keep.any()):
            raise NotApplicable("every target is ignore_index")
        w = a.get("weight")
        if reduction == "sum":
            if isinstance(w, torch.Tensor):
                count = float(w.detach().double()[t[keep].long()].sum())
            else:
                count = float(keep.sum())
        else:
            count = 1.0
        evidence = None
        if call.kind == "nll_loss":
            lse = torch.logsumexp(x.double(), dim)
            if float(lse.abs().mean()) > 1e-2:
                evidence = (
                    "NLLLoss expects log-probabilities (log_softmax output) but its input is not: each row's"
                    f" logsumexp should be 0, it is {float(lse.mean()):.3g} on average (add log_softmax, or use"
                    " CrossEntropyLoss on the raw logits)"
                )
        return math.log(classes), count, classes, evidence
    # binary cross-entropy
    if not (t.is_floating_point() and bool(((t == 0) | (t == 1)).all())):
        raise NotApplicable("binary cross-entropy against soft targets (not 0/1 labels)")
    per = torch.ones_like(t, dtype=torch.float64)
    pw = a.get("pos_weight")
    if isinstance(pw, torch.Tensor):
        per = torch.where(t.bool(), pw.detach().double().expand_as(per), per)
    w = a.get("weight")
    if isinstance(w, torch.Tensor):
        per = per * w.detach().double()
    per = per * math.log(2)
    if reduction == "sum":
        return float(per.sum()) / float(t.numel()), float(t.numel()), 2, None
    return float(per.mean()), 1.0, 2, None


def initial_loss(ws: Workspace) -> tuple[list[Finding], dict[str, Any], str]:
    """Run the SEN110 probe on the workspace ``ws`` (see the module docstring); raises
    :class:`NotApplicable` when the loss is not recognisably a classification loss."""
    with torch.no_grad():
        (loss, _), calls = recording(ws.forward)
    if not math.isfinite(float(loss.detach().float().item())):
        raise NotApplicable("the initial loss is not finite (see SEN105)")
    call = classification_call(calls, loss)
    if call is None:
        if not calls:
            raise NotApplicable("the loss is not a classification loss (cross-entropy, NLL or binary cross-entropy)")
        raise NotApplicable("the loss is not one classification loss alone (other terms are added to it)")
    expected, count, classes, evidence = _expected(call)
    value = float(loss.detach().float().item())
    per_target = value / count
    data: dict[str, Any] = {
        "initial_loss": value,
        "expected_loss": expected * count,
        "classes": classes,
        "loss": call.kind,
    }
    above = per_target > ABOVE_FACTOR * expected + ABOVE_NATS
    below = per_target < 0.5 * expected and (evidence is not None or per_target < 0)
    if not (above or below):
        return [], data, f"initial loss {value:.4g}, expected about {expected * count:.4g} ({_classes(classes)})"
    details = dict(data)
    if above:
        why = (
            f"it is {per_target - expected:.3g} nats{' per target' if count != 1 else ''} above what uniform"
            " predictions give: the model starts out confidently wrong (logits far too large: a broken or"
            " rescaled initialisation, unnormalised inputs, a missing 1/sqrt(d) scale, or targets that do"
            " not match the outputs)"
        )
    else:
        why = evidence or (
            "a negative cross-entropy is impossible for probabilities: the loss input is not what it expects"
        )
        details["reason"] = why
    times = "" if count == 1 else f" x {count:g} targets"
    message = (
        f"initial {_name(call.kind)} is {value:.4g}, far from {expected * count:.4g}"
        f" (ln {classes}{times}, uniform predictions over {classes} classes): {why}."
    )
    return [Finding("SEN110", message, details)], data, ""


def _classes(n: int) -> str:
    return f"ln {n} for {n} classes"


def _name(kind: str) -> str:
    return {
        "cross_entropy": "cross-entropy",
        "nll_loss": "NLL loss",
        "binary_cross_entropy": "binary cross-entropy",
        "binary_cross_entropy_with_logits": "binary cross-entropy",
    }[kind]
