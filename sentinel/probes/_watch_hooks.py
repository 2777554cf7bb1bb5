"""Hook plumbing of the loop monitor: hooks that never get in the user's way.

- **Copy-safe.** A hook registered on a model lives in the model's ``_forward_pre_hooks`` /
  ``_forward_hooks`` dicts, so ``copy.deepcopy(model)`` would copy the monitor with it and
  ``torch.save(model)`` / ``pickle`` would try to serialise it. :class:`ModelHooks` swaps those dicts
  for :class:`HookDict`\\ s, which leave the monitor's entries out of every copy and pickle, and puts
  plain dicts back when the watch ends. Gradient hooks on parameters are not copied by PyTorch.
- **Compile-safe.** :func:`compile_skipped` makes a global module hook return at once while Dynamo
  traces a compiled region (``torch.compiler.is_compiling()``), so ``torch.compile`` never traces
  the monitor; :func:`never_compiled` keeps Dynamo from compiling a hook as a frame of its own (a
  model compiled in place, ``model.compile()``, calls its hooks eagerly under Dynamo's frame hook);
  :func:`eager_only` keeps a hook out of Dynamo's graph altogether (``torch._dynamo.disable``, at a
  cost per call) where it must run even inside a traced region.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import sys
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["HookDict", "ModelHooks", "compile_skipped", "eager_only", "guarded", "is_compiling", "never_compiled"]

_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    """A hook body must never break the user's run: an internal error is recorded (``self._fail``)
    and the watch goes quiet (``self._broken``); nothing runs while the watch is busy with its own
    work (``self._busy``: a replay, a collective). ``BaseException``\\ s (the watch's own stop
    signal, ``KeyboardInterrupt``) pass through."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._busy or self._broken:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's run comes first
            self._fail(method.__name__, exc)
            return None

    return wrapper


def _compiling_probe() -> Callable[[], bool]:
    compiler = getattr(torch, "compiler", None)
    fn = getattr(compiler, "is_compiling", None)
    if fn is not None:
        return fn
    try:  # pragma: no cover - older torch
        from torch._dynamo import is_compiling as dynamo_is_compiling

        return dynamo_is_compiling
    except ImportError:  # pragma: no cover
        return lambda: False


is_compiling = _compiling_probe()


def compile_skipped(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` that does nothing (returns ``None``) while Dynamo traces: a global hook fires inside
    every compiled module; under tracing it must add nothing to the graph and cause no graph break."""

    @functools.wraps(fn)
    def hook(*args: Any, **kwargs: Any) -> Any:
        if is_compiling():
            return None
        return fn(*args, **kwargs)

    never_compiled(hook)
    return hook


def never_compiled(*functions: Callable[..., Any]) -> None:
    """Dynamo never compiles a frame of these functions nor any frame they call (they run eagerly),
    and still inlines them when it traces a caller (where :func:`is_compiling` must make them
    no-ops before they read anything).

    A module compiled in place (``module.compile()``) runs its ``_call_impl`` eagerly under Dynamo's
    frame hook, so each hook it calls would be a frame that Dynamo compiles on its own: traced
    (``is_compiling()`` true) into a hook that does nothing, ever; and the monitor's own functions
    would be compiled. A per-code setting: no cost per call (unlike ``torch._dynamo.disable``)."""
    try:
        from torch._C._dynamo.eval_frame import _FrameAction, _FrameExecStrategy, set_code_exec_strategy
    except ImportError:  # pragma: no cover - torch without Dynamo or with another private API
        return
    for fn in functions:
        code = getattr(fn, "__code__", None)
        if code is not None:
            with contextlib.suppress(Exception):
                set_code_exec_strategy(code, _FrameExecStrategy(_FrameAction.SKIP, _FrameAction.SKIP))


def eager_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` excluded from Dynamo tracing (it runs eagerly, between compiled graphs).

    Only when Dynamo is loaded already (the user compiled something): importing it costs seconds,
    and a model compiled later still cannot trace ``fn`` into its graph, which returns at once
    while tracing (:func:`is_compiling`)."""
    if "torch._dynamo" not in sys.modules:
        return fn
    try:
        from torch._dynamo import disable
    except ImportError:  # pragma: no cover - torch without Dynamo
        return fn
    return disable(fn)  # type: ignore[no-any-return]


class HookDict(OrderedDict):  # type: ignore[type-arg]
    """A module's hook dict whose ``hidden`` entries (the monitor's) stay out of copies and pickles."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden: set[int] = set()

    def _visible(self) -> list[tuple[Any, Any]]:
        return [(k, v) for k, v in self.items() if k not in self.hidden]

    def __reduce__(self) -> Any:
        return (OrderedDict, (), None, None, iter(self._visible()))

    def __copy__(self) -> OrderedDict:  # type: ignore[type-arg]
        return OrderedDict(self._visible())

    def __deepcopy__(self, memo: dict[int, Any]) -> OrderedDict:  # type: ignore[type-arg]
        return OrderedDict((k, copy.deepcopy(v, memo)) for k, v in self._visible())


