"""SEN103 device-mismatch and SEN104 dtype-mismatch: read-only checks, nothing is run.

Tensor names in the findings:

- ``<name>``: a parameter or buffer of the model, exactly as ``named_parameters()`` /
  ``named_buffers()`` (i.e. ``state_dict()``) spell it, without a prefix;
- ``loss_fn.<name>``: a parameter or buffer of a loss that is an ``nn.Module``;
- ``batch[0]``, ``batch["x"]``, ``batch[0]["ids"]``: tensors of the batch;
- ``optimizer.state[<parameter name>].<key>``, e.g. ``optimizer.state[fc.weight].exp_avg``.

The expected device is the one asked for (``device=``), else the model's (where most parameters
are); tensors on ``meta`` cannot be moved and are reported. Optimizer state is compared with the
device the user's model is on (the probes re-create the optimizer, the user's training will not).
0-dim CPU tensors (scalars, Adam's ``step``) may mix with any device and are not reported.

The expected dtype is the odd one out's opposite: the floating dtype with the most votes, where each
leaf module with floating parameters or buffers votes once (with the dtype of most of its tensors)
and so does each floating input of the batch. A ``.half()`` encoder among float32 layers fed
float32 inputs is the minority, so its tensors are reported, not the float32 layers. Only floating
tensors are compared: integer class labels are fine, except that ``CrossEntropyLoss``/``NLLLoss``
need ``int64`` (or ``uint8``) class indices; other integer types crash them and are reported.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sentinel.findings import Finding
from sentinel.probes.batch import ComputeLoss, plan, tensor_items
from sentinel.probes.workspace import reference_device, reference_dtype, user_param_names

__all__ = ["Mismatches", "dtype_name", "find_mismatches"]

_CLASS_INDEX_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss)
_CLASS_INDEX_FUNCTIONS = (F.cross_entropy, F.nll_loss)
_INDEX_DTYPES = (torch.int64, torch.uint8)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        current = torch.cuda.current_device() if a.type == "cuda" and torch.cuda.is_available() else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


def _device_name(device: torch.device) -> str:
    return str(device)


@dataclass
class Mismatches:
    """What :func:`find_mismatches` found; entries are the ``details["tensors"]`` of the findings."""

    device: torch.device | None
    dtype: torch.dtype | None
    devices: list[dict[str, Any]] = field(default_factory=list)
    dtypes: list[dict[str, Any]] = field(default_factory=list)
    own: set[str] = field(default_factory=set)  # names of the model's and the loss's own tensors

    def __bool__(self) -> bool:
        return bool(self.devices or self.dtypes)

    def findings(self) -> list[Finding]:
        out = []
        if self.devices:
            out.append(Finding("SEN103", _device_message(self), {"tensors": self.devices}))
        if self.dtypes:
            out.append(Finding("SEN104", _dtype_message(self), {"tensors": self.dtypes}))
        return out

    def summary(self) -> str:
        """One line, for probes that could not run because of these mismatches."""
        parts = []
        if self.devices:
            parts.append("SEN103 device-mismatch: " + _list(self.devices, "device"))
        if self.dtypes:
            parts.append("SEN104 dtype-mismatch: " + _list(self.dtypes, "dtype"))
        return "; ".join(parts)


def _list(entries: list[dict[str, Any]], key: str, limit: int = 4) -> str:
    shown = ", ".join(f"{e['name']} ({e[key]})" for e in entries[:limit])
    more = len(entries) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def _device_message(m: Mismatches) -> str:
    n = len(m.devices)
    expected = {e["expected"] for e in m.devices}
    exp = ", ".join(sorted(expected))
    hints = []
    names = [e["name"] for e in m.devices]
    if any(e["device"] == "meta" for e in m.devices):
        hints.append("tensors on `meta` have no data: materialize them (e.g. to_empty() then re-initialise)")
    if any(n.startswith("batch") for n in names):
        hints.append("move the batch with .to(device) inside the loop")
    if any(n in m.own for n in names):
        hints.append("register tensors as parameters/buffers so model.to(device) moves them")
    if any(n.startswith("optimizer.") for n in names):
        hints.append("create the optimizer after moving the model, or load its state_dict with map_location")
    return (
        f"{n} tensor{'s' if n != 1 else ''} not on the expected device {exp}: {_list(m.devices, 'device')}. "
        "The first op that mixes them raises 'Expected all tensors to be on the same device'. Fix: "
        + "; ".join(hints)
        + "."
    )


def _dtype_message(m: Mismatches) -> str:
    n = len(m.dtypes)
    labels = [e for e in m.dtypes if e["expected"] == "int64"]
    floats = [e for e in m.dtypes if e["expected"] != "int64"]
    parts = []
    if floats:
        want = floats[0]["expected"]
        parts.append(
            f"{_list(floats, 'dtype')} {'is' if len(floats) == 1 else 'are'} not {want} like the model:"
            " mixed floating dtypes crash matmuls ('mat1 and mat2 must have the same dtype') or silently"
            f" upcast the loss; cast the data (x.to(torch.{want})) or the model"
        )
    if labels:
        parts.append(
            f"{_list(labels, 'dtype')}: CrossEntropyLoss/NLLLoss need int64 class indices and raise"
            " 'expected target dtype to be Long'; use y.long()"
        )
    return f"{n} tensor{'s' if n != 1 else ''} of the wrong dtype: " + "; ".join(parts) + "."


def _voted_device(model: nn.Module, inputs: list[torch.Tensor]) -> torch.device | None:
    """The device most leaf modules (one vote each) and batch tensors agree on; ties go to the
    model's reference device (where most parameters are). Tensors on ``meta`` do not vote."""
    votes: list[torch.device] = []
    for m in model.modules():
        own = [t for t in [*m._parameters.values(), *m._buffers.values()] if t is not None and not t.is_meta]
        if own:
            votes.append(Counter(t.device for t in own).most_common(1)[0][0])
    votes += [t.device for t in inputs if t.dim() > 0 and not t.is_meta]
    reference = reference_device(model)
    if not votes:
        return reference
    counts = Counter(votes)
    best = max(counts.values())
    winners = [d for d in counts if counts[d] == best]
    return reference if reference in winners else winners[0]


