"""The probe suite: SEN101 (overfit one batch), SEN102 (updates), SEN103/104 (devices, dtypes),
SEN105 (non-finite values), SEN110 (initial loss), SEN111 (samples mixed), and :func:`run_probes`
that runs them all.

Every probe works on a private copy (:mod:`sentinel.probes.workspace`) and leaves the user's model,
optimizer and RNGs bit-exactly as it found them, also when it fails or the user's code raises.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import torch
from torch import nn

from sentinel.findings import Finding, ProbeResult, Report, Status
from sentinel.probes.batch import ComputeLoss, tensor_items
from sentinel.probes.devices import Mismatches, find_mismatches
from sentinel.probes.errors import UserCodeError, call_user
from sentinel.probes.initial import NotApplicable, initial_loss
from sentinel.probes.mixing import batch_mixing
from sentinel.probes.nonfinite import checked_step, localize
from sentinel.probes.overfit import DEFAULT_OVERFIT_STEPS, MAX_OVERFIT_STEPS, overfit
from sentinel.probes.progress import StepCallback, progress
from sentinel.probes.state import BELOW_PRECISION, RNGState, capture_rng, restore_rng, same_bits, vanishing
from sentinel.probes.workspace import (
    DeviceLike,
    reference_device,
    resolve_device,
    synchronize,
    workspace,
)

__all__ = [
    "DEFAULT_FINITE_STEPS",
    "check_batch_independence",
    "check_initial_loss",
    "DEFAULT_OVERFIT_STEPS",
    "MAX_OVERFIT_STEPS",
    "check_devices",
    "check_finite",
    "check_overfit",
    "check_updates",
    "run_probes",
]

DEFAULT_FINITE_STEPS = 3

Body = Callable[[], tuple[list[Finding], dict[str, Any], str]]


@dataclass
class _Context:
    model: nn.Module
    loss_fn: Any
    batch: Any
    optimizer: torch.optim.Optimizer | None
    device: torch.device | None
    compute_loss: ComputeLoss | None
    in_suite: bool = False
    mismatches: Mismatches | None = None
    nonfinite: Finding | None = None  # the suite's SEN105 finding: later crashes are its consequence
    errors: dict[str, str] = field(default_factory=dict)  # reason -> the first probe that reported it

    def workspace(self) -> Any:
        return workspace(
            self.model,
            self.loss_fn,
            self.batch,
            self.optimizer,
            device=self.device,
            compute_loss=self.compute_loss,
        )

    def crashed(self, name: str, exc: UserCodeError) -> ProbeResult:
        mm = self.mismatches
        if mm is None:
            try:
                mm = find_mismatches(
                    self.model,
                    self.loss_fn,
                    self.batch,
                    self.optimizer,
                    device=self.device,
                    compute_loss=self.compute_loss,
                )
            except Exception:  # pragma: no cover - best effort only
                mm = None
        tb = exc.traceback()
        if self.in_suite and self.nonfinite is not None:
            d = self.nonfinite.details
            where = f" in `{d['module']}`" if d.get("module") else ""
            message = f"not run: {exc.reason} (after the {d.get('stage')} NaN/Inf{where} reported as SEN105)"
            return ProbeResult(name, "skipped", message=message)
        if mm:
            if self.in_suite:
                message = f"not run: {mm.summary()} ({exc.reason})"
                return ProbeResult(name, "skipped", message=message, traceback=tb)
            return ProbeResult(name, "error", message=f"{exc.reason}; caused by {mm.summary()}", traceback=tb)
        if self.in_suite and exc.reason in self.errors:  # each error is reported once, by the first probe
            return ProbeResult(name, "skipped", message=f"not run: the same error as probe '{self.errors[exc.reason]}'")
        self.errors.setdefault(exc.reason, name)
        return ProbeResult(name, "error", message=exc.reason, traceback=tb)


def _probe(name: str, ctx: _Context, body: Body) -> ProbeResult:
    start = perf_counter()
    try:
        findings, data, message = body()
        status: Status = "fail" if findings else "pass"
        result = ProbeResult(name, status, findings=findings, message=message, data=data)
    except NotApplicable as exc:
        cause = exc.__cause__
        if isinstance(cause, UserCodeError) and ctx.in_suite and cause.reason in ctx.errors:
            message = f"not run: the same error as probe '{ctx.errors[cause.reason]}'"
            result = ProbeResult(name, "skipped", message=message)
        else:
            result = ProbeResult(name, "skipped", message=f"not applicable: {exc}")
    except UserCodeError as exc:
        result = ctx.crashed(name, exc)
    except Exception as exc:
        result = ProbeResult(
            name,
            "error",
            message=f"internal error in sentinel: {type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        )
    synchronize(ctx.device)
    result.seconds = perf_counter() - start
    return result


def _context(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None,
    device: DeviceLike,
    compute_loss: ComputeLoss | None,
) -> _Context:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if loss_fn is None and compute_loss is None:
        raise TypeError("give loss_fn (or compute_loss)")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, not {type(optimizer).__name__}")
    return _Context(model, loss_fn, batch, optimizer, resolve_device(device), compute_loss)


# ---------------------------------------------------------------------------------------- SEN103/4


def _devices(ctx: _Context) -> tuple[list[Finding], dict[str, Any], str]:
    mm = find_mismatches(
        ctx.model, ctx.loss_fn, ctx.batch, ctx.optimizer, device=ctx.device, compute_loss=ctx.compute_loss
    )
    data: dict[str, Any] = {
        "device": str(mm.device) if mm.device is not None else None,
        "dtype": str(mm.dtype).removeprefix("torch.") if mm.dtype is not None else None,
    }
    message = ""
    # A narrower float (a float16 table in a float32 model) may be kept to save memory and cast where it
    # is used; a wider one (float64) promotes whatever it touches, so it is always reported.
    own = [
        e
        for e in mm.dtypes
        if e["name"] in mm.own
        and e["expected"] != "int64"
        and mm.dtype is not None
        and getattr(torch, e["dtype"]).itemsize < mm.dtype.itemsize
    ]
    if own and not mm.devices and mm.dtype is not None and _cast_on_use(ctx, mm.dtype):
        mm.dtypes = [e for e in mm.dtypes if e not in own]
        data["cast_on_use"] = [e["name"] for e in own]
        message = (
            f"{_plural(len(own), 'model tensor')} of another dtype ({', '.join(e['name'] for e in own)}) never"
            f" reach{'es' if len(own) == 1 else ''} the output: the forward and the loss stay {data['dtype']}"
        )
    ctx.mismatches = mm
    return mm.findings(), data, message


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _cast_on_use(ctx: _Context, dtype: torch.dtype) -> bool:
    """Whether a trial forward (on a copy, without autograd) runs and keeps every floating output
    and the loss in ``dtype``: a narrower parameter or buffer (a float16 lookup table) is then cast
    where it is used, which is deliberate, not a mismatch."""
    try:
        with ctx.workspace() as ws, torch.no_grad():
            loss, out = ws.forward()
    except Exception:  # it crashes (a dtype error, most likely): the mismatch is real
        return False
    produced = [t for _, t in tensor_items(out, "")] if out is not None else []
    return all(t.dtype == dtype for t in [*produced, loss] if t.is_floating_point())


def check_devices(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    device: DeviceLike = None,
    compute_loss: ComputeLoss | None = None,
) -> ProbeResult:
    """SEN103/SEN104: parameters, buffers, batch tensors and optimizer state that are on another
    device, or of another floating dtype, than the model. Read-only: runs nothing.

    See :mod:`sentinel.probes.devices` for the tensor names used in ``details["tensors"]``.
    """
    ctx = _context(model, loss_fn, batch, optimizer, device, compute_loss)
    return _probe("devices", ctx, lambda: _devices(ctx))


# ------------------------------------------------------------------------------------------ SEN102

_REASONS = {
    "no-grad": "no gradient reached it (unused in forward, or the graph is cut before it by .detach(),"
    " .data, torch.no_grad() or a numpy/.item() round trip)",
    "zero-grad": "its gradient is exactly zero (a dead path: multiplied by 0, masked, saturated, or"
    " only feeding a detached branch)",
    "not-in-optimizer": "it requires grad but is in no optimizer param group (add it, or build the"
    " optimizer after adding the layer)",
    "unchanged": "the optimizer step left it bit-identical (learning rate 0, or an update below float precision)",
}


def _is_all_zero(g: torch.Tensor) -> bool:
    if g.is_sparse:
        g = g.coalesce().values()
    return g.numel() == 0 or not bool(g.detach().ne(0).any())


def _updates(ctx: _Context) -> tuple[list[Finding], dict[str, Any], str]:
    with ctx.workspace() as ws:
        opt, opt_desc = ws.make_optimizer()
        trainable = [(n, p) for n, p in ws.named_parameters() if p.requires_grad]
        ws.zero_grad()
        before = {n: p.detach().clone() for n, p in trainable}
        loss, _ = ws.forward()
        ws.backward(loss)
        grads = {n: p.grad for n, p in trainable}
        ws.step(opt)
        in_opt = ws.optimized_names()
        entries = []
        for n, p in trainable:
            g = grads[n]
            if g is None:
                reason = "no-grad"
            elif _is_all_zero(g):
                reason = "zero-grad"
            elif in_opt is not None and n not in in_opt:
                reason = "not-in-optimizer"
            elif same_bits(p.detach(), before[n]):
                if vanishing(float(torch.linalg.vector_norm(g.detach().float())), before[n], BELOW_PRECISION):
                    continue  # the bias before a batch norm: its true gradient is 0, rounding leaves a trace
                reason = "unchanged"
            else:
                continue
            entries.append({"name": n, "reason": reason})
        data = {"optimizer": opt_desc, "trainable": len(trainable), "notes": list(ws.notes)}
    if not entries:
        return [], data, ""
    message = _updates_message(entries, len(trainable), opt_desc)
    return [Finding("SEN102", message, {"parameters": entries})], data, ""


def _updates_message(entries: list[dict[str, str]], total: int, opt_desc: str) -> str:
    shown = ", ".join(f"{e['name']} ({e['reason']})" for e in entries[:6])
    if len(entries) > 6:
        shown += f" and {len(entries) - 6} more"
    reasons = []
    for r in _REASONS:
        if any(e["reason"] == r for e in entries):
            reasons.append(f"{r}: {_REASONS[r]}")
    n = len(entries)
    return (
        f"{n} of {total} trainable parameter{'s' if total != 1 else ''} not updated by one training step"
        f" with {opt_desc}: {shown}. " + "; ".join(reasons) + "."
    )


def check_updates(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    device: DeviceLike = None,
    compute_loss: ComputeLoss | None = None,
) -> ProbeResult:
    """SEN102: after one forward, backward and optimizer step (a fresh optimizer of the user's class
    and hyperparameters, Adam when none is given), every parameter with ``requires_grad=True`` that
    got no gradient, an all-zero gradient, is missing from the user's optimizer, or did not change.
    Frozen parameters are never reported. ``details["parameters"]``: ``[{"name", "reason"}]``."""
    ctx = _context(model, loss_fn, batch, optimizer, device, compute_loss)
    return _probe("updates", ctx, lambda: _updates(ctx))


# ------------------------------------------------------------------------------------------ SEN101


def _overfit(
    ctx: _Context, steps: int | None, plot: str | None = None, on_step: StepCallback | None = None
) -> tuple[list[Finding], dict[str, Any], str]:
    with ctx.workspace() as ws:
        return overfit(ws, steps, plot, on_step)


def check_overfit(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    steps: int | None = None,
    device: DeviceLike = None,
    compute_loss: ComputeLoss | None = None,
    plot: str | None = None,
) -> ProbeResult:
    """SEN101: train a copy on this one batch (a fresh optimizer of the user's class and
    hyperparameters, or Adam(lr=1e-2)) and check that the loss falls to 10% of its initial value
    (of its distance to the loss floor), in training or in eval mode (dropout off). Stops as soon as
    it does. ``steps`` caps the steps; by default the probe takes 100, and up to 400 while the curve
    is still falling beyond its noise (a healthy model with a slow optimizer or heavy dropout). A
    curve still falling at the end, with no sign of a known bug, passes as slow
    (``data["verdict"] == "slow"``) when its recent rate would reach the target within
    ``curve.HORIZON`` times the budget (``data["projected_steps"]``). ``plot``: a PNG path for the
    curve (needs matplotlib; default ``$SENTINEL_PLOT``). See :mod:`sentinel.probes.overfit`.
    On failure the finding says what the curve looked like and the likely causes. ``details``:
    ``initial_loss``, ``final_loss``, ``min_loss``, ``steps``, ``max_steps``, ``threshold``,
    ``trend``, ``curve``, ``optimizer``, ``causes``; ``result.data`` holds the same figures on success."""
    if steps is not None and steps < 1:
        raise ValueError("steps must be >= 1")
    ctx = _context(model, loss_fn, batch, optimizer, device, compute_loss)
    return _probe("overfit", ctx, lambda: _overfit(ctx, steps, plot))


# ------------------------------------------------------------------------------------------ SEN105


def _finite(ctx: _Context, steps: int) -> tuple[list[Finding], dict[str, Any], str]:
    with ctx.workspace() as ws:
        opt, _ = ws.make_optimizer()
        named = ws.named_parameters()
        for step in range(steps):
            rng = capture_rng()

            def replay(step: int = step, rng: RNGState = rng) -> Finding:
                # Only when a module overwrote a value in place before it could be checked: redo the
                # step from its start (the parameters have not been updated yet) with eager checks.
                restore_rng(rng)
                ws.zero_grad()
                finding = call_user(
                    "the replayed step",
                    localize,
                    ws.model,
                    ws.loss_fn,
                    ws.batch,
                    opt,
                    step,
                    compute_loss=ws.compute_loss,
                    eager=True,
                )
                if finding is None:  # the replay did not reproduce it (non-deterministic kernels?)
                    finding = Finding(
                        "SEN105",
                        f"a NaN/Inf appeared at step {step} but did not reappear when the step was replayed,"
                        " so it could not be localized (non-deterministic kernels?).",
                        {"stage": None, "module": None, "parameter": None, "step": step},
                    )
                return finding

            ws.zero_grad()
            finding = checked_step(
                ws.model,
                ws.batch,
                lambda: ws.forward()[0],
                named,
                backward=ws.backward,
                update=(lambda: ws.step(opt)) if opt is not None else None,
                step=step,
                replay=replay,
            )
            if finding is not None:
                return [finding], {"steps": step + 1}, ""
        return [], {"steps": steps}, ""


def check_finite(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    steps: int = DEFAULT_FINITE_STEPS,
    device: DeviceLike = None,
    compute_loss: ComputeLoss | None = None,
) -> ProbeResult:
    """SEN105: run ``steps`` training steps on a copy with a cheap finiteness check per step (batch,
    loss, all gradients, all parameters) and a lazy record of every module's inputs and outputs; on
    the first failure, find its origin from that record and the step's kept graph
    (:func:`sentinel.probes.nonfinite.checked_step`) and report the first place a NaN/Inf appears:
    ``details`` ``stage`` (input|forward|loss|backward|update), ``module``, ``parameter``, ``step``
    (0-based: the index of the training step)."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    ctx = _context(model, loss_fn, batch, optimizer, device, compute_loss)
    return _probe("finite", ctx, lambda: _finite(ctx, steps))


