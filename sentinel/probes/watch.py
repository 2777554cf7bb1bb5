"""The loop monitor: :func:`sentinel.watch` watches the user's own training loop while it runs.

::

    with sentinel.watch() as w:          # or watch(model, optimizer, max_steps=100, mode="full")
        train()                          # the user's unmodified code
    print(w.report)                      # a sentinel.findings.Report; w.report.to_json()

Nothing in the user's code changes: the monitor uses PyTorch's own hook points.

- Optimizer steps: the global ``register_optimizer_step_pre_hook`` / ``post_hook``. A step is where
  the cheap per-step checks run and where a run is stopped after ``max_steps`` (a private
  ``BaseException`` raised from the post-hook, swallowed by the ``with`` block or by
  :func:`sentinel.probes.script.run_script`).
- Models: given, or discovered through the global module forward hooks (a module called while no
  other module is running is a root; roots that own parameters of a stepping optimizer are the
  watched models). In the default mode the global module hooks are removed after the first
  optimizer step and replaced by a pre- and a post-hook on each watched model only, so every
  submodule keeps PyTorch's fast call path.

What it finds (codes and ``details`` are the DESIGN contract; ``step`` is the 0-based index of the
optimizer step, as in the probe suite):

- SEN106 gradients-accumulate: a tensor hook on one parameter per optimizer sees each gradient
  arrive. If one is added to the very ``.grad`` tensor the previous ``optimizer.step()`` used
  (same object, no version change but the monitor's own accumulations: nobody called
  ``zero_grad`` or ``zero_()``) and that tensor reaches the next step, that step is reported.
  (A GAN's discriminator gets gradients from the generator's backward; they are discarded by its
  ``zero_grad`` before its next step: not reported.)
- SEN102 parameter-not-updated: per step, one fused 2-norm reduction over the gradients
  (``torch._foreach_norm``) tells whether every grad is finite and, until each parameter has had a
  non-zero gradient once, which have none; parameters with ``.grad`` None at every step have
  "no-grad". An exact bit-pattern fingerprint of each parameter at its first step and at the end
  tells which never changed ("unchanged", unless its gradient is too small to move it in its
  dtype, like the bias of a layer followed by batch norm). Trainable parameters of a watched model
  that no watched optimizer holds are "not-in-optimizer". ``requires_grad=False``: never reported.
- SEN105 non-finite-value: a non-finite gradient norm (confirmed exactly) triggers a replay of the
  step from the state still at hand (the parameters are not updated yet; the inputs, the RNG state
  and the gradient that flowed into the model's output were kept) through
  :func:`sentinel.probes.nonfinite.localize`, which names the stage and the module (see
  :mod:`sentinel.probes._watch_replay`). Parameters that are already non-finite were made so by
  the previous update. ``mode="full"`` also checks every module's output on every training
  forward pass and the parameters after every update.
- SEN107 evaluation-in-train-mode: when a watched model is called with grad mode off
  (``no_grad``, ``inference_mode``), its dropout / batch-norm submodules still in training mode
  (before the first step and in full mode: each such module as it runs, through the global hook).
- SEN108 graph-retained-across-steps: each step's model output gets a tiny tag object in its
  ``grad_fn.metadata``; the tag dies with the graph. Tags of two or more earlier steps alive at a
  step mean the user keeps their graphs (``losses.append(loss)``, ``total += loss``).
- SEN103 / SEN104 device- and dtype-mismatch: inputs, parameters and buffers at the first call of
  each root module (a loss module without parameters: its inputs against each other). Mixed dtypes
  under autocast are not reported.

Zero interference: hooks only read (no in-place op, no RNG draw, no graph), every hook is removed
when the watch ends, and a replay runs under a full snapshot/restore of the model and the RNGs.
"""

from __future__ import annotations

import functools
import math
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from sentinel.findings import Finding, ProbeResult, Report
from sentinel.probes import _watch_util as U
from sentinel.probes.nonfinite import first_nonfinite

__all__ = ["Mode", "Watch", "WatchError", "watch"]

Mode = Literal["default", "full"]

PROBE_NAME = "loop-monitor"

# SEN108: how many earlier steps' graphs must be alive at one check to report. One retained graph is
# the ordinary "last loss still bound to a name" case; two or more mean they pile up.
RETAINED_THRESHOLD = 2

# How many forward passes of one step are kept (inputs + output gradients) for a replay.
_MAX_RECORDS = 8

_TAG_KEY = "sentinel.watch"

_active: Watch | None = None


class WatchError(RuntimeError):
    """Misuse of the monitor (e.g. two watches at once)."""


class _StopTraining(BaseException):
    """Raised from the optimizer step post-hook once ``max_steps`` steps ran.

    A ``BaseException`` so that the user's ``except Exception`` blocks do not swallow it; the watch's
    ``__exit__`` and :func:`~sentinel.probes.script.run_script` catch it.
    """