def _voted_dtype(model: nn.Module, inputs: list[torch.Tensor]) -> torch.dtype | None:
    """The floating dtype most leaf modules (one vote each) and floating batch tensors agree on;
    ties go to the model's own reference dtype (most parameters)."""
    votes: list[torch.dtype] = []
    for m in model.modules():
        own = [t for t in [*m._parameters.values(), *m._buffers.values()] if t is not None and t.is_floating_point()]
        if own:
            votes.append(Counter(t.dtype for t in own).most_common(1)[0][0])
    votes += [t.dtype for t in inputs if t.is_floating_point() and not t.is_complex()]
    reference = reference_dtype(model)
    if not votes:
        return reference
    counts = Counter(votes)
    best = max(counts.values())
    winners = [d for d in counts if counts[d] == best]
    return reference if reference in winners else winners[0]


def _is_class_index_loss(loss_fn: Any) -> bool:
    return isinstance(loss_fn, _CLASS_INDEX_LOSSES) or any(loss_fn is f for f in _CLASS_INDEX_FUNCTIONS)


def find_mismatches(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    device: torch.device | None = None,
    compute_loss: ComputeLoss | None = None,
) -> Mismatches:
    """Every tensor the step would use that is on another device / of another dtype than the model's."""
    batch_items = list(tensor_items(batch))
    model_device = _voted_device(model, [t for _, t in batch_items])
    expected_device = device if device is not None else model_device
    expected_dtype = _voted_dtype(model, [t for _, t in batch_items])
    out = Mismatches(expected_device, expected_dtype)

    movable: list[tuple[str, torch.Tensor, bool]] = []  # (name, tensor, scalars allowed on cpu)
    for prefix, mod in (("", model), ("loss_fn.", loss_fn if loss_fn is not model else None)):
        if isinstance(mod, nn.Module):
            movable += [(f"{prefix}{n}", p, False) for n, p in mod.named_parameters()]
            movable += [(f"{prefix}{n}", b, False) for n, b in mod.named_buffers()]
    out.own = {n for n, _, _ in movable}
    movable += [(n, t, True) for n, t in batch_items]

    state: list[tuple[str, torch.Tensor]] = []
    if optimizer is not None:
        names = user_param_names(model, loss_fn)
        for i, (p, st) in enumerate(optimizer.state.items()):
            pname = names.get(id(p), f"#{i}")
            if isinstance(st, dict):
                state += [(f"optimizer.state[{pname}].{k}", v) for k, v in st.items() if isinstance(v, torch.Tensor)]

    def effective(t: torch.Tensor) -> torch.device:
        return device if device is not None and not t.is_meta else t.device

    if expected_device is not None:
        for name, t, scalars_ok in movable:
            d = effective(t)
            if scalars_ok and t.dim() == 0 and d.type == "cpu":
                continue
            if not _same_device(d, expected_device):
                entry = {"name": name, "device": _device_name(d), "expected": _device_name(expected_device)}
                out.devices.append(entry)
    if model_device is not None:
        for name, t in state:
            if t.dim() == 0 and t.device.type == "cpu":
                continue
            if not _same_device(t.device, model_device):
                out.devices.append(
                    {"name": name, "device": _device_name(t.device), "expected": _device_name(model_device)}
                )

    if expected_dtype is not None:
        exp = dtype_name(expected_dtype)
        for name, t, _ in movable:
            if t.is_floating_point() and t.dtype != expected_dtype:
                out.dtypes.append({"name": name, "dtype": dtype_name(t.dtype), "expected": exp})
        for name, t in state:
            if t.dim() > 0 and t.is_floating_point() and t.dtype != expected_dtype:
                out.dtypes.append({"name": name, "dtype": dtype_name(t.dtype), "expected": exp})
    if compute_loss is None and _is_class_index_loss(loss_fn):
        try:
            p = plan(batch)
        except ValueError:
            p = None
        if p is not None and p.has_targets and isinstance(p.targets, torch.Tensor):
            t = p.targets
            if not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool:
                if t.dtype not in _INDEX_DTYPES:
                    entry = {"name": p.target_name, "dtype": dtype_name(t.dtype), "expected": "int64"}
                    out.dtypes.append(entry)
    return out