# -------------------------------------------------------------------------------------- SEN110/111


def _initial(ctx: _Context) -> tuple[list[Finding], dict[str, Any], str]:
    with ctx.workspace() as ws:
        return initial_loss(ws)


def _mixing(ctx: _Context) -> tuple[list[Finding], dict[str, Any], str]:
    with ctx.workspace() as ws:
        return batch_mixing(ws)


def check_initial_loss(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    device: DeviceLike = None,
    compute_loss: ComputeLoss | None = None,
) -> ProbeResult:
    """SEN110: one forward pass without autograd; when the loss is one recognisable classification
    loss, its value must be near what uniform predictions give (``ln C``). Skipped (with the
    reason) for other losses. ``details``: ``initial_loss``, ``expected_loss``, ``classes``, ``loss``.
    See :mod:`sentinel.probes.initial` for what "far" means."""
    ctx = _context(model, loss_fn, batch, optimizer, device, compute_loss)
    return _probe("initial-loss", ctx, lambda: _initial(ctx))


def check_batch_independence(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    device: DeviceLike = None,
    compute_loss: ComputeLoss | None = None,
) -> ProbeResult:
    """SEN111: in eval mode, the outputs of the first and the last sample must not depend on any
    other sample's inputs (gradients exactly zero). Skipped (with the reason) where it does not
    apply. ``details``: ``sample``, ``depends_on``, ``input``. See :mod:`sentinel.probes.mixing`."""
    ctx = _context(model, loss_fn, batch, optimizer, device, compute_loss)
    return _probe("batch-independence", ctx, lambda: _mixing(ctx))


