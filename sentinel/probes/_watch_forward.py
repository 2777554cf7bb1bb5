"""The forward side of the loop monitor (:mod:`sentinel.probes.watch`): what each call of a watched
model leaves behind, through the module hooks.

:class:`ForwardHooks` is a part of :class:`~sentinel.probes.watch.Watch` (its base class; the
attributes it uses are the watch's, created in ``Watch.__init__``). It owns:

- the hook bodies: the global module hooks (model discovery: a module called while no other module
  runs is a root; in ``mode="full"`` every module's output is checked) and the pre- and post-hook of
  each watched model (the default mode after discovery);
- per training forward pass of a root that owns parameters: a :class:`ForwardRecord` for a replay
  (the inputs, detached, within a byte budget; the RNG state before the call; the norm of the
  output, on the device), and the SEN108 tag of the step in the output's graph;
- SEN103 / SEN104 at the first call of each root (the odd device or dtype out is blamed) and the
  SEN107 evaluation-mode check of a call with grad mode off.

The optimizer side (steps, reads, localization, findings) is in :mod:`sentinel.probes.watch`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sentinel.probes import _watch_util as U
from sentinel.probes._watch_hooks import guarded, is_compiling
from sentinel.probes._watch_replay import ForwardRecord, RngRing, unwrap

if TYPE_CHECKING:
    from sentinel.probes.watch import Mode

__all__ = ["TAG_KEY", "ForwardHooks", "Tag"]

# Inputs kept (by reference) for replays, per window of unread steps.
RECORD_BUDGET = 64 * 2**20

TAG_KEY = "sentinel.watch"


class Tag:
    """A weak-referenceable nothing, stored in a graph node's metadata: alive iff the graph is."""

    __slots__ = ("__weakref__",)


