"""Per-optimizer bookkeeping of the loop monitor: what each ``optimizer.step()`` leaves on the device.

A healthy step costs no host-device synchronisation. In the step pre-hook the monitor computes, on
the device, one fused 2-norm reduction (``torch._foreach_norm``) over gradients of the stepping
optimizer, and keeps the norms in a :class:`StepEntry` together with the step's forward records
(with the norm of each forward's output) and the SEN106 observations. Which gradients: all of them
at a step that is read (see below) and until each parameter has had a non-zero gradient once;
otherwise the small ones (at most ``SMALL`` elements: biases, norm layers' weights), a fraction of
the cost: a NaN/Inf in the gradient flowing through a layer reaches its bias (or the next norm
layer's parameters), and a NaN that reaches the weights reaches everything one step later.

Every ``READ_EVERY`` steps (and at the first step, at the last step of ``max_steps`` and when the
watch ends) all pending entries are copied to the host at once (one
``.tolist()``), and read in step order:

- a non-finite gradient norm: the step's first non-finite value, localized by
  :mod:`sentinel.probes._watch_replay` (exactly the failing step, even when it is read later);
- zero gradient norms: SEN102 ``zero-grad`` candidates; ``.grad`` still ``None``: ``no-grad``;
- SEN106 (gradients-accumulate): :class:`Accumulation` watches one *sentinel* parameter per
  optimizer (its smallest one with a gradient). A gradient hook sees every gradient arrive before
  PyTorch adds it to ``.grad``. If between two steps every arrival finds ``.grad`` still holding a
  non-zero value (no ``zero_grad``: not set to ``None``, not zeroed), the step accumulated the
  previous step's gradients. The check reads values, not tensor identities or version counters,
  so in-place rewrites of ``.grad`` (``clip_grad_norm_``, ``GradScaler.unscale_``, DDP's all-reduce
  into bucket views) and DDP re-pointing ``.grad`` at new buckets do not hide it. Each arrival costs
  one norm of the sentinel's gradient, kept on the device until the read. (A GAN's discriminator
  gets gradients from the generator's backward between its steps; its ``zero_grad`` before its own
  backward shows as a zero or ``None`` arrival: not reported.)
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from sentinel.probes import _watch_util as U
from sentinel.probes._watch_replay import ForwardRecord

__all__ = [
    "READ_EVERY",
    "SMALL",
    "Accumulation",
    "OptState",
    "StepEntry",
    "checked_params",
    "read_entries",
    "step_check",
    "step_norms",
]

# How often (in optimizer steps) the on-device checks are read: the only regular host sync.
READ_EVERY = 8

# Gradients with at most this many elements are checked at every step (all of them at read steps).
SMALL = 4096


@dataclass(eq=False)
class StepEntry:
    """One optimizer step not read yet."""

    step: int
    params: list[torch.Tensor]  # the parameters that held a gradient
    norms: list[torch.Tensor] | None  # the 2-norm of each of ``params``' gradients, on the device
    records: list[ForwardRecord]
    arrivals: list[torch.Tensor] | None  # SEN106: the sentinel's .grad norm at each arrival
    grads: list[torch.Tensor] = field(default_factory=list)  # only while the step is at hand


class Accumulation:
    """SEN106 for one optimizer (see the module docstring)."""

    def __init__(self) -> None:
        self.param: weakref.ref[torch.Tensor] | None = None
        self.handle: Any = None
        self.arrivals: list[torch.Tensor] = []
        self.reset = True
        self.ring: U.ScalarRing | None = None  # where the arrivals' norms are kept (see ScalarRing)

    def choose(self, params: list[torch.Tensor]) -> torch.Tensor | None:
        """Pick the smallest parameter with a gradient as the sentinel (its norm is the cost)."""
        with_grad = [p for p in params if p.grad is not None and not p.grad.is_sparse and p.numel() > 0]
        if not with_grad:
            return None
        p = min(with_grad, key=lambda q: q.numel())
        self.param = weakref.ref(p)
        return p

    def arm(self) -> None:
        """After a step: start watching the arrivals until the next step."""
        p = self.param() if self.param is not None else None
        self.arrivals = []
        self.reset = p is None or p.grad is None

    def arrive(self) -> None:
        """A gradient is about to be added to the sentinel's ``.grad``."""
        if self.reset:
            return
        p = self.param() if self.param is not None else None
        g = None if p is None else p.grad
        if g is None:
            self.reset = True  # set to None since the last step
            return
        self.arrivals.append(U.norm32(g) if self.ring is None else self.ring.norm(g))

    def close(self) -> list[torch.Tensor] | None:
        """Before a step: the arrivals to read (``None``: a reset was seen, or nothing arrived)."""
        out = None if self.reset or not self.arrivals else self.arrivals
        self.arrivals = []
        self.reset = True
        return out

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