# -------------------------------------------------------------------------------------------- suite


def run_probes(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    steps: int | None = None,
    device: DeviceLike = None,
    target: str = "<python>",
    compute_loss: ComputeLoss | None = None,
    plot: str | None = None,
) -> Report:
    """Run every probe: devices (SEN103/104) first, then finite (SEN105), updates (SEN102),
    initial-loss (SEN110), batch-independence (SEN111) and overfit (SEN101). ``steps`` caps the
    overfit probe (default: 100, up to 400 while the loss is still falling) and the finite probe
    (default 3). ``plot``: a PNG path for the overfit curve (see :func:`check_overfit`).

    When devices or dtypes mismatch, the probes whose step then crashes are reported ``skipped``
    with the reason; when the step produces NaN/Inf, the overfit probe is skipped (its curve would
    be meaningless); an error of the user's code is reported by the first probe it stops, the
    others are skipped naming it. On a terminal, a transient progress display runs on stderr
    (:mod:`sentinel.probes.progress`).
    """
    ctx = _context(model, loss_fn, batch, optimizer, device, compute_loss)
    ctx.in_suite = True
    overfit_steps = steps
    finite_steps = min(steps, DEFAULT_FINITE_STEPS) if steps is not None else DEFAULT_FINITE_STEPS
    if steps is not None and steps < 1:
        raise ValueError("steps must be >= 1")
    with progress() as shown:
        shown.probe("devices")
        results = [_probe("devices", ctx, lambda: _devices(ctx))]
        if ctx.mismatches is None:  # the device check itself crashed: nothing else is reliable
            ctx.mismatches = Mismatches(None, None)
        shown.probe("finite")
        finite = _probe("finite", ctx, lambda: _finite(ctx, finite_steps))
        results.append(finite)
        ctx.nonfinite = finite.findings[0] if finite.findings else None
        for name, body in (("updates", _updates), ("initial-loss", _initial), ("batch-independence", _mixing)):
            shown.probe(name)
            results.append(_probe(name, ctx, lambda body=body: body(ctx)))
        if finite.findings:
            message = "not run: the training step produces NaN/Inf (SEN105), so the loss curve would be meaningless"
            results.append(ProbeResult("overfit", "skipped", message=message))
        else:
            shown.probe("overfit")
            results.append(_probe("overfit", ctx, lambda: _overfit(ctx, overfit_steps, plot, shown.step)))
    if ctx.device is not None:
        dev = str(ctx.device)
    else:
        ref = reference_device(model)
        dev = str(ref) if ref is not None else "cpu"
    return Report(target=target, device=dev, probes=results)
