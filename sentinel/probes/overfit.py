"""SEN101 cannot-overfit-one-batch: train a copy on one batch and read the loss curve.

The probe trains with a fresh optimizer of the user's class and hyperparameters (Adam(lr=1e-2)
when none is given) and stops as soon as the batch is memorized: the loss is at
:data:`curve.REL_TARGET` of its initial distance to the loss floor. The floor is 0 unless the
recorded losses (:mod:`sentinel.probes.losses`) have a higher minimum: label smoothing,
probability targets, binary cross-entropy against soft targets (a VAE's pixel intensities).

Healthy models with their own regularization and optimizers are slower and noisier than plain
Adam on an MLP, so:

- memorization is also checked on the loss *in eval mode* (dropout off, batch-norm running
  statistics) every :data:`EVAL_EVERY` steps: a dropout-0.5 model has memorized the batch long
  before its training loss, which dropout keeps high, says so;
- with no explicit ``steps``, the budget of :data:`DEFAULT_OVERFIT_STEPS` grows by rounds of the same
  size up to :data:`MAX_OVERFIT_STEPS` while the curve is still falling beyond its noise
  (:func:`curve.still_falling`);
- a curve still falling at the end, with no evidence of a bug, passes as *slow* when its recent
  trend would reach the target within :data:`curve.HORIZON` times the round (``data["verdict"]``
  is ``"slow"``; the message says so). Its reasons name what the curve did: a curve still falling
  is never called a plateau.

``plot=`` (or the environment variable ``SENTINEL_PLOT``) names a PNG file to draw the curve in,
when matplotlib is installed (``data["plot"]``; a note says why not otherwise).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sentinel.findings import Finding
from sentinel.probes import curve as curves
from sentinel.probes.batch import plan
from sentinel.probes.errors import UserCodeError
from sentinel.probes.losses import loss_floor, recording
from sentinel.probes.workspace import Workspace

__all__ = ["DEFAULT_OVERFIT_STEPS", "EVAL_EVERY", "MAX_OVERFIT_STEPS", "PLOT_ENV", "overfit"]

DEFAULT_OVERFIT_STEPS = 100
MAX_OVERFIT_STEPS = 400  # with no explicit budget, a curve still falling gets up to this many
EVAL_EVERY = 10
PLOT_ENV = "SENTINEL_PLOT"

_CE_FUNCTIONS = (F.cross_entropy,)
_BROADCASTING_LOSSES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)
_BROADCASTING_FUNCTIONS = (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss)

Outcome = tuple[list[Finding], dict[str, Any], str]


def _is_cross_entropy(loss_fn: Any) -> bool:
    return isinstance(loss_fn, nn.CrossEntropyLoss) or any(loss_fn is f for f in _CE_FUNCTIONS)


def _probabilities(out: Any) -> bool:
    """Rows that are >= 0 and sum to 1: the model ends in a softmax."""
    if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() == 0 or out.numel() == 0:
        return False
    dim = 1 if out.dim() >= 2 else 0
    if out.shape[dim] < 2:
        return False
    o = out.detach().float()
    if bool((o < -1e-6).any()):
        return False
    return bool(torch.allclose(o.sum(dim), torch.ones((), device=o.device), atol=1e-3))


def _shape_mismatch(ws: Workspace, out: Any) -> str | None:
    lf = ws.loss_fn
    if ws.compute_loss is not None or not isinstance(out, torch.Tensor):
        return None
    if not (isinstance(lf, _BROADCASTING_LOSSES) or any(lf is f for f in _BROADCASTING_FUNCTIONS)):
        return None
    p = plan(ws.batch)
    t = p.targets
    if not p.has_targets or not isinstance(t, torch.Tensor) or t.shape == out.shape:
        return None
    try:
        shape = tuple(torch.broadcast_shapes(out.shape, t.shape))
    except RuntimeError:
        return None
    name = type(lf).__name__ if isinstance(lf, nn.Module) else lf.__name__
    return (
        f"target shape {tuple(t.shape)} differs from output shape {tuple(out.shape)}: {name} broadcasts"
        f" them to {shape}, comparing every output with every target, which no model can fit; make"
        " them match (y.view_as(out) or out.squeeze(-1))"
    )


def _lr_zero(opt: torch.optim.Optimizer | None) -> bool:
    if opt is None:
        return False
    lrs = []
    for g in opt.param_groups:
        lr = g.get("lr")
        if isinstance(lr, torch.Tensor):
            lr = lr.item()
        lrs.append(lr)
    return bool(lrs) and all(isinstance(v, (int, float)) and v == 0 for v in lrs)


def _eval_loss(ws: Workspace) -> float | None:
    """The loss on the batch with every module in eval mode, without autograd; the modes are put
    back exactly. None when the model cannot run in eval mode (it returns something else then)."""
    modules = [m for m in (ws.model, ws.loss_fn) if isinstance(m, nn.Module)]
    flags = [(m, m.training) for root in modules for m in root.modules()]
    try:
        for root in modules:
            root.eval()
        with torch.no_grad():
            loss, _ = ws.forward()
        return float(loss.detach().float().item())
    except UserCodeError:
        return None
    finally:
        for m, training in flags:
            m.training = training


def _has_train_mode_behaviour(model: nn.Module) -> bool:
    """Whether eval mode can change the loss (dropout, batch norm, or a forward that reads
    ``self.training``, which only the class's source would tell: assumed for any custom module)."""
    for m in model.modules():
        if isinstance(m, (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)):
            return True
        if not type(m).__module__.startswith("torch.nn."):
            return True
    return False


def overfit(
    ws: Workspace,
    steps: int | None,
    plot: str | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> Outcome:
    """Run the SEN101 probe on the workspace ``ws`` (see the module docstring); ``on_step(step,
    budget, loss)`` is called after every step (progress display)."""
    extend = steps is None
    budget = steps if steps is not None else DEFAULT_OVERFIT_STEPS
    round_size = budget
    opt, opt_desc = ws.make_optimizer()
    values: list[float] = []
    threshold = floor = 0.0
    probabilities = False
    shape_mismatch: str | None = None
    no_grad: list[str] = []
    memorized: str | None = None  # "train" or "eval": which loss reached the target
    eval_checks = _has_train_mode_behaviour(ws.model)
    eval_values: list[tuple[int, float]] = []
    taken = 0
    i = -1
    while True:
        i += 1
        ws.zero_grad()
        if i == 0:
            (loss, out), calls = recording(ws.forward)
        else:
            loss, out = ws.forward()
        value = float(loss.detach().float().item())
        values.append(value)
        if on_step is not None:
            on_step(i, budget, value)
        if i == 0:
            floor = loss_floor(calls, value)
            if not floor and ws.compute_loss is None:
                floor = _legacy_floor(ws.loss_fn, out)
            threshold = curves.threshold(value, floor) if value >= 0 else value - abs(value)
            probabilities = _is_cross_entropy(ws.loss_fn) and _probabilities(out)
            shape_mismatch = _shape_mismatch(ws, out)
        if not math.isfinite(value):
            break
        if value <= threshold:
            memorized = "train"
            break
        at_end = i == budget
        if eval_checks and i > 0 and (i % EVAL_EVERY == 0 or at_end):
            ev = _eval_loss(ws)
            if ev is None:
                eval_checks = False
            else:
                eval_values.append((i, ev))
                if ev <= threshold:
                    memorized = "eval"
                    break
        if at_end:
            falling = curves.still_falling(values, floor) or curves.still_falling([v for _, v in eval_values])
            if not (extend and budget < MAX_OVERFIT_STEPS and falling):
                break
            budget += round_size
        if i == 0 and not loss.requires_grad:
            no_grad = [n for n, p in ws.named_parameters() if p.requires_grad]
            break  # nothing can change: the loss is cut off from every parameter
        ws.backward(loss)
        if i == 0:
            no_grad = [n for n, p in ws.named_parameters() if p.requires_grad and p.grad is None]
        ws.step(opt)
        taken += 1
    in_opt = ws.optimized_names()
    not_in_opt = [] if in_opt is None else [n for n, p in ws.named_parameters() if p.requires_grad and n not in in_opt]
    lr_zero = _lr_zero(opt)
    cross_entropy: bool | None = None if ws.compute_loss is not None else _is_cross_entropy(ws.loss_fn)

    finite = [v for v in values if math.isfinite(v)]
    data: dict[str, Any] = {
        "initial_loss": values[0],
        "final_loss": values[-1],
        "min_loss": min(finite) if finite else values[-1],
        "steps": taken,
        "max_steps": budget,
        "threshold": threshold,
        "floor": floor,
        "memorized": memorized is not None,
        "optimizer": opt_desc,
        "curve": curves.subsample(values),
    }
    if eval_values:
        data["eval_loss"] = eval_values[-1][1]
    if ws.notes:
        data["notes"] = list(ws.notes)
    _plot(values, threshold, plot, data)
    if memorized is not None:
        data["verdict"] = "memorized"
        how = " (loss in eval mode: dropout off)" if memorized == "eval" else ""
        return [], data, f"memorized in {taken} step{'s' if taken != 1 else ''}{how}"
    trend = curves.classify(values, floor)
    evidence = lr_zero or probabilities or no_grad or not_in_opt or shape_mismatch
    best = min([values[-1]] + [v for _, v in eval_values[-1:]])
    projected = curves.projected_steps(values, threshold) if trend == "slow" and not evidence else None
    if projected is not None and projected <= curves.HORIZON * round_size:
        data["projected_steps"] = projected
        data["verdict"] = "slow"
        return (
            [],
            data,
            (
                f"slow: loss {_fmt(values[0])} -> {_fmt(best)} in {taken} steps and still falling; at its recent"
                f" rate it reaches the target {_fmt(threshold)} in about {projected} steps (a slow optimizer or"
                " regularization, not a broken model)"
            ),
        )
    data["verdict"] = "failed"
    causes = curves.likely_causes(
        trend,
        optimizer=opt_desc,
        lr_zero=lr_zero,
        cross_entropy=cross_entropy,
        probabilities=probabilities,
        no_grad=no_grad,
        not_in_optimizer=not_in_opt,
        shape_mismatch=shape_mismatch,
    )
    details = dict(data)
    for key in ("memorized", "verdict", "plot"):
        details.pop(key, None)
    details["trend"] = trend
    details["causes"] = [c.id for c in causes]
    nonfinite = next((k for k, v in enumerate(values) if not math.isfinite(v)), None)
    if nonfinite is not None:
        details["nonfinite_step"] = nonfinite
    return [Finding("SEN101", _message(details, causes), details)], data, ""


def _legacy_floor(loss_fn: Any, out: Any) -> float:
    """Label smoothing of an ``nn.CrossEntropyLoss`` whose call was not recorded."""
    smoothing = float(getattr(loss_fn, "label_smoothing", 0.0) or 0.0)
    if isinstance(loss_fn, nn.CrossEntropyLoss) and smoothing > 0 and isinstance(out, torch.Tensor):
        classes = out.shape[1] if out.dim() >= 2 else out.shape[0]
        return curves.smoothed_ce_floor(int(classes), smoothing)
    return 0.0


def _fmt(v: float) -> str:
    return f"{v:.4g}"


_SHAPES = {
    "flat": "flat: it never moved",
    "diverging": "diverging",
    "noisy": "noisy: it stopped falling and jumps up and down",
    "plateau": "plateau: it levelled off far above the target (its last half gained under 2% of its total drop)",
    "slow": "slow: still falling when the steps ran out, too slowly to get there",
}


def _message(d: dict[str, Any], causes: list[curves.Cause]) -> str:
    shape = _SHAPES[d["trend"]]
    if d["trend"] == "diverging" and "nonfinite_step" in d:
        shape += f": NaN/Inf at step {d['nonfinite_step']}"
    head = (
        f"could not memorize one batch in {d['steps']} step{'s' if d['steps'] != 1 else ''}"
        f" of {d['optimizer']}:"
        f" loss {_fmt(d['initial_loss'])} -> {_fmt(d['final_loss'])} (min {_fmt(d['min_loss'])},"
        f" target <= {_fmt(d['threshold'])}); curve {shape}."
    )
    listed = " ".join(f"{i}) {c.text};" for i, c in enumerate(causes, 1)).rstrip(";")
    return f"{head} Likely causes: {listed}."


def _plot(values: list[float], threshold: float, plot: str | None, data: dict[str, Any]) -> None:
    """Draw the curve into the PNG ``plot`` (or ``$SENTINEL_PLOT``) when matplotlib is installed."""
    path = plot if plot is not None else os.environ.get(PLOT_ENV) or None
    if not path:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        data.setdefault("notes", []).append(
            f"no plot written to {path}: matplotlib is not installed (pip install matplotlib)"
        )
        return
    if os.path.isdir(path):
        path = os.path.join(path, "overfit-curve.png")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(values)), values, label="training loss")
    ax.axhline(threshold, linestyle="--", color="gray", label="memorized below")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("sentinel: overfit one batch (SEN101)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    data["plot"] = path