@dataclass(eq=False)
class OptState:
    optimizer: torch.optim.Optimizer
    index: int
    steps: int = 0
    n_params: int = -1
    params: list[torch.Tensor] = field(default_factory=list)
    param_ids: set[int] = field(default_factory=set)
    no_grad: set[int] = field(default_factory=set)  # never had a .grad at a step
    zero_grad: set[int] = field(default_factory=set)  # never had a non-zero gradient (as read)
    # exact-change hashes and sums of bit patterns of the parameters at their first step (on the
    # device), by registration (sums None when they could not be taken)
    first_hashes: list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]] = field(default_factory=list)
    pending: list[StepEntry] = field(default_factory=list)
    # the parameters a step that is not read checks (see checked_params), kept from one
    # registration to the next, and whether they share one device and dtype (one fused reduction)
    small: list[torch.Tensor] = field(default_factory=list)
    small_uniform: bool = False
    last_values: dict[int, float] = field(default_factory=dict)  # id(param) -> last grad norm read
    accumulation: Accumulation = field(default_factory=Accumulation)

    def registered(self) -> None:
        """The parameter set changed: recompute what an unread step checks."""
        small = [p for p in self.params if p.numel() <= SMALL]
        self.small = small or list(self.params)
        self.small_uniform = bool(self.small) and U.uniform(self.small)


@dataclass
class ReadResult:
    """What reading some entries found (host values)."""

    failing: tuple[StepEntry, list[float]] | None = None  # the first step with a non-finite gradient
    accumulate_step: int | None = None


def read_entries(st: OptState, entries: list[StepEntry]) -> ReadResult:
    """Copy the entries' device values to the host in one go and read them in step order."""
    out = ReadResult()
    flat: list[torch.Tensor] = []
    for e in entries:
        if e.norms:
            flat.extend(e.norms)
        if e.arrivals:
            flat.extend(e.arrivals)
    if not flat:
        return out
    try:  # the common case: one device (dtypes are promoted), one stack
        values = torch.stack(flat).tolist()  # the one host sync of a read
    except RuntimeError:
        device = flat[0].device
        values = torch.stack([v.reshape(()).float().to(device) for v in flat]).tolist()
    pos = 0
    for e in entries:
        n = len(e.params)
        gvals: list[float] = []
        if e.norms:
            gvals = values[pos : pos + n]
            pos += n
            if st.zero_grad:
                st.zero_grad.difference_update(id(p) for p, v in zip(e.params, gvals, strict=True) if v != 0)
            st.last_values.update(zip(map(id, e.params), gvals))
            if out.failing is None and not math.isfinite(sum(gvals)):
                out.failing = (e, gvals)
        if e.arrivals:
            arrivals = values[pos : pos + len(e.arrivals)]
            pos += len(e.arrivals)
            if out.accumulate_step is None and all(v != 0 for v in arrivals):
                out.accumulate_step = e.step
    return out


def step_check(
    st: OptState, params: list[torch.Tensor], full: bool, ring: U.ScalarRing | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """The parameters a step checks (see :func:`checked_params`) and their gradient norms, on the
    device, in one fused reduction (written into ``ring``'s rows when given: norms kept until a later
    read). The fast path of a step that is not read: the small parameters kept since their
    registration, known to share one device and dtype."""
    if not full and not st.zero_grad and st.small_uniform:
        grads = [p.grad for p in st.small]
        if not any(g is None or g.is_sparse for g in grads):
            return st.small, _norms(grads, True, ring)  # type: ignore[arg-type]
    checked = checked_params(st, [p for p in params if p.grad is not None and not p.grad.is_sparse], full)
    if not checked:
        return checked, None
    grads = [p.grad for p in checked]
    return checked, _norms(grads, U.uniform(grads), ring)  # type: ignore[arg-type]


def _norms(tensors: list[torch.Tensor], uniform: bool, ring: U.ScalarRing | None = None) -> list[torch.Tensor]:
    """2-norms as 0-dim tensors (16-bit floats accumulated, and returned, in float32), in ``ring``'s
    rows when given."""
    if not uniform:
        return U.norm_list(tensors)
    return ring.norms(tensors) if ring is not None else U.fused_norms(tensors)


def step_norms(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The 2-norm of each parameter's gradient, in one fused reduction."""
    return U.norm_list([p.grad for p in params])  # type: ignore[misc]


def checked_params(st: OptState, with_grad: list[torch.Tensor], full: bool) -> list[torch.Tensor]:
    """The parameters whose gradients a step checks (see the module docstring)."""
    if full or st.zero_grad:
        return with_grad
    small = [p for p in with_grad if p.numel() <= SMALL]
    return small or with_grad
