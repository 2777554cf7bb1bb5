"""SEN111 batch-samples-mixed: in eval mode, one sample's output must not depend on other samples.

The model (a copy) runs once in eval mode (dropout off, batch norm on its running statistics, so
nothing legitimately mixes samples) with every floating batch input that has the batch dimension
made a leaf that requires grad; integer inputs (token ids) are replaced by the output of the
``nn.Embedding`` (or ``nn.EmbeddingBag``, one bag per row of ids) that reads them. The gradient of
sample ``i``'s outputs (the first and the last sample) with respect to those inputs must be exactly
zero on every other sample; when it is not, ``details["sample"]`` is ``i`` and
``details["depends_on"]`` the other samples it reads.

The batch dimension is dimension 0 of the tensors whose leading size is the batch size: the
leading size of the targets (of the first input when there are none). It is skipped, with the
reason, when it does not apply: a batch of one, no floating input or embedding output with the
batch dimension, no output with it, a graph (an ``N x N`` adjacency or an edge index, in the batch
or the model: nodes are meant to read their neighbours), a ``B x B`` output (pairwise similarities of
a contrastive model), or sequence-first modules
(``batch_first=False``) with targets that do not say which dimension is the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sentinel.findings import Finding
from sentinel.probes.batch import plan, tensor_items
from sentinel.probes.errors import UserCodeError
from sentinel.probes.initial import NotApplicable
from sentinel.probes.masks import neg_inf_only
from sentinel.probes.workspace import Workspace

__all__ = ["batch_mixing"]

_SEQ_FIRST = (nn.RNNBase, nn.MultiheadAttention)  # transformer layers hold MultiheadAttention


def _batch_size(ws: Workspace) -> int:
    try:
        p = plan(ws.batch, ws.model) if ws.compute_loss is None else None
    except ValueError:
        p = None
    if p is not None and p.has_targets:
        targets = [t for _, t in tensor_items(p.targets, "") if t.dim() >= 1]
        if targets:
            return int(targets[0].shape[0])
    items = [t for _, t in tensor_items(ws.batch) if t.dim() >= 1]
    if not items:
        raise NotApplicable("the batch holds no tensor with a batch dimension")
    return int(items[0].shape[0])


def _graph_like(ws: Workspace, b: int) -> str | None:
    """Why the batch looks like a graph (nodes meant to read their neighbours), or None: a sparse
    tensor, an ``N x N`` float input next to the node features, an integer ``(2, E)`` edge index,
    or an ``N x N`` buffer or tensor attribute of the model."""
    items = list(tensor_items(ws.batch))
    features = [n for n, t in items if t.is_floating_point() and t.dim() >= 1 and t.shape[0] == b]
    for name, t in items:
        if t.is_sparse:
            return f"{name} is sparse, like an adjacency matrix"
        square = t.dim() == 2 and t.shape[0] == t.shape[1] == b and t.is_floating_point()
        if square and features and features[0] != name:
            return f"{name} looks like an adjacency matrix"
        if t.dim() == 2 and t.shape[0] == 2 and not t.is_floating_point() and t.dtype != torch.bool:
            return f"{name} looks like an edge index"
    for m in ws.model.modules():
        for key, v in list(m._buffers.items()) + [(k, v) for k, v in vars(m).items() if isinstance(v, torch.Tensor)]:
            if isinstance(v, torch.Tensor) and (v.is_sparse or (v.dim() == 2 and v.shape[0] == v.shape[1] == b)):
                return f"the model holds an {b}x{b} tensor ({key}), like an adjacency matrix"
    return None


def _seq_first_ambiguous(ws: Workspace, b: int) -> bool:
    """Sequence-first modules, and either no 1-D targets to tell the batch size or an input whose
    first two dimensions both have that size (``(T, B, ...)`` with ``T == B``)."""
    if not any(isinstance(m, _SEQ_FIRST) and not getattr(m, "batch_first", False) for m in ws.model.modules()):
        return False
    if any(t.dim() >= 2 and t.shape[0] == t.shape[1] == b for _, t in tensor_items(ws.batch)):
        return True
    try:
        p = plan(ws.batch, ws.model) if ws.compute_loss is None else None
    except ValueError:
        return True
    if p is None or not p.has_targets:
        return True
    targets = [t for _, t in tensor_items(p.targets, "")]
    return not targets or targets[0].dim() != 1


class _Leaves:
    """Forward hooks that make the batch inputs (or their embeddings) leaves requiring grad."""

    def __init__(self, model: nn.Module, b: int, names: dict[int, str]) -> None:
        self.b, self.names = b, names
        self.leaves: list[tuple[str, torch.Tensor]] = []
        self.outputs: list[torch.Tensor] = []
        self.ints: dict[int, str] = {}
        self.calls = 0
        self.handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post),
        ]
        for m in model.modules():
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):  # a bag per row of ids: one per sample
                self.handles.append(m.register_forward_hook(self._embedded))

    def _leaf(self, t: torch.Tensor, name: str) -> torch.Tensor:
        leaf = t.detach().clone().requires_grad_(True)
        self.leaves.append((name, leaf))
        return leaf

    def _convert(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            name = self.names.get(id(obj), "input")
            if obj.dim() >= 1 and obj.shape[0] == self.b:
                if obj.is_floating_point() and "mask" not in name.lower() and not neg_inf_only(obj):
                    return self._leaf(obj, name)
                if not obj.is_floating_point() and obj.dtype != torch.bool:
                    self.ints[id(obj)] = name
            return obj
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(self._convert(v) for v in obj)
        if isinstance(obj, list):
            return [self._convert(v) for v in obj]
        if isinstance(obj, dict):
            return {k: self._convert(v) for k, v in obj.items()}
        return obj

    def _pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.calls += 1
        if self.calls > 1:
            return None
        return self._convert(args), self._convert(kwargs)

    def _embedded(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        ids = args[0] if args else None
        if isinstance(ids, torch.Tensor) and id(ids) in self.ints and isinstance(output, torch.Tensor):
            return self._leaf(output, f"{module.__class__.__name__} output for {self.ints[id(ids)]}")
        return None

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.calls == 1 and not self.outputs:
            self.outputs = [t for _, t in tensor_items(output, "") if t.is_floating_point() and t.dim() >= 1]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def batch_mixing(ws: Workspace) -> tuple[list[Finding], dict[str, Any], str]:
    """Run the SEN111 probe on the workspace ``ws`` (see the module docstring); raises
    :class:`sentinel.probes.initial.NotApplicable` when it does not apply."""
    b = _batch_size(ws)
    if b < 2:
        raise NotApplicable("the batch holds a single sample")
    graph = _graph_like(ws, b)
    if graph:
        raise NotApplicable(f"{graph}: nodes of a graph are meant to depend on each other")
    if _seq_first_ambiguous(ws, b):
        raise NotApplicable(
            "sequence-first modules (batch_first=False) and targets that do not tell the batch dimension"
        )
    names = {id(t): n for n, t in tensor_items(ws.batch)}
    modules = [m for m in (ws.model, ws.loss_fn) if isinstance(m, nn.Module)]
    flags = [(m, m.training) for root in modules for m in root.modules()]
    hooks = _Leaves(ws.model, b, names)
    try:
        for root in modules:
            root.eval()
        with torch.enable_grad():
            try:
                ws.forward()
            except UserCodeError as exc:
                raise NotApplicable(f"the model does not run in eval mode ({exc.reason})") from exc
            leaves, outputs = hooks.leaves, [o for o in hooks.outputs if o.shape[0] == b and o.requires_grad]
            if not leaves:
                raise NotApplicable("no floating input (or embedding of token ids) with the batch dimension")
            if not outputs:
                raise NotApplicable("no output with the batch dimension depends on the inputs")
            pairwise = [o for o in outputs if o.dim() == 2 and o.shape[1] == b]
            if len(pairwise) == len(outputs):
                raise NotApplicable(
                    f"the output is a {b} x {b} matrix: pairwise similarities (contrastive models) compare"
                    " the samples by design"
                )
            outputs = [o for o in outputs if not any(o is q for q in pairwise)]
            data: dict[str, Any] = {"batch_size": b, "inputs": [n for n, _ in leaves]}
            for i in dict.fromkeys((0, b - 1)):
                total = sum(o[i].float().sum() for o in outputs)
                grads = torch.autograd.grad(total, [t for _, t in leaves], allow_unused=True, retain_graph=True)
                for (name, _), g in zip(leaves, grads, strict=True):
                    if g is None:
                        continue
                    if not bool(torch.isfinite(g).all()):
                        raise NotApplicable("the gradient is not finite (see SEN105)")
                    hit = g.detach().reshape(b, -1).ne(0).any(1)
                    hit[i] = False
                    depends = hit.nonzero().flatten().tolist()
                    if depends:
                        return [_finding(i, depends, name, b)], data, ""
    finally:
        hooks.remove()
        for m, training in flags:
            m.training = training
    return [], data, f"each of {b} samples' outputs depends on its own inputs only (eval mode)"


def _finding(sample: int, depends: list[int], name: str, b: int) -> Finding:
    shown = ", ".join(map(str, depends[:8])) + (", ..." if len(depends) > 8 else "")
    message = (
        f"in eval mode the output for sample {sample} depends on {name} of {len(depends)} other"
        f" sample{'s' if len(depends) != 1 else ''} of the batch of {b} (index {shown}): something mixes the batch"
        " dimension: a view/reshape or transpose across dim 0, a softmax or normalization over dim 0, or a"
        " sequence-first module (nn.MultiheadAttention, nn.LSTM with batch_first=False) fed (batch, seq, ...)"
        " tensors. Each sample's prediction should only read its own inputs."
    )
    return Finding("SEN111", message, {"sample": sample, "depends_on": depends, "input": name})