class ForwardHooks:
    """The module-hook half of :class:`~sentinel.probes.watch.Watch` (see the module docstring)."""

    # State shared with the optimizer side (all set by Watch.__init__).
    mode: Mode
    _busy: bool
    _broken: bool
    _window: int
    _given_models: list[nn.Module]
    _global_on: bool
    _global_quiet: bool
    _stack: list[nn.Module]
    _roots_seen: set[int]
    _train_roots: dict[int, nn.Module]
    _rng_before: dict[int, Any]
    _rng_ring: RngRing
    _scalars: U.ScalarRing
    _has_cuda: bool
    _records: list[ForwardRecord]
    _kept_bytes: int
    _pids: dict[int, frozenset[int]]
    _tags: list[tuple[int, weakref.ref[Tag]]]
    _tagged_window: dict[int, int]
    _eval_hits: dict[int, tuple[nn.Module, nn.Module]]
    _eval_modules: dict[int, list[nn.Module]]
    _mismatch: dict[str, list[tuple[nn.Module, list[dict[str, str]]]]]
    _nonfinite: dict[str, Any] | None

    if TYPE_CHECKING:

        def _fail(self, where: str, exc: Exception) -> None: ...

        def _set_nonfinite(self, stage: str, step: int, **kwargs: Any) -> None: ...

    @guarded
    def _global_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._global_quiet:
            return
        stack = self._stack
        if not stack:
            self._root_pre(module, args, {})
        stack.append(module)
        if not torch.is_grad_enabled() and module.training and U.is_eval_sensitive_type(module):
            if U.eval_sensitive(module):
                self._eval_hits.setdefault(id(module), (stack[0], module))

    @guarded
    def _global_post(self, module: nn.Module, args: tuple[Any, ...], *rest: Any) -> None:
        if self._global_quiet:
            return
        # with_kwargs hooks get (kwargs, output); on an exception PyTorch calls them with (output,) only
        kwargs, output = (rest[0], rest[1]) if len(rest) == 2 else ({}, rest[0])
        stack = self._stack
        while stack and stack[-1] is not module:
            stack.pop()
        if stack:
            stack.pop()
        if self.mode == "full" and output is not None and self._nonfinite is None and torch.is_grad_enabled():
            self._full_check_output(stack[0] if stack else module, module, output)
        if not stack:
            self._root_post(module, args, kwargs or {}, output)

    # The model hooks are not @guarded: Dynamo inlines them when it traces a caller, where they must
    # read nothing before returning (see sentinel.probes._watch_hooks.never_compiled).

    def _model_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if is_compiling() or self._busy or self._broken:
            return
        try:
            self._root_pre(module, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's run comes first
            self._fail("_model_pre", exc)

    def _model_post(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if is_compiling() or self._busy or self._broken:
            return
        try:
            self._root_post(module, args, kwargs, output)
        except Exception as exc:  # noqa: BLE001
            self._fail("_model_post", exc)

    def _root_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not torch.is_grad_enabled():
            # an evaluation pass: dropout / batch norm of this model still in training mode? (In
            # global mode the global pre-hook sees each submodule as it runs instead.)
            for sub in self._eval_modules.get(id(module), ()):
                if sub.training and U.eval_sensitive(sub):
                    self._eval_hits.setdefault(id(sub), (module, sub))
        else:
            self._rng_before[id(module)] = self._rng_ring.save(self._has_cuda)
            if self.mode == "full" and self._nonfinite is None:
                for name, t in U.call_tensors(args, kwargs):
                    if not U.is_finite(t):
                        self._set_nonfinite("input", self._window, root=module, tensor=name)
                        break

    def _module_pids(self, module: nn.Module) -> frozenset[int]:
        pids = self._pids.get(id(module))
        if pids is None:
            pids = frozenset(id(p) for p in module.parameters() if p.requires_grad)
            self._pids[id(module)] = pids
        return pids

    def _root_post(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        mid = id(module)
        if mid not in self._roots_seen:
            self._roots_seen.add(mid)
            self._check_devices_dtypes(module, args, kwargs)
        rng = self._rng_before.pop(mid, None)
        if output is None or not torch.is_grad_enabled():
            return
        if type(output) is torch.Tensor:  # the common case, fast
            if output.grad_fn is None:
                return
            first, n_outs, outs = output, 1, None
        else:
            outs = U.graph_tensors(output)
            if not outs:
                return
            first, n_outs = outs[0], len(outs)
        if self._global_on and not self._given_models:
            self._train_roots.setdefault(mid, module)
        # SEN108: one tag per root and step, in the graph of the first output.
        window = self._window
        if self._tagged_window.get(mid) != window:
            self._tagged_window[mid] = window
            meta = first.grad_fn.metadata
            if TAG_KEY not in meta:
                tag = Tag()
                meta[TAG_KEY] = tag
                self._tags.append((window, weakref.ref(tag)))
        # What a replay needs: the inputs (detached, within the byte budget) and the RNG state before
        # the forward; and the norm of the output (on the device): was the forward finite?
        pids = self._pids.get(mid)
        if pids is None:
            pids = self._module_pids(module)
        if pids:
            if not kwargs and len(args) == 1 and type(args[0]) is torch.Tensor:  # the common case, fast
                a = args[0]
                nbytes = a.nbytes
                keep = self._kept_bytes + nbytes <= RECORD_BUDGET
                kept = ((a.detach() if a.requires_grad else a,) if keep else None), {}
            else:
                nbytes = _nbytes(args, kwargs)
                keep = self._kept_bytes + nbytes <= RECORD_BUDGET
                kept = (
                    U.detach_tree(args) if keep else None,
                    (U.detach_tree(dict(kwargs)) if kwargs else {}) if keep else {},
                )
            record = ForwardRecord(module, kept[0], kept[1], rng, n_outs, nbytes=nbytes if keep else 0)
            self._kept_bytes += record.nbytes
            if outs is None or n_outs == 1:
                record.out_norm = self._scalars.norm(first)
            else:
                record.out_norm = self._scalars.keep(torch.stack([U.norm32(t) for t in outs]).sum())
            self._records.append(record)

    def _check_devices_dtypes(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """SEN103/SEN104 at the first call of a root module: its inputs, parameters and buffers.

        Names as the model names them (``named_parameters()`` / ``named_buffers()`` of the model
        inside DDP / compile wrappers) and ``batch[0]`` / ``batch["x"]`` for the call's arguments; a
        root without parameters (a loss module) compares its inputs with each other
        (``MSELoss.input[1]``). The odd one out is blamed: the expected device (dtype) is the inputs'
        when some parameter shares it (a ``.half()`` encoder among float32 layers fed float32 is
        the encoder's fault), else the majority of the parameters and buffers. 0-dim CPU tensors mix
        with any device; only floating dtypes count.
        """
        inner = unwrap(module)
        own = list(inner.named_parameters())
        bufs = list(inner.named_buffers())
        if own or bufs:
            inputs = U.call_tensors(args, kwargs)
        else:
            inputs = [(f"{type(inner).__name__}.input{n[len('batch') :]}", t) for n, t in U.call_tensors(args, kwargs)]
        named = inputs + own + bufs
        model_t = [t for _, t in own] or [t for _, t in bufs]
        self._blame(module, "SEN103", "device", named, model_t, [t for _, t in inputs], lambda t: t.device, str)
        if U.autocast_enabled():  # mixed dtypes are the point of autocast
            return
        floats = [(n, t) for n, t in named if t.is_floating_point()]
        model_f = [t for t in model_t if t.is_floating_point()]
        inputs_f = [t for _, t in inputs if t.is_floating_point()]
        self._blame(module, "SEN104", "dtype", floats, model_f, inputs_f, lambda t: t.dtype, U.dtype_name)

    def _blame(
        self,
        module: nn.Module,
        code: str,
        key: str,
        named: list[tuple[str, torch.Tensor]],
        model_t: list[torch.Tensor],
        inputs: list[torch.Tensor],
        attr: Callable[[torch.Tensor], Any],
        show: Callable[[Any], str],
    ) -> None:
        def counts(ts: list[torch.Tensor]) -> dict[Any, int]:
            c: dict[Any, int] = {}
            for t in ts:
                if code == "SEN103" and t.dim() == 0 and t.device.type == "cpu":
                    continue
                c[attr(t)] = c.get(attr(t), 0) + 1
            return c

        mc, ic = counts(model_t), counts(inputs)
        if not mc and not ic:
            return
        shared = [v for v in ic if v in mc]
        if shared:
            expected = max(shared, key=lambda v: (ic[v], mc[v]))
        elif mc:
            expected = max(mc, key=lambda v: mc[v])
        else:
            expected = max(ic, key=lambda v: ic[v])
        odd = [
            {"name": n, key: show(attr(t)), "expected": show(expected)}
            for n, t in named
            if attr(t) != expected and not (code == "SEN103" and t.dim() == 0 and t.device.type == "cpu")
        ]
        if odd:
            self._mismatch[code].append((module, odd))

    def _full_check_output(self, root: nn.Module, module: nn.Module, output: Any) -> None:
        # forward hooks fire innermost first: the first module with a non-finite output made it
        if not U.quick_finite([t for _, t in U.tensor_items(output, "")]):
            self._set_nonfinite("forward", self._window, root=root, module=module)


# ------------------------------------------------------------------------------------------ helpers


def _nbytes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    if type(args) is tuple and all(type(a) is torch.Tensor for a in args) and not kwargs:
        return sum(a.nbytes for a in args)
    return sum(t.nbytes for _, t in U.call_tensors(args, kwargs))
