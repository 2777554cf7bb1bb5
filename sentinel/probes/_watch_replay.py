"""Localize the first non-finite value of a step the loop monitor flagged (SEN105).

The monitor notices a non-finite gradient in the optimizer step pre-hook. At that moment the
parameters have not been updated yet, and for each training forward pass of the step it kept the
inputs (detached), the RNG state before the forward and the gradient that flowed into each model
output (d loss / d output). That is enough to replay the step without the user's loss code:

1. a parameter already non-finite: the previous update produced it (stage ``update``);
2. an input of the forward pass non-finite (stage ``input``);
3. otherwise :func:`sentinel.probes.nonfinite.localize` replays the forward pass (same RNG draws)
   and the backward pass with a *surrogate loss* ``sum(output * grad_output)``, whose gradient with
   respect to the output is exactly the gradient the user's loss sent into the model. A non-finite
   ``grad_output`` makes the surrogate non-finite while the output is finite: stage ``loss``.
   ``localize`` snapshots and restores the model and the RNGs, so the user's run continues bit for
   bit as if nothing happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sentinel.probes import _watch_util as U

__all__ = ["Localized", "localize_step"]


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


def localize_step(records: list[Any], params_with_grad: list[torch.Tensor], step: int) -> Localized:
    """Name the stage and module of the first non-finite value of optimizer step ``step`` (0-based).

    ``records`` are the monitor's :class:`~sentinel.probes.watch.ForwardRecord` of the step (oldest
    first); ``params_with_grad`` the parameters of the stepping optimizer that hold a gradient.
    """
    roots = [r.module for r in records]
    for p in _all_params(roots, params_with_grad):
        if not U.is_finite(p):
            if step > 0:
                return Localized("update", step - 1, param=p)
            return Localized("forward", step, param=p)
    for rec in records:
        for name, t in U.call_tensors(rec.args, rec.kwargs):
            if not U.is_finite(t):
                return Localized("input", step, root=rec.module, tensor=name)
    for rec in records:
        try:
            found = _replay(rec, step)
        except Exception:  # noqa: BLE001 - the replay is best effort; fall back below
            found = None
        if found is not None:
            return found
    bad = next((p for p in params_with_grad if p.grad is not None and not U.is_finite(p.grad)), None)
    return Localized("backward", step, param=bad)


def _all_params(roots: list[nn.Module], extra: list[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for p in [p for r in roots for p in r.parameters()] + list(extra):
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


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


def _replay(rec: Any, step: int) -> Localized | None:
    from sentinel.probes.nonfinite import localize

    if not any(g is not None for g in rec.grads):
        return None

    def surrogate_loss(model: nn.Module, loss_fn: Any, batch: Any) -> torch.Tensor:
        # runs inside localize()'s snapshot: setting the RNG here is undone afterwards
        if rec.rng is not None:
            cpu, cuda = rec.rng
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
        output = model(*_clone_tree(rec.args), **_clone_tree(rec.kwargs))
        outs = U.graph_tensors(output)
        if len(outs) != rec.n_outputs:
            raise _CannotReplay("the replayed forward pass returned different outputs")
        terms = [(o * g.to(o.dtype)).sum() for o, g in zip(outs, rec.grads, strict=True) if g is not None]
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    finding = localize(rec.module, None, None, None, step, compute_loss=surrogate_loss)
    if finding is None:
        return None
    details = dict(finding.details)
    extra = {k: v for k, v in details.items() if k not in ("stage", "module", "parameter", "step")}
    return Localized(
        details["stage"],
        step,
        root=rec.module,
        module_name=details.get("module"),
        param_name=details.get("parameter"),
        extra=extra,
    )
