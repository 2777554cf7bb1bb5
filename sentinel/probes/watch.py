"""The loop monitor: :func:`sentinel.watch` watches the user's own training loop while it runs.

::

    with sentinel.watch() as w:          # or watch(model, optimizer, max_steps=100, mode="full")
        train()                          # the user's unmodified code
    print(w.report)                      # readable; w.report.to_json() for the JSON contract

Nothing in the user's code changes: the monitor uses PyTorch's own hook points, keeps them out of
``torch.compile``'s traces and out of ``deepcopy`` / ``pickle`` / ``torch.save`` of the model
(:mod:`sentinel.probes._watch_hooks`), and removes every one of them when the watch ends.

This module owns the :class:`Watch` object: its life cycle (start, stop, the final checks, the
report), installing and removing hooks, model discovery, and the optimizer side (the step hooks,
reading the on-device checks, localizing a failing step, comparing ranks). The module-hook side (what
each forward pass of a watched model records; SEN103/104/107/108) is its base class,
:class:`sentinel.probes._watch_forward.ForwardHooks`.

- Optimizer steps: the global ``register_optimizer_step_pre_hook`` / ``post_hook``. The per-step
  checks run there, on the device, and are read every few steps (:mod:`sentinel.probes._watch_steps`:
  no host-device synchronisation on a healthy step). A run is stopped after ``max_steps`` by a
  private ``BaseException`` raised from the post-hook, swallowed by the ``with`` block or by
  :func:`sentinel.probes.script.run_script`.
- Models: given, or discovered through the global module forward hooks (a module called while no
  other module runs is a root; roots that own parameters of a stepping optimizer are the watched
  models). In the default mode the global hooks go after the first optimizer step, replaced by a
  pre- and a post-hook on each watched model, so every submodule keeps PyTorch's fast call path
  (with a compiled model watched they stay registered but quiet: Dynamo guards its graphs on their
  number). Models compiled in place (``model.compile()``) are discovered and watched too.
  Findings name parameters and modules as ``named_parameters()`` / ``named_modules()`` of the
  model itself (inside ``DistributedDataParallel`` / ``torch.compile`` wrappers); with several
  models, names are prefixed by the model's class name.

What it finds (codes and ``details`` are the DESIGN contract; ``step`` is the 0-based index of the
optimizer step). Messages and the SEN102..SEN108 findings are built in
:mod:`sentinel.probes._watch_findings`.

- SEN102 parameter-not-updated: ``.grad`` never set (``no-grad``), gradients all zero
  (``zero-grad``), not held by any watched optimizer (``not-in-optimizer``, also for modules never
  called), or not a single element changed (``unchanged``: an exact hash of every element at the
  first step and at the end, compared on the device; the hash is only taken at the end for
  parameters whose sum of bit patterns did not move).
- SEN103 / SEN104 device- and dtype-mismatch: at the first call of each root module, its inputs,
  parameters and buffers; the odd ones out are blamed (see ``ForwardHooks._check_devices_dtypes``).
- SEN105 non-finite-value: the step, stage and module (:mod:`sentinel.probes._watch_replay`).
  ``mode="full"`` also checks every module's output on every training forward pass and the
  parameters after every update (one host sync each: slow, exact).
- SEN106 gradients-accumulate (see :mod:`sentinel.probes._watch_steps`).
- SEN107 evaluation-in-train-mode: a watched model called with grad mode off while its dropout /
  batch-norm submodules are in training mode.
- SEN108 graph-retained-across-steps: each step's model output gets a tiny tag in its
  ``grad_fn.metadata``; tags of two or more earlier steps alive at a step mean graphs pile up.
- SEN109 ranks-out-of-sync, under ``torch.distributed`` (:mod:`sentinel.probes.distributed`).

Zero interference: hooks only read (no in-place op, no RNG draw, no graph), and a replay runs under a
full snapshot/restore of the model and the RNGs, or on a copy.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal

import torch
from torch import nn

from sentinel.findings import Finding, ProbeResult
from sentinel.probes import _watch_util as U
from sentinel.probes._watch_forward import ForwardHooks, Tag
from sentinel.probes._watch_hooks import ModelHooks, compile_skipped, eager_only, guarded, never_compiled
from sentinel.probes._watch_replay import ForwardRecord, RngRing, localize_records, localize_unread, unwrap
from sentinel.probes._watch_steps import READ_EVERY, OptState, StepEntry, read_entries, step_check
from sentinel.probes.nonfinite import first_nonfinite
from sentinel.probes.report import PROBE_NAME, WatchReport

__all__ = ["PROBE_NAME", "Mode", "Watch", "WatchError", "watch"]

Mode = Literal["default", "full"]

# SEN108: how many earlier steps' graphs must be alive at one check to report.
RETAINED_THRESHOLD = 2

_active: Watch | None = None


class WatchError(RuntimeError):
    """Misuse of the monitor (e.g. two watches at once)."""


class _StopTraining(BaseException):
    """Raised from the optimizer step post-hook once ``max_steps`` steps ran.

    A ``BaseException`` so that the user's ``except Exception`` blocks do not swallow it; the watch's
    ``__exit__`` and :func:`~sentinel.probes.script.run_script` catch it.
    """


class Watch(ForwardHooks):
    """A running (or finished) loop monitor. Create it with :func:`watch`."""

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module] | None = None,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        *,
        max_steps: int | None = None,
        mode: Mode = "default",
        target: str = "watch",
        read_every: int = READ_EVERY,
    ) -> None:
        if mode not in ("default", "full"):
            raise ValueError(f"mode must be 'default' or 'full', not {mode!r}")
        if max_steps is not None and max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if read_every < 1:
            raise ValueError("read_every must be at least 1")
        self.mode: Mode = mode
        self.max_steps = max_steps
        self.target = target
        self.read_every = read_every
        self._given_models = _as_list(model, nn.Module, "model")
        self._given_optimizers = _as_list(optimizer, torch.optim.Optimizer, "optimizer")
        self._models: list[nn.Module] = []  # as called (may be DDP / compiled wrappers)
        self._model_ids: set[int] = set()
        self._opt_ok: dict[int, bool] = {}
        self._states: dict[int, OptState] = {}
        self._primary: OptState | None = None
        self._window = 0  # completed steps of the primary optimizer
        self._handles: list[Any] = []
        self._model_hooks: list[ModelHooks] = []
        self._global_handles: list[Any] = []
        self._global_on = False
        self._global_quiet = False  # registered but doing nothing (see _leave_global_mode)
        self._warning_filter: Any = None
        self._hooked_models: set[int] = set()
        self._stack: list[nn.Module] = []
        self._roots_seen: set[int] = set()
        self._train_roots: dict[int, nn.Module] = {}
        self._rng_before: dict[int, Any] = {}
        self._rng_ring = RngRing()
        self._scalars = U.ScalarRing()
        self._records: list[ForwardRecord] = []
        self._kept_bytes = 0
        self._pids: dict[int, frozenset[int]] = {}
        self._tags: list[tuple[int, weakref.ref[Tag]]] = []
        self._tagged_window: dict[int, int] = {}
        self._retained = 0
        self._retained_at = 0
        self._eval_hits: dict[int, tuple[nn.Module, nn.Module]] = {}
        self._eval_modules: dict[int, list[nn.Module]] = {}
        self._mismatch: dict[str, list[tuple[nn.Module, list[dict[str, str]]]]] = {"SEN103": [], "SEN104": []}
        self._accumulate_step: int | None = None
        self._nonfinite: dict[str, Any] | None = None
        self._nonfinite_raw: tuple[Any, ...] | None = None
        self._unchanged: dict[int, bool] = {}  # id(param) -> no element changed (computed at the end)
        self._params: dict[int, torch.Tensor] = {}
        self._sync: Any = None  # sentinel.probes.distributed.RankSync under torch.distributed
        self._out_of_sync: dict[str, Any] | None = None
        self._errors: list[str] = []
        self._notes: list[str] = []
        self._busy = False
        self._broken = False
        self._started = False
        self._has_cuda = False
        self._finished = False
        self._stopped = False
        self._t0 = 0.0
        self._seconds = 0.0
        self._report: WatchReport | None = None

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
        """The watched models (given, or discovered at the first optimizer step), unwrapped."""
        return [unwrap(m) for m in self._models]

    @property
    def report(self) -> WatchReport:
        """What the monitor saw (final once the watch ended). ``print(w.report)`` reads well."""
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

    def stop(self) -> WatchReport:
        """Remove every hook, read what is left on the device and compute the final report (idempotent)."""
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

    def _fail(self, where: str, exc: Exception) -> None:
        self._broken = True
        self._errors.append(f"{where}: {type(exc).__name__}: {exc}")

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
        self._sync = None
        self._rng_ring = RngRing()
        self._scalars = U.ScalarRing()
        for st in self._states.values():
            st.pending.clear()
            st.first_hashes.clear()

    def __enter__(self) -> Watch:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self.stop()
        return exc_type is not None and issubclass(exc_type, _StopTraining)

    # -------------------------------------------------------------------------------- install

    def _install(self) -> None:
        from torch.optim import optimizer as optimizer_mod

        never_compiled(Watch._model_pre, Watch._model_post)
        self._handles.append(optimizer_mod.register_optimizer_step_pre_hook(self._opt_pre))
        self._handles.append(optimizer_mod.register_optimizer_step_post_hook(self._opt_post))
        for m in self._given_models:
            self._add_model(m)
        if self.mode == "full" or not self._given_models:
            self._install_global_hooks()

    def _install_global_hooks(self) -> None:
        from torch.nn.modules import module as module_mod

        # torch.compile(model) warns that global module hooks fire once more for the OptimizedModule:
        # the monitor knows (it watches roots only) and the user did nothing wrong
        warnings.filterwarnings("ignore", message=r"Using `torch\.compile\(module\)` when there are global hooks")
        self._warning_filter = warnings.filters[0]
        pre = compile_skipped(self._global_pre)
        post = compile_skipped(self._global_post)
        self._global_handles.append(module_mod.register_module_forward_pre_hook(pre))
        self._global_handles.append(module_mod.register_module_forward_hook(post, with_kwargs=True, always_call=True))
        self._global_on = True

    def _remove_global_hooks(self) -> None:
        from torch.nn.modules import module as module_mod

        if self._warning_filter is not None:
            with contextlib.suppress(ValueError):
                warnings.filters.remove(self._warning_filter)
                warnings._filters_mutated()  # type: ignore[attr-defined]
            self._warning_filter = None
        for h in self._global_handles:
            h.remove()
            # PyTorch's handle forgets these (torch 2.x): leave no stale entry behind
            for name in ("_global_forward_hooks_with_kwargs", "_global_forward_hooks_always_called"):
                getattr(module_mod, name, {}).pop(h.id, None)
        self._global_handles.clear()
        self._global_on = False
        self._global_quiet = False

    def _remove_hooks(self) -> None:
        self._remove_global_hooks()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for mh in self._model_hooks:
            mh.remove()
        self._model_hooks.clear()
        for st in self._states.values():
            st.accumulation.remove()

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
        # A model given by the user may be the inside of a torch.compile wrapper, its hooks traced:
        # torch._dynamo.disable keeps them running (with graph breaks). A discovered model is one
        # called from eager code: plain hooks (cheaper), which Dynamo never compiles on their own.
        given = any(m is model for m in self._given_models)
        pre, post = self._model_pre, self._model_post
        if given:
            pre, post = eager_only(pre), eager_only(post)
        self._model_hooks.append(ModelHooks(model, pre, post))
        # SEN107 without a hook per dropout/batch-norm module (each would take PyTorch's slow call
        # path on every step): the model's own pre-hook checks them when grad mode is off.
        self._eval_modules[id(model)] = [m for m in model.modules() if U.is_eval_sensitive_type(m)]

    def _leave_global_mode(self) -> None:
        """Default mode, models discovered: keep hooks on the watched models only (fast path elsewhere).

        Dynamo guards the graphs it compiled meanwhile on the number of global module hooks: with a
        compiled model watched, the global hooks stay registered, quiet, until the watch ends
        (removing them now would recompile every graph)."""
        if any(_compiled(m) for m in self._models):
            self._global_quiet = True
            self._global_on = False
        else:
            self._remove_global_hooks()
        self._stack.clear()
        for m in self._models:
            self._hook_model(m)

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

    def _state(self, opt: torch.optim.Optimizer) -> OptState:
        st = self._states.get(id(opt))
        if st is None:
            st = OptState(opt, len(self._states))
            st.accumulation.ring = self._scalars
            self._states[id(opt)] = st
            if self._primary is None:
                self._primary = st
        return st

    def _reads_at(self, st: OptState, step: int) -> bool:
        if self.mode == "full" or step == 0 or (step + 1) % self.read_every == 0:
            return True
        return self.max_steps is not None and st is self._primary and step + 1 >= self.max_steps

    @guarded
    def _opt_pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        st = self._states.get(id(opt))
        if st is None:
            if not self._accepts(opt):
                return
            st = self._state(opt)
        arrivals = st.accumulation.close()
        params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
        if len(params) != st.n_params:
            self._register_params(st, params)
        if st.no_grad:
            st.no_grad.difference_update([id(p) for p in params if p.grad is not None])
        step = st.steps  # 0-based index of the step being taken
        records = self._records
        if records:
            ids = st.param_ids
            mine = [r for r in records if not self._module_pids(r.module).isdisjoint(ids)]
            if mine:
                self._records = [r for r in records if self._module_pids(r.module).isdisjoint(ids)]
        else:
            mine = records
        reads = self._reads_at(st, step)
        # norms kept until a later read go to the preallocated rows
        checked, norms = step_check(st, params, reads, None if reads else self._scalars)
        entry = StepEntry(step, checked, norms, mine, arrivals)
        st.pending.append(entry)
        if reads:
            entry.grads = [p.grad for p in checked]  # type: ignore[misc]
            self._read(st, current=entry)
        if st is self._primary and self._tags:
            self._check_retained()

    @guarded
    def _opt_post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        st = self._states.get(id(opt))
        if st is None:
            if not self._accepts(opt):
                return
            st = self._state(opt)
        st.steps += 1
        acc = st.accumulation
        if acc.param is None and self._accumulate_step is None:
            p = acc.choose(st.params)
            if p is not None:
                acc.handle = p.register_hook(functools.partial(self._grad_arrives, st))
        acc.arm()
        if self.mode == "full" and self._nonfinite is None:
            params = [p for g in opt.param_groups for p in g["params"]]
            if not U.quick_finite(params):
                i = first_nonfinite(params)
                self._set_nonfinite("update", st.steps - 1, param=params[i] if i is not None else None)
        if st is self._primary:
            self._window = st.steps
            if self._global_on and not self._given_models and self.mode == "default":
                self._leave_global_mode()
            last = self.max_steps is not None and st.steps >= self.max_steps
            if self._sync is not False and (last or self._reads_at(st, st.steps - 1)):
                if self._sync is None and _dist_ready():
                    self._sync = _rank_sync()
                if self._sync:
                    self._check_ranks(st)
            if last:
                self._stopped = True
                raise _StopTraining()

    @guarded
    def _grad_arrives(self, st: OptState, grad: torch.Tensor) -> None:
        st.accumulation.arrive()
        return None

    def _register_params(self, st: OptState, params: list[torch.Tensor]) -> None:
        new = [p for p in params if id(p) not in st.param_ids]
        for p in new:
            st.param_ids.add(id(p))
            st.params.append(p)
            st.no_grad.add(id(p))
            st.zero_grad.add(id(p))
            self._params[id(p)] = p
        hashes = U.param_hashes(new)
        if hashes is not None:
            st.first_hashes.append((new, hashes, U.bit_sums(new)))
        st.n_params = len(params)
        st.registered()
        if not self._given_models and new:
            # discovery: the roots that own parameters of this optimizer are the watched models
            for root in list(self._train_roots.values()):
                if id(root) not in self._model_ids and any(id(p) in st.param_ids for p in root.parameters()):
                    self._add_model(root)

    # ------------------------------------------------------------------------- reading

    def _read(self, st: OptState, current: StepEntry | None) -> None:
        entries, st.pending = st.pending, []
        self._kept_bytes -= sum(r.nbytes for e in entries for r in e.records)
        result = read_entries(st, entries)
        if result.accumulate_step is not None and self._accumulate_step is None:
            self._accumulate_step = result.accumulate_step
        if self._nonfinite is not None:
            return
        if result.failing is not None:
            entry, gvals = result.failing
            at_hand = entry is current
            if at_hand and U.all_finite(entry.grads):
                return  # a 2-norm that overflowed, not a NaN/Inf
            if at_hand:  # parameters already non-finite before this step: the last update made them
                i = first_nonfinite(entry.params)
                if i is not None:
                    if entry.step == 0:
                        self._set_nonfinite("forward", 0, param=entry.params[i])
                    else:
                        self._set_nonfinite("update", entry.step - 1, param=entry.params[i])
                    return
            self._localize(entry, gvals, at_hand)

    def _read_all(self) -> None:
        for st in self._states.values():
            if st.pending:
                self._read(st, None)

    def _own_work(self, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run the monitor's own replay or collective with its hooks off (``self._busy``)."""
        self._busy = True
        try:
            return work(*args, **kwargs)
        finally:
            self._busy = False

    def _check_ranks(self, st: OptState) -> None:
        found = self._own_work(self._sync.check, st.steps - 1, st.params)
        if found is not None and self._out_of_sync is None:
            self._out_of_sync = found
        if self._sync.broken:
            self._notes.append(self._sync.broken)
            self._sync = False

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

    def _localize(self, entry: StepEntry, gvals: list[float], at_hand: bool) -> None:
        result = self._own_work(localize_records, entry.records, entry.params, gvals, entry.step, current=at_hand)
        self._set_localized(result)

    def _set_localized(self, result: Any) -> None:
        """Keep what a replay localized (the first non-finite value's stage, step, module ...)."""
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
        self._read_all()
        if self._nonfinite is None and self._records:
            found = self._own_work(localize_unread, self._records, self._window)
            if found is not None:
                self._set_localized(found)
        if self._primary is not None:
            self._check_retained(self._window - 1)
        stepped = [st for st in self._states.values() if st.steps]
        if self._nonfinite is None and stepped:
            params = [p for st in stepped for p in st.params]
            i = first_nonfinite(params)
            if i is not None:
                last = max(st.steps for st in stepped) - 1
                self._set_nonfinite("update", last, param=params[i])
        # SEN102 "unchanged": a parameter whose sum of bit patterns moved since its first step changed;
        # the others are decided by comparing their exact hashes now and then (on the device)
        for st in stepped:
            for params, before, sums_before in st.first_hashes:
                idx = list(range(len(params)))
                if sums_before is not None:
                    moved = U.moved(params, sums_before)
                    idx = [i for i in idx if not moved[i]]
                    for i, m in enumerate(moved):
                        if m:
                            self._unchanged[id(params[i])] = False
                if not idx:
                    continue
                now = U.param_hashes([params[i] for i in idx])
                if now is None:
                    continue
                same = (now == before[idx]).tolist()
                for i, s in zip(idx, same, strict=True):
                    self._unchanged[id(params[i])] = bool(s) and U.tensor_hash(params[i]) is not None

    def _build_report(self) -> WatchReport:
        from sentinel.probes._watch_findings import build_findings

        findings = build_findings(self)
        data: dict[str, Any] = {
            "steps": self._window,
            "mode": self.mode,
            "stopped": self._stopped,
            "models": [type(unwrap(m)).__name__ for m in self._models],
            "optimizers": [type(st.optimizer).__name__ for st in self._states.values()],
        }
        if self._errors:
            status = "error"
            message = "; ".join(f"internal error in the monitor ({e})" for e in self._errors)
        elif findings:
            status, message = "fail", ""
        elif self._primary is None:
            status = "skipped"
            message = (
                "nothing to watch: no torch.optim optimizer stepped, so no training step was checked"
                " (the monitor watches optimizer.step())"
            )
        else:
            status, message = "pass", ""
        if self._notes:
            message = "; ".join([message, *self._notes] if message else self._notes)
        if self._finished:
            seconds = self._seconds
        else:
            seconds = time.perf_counter() - self._t0 if self._started else 0.0
        result = ProbeResult(PROBE_NAME, status, seconds, findings, message, data)  # type: ignore[arg-type]
        return WatchReport(target=self.target, device=self._device(), probes=[result])

    def _device(self) -> str:
        for m in self._models:
            for p in m.parameters():
                return str(p.device)
        for p in self._params.values():
            return str(p.device)
        return "cpu"