class ModelHooks:
    """A forward pre-hook and an always-called forward hook (both with kwargs) on one module, kept
    out of ``deepcopy`` / ``pickle`` / ``torch.save`` of that module. :meth:`remove` undoes it all:
    the module gets its original dict objects back (the handles of hooks registered before the
    watch point at them), holding every hook but the monitor's."""

    def __init__(
        self,
        module: nn.Module,
        pre: Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], Any],
        post: Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], Any],
    ) -> None:
        self.module = module
        self.swapped: dict[str, HookDict] = {}
        self.originals: dict[str, Any] = {}
        self.before: dict[str, set[Any]] = {}
        state = module.__dict__
        for name in _HOOK_DICTS:
            d = state.get(name)
            if d is None or isinstance(d, HookDict):
                continue
            self.originals[name] = d
            self.before[name] = set(d)
            hd = HookDict(d)
            state[name] = hd
            self.swapped[name] = hd
        self.handles = [
            module.register_forward_pre_hook(pre, with_kwargs=True),
            module.register_forward_hook(post, with_kwargs=True, always_call=True),
        ]
        self.ids = {h.id for h in self.handles}
        for d in self.swapped.values():
            d.hidden |= self.ids

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        state = self.module.__dict__
        for name, d in self.swapped.items():
            for key in self.ids:
                d.pop(key, None)
            d.hidden -= self.ids
            if state.get(name) is not d:
                continue  # the user replaced the dict meanwhile: theirs now
            orig = self.originals[name]
            orig.clear()
            orig.update(d)
            state[name] = orig
            if set(d) - self.before[name]:  # hooks registered during the watch: re-point their handles
                _repoint_handles(d, orig)
        self.swapped.clear()


def _repoint_handles(old: dict[Any, Any], new: dict[Any, Any]) -> None:
    """Make the ``RemovableHandle`` objects that point at ``old`` point at ``new``."""
    from torch.utils.hooks import RemovableHandle

    def handles_of(obj: Any) -> list[RemovableHandle]:
        found = []
        for holder in gc.get_referrers(obj):
            if isinstance(holder, RemovableHandle):
                found.append(holder)
            elif isinstance(holder, dict):  # an instance __dict__
                found.extend(h for h in gc.get_referrers(holder) if isinstance(h, RemovableHandle))
        return found

    for ref in weakref.getweakrefs(old):
        for h in handles_of(ref):
            if h.hooks_dict_ref is ref:
                h.hooks_dict_ref = weakref.ref(new)
        for holder in gc.get_referrers(ref):
            if isinstance(holder, tuple):
                for h in handles_of(holder):
                    if h.extra_dict_ref is holder:
                        h.extra_dict_ref = tuple(weakref.ref(new) if r is ref else r for r in holder)