class _Tag:
    """A weak-referenceable nothing, stored in a graph node's metadata: alive iff the graph is."""

    __slots__ = ("__weakref__",)


@dataclass(eq=False)
class ForwardRecord:
    """One training forward pass of a watched model, kept until its optimizer steps."""

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    rng: Any
    grads: list[torch.Tensor | None]
    n_outputs: int


class _GradCapture:
    """Pre-hook on the autograd node of a model output: keeps the gradient that flowed into that
    output (d loss / d output). Holds no reference to the graph or the output tensor."""

    __slots__ = ("record", "index", "output_nr")

    def __init__(self, record: ForwardRecord, index: int, output_nr: int) -> None:
        self.record = record
        self.index = index
        self.output_nr = output_nr

    def __call__(self, grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
        if self.output_nr < len(grad_outputs):
            self.record.grads[self.index] = grad_outputs[self.output_nr]
        return None


@dataclass(eq=False)
class _OptState:
    optimizer: torch.optim.Optimizer
    index: int
    steps: int = 0
    n_params: int = -1
    param_ids: set[int] = field(default_factory=set)
    no_grad: set[int] = field(default_factory=set)
    zero_grad: set[int] = field(default_factory=set)
    first_fp: dict[int, int | None] = field(default_factory=dict)
    sentinel: weakref.ref[torch.Tensor] | None = None
    sentinel_handle: RemovableHandle | None = None
    # [the .grad tensor the last step used, its expected version, whether gradients were added to it]
    armed: list[Any] | None = None
    # the parameters that had a grad at the last step and their grad norms (a tensor, not synced)
    last_norms: tuple[list[torch.Tensor], list[float]] | None = None


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """A hook body must never break the user's run: internal errors are recorded, the watch goes quiet."""

    @functools.wraps(method)
    def wrapper(self: Watch, *args: Any, **kwargs: Any) -> Any:
        if self._busy or self._broken:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's run comes first
            self._broken = True
            self._errors.append(f"{method.__name__}: {type(exc).__name__}: {exc}")
            return None

    return wrapper


class Watch:
    """A running (or finished) loop monitor. Create it with :func:`watch`."""

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module] | None = None,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        *,
        max_steps: int | None = None,
        mode: Mode = "default",
        target: str = "watch",
    ) -> None:
        if mode not in ("default", "full"):
            raise ValueError(f"mode must be 'default' or 'full', not {mode!r}")
        if max_steps is not None and max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        self.mode: Mode = mode
        self.max_steps = max_steps
        self.target = target
        self._given_models = _as_list(model, nn.Module, "model")
        self._given_optimizers = _as_list(optimizer, torch.optim.Optimizer, "optimizer")
        self._models: list[nn.Module] = []
        self._model_ids: set[int] = set()
        self._opt_ok: dict[int, bool] = {}
        self._states: dict[int, _OptState] = {}
        self._primary: _OptState | None = None
        self._window = 0  # completed steps of the primary optimizer
        self._handles: list[RemovableHandle] = []
        self._global_handles: list[RemovableHandle] = []
        self._global_on = False
        self._hooked_models: set[int] = set()
        self._stack: list[nn.Module] = []
        self._roots_seen: set[int] = set()
        self._train_roots: dict[int, nn.Module] = {}
        self._rng_before: dict[int, Any] = {}
        self._records: list[ForwardRecord] = []
        self._pids: dict[int, frozenset[int]] = {}  # module id -> ids of its parameters (cached)
        self._tags: list[tuple[int, weakref.ref[_Tag]]] = []
        self._tagged_window: dict[int, int] = {}
        self._retained = 0
        self._retained_at = 0
        self._eval_hits: dict[int, tuple[nn.Module, nn.Module]] = {}
        self._eval_modules: dict[int, list[nn.Module]] = {}
        self._mismatch: dict[str, list[tuple[nn.Module, list[dict[str, str]]]]] = {
            "SEN103": [],
            "SEN104": [],
        }
        self._accumulate_step: int | None = None
        self._nonfinite: dict[str, Any] | None = None
        self._nonfinite_raw: tuple[Any, ...] | None = None
        self._params: dict[int, torch.Tensor] = {}
        self._errors: list[str] = []
        self._busy = False
        self._broken = False
        self._started = False
        self._has_cuda = False
        self._finished = False
        self._stopped = False
        self._t0 = 0.0
        self._seconds = 0.0
        self._report: Report | None = None

    # ------------------------------------------------------------------------------ public API

    @property
    def steps(self) -> int:
        """Optimizer steps seen (of the first optimizer that stepped)."""
        return self._window

    @property
    def stopped(self) -> bool:
        """True when the run was stopped because ``max_steps`` was reached."""
        return self._stopped

    @property
    def active(self) -> bool:
        return self._started and not self._finished

    @property
    def models(self) -> list[nn.Module]:
        """The watched models (given, or discovered at the first optimizer step)."""
        return list(self._models)

    @property
    def report(self) -> Report:
        """What the monitor saw, as a :class:`~sentinel.findings.Report` (final once the watch ended)."""
        if self._report is not None:
            return self._report
        return self._build_report()

    @property
    def findings(self) -> list[Finding]:
        return self.report.findings

    def start(self) -> Watch:
        global _active
        if self._started:
            raise WatchError("this watch was already started")
        if _active is not None:
            raise WatchError("another sentinel.watch is already active; watches do not nest")
        _active = self
        self._started = True
        self._t0 = time.perf_counter()
        self._has_cuda = torch.cuda.is_available()
        try:
            self._install()
        except BaseException:
            self._remove_hooks()
            _active = None
            raise
        return self

    def stop(self) -> Report:
        """Remove every hook and compute the final report (idempotent)."""
        global _active
        if not self._started:
            raise WatchError("this watch was never started")
        if not self._finished:
            self._finished = True
            self._seconds = time.perf_counter() - self._t0
            try:
                self._remove_hooks()
            finally:
                if _active is self:
                    _active = None
            try:
                self._final_checks()
            except Exception as exc:  # noqa: BLE001
                self._errors.append(f"final checks: {type(exc).__name__}: {exc}")
            self._report = self._build_report()
            self._release()
        assert self._report is not None
        return self._report

    def _release(self) -> None:
        """The report is final: drop references to the user's tensors (batches, gradients, graphs)."""
        self._records.clear()
        self._rng_before.clear()
        self._train_roots.clear()
        self._params.clear()
        self._tags.clear()
        self._eval_modules.clear()
        self._eval_hits.clear()
        self._nonfinite_raw = None
        for st in self._states.values():
            st.last_norms = None
            st.armed = None

    def __enter__(self) -> Watch:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self.stop()
        return exc_type is not None and issubclass(exc_type, _StopTraining)

    # -------------------------------------------------------------------------------- install

    def _install(self) -> None:
        from torch.nn.modules import module as module_mod
        from torch.optim import optimizer as optimizer_mod

        self._handles.append(optimizer_mod.register_optimizer_step_pre_hook(self._opt_pre))
        self._handles.append(optimizer_mod.register_optimizer_step_post_hook(self._opt_post))
        for m in self._given_models:
            self._add_model(m)
        if self.mode == "full" or not self._given_models:
            self._global_handles.append(module_mod.register_module_forward_pre_hook(self._global_pre))
            self._global_handles.append(
                module_mod.register_module_forward_hook(self._global_post, with_kwargs=True, always_call=True)
            )
            self._global_on = True

    def _remove_global_hooks(self) -> None:
        from torch.nn.modules import module as module_mod

        for h in self._global_handles:
            h.remove()
            # PyTorch's handle forgets this one (torch 2.x): do not leave a stale entry behind
            getattr(module_mod, "_global_forward_hooks_with_kwargs", {}).pop(h.id, None)
        self._global_handles.clear()
        self._global_on = False

    def _remove_hooks(self) -> None:
        self._remove_global_hooks()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for st in self._states.values():
            if st.sentinel_handle is not None:
                st.sentinel_handle.remove()
                st.sentinel_handle = None

    def _add_model(self, model: nn.Module) -> None:
        if id(model) in self._model_ids:
            return
        self._models.append(model)
        self._model_ids.add(id(model))
        if not self._global_on or self._given_models:
            self._hook_model(model)

    def _hook_model(self, model: nn.Module) -> None:
        if id(model) in self._hooked_models or self.mode == "full":
            return
        self._hooked_models.add(id(model))
        self._handles.append(model.register_forward_pre_hook(self._model_pre, with_kwargs=True))
        self._handles.append(model.register_forward_hook(self._model_post, with_kwargs=True, always_call=True))
        # SEN107 without a hook per dropout/batch-norm module (each would take PyTorch's slow call
        # path on every step): the model's own pre-hook checks them when grad mode is off.
        self._eval_modules[id(model)] = [m for m in model.modules() if U.is_eval_sensitive_type(m)]

    def _leave_global_mode(self) -> None:
        """Default mode, models discovered: keep hooks on the watched models only (fast path elsewhere)."""
        self._remove_global_hooks()
        self._stack.clear()
        for m in self._models:
            self._hook_model(m)

    # ------------------------------------------------------------------------- module hooks

    @_guarded
    def _global_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        stack = self._stack
        if not stack:
            self._root_pre(module, args, {})
        stack.append(module)
        if not torch.is_grad_enabled() and module.training and U.is_eval_sensitive_type(module):
            if U.eval_sensitive(module):
                self._eval_hits.setdefault(id(module), (stack[0], module))

    @_guarded
    def _global_post(self, module: nn.Module, args: tuple[Any, ...], *rest: Any) -> None:
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

    @_guarded
    def _model_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._root_pre(module, args, kwargs)

    @_guarded
    def _model_post(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        self._root_post(module, args, kwargs, output)

    def _root_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not torch.is_grad_enabled():
            # an evaluation pass: dropout / batch norm of this model still in training mode? (In
            # global mode the global pre-hook sees each submodule as it runs instead.)
            for sub in self._eval_modules.get(id(module), ()):
                if sub.training and U.eval_sensitive(sub):
                    self._eval_hits.setdefault(id(sub), (module, sub))
        else:
            self._rng_before[id(module)] = _rng_state(self._has_cuda)
            if self.mode == "full" and self._nonfinite is None:
                for name, t in U.call_tensors(args, kwargs):
                    if not U.is_finite(t):
                        self._set_nonfinite("input", self._primary_next_step(), root=module, module=None, tensor=name)
                        break

    def _module_pids(self, module: nn.Module) -> frozenset[int]:
        pids = self._pids.get(id(module))
        if pids is None:
            pids = frozenset(id(p) for p in module.parameters() if p.requires_grad)
            self._pids[id(module)] = pids
        return pids

    def _root_post(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if id(module) not in self._roots_seen:
            self._roots_seen.add(id(module))
            self._check_devices_dtypes(module, args, kwargs)
        rng = self._rng_before.pop(id(module), None)
        if output is None or not torch.is_grad_enabled():
            return
        outs = U.graph_tensors(output)
        if not outs:
            return
        if self._global_on and not self._given_models:
            self._train_roots.setdefault(id(module), module)
        # SEN108: one tag per root and step, in the graph of the first output.
        window = self._window
        if self._tagged_window.get(id(module)) != window:
            self._tagged_window[id(module)] = window
            meta = outs[0].grad_fn.metadata
            if _TAG_KEY not in meta:
                tag = _Tag()
                meta[_TAG_KEY] = tag
                self._tags.append((window, weakref.ref(tag)))
        # Keep what a replay needs: the inputs (detached), the RNG state before the forward, and the
        # gradient that will flow into each output.
        if self._module_pids(module):
            n = len(outs)
            record = ForwardRecord(
                module, U.detach_tree(tuple(args)), U.detach_tree(dict(kwargs)) if kwargs else {}, rng, [None] * n, n
            )
            for i, t in enumerate(outs):
                t.grad_fn.register_prehook(_GradCapture(record, i, t.output_nr))
            self._records.append(record)
            if len(self._records) > _MAX_RECORDS:
                del self._records[0]

    def _check_devices_dtypes(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """SEN103/SEN104 at the first call of a root module: its inputs, parameters and buffers.

        Names follow the probe suite: ``model.<name>`` for parameters and buffers (as
        ``named_parameters()`` / ``named_buffers()`` spell them), ``input[0]`` / ``input["x"]`` for the
        call's arguments. A root without parameters (a loss module) compares its inputs with each
        other: ``MSELoss.input[1]``. The expected device/dtype is the parameters' majority (buffers',
        else the first input's); 0-dim CPU tensors mix with any device; only floating dtypes count.
        """
        own = [(f"model.{n}", t) for n, t in module.named_parameters()]
        bufs = [(f"model.{n}", t) for n, t in module.named_buffers()]
        prefix = "" if own or bufs else f"{type(module).__name__}."
        inputs = [(f"{prefix}{n}", t) for n, t in U.call_tensors(args, kwargs)]
        named = inputs + own + bufs
        pool = [t for _, t in own] or [t for _, t in bufs] or [t for _, t in inputs]
        if pool:
            expected = Counter(t.device for t in pool).most_common(1)[0][0]
            odd = [
                {"name": n, "device": str(t.device), "expected": str(expected)}
                for n, t in named
                if t.device != expected and not (t.dim() == 0 and t.device.type == "cpu")
            ]
            if odd:
                self._mismatch["SEN103"].append((module, odd))
        if U.autocast_enabled():  # mixed dtypes are the point of autocast
            return
        floats = [(n, t) for n, t in named if t.is_floating_point()]
        pool = (
            [t for n, t in own if t.is_floating_point()]
            or [t for n, t in bufs if t.is_floating_point()]
            or [t for n, t in inputs if t.is_floating_point()]
        )
        if pool:
            expected_dtype = Counter(t.dtype for t in pool).most_common(1)[0][0]
            exp = U.dtype_name(expected_dtype)
            odd = [
                {"name": n, "dtype": U.dtype_name(t.dtype), "expected": exp}
                for n, t in floats
                if t.dtype != expected_dtype
            ]
            if odd:
                self._mismatch["SEN104"].append((module, odd))

    def _full_check_output(self, root: nn.Module, module: nn.Module, output: Any) -> None:
        # forward hooks fire innermost first: the first module with a non-finite output made it
        if not U.quick_finite([t for _, t in U.tensor_items(output, "")]):
            self._set_nonfinite("forward", self._primary_next_step(), root=root, module=module)

    # ---------------------------------------------------------------------- optimizer hooks

    def _accepts(self, opt: torch.optim.Optimizer) -> bool:
        ok = self._opt_ok.get(id(opt))
        if ok is None:
            if self._given_optimizers:
                ok = any(o is opt for o in self._given_optimizers)
            elif self._given_models:
                mine = {id(p) for m in self._given_models for p in m.parameters()}
                ok = any(id(p) in mine for g in opt.param_groups for p in g["params"])
            else:
                ok = True
            self._opt_ok[id(opt)] = ok
        return ok

    def _state(self, opt: torch.optim.Optimizer) -> _OptState:
        st = self._states.get(id(opt))
        if st is None:
            st = _OptState(opt, len(self._states))
            self._states[id(opt)] = st
            if self._primary is None:
                self._primary = st
        return st

    def _primary_next_step(self) -> int:
        return self._window  # 0-based index of the step in progress

    @_guarded
    def _opt_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._accepts(opt):
            return
        st = self._state(opt)
        if st.armed is not None:
            self._check_accumulate(st)
        params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
        if len(params) != st.n_params:
            self._register_params(st, params)
        step = st.steps  # 0-based index of the step being taken
        if st.no_grad:
            st.no_grad.difference_update([id(p) for p in params if p.grad is not None])
        with_grad = [p for p in params if p.grad is not None and not p.grad.is_sparse]
        if with_grad:
            grads = [p.grad for p in with_grad]
            values = U.grad_norms(grads).tolist()  # type: ignore[arg-type]
            st.last_norms = (with_grad, values)
            finite = math.isfinite(sum(values))  # norms are >= 0: NaN or inf iff one of them is
            if st.zero_grad:  # only until every parameter has had a non-zero gradient once
                nonzero = [id(p) for p, v in zip(with_grad, values, strict=True) if v != 0]
                st.zero_grad.difference_update(nonzero)
            if not finite and self._nonfinite is None and not U.all_finite(grads):
                self._localize(st, step, with_grad)
        if st is self._primary:
            self._check_retained()

    @_guarded
    def _opt_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._accepts(opt):
            return
        st = self._state(opt)
        st.steps += 1
        self._arm_accumulate(st)
        if self.mode == "full" and self._nonfinite is None:
            params = [p for g in opt.param_groups for p in g["params"]]
            if not U.quick_finite(params):
                i = first_nonfinite(params)
                self._set_nonfinite("update", st.steps - 1, param=params[i] if i is not None else None)
        if self._records:  # this step consumed the forward passes of its models
            ids = st.param_ids
            self._records = [r for r in self._records if self._module_pids(r.module).isdisjoint(ids)]
        if st is self._primary:
            self._window = st.steps
            if self._global_on and not self._given_models and self.mode == "default":
                self._leave_global_mode()
            if self.max_steps is not None and st.steps >= self.max_steps:
                self._stopped = True
                raise _StopTraining()

    def _register_params(self, st: _OptState, params: list[torch.Tensor]) -> None:
        new = [p for p in params if id(p) not in st.param_ids]
        for p in new:
            st.param_ids.add(id(p))
            st.no_grad.add(id(p))
            st.zero_grad.add(id(p))
            self._params[id(p)] = p
            st.first_fp[id(p)] = U.fingerprint(p)
        st.n_params = len(params)
        if not self._given_models and new:
            # discovery: the roots that own parameters of this optimizer are the watched models
            for root in list(self._train_roots.values()):
                if id(root) not in self._model_ids and any(id(p) in st.param_ids for p in root.parameters()):
                    self._add_model(root)

    # SEN106 ---------------------------------------------------------------------------------

    def _arm_accumulate(self, st: _OptState) -> None:
        """After a step: remember the sentinel parameter's ``.grad`` (object and version)."""
        if self._accumulate_step is not None:
            return
        if st.sentinel is None:
            params = (p for g in st.optimizer.param_groups for p in g["params"])
            first = next((p for p in params if p.grad is not None), None)
            if first is None:
                return
            st.sentinel = weakref.ref(first)
            st.sentinel_handle = first.register_hook(functools.partial(self._grad_arrives, st))
        p = st.sentinel()
        g = None if p is None else p.grad
        st.armed = None if g is None else [weakref.ref(g), g._version, False]

    def _untouched(self, st: _OptState) -> bool:
        """The sentinel's ``.grad`` is still the tensor the last step used, changed only by the
        accumulations the monitor saw arrive (no ``zero_grad``, no ``zero_()``, no new tensor)."""
        armed = st.armed
        p = st.sentinel() if st.sentinel is not None else None
        g = None if p is None else p.grad
        return armed is not None and g is not None and armed[0]() is g and g._version == armed[1]

    @_guarded
    def _grad_arrives(self, st: _OptState, grad: torch.Tensor) -> None:
        # A gradient is about to be accumulated into the sentinel parameter's .grad.
        armed = st.armed
        if armed is None:
            return None
        if self._untouched(st):  # ... into the last step's gradient: fine only if reset before the step
            armed[1] += 1  # AccumulateGrad adds in place: one version bump
            armed[2] = True
        else:  # the gradient was reset since the last step
            st.armed = None
        return None

    def _check_accumulate(self, st: _OptState) -> None:
        """Before a step: are the gradients the previous step's plus this step's?"""
        armed, st.armed = st.armed, None
        if armed is not None and armed[2] and self._accumulate_step is None:
            st.armed = armed
            if self._untouched(st):
                self._accumulate_step = st.steps  # the step about to run, 0-based
            st.armed = None

    # SEN108 ---------------------------------------------------------------------------------

    def _check_retained(self, upto: int | None = None) -> None:
        window = self._window if upto is None else upto
        alive: set[int] = set()
        keep = []
        for w, ref in self._tags:
            if ref() is not None:
                keep.append((w, ref))
                if w < window:
                    alive.add(w)
        self._tags = keep
        if len(alive) > self._retained:
            self._retained = len(alive)
            self._retained_at = window

    # SEN105 ---------------------------------------------------------------------------------

    def _set_nonfinite(
        self,
        stage: str,
        step: int,
        *,
        root: nn.Module | None = None,
        module: nn.Module | None = None,
        param: torch.Tensor | None = None,
        tensor: str | None = None,
        module_name: str | None = None,
        param_name: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if self._nonfinite is None:
            self._nonfinite = {
                "stage": stage,
                "step": step,
                "tensor": tensor,
                "module_name": module_name,
                "param_name": param_name,
                "extra": extra or {},
            }
            self._nonfinite_raw = (root, module, param)

    def _localize(self, st: _OptState, step: int, with_grad: list[torch.Tensor]) -> None:
        from sentinel.probes._watch_replay import localize_step

        records = [r for r in self._records if not self._module_pids(r.module).isdisjoint(st.param_ids)]
        self._busy = True
        try:
            result = localize_step(records, with_grad, step)
        finally:
            self._busy = False
        self._set_nonfinite(
            result.stage,
            result.step,
            root=result.root,
            module=result.module,
            param=result.param,
            tensor=result.tensor,
            module_name=result.module_name,
            param_name=result.param_name,
            extra=result.extra,
        )

    # ------------------------------------------------------------------------------- report

    def _final_checks(self) -> None:
        if self._primary is not None:
            self._check_retained(self._window - 1)
        if self._nonfinite is None and self._primary is not None:
            params = [self._params[i] for st in self._states.values() if st.steps for i in st.param_ids]
            i = first_nonfinite(params)
            if i is not None:
                last = max(st.steps for st in self._states.values()) - 1
                self._set_nonfinite("update", last, param=params[i])

    def _build_report(self) -> Report:
        findings = self._findings()
        if self._errors:
            status = "error"
        elif findings:
            status = "fail"
        else:
            status = "pass"
        if self._finished:
            seconds = self._seconds
        else:
            seconds = time.perf_counter() - self._t0 if self._started else 0.0
        message = "; ".join(f"internal error in the monitor ({e})" for e in self._errors)
        data = {
            "steps": self._window,
            "mode": self.mode,
            "stopped": self._stopped,
            "models": [type(m).__name__ for m in self._models],
            "optimizers": [type(st.optimizer).__name__ for st in self._states.values()],
        }
        result = ProbeResult(PROBE_NAME, status, seconds, findings, message, data)
        return Report(target=self.target, device=self._device(), probes=[result])

    def _device(self) -> str:
        for m in self._models:
            for p in m.parameters():
                return str(p.device)
        for p in self._params.values():
            return str(p.device)
        return "cpu"

    def _names(self) -> tuple[dict[int, str], dict[int, str]]:
        """Parameter and module names as in ``named_parameters()`` / ``named_modules()`` of the models."""
        pnames: dict[int, str] = {}
        mnames: dict[int, str] = {}
        labels = _model_labels(self._models)
        for model, label in zip(self._models, labels, strict=True):
            for name, mod in model.named_modules():
                mnames.setdefault(id(mod), _join(label, name))
            for name, p in model.named_parameters():
                pnames.setdefault(id(p), _join(label, name))
        return pnames, mnames

    def _findings(self) -> list[Finding]:
        pnames, mnames = self._names()
        out: list[Finding] = []
        out.extend(self._finding_not_updated(pnames))
        out.extend(self._finding_mismatch())
        out.extend(self._finding_nonfinite(pnames, mnames))
        if self._accumulate_step is not None:
            s = self._accumulate_step
            out.append(
                Finding(
                    "SEN106",
                    f"gradients were not reset between optimizer steps: at step {s} .grad still held "
                    f"step {s - 1}'s gradients and backward() added to them; call optimizer.zero_grad() "
                    "once per step",
                    {"step": s},
                )
            )
        if self._eval_hits:
            names = self._eval_module_names(mnames)
            out.append(
                Finding(
                    "SEN107",
                    "a forward pass ran under no_grad/inference_mode with dropout/batch-norm in training "
                    f"mode ({', '.join(names)}); call model.eval() before evaluating and model.train() after",
                    {"modules": names},
                )
            )
        if self._retained >= RETAINED_THRESHOLD:
            n = self._retained
            out.append(
                Finding(
                    "SEN108",
                    f"the autograd graphs of {n} earlier steps were still alive at step {self._retained_at}: "
                    "a loss or output is kept with its graph (e.g. losses.append(loss), total += loss); "
                    "keep loss.item() or loss.detach() instead",
                    {"steps": n},
                )
            )
        out.sort(key=lambda f: f.code)
        return out

    def _finding_not_updated(self, pnames: dict[int, str]) -> list[Finding]:
        states = [st for st in self._states.values() if st.steps > 0]
        if not states:
            return []
        owner = {pid: st for st in states for pid in st.param_ids}
        if self._models:
            named: list[tuple[str, torch.Tensor]] = []
            seen: set[int] = set()
            for model, label in zip(self._models, _model_labels(self._models), strict=True):
                for name, p in model.named_parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        named.append((_join(label, name), p))
        else:
            named = [
                (f"param_groups[{gi}]['params'][{pi}]", p)
                for st in states
                for gi, g in enumerate(st.optimizer.param_groups)
                for pi, p in enumerate(g["params"])
            ]
        bad: list[dict[str, str]] = []
        for name, p in named:
            if not p.requires_grad:
                continue  # frozen on purpose
            st = owner.get(id(p))
            if st is None:
                reason = "not-in-optimizer"
            elif id(p) in st.no_grad:
                reason = "no-grad"
            elif id(p) in st.zero_grad:
                reason = "zero-grad"
            else:
                before = st.first_fp.get(id(p))
                if before is None or U.fingerprint(p) != before or _vanishing(st, p):
                    continue
                reason = "unchanged"
            bad.append({"name": name, "reason": reason})
        if not bad:
            return []
        shown = ", ".join(f"{b['name']} ({b['reason']})" for b in bad[:6])
        more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
        steps = max(st.steps for st in states)
        return [
            Finding(
                "SEN102",
                f"{len(bad)} trainable parameter{'s' if len(bad) != 1 else ''} never updated in {steps} "
                f"step{'s' if steps != 1 else ''}: {shown}{more}",
                {"parameters": bad},
            )
        ]

    def _finding_mismatch(self) -> list[Finding]:
        out = []
        for code, key, what in (("SEN103", "device", "devices"), ("SEN104", "dtype", "dtypes")):
            entries = self._mismatch[code]
            if not entries:
                continue
            tensors = [t for _, odd in entries for t in odd]
            shown = ", ".join(f"{t['name']} ({t[key]}, expected {t['expected']})" for t in tensors[:6])
            more = f" and {len(tensors) - 6} more" if len(tensors) > 6 else ""
            roots = ", ".join(dict.fromkeys(type(m).__name__ for m, _ in entries))
            out.append(
                Finding(
                    code,
                    f"{what} differ at the first call of {roots}: {shown}{more}",
                    {"tensors": tensors},
                )
            )
        return out

    def _finding_nonfinite(self, pnames: dict[int, str], mnames: dict[int, str]) -> list[Finding]:
        if self._nonfinite is None or self._nonfinite_raw is None:
            return []
        root, module, param = self._nonfinite_raw
        info = self._nonfinite
        label = self._label_of(root)
        mod_name: str | None = None
        if info.get("module_name") is not None:  # from the replay: relative to the root
            mod_name = _join(label, info["module_name"])
        elif module is not None:
            mod_name = mnames.get(id(module))
            if mod_name is None and root is not None:
                mod_name = _name_in(root, module)
        param_name: str | None = None
        if info.get("param_name") is not None:
            param_name = _join(label, info["param_name"])
        elif param is not None:
            param_name = pnames.get(id(param))
            if mod_name is None and param_name is not None:
                mod_name = param_name.rpartition(".")[0]
        stage, step = info["stage"], info["step"]
        where = {
            "input": "in the batch fed to the model",
            "forward": "in the forward pass",
            "loss": "in the loss (the gradient flowing into the model's output)",
            "backward": "in the backward pass",
            "update": "in the parameters after the optimizer update",
        }[stage]
        parts = [f"first non-finite value at step {step}, {where}"]
        if mod_name is not None:
            if mod_name:
                parts.append(f"module {mod_name!r}")
            else:
                parts.append(f"the model's own forward ({type(root).__name__})")
        if param_name is not None:
            parts.append(f"parameter {param_name!r}")
        if info.get("tensor"):
            parts.append(f"tensor {info['tensor']}")
        details: dict[str, Any] = {"stage": stage, "module": mod_name, "parameter": param_name, "step": step}
        if info.get("tensor"):
            details["tensor"] = info["tensor"]
        for key, value in info.get("extra", {}).items():
            details.setdefault(key, value)
        return [Finding("SEN105", ", ".join(parts), details)]

    def _label_of(self, root: nn.Module | None) -> str:
        if root is None:
            return ""
        for model, label in zip(self._models, _model_labels(self._models), strict=True):
            if model is root:
                return label
        return ""

    def _eval_module_names(self, mnames: dict[int, str]) -> list[str]:
        names = []
        for root, module in self._eval_hits.values():
            name = mnames.get(id(module))
            if name is None:
                name = _name_in(root, module)
            names.append(name if name else type(module).__name__)
        return list(dict.fromkeys(names))


def watch(
    model: nn.Module | Sequence[nn.Module] | None = None,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    *,
    max_steps: int | None = None,
    mode: Mode = "default",
    target: str = "watch",
) -> Watch:
    """Watch a training loop. Use as a context manager; read ``.report`` afterwards.

    Args:
        model: the model(s) to watch. ``None``: discover them (root modules called in training forward
            passes whose parameters a stepping optimizer owns). Parameter and module names in findings
            are those of ``named_parameters()`` / ``named_modules()`` of these models.
        optimizer: the optimizer(s) to watch. ``None``: every optimizer that steps (with ``model``
            given: every optimizer that owns some of its parameters).
        max_steps: stop the run after this many steps of the first optimizer that steps: the
            ``optimizer.step()`` call raises a private ``BaseException`` that the ``with`` block
            swallows. ``None``: run to the end.
        mode: ``"default"`` runs cheap per-step checks only and replays a failing step to localize it;
            ``"full"`` also checks every module's output on every training forward pass and the
            parameters after every update, and keeps the global module hooks on for the whole run.
        target: the ``target`` field of the report.
    """
    return Watch(model, optimizer, max_steps=max_steps, mode=mode, target=target)


# ------------------------------------------------------------------------------------------ helpers


def _as_list(obj: Any, kind: type, what: str) -> list[Any]:
    if obj is None:
        return []
    if isinstance(obj, kind):
        return [obj]
    items = list(obj)
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(f"{what} must be a {kind.__name__} or a sequence of them, got {type(item).__name__}")
    return items


def _model_labels(models: list[nn.Module]) -> list[str]:
    if len(models) <= 1:
        return [""] * len(models)
    counts = Counter(type(m).__name__ for m in models)
    seen: Counter[str] = Counter()
    labels = []
    for m in models:
        base = type(m).__name__
        seen[base] += 1
        labels.append(base if counts[base] == 1 else f"{base}{seen[base]}")
    return labels


def _join(label: str, name: str) -> str:
    if not label:
        return name
    return f"{label}.{name}" if name else label


def _name_in(root: nn.Module, module: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is module:
            return name
    return type(module).__name__


# A parameter whose gradient is this small relative to its own magnitude cannot move in float32
# under SGD-like updates (e.g. the bias of a layer followed by batch norm, whose true gradient is 0):
# it not changing is expected, not a bug, so it is not reported as "unchanged".
VANISHING_GRAD = 1e-6


def _vanishing(st: _OptState, p: torch.Tensor) -> bool:
    if st.last_norms is None:
        return False
    params, norms = st.last_norms
    for q, g in zip(params, norms, strict=True):
        if q is p:
            scale = float(torch.linalg.vector_norm(p.detach())) if p.numel() else 0.0
            return g <= VANISHING_GRAD * scale
    return False


def _rng_state(has_cuda: bool) -> Any:
    """The RNG state a forward pass starts from (CPU, and CUDA once initialised): what a replay
    needs to draw the same dropout masks."""
    cuda = None
    if has_cuda and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return torch.get_rng_state(), cuda
