"""Attention masks: batch tensors that hold ``-inf`` by design (SEN105 must not call them bad inputs).

An additive attention mask (``generate_square_subsequent_mask``, a float ``key_padding_mask``)
holds ``-inf`` where attention is forbidden and 0 elsewhere; softmax turns those entries into
exact zeros. Such a tensor is not a non-finite *input*. A batch tensor counts as a mask when its
only non-finite values are ``-inf`` (a NaN or a ``+inf`` is never a mask) and one of these holds:

- its name says so: a batch field, or the ``forward`` parameter it is passed to, whose name
  contains ``mask`` (``batch["mask"]``, ``model(src, tgt, src_mask, tgt_mask, ...)``);
- it is shaped like an attention mask: 2-D or 3-D with its last two dimensions equal (``T x T``,
  ``(batch * heads) x T x T``; a 4-D tensor is more likely an image);
- the model contains attention modules (``nn.MultiheadAttention``, ``nn.Transformer*``), which
  take additive masks.

Boolean masks are never checked (they are not floating point). Inside the model, a value whose only
non-finite entries are ``-inf`` (a mask, or a derived one) counts as finite when it *enters* a module:
the origin of a NaN is the module that turns it into something else.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import nn

from sentinel.probes.batch import plan

__all__ = ["ATTENTION", "mask_names", "neg_inf_only"]

ATTENTION = (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def neg_inf_only(t: torch.Tensor) -> bool:
    """True when every non-finite entry of ``t`` is ``-inf`` and there is at least one (no NaN, no +inf)."""
    if not (t.is_floating_point() and t.numel() > 0) or t.is_sparse:
        return False
    with torch.no_grad():
        d = t.detach()
        return bool(torch.isneginf(d).any()) and not bool(torch.isnan(d).any()) and not bool(torch.isposinf(d).any())


@functools.lru_cache(maxsize=256)
def _positional_names(cls: type) -> tuple[str, ...]:
    try:
        params = list(inspect.signature(cls.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return ()
    return tuple(
        p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


def _bound_names(batch: Any, model: nn.Module | None) -> dict[int, str]:
    """``id(tensor) -> name of the forward parameter it is passed to`` for the top-level inputs."""
    if model is None:
        return {}
    try:
        p = plan(batch, model)
    except Exception:
        return {}
    out: dict[int, str] = {}
    names = _positional_names(type(model))
    for i, a in enumerate(p.args):
        if isinstance(a, torch.Tensor) and i < len(names):
            out[id(a)] = names[i]
    for k, v in p.kwargs.items():
        if isinstance(v, torch.Tensor):
            out[id(v)] = str(k)
    return out


def mask_names(items: list[tuple[str, torch.Tensor]], batch: Any, model: nn.Module | None) -> set[str]:
    """The names (as ``tensor_items`` gives them) of the batch tensors that are attention masks."""
    candidates = [(n, t) for n, t in items if neg_inf_only(t)]
    if not candidates:
        return set()
    bound = _bound_names(batch, model)
    attention = model is not None and any(isinstance(m, ATTENTION) for m in model.modules())
    out = set()
    for name, t in candidates:
        named = "mask" in name.lower() or "mask" in bound.get(id(t), "").lower()
        square = 2 <= t.dim() <= 3 and t.shape[-1] == t.shape[-2]
        if named or square or attention:
            out.add(name)
    return out