def watch(
    model: nn.Module | Sequence[nn.Module] | None = None,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    *,
    max_steps: int | None = None,
    mode: Mode = "default",
    target: str = "watch",
    read_every: int = READ_EVERY,
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
        mode: ``"default"`` keeps its per-step checks on the device and reads them every
            ``read_every`` steps; a failing step is still found exactly and replayed to localize it.
            ``"full"`` also checks every module's output on every training forward pass and the
            parameters after every update (host syncs on every step), and keeps the global module
            hooks on for the whole run.
        target: the ``target`` field of the report.
        read_every: how often (in optimizer steps) the on-device checks are read (the only host
            synchronisation of the default mode besides the first step and the end).
    """
    return Watch(model, optimizer, max_steps=max_steps, mode=mode, target=target, read_every=read_every)


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


def _compiled(model: nn.Module) -> bool:
    """``torch.compile(model)``'s wrapper, or a model with a part compiled in place (``.compile()``)."""
    if unwrap(model) is not model and hasattr(model, "_orig_mod"):
        return True
    return any(m.__dict__.get("_compiled_call_impl") is not None for m in unwrap(model).modules())


def _dist_ready() -> bool:
    dist = getattr(torch, "distributed", None)
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def _rank_sync() -> Any:
    """A :class:`~sentinel.probes.distributed.RankSync` when torch.distributed runs with several
    ranks, else ``False`` (a single-process group: nothing to compare)."""
    from sentinel.probes.distributed import RankSync

    return RankSync.create() or False
