"""Localize the first non-finite value of a step the loop monitor flagged (SEN105).

The monitor reads its on-device checks every few steps, so it learns that step ``s`` produced a
non-finite gradient either while step ``s`` is still at hand (its optimizer has not updated the
parameters yet) or some steps later. For every training forward pass of the steps not yet read it
kept: the inputs (detached references, within a byte budget), the RNG state before the forward, and
the 2-norm of its output (a 0-dim tensor on the device). From that:

1. an input of the step's forward passes non-finite: stage ``input``;
2. a replay of each forward pass and a backward pass with the surrogate loss ``sum(outputs)``
   through :func:`sentinel.probes.nonfinite.localize` names the module of a ``forward`` or
   ``backward`` origin. It runs on the model itself when the step is still at hand (``localize``
   snapshots and restores the model and the RNGs, so the run continues bit for bit), otherwise on a
   deep copy whose non-finite parameters (left by the failed update) are re-initialised: an origin
   that the inputs cause (a zero row normalised, ``sqrt`` at 0) shows up with any finite weights. A
   model under ``DistributedDataParallel`` is always replayed on a copy of its ``.module``, so the
   replay never takes part in a collective;
3. the outputs were finite and the model replayed clean (its own backward, from a finite upstream
   gradient, stays finite): the non-finite gradient came from the loss, stage ``loss``; outputs
   that were non-finite although a replay with finite weights is clean: the weights were
   non-finite before the step, stage ``update`` of the step before;
4. otherwise stage ``backward``, with the first parameter whose gradient was non-finite.

(Parameters already non-finite before the step are found by the caller from the step's parameter
norms: stage ``update`` of the step before.)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sentinel.probes import _watch_util as U

__all__ = ["ForwardRecord", "Localized", "RngRing", "localize_records", "localize_unread", "unwrap"]


@dataclass(eq=False)
class ForwardRecord:
    """One training forward pass of a watched model, kept until the monitor reads its step."""

    module: nn.Module
    args: tuple[Any, ...] | None  # None: over the byte budget, cannot be replayed
    kwargs: dict[str, Any]
    rng: Any
    n_outputs: int
    out_norm: torch.Tensor | None = None  # 0-dim norm of the outputs
    nbytes: int = 0


@dataclass
class Localized:
    """Where the first non-finite value of a step came from.

    ``module``/``param`` are objects (named by the monitor), ``module_name``/``param_name`` names
    relative to ``root`` when the replay found them.
    """

    stage: str
    step: int
    root: nn.Module | None = None
    module: nn.Module | None = None
    param: torch.Tensor | None = None
    tensor: str | None = None
    module_name: str | None = None
    param_name: str | None = None
    extra: dict[str, Any] | None = None


class _CannotReplay(Exception):
    pass


def unwrap(module: nn.Module) -> nn.Module:
    """The user's model inside ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile``
    wrappers (whose parameter names carry ``module.`` / ``_orig_mod.`` prefixes)."""
    for _ in range(8):
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            module = inner
            continue
        if type(module).__name__ in ("DistributedDataParallel", "DataParallel") and isinstance(
            getattr(module, "module", None), nn.Module
        ):
            module = module.module
            continue
        break
    return module


def _is_distributed(module: nn.Module) -> bool:
    """A replay through this module could take part in a collective (DDP's gradient reducer)."""
    if type(module).__name__ == "DistributedDataParallel":
        return True
    dist = getattr(torch, "distributed", None)
    return bool(dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def localize_records(
    records: list[ForwardRecord],
    params_with_grad: list[torch.Tensor],
    grad_values: list[float],
    step: int,
    *,
    current: bool,
) -> Localized:
    """Name the stage and module of the first non-finite value of optimizer step ``step`` (0-based).

    ``records`` are the step's forward passes (oldest first); ``params_with_grad`` the parameters of
    the stepping optimizer that held a gradient and ``grad_values`` their gradient norms (host
    floats). ``current``: the step is still at hand (parameters not updated yet).
    """
    for rec in records:
        if rec.args is None:
            continue
        for name, t in U.call_tensors(rec.args, rec.kwargs):
            if not U.is_finite(t):
                return Localized("input", step, root=rec.module, tensor=name)
    out_norms = [r.out_norm for r in records if r.out_norm is not None]
    out_bad = bool(out_norms) and not _finite_sum(out_norms)
    replayed = False
    for rec in records:
        if rec.args is None:
            continue
        try:
            found = _replay(rec, step, current=current)
        except Exception:  # noqa: BLE001 - the replay is best effort; fall back below
            continue
        if found is not None:
            return found
        replayed = True
    if out_bad and not current and records:
        # the model's output was non-finite, yet a replay with finite weights is clean: the weights
        # were non-finite before this step, made so by the previous update
        params = list(unwrap(records[0].module).parameters())
        i = next((i for i, p in enumerate(params) if not U.is_finite(p)), None)
        if i is not None:
            if step == 0:
                return Localized("forward", 0, root=records[0].module, param=params[i])
            return Localized("update", step - 1, root=records[0].module, param=params[i])
    if replayed and out_norms and not out_bad:
        # finite outputs, and the model's own backward is clean from a finite upstream gradient:
        # the non-finite gradient came from the loss
        return Localized("loss", step, root=records[0].module)
    bad = next((p for p, v in zip(params_with_grad, grad_values, strict=False) if not math.isfinite(v)), None)
    return Localized("backward", step, param=bad)


def localize_unread(records: list[ForwardRecord], step: int) -> Localized | None:
    """Training forward passes that no optimizer step followed, at the end of the watch: the script
    stopped, typically because it rejected the non-finite loss they made (``if torch.isnan(loss):
    raise``). A non-finite input, or an output whose replay on the model as it is (nothing updated
    it since) names the forward origin, is the step's first non-finite value; anything else (a
    finite output, an origin the replay does not reproduce) is not reported."""
    bad_in = any(
        not U.is_finite(t) for rec in records if rec.args is not None for _, t in U.call_tensors(rec.args, rec.kwargs)
    )
    norms = [r.out_norm for r in records if r.out_norm is not None]
    if not bad_in and (not norms or _finite_sum(norms)):
        return None
    found = localize_records(records, [], [], step, current=True)
    if found.stage == "input" or (found.stage == "forward" and found.module_name is not None):
        return found
    return None


def _finite_sum(values: list[torch.Tensor]) -> bool:
    device = values[0].device
    return math.isfinite(sum(torch.stack([v.reshape(()).float().to(device) for v in values]).tolist()))


def _clone_tree(obj: Any, depth: int = 0) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if depth > 4:
        return obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_clone_tree(x, depth + 1) for x in obj)
    if isinstance(obj, list):
        return [_clone_tree(x, depth + 1) for x in obj]
    if type(obj) is dict:
        return {k: _clone_tree(v, depth + 1) for k, v in obj.items()}
    return obj


class RngRing:
    """The RNG states forward passes start from, copied into one preallocated buffer.

    ``torch.get_rng_state()`` returns a fresh 5 KB tensor; kept for every forward pass until its
    step is read, such small long-lived allocations among the large short-lived activations
    fragment the C heap, and the process's peak memory grows far beyond what is kept. Copied into
    rows of one buffer allocated once, the fresh tensor lives for an instant. A row is reused after
    ``size`` forward passes; a record whose row was reused replays without its RNG state.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.buf: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []  # views of buf's rows, made once (indexing costs per call)
        self.gen = [0] * size
        self.next = 0
        self._get = torch.default_generator.get_state

    def save(self, has_cuda: bool) -> tuple[Any, ...]:
        cpu = self._get()
        i = self.next
        if not self.rows or self.rows[i].numel() != cpu.numel():
            self.buf = torch.empty((self.size, cpu.numel()), dtype=torch.uint8)
            self.rows = list(self.buf.unbind(0))
            self.gen = [0] * self.size
        self.next = (i + 1) % self.size
        self.rows[i].copy_(cpu)
        self.gen[i] += 1
        cuda = torch.cuda.get_rng_state_all() if has_cuda and torch.cuda.is_initialized() else None
        return (self, i, self.gen[i], cuda)

    def state(self, ref: tuple[Any, ...]) -> Any:
        """``(cpu, cuda)`` for :func:`_rng_set`, or None when the row was reused."""
        _, i, gen, cuda = ref
        if not self.rows or self.gen[i] != gen:
            return None
        return self.rows[i].clone(), cuda


def _rng_get() -> Any:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _rng_set(state: Any) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _sanitized_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose non-finite parameters and buffers are re-initialised."""
    saved = _rng_get()
    try:
        twin = copy.deepcopy(model)
        torch.manual_seed(0)
        with torch.no_grad():
            for mod in twin.modules():
                own = list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
                bad = [t for t in own if t.is_floating_point() and not U.is_finite(t)]
                if not bad:
                    continue
                reset = getattr(mod, "reset_parameters", None)
                if callable(reset):
                    reset()
                reset_stats = getattr(mod, "reset_running_stats", None)
                if callable(reset_stats):
                    reset_stats()
                for t in bad:
                    if not U.is_finite(t):
                        t.normal_(0.0, 0.02)
    finally:
        _rng_set(saved)
    return twin


def _replay(rec: ForwardRecord, step: int, *, current: bool) -> Localized | None:
    from sentinel.probes.nonfinite import localize

    target = rec.module
    inner = unwrap(target)
    if current and inner is target and not _is_distributed(target):
        model = target
    else:
        model = _sanitized_copy(inner)
    model_training = model.training

    def surrogate_loss(model: nn.Module, loss_fn: Any, batch: Any) -> torch.Tensor:
        # runs inside localize()'s snapshot: setting the RNG here is undone afterwards
        rng = rec.rng[0].state(rec.rng) if isinstance(rec.rng, tuple) and isinstance(rec.rng[0], RngRing) else rec.rng
        if rng is not None:
            _rng_set(rng)
        assert rec.args is not None
        output = model(*_clone_tree(rec.args), **_clone_tree(rec.kwargs))
        outs = U.graph_tensors(output)
        if len(outs) != rec.n_outputs or not outs:
            raise _CannotReplay("the replayed forward pass returned different outputs")
        total = outs[0].float().sum()
        for o in outs[1:]:
            total = total + o.float().sum()
        return total

    model.train(model_training)
    finding = localize(model, None, None, None, step, compute_loss=surrogate_loss)
    if finding is None:
        return None
    details = dict(finding.details)
    if details.get("stage") not in ("forward", "backward"):
        return None  # the surrogate loss is not the user's: its own stage says nothing
    extra = {k: v for k, v in details.items() if k not in ("stage", "module", "parameter", "step")}
    return Localized(
        details["stage"],
        step,
        root=rec.module,
        module_name=details.get("module"),
        param_name=details.get("parameter"),
        extra=extra,
    )
