"""Exceptions raised by the user's code while a probe runs, and their tracebacks without our frames."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["UserCodeError", "call_user", "user_traceback"]

T = TypeVar("T")

_SENTINEL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NOISE = ("<frozen importlib._bootstrap", "<frozen importlib._bootstrap_external")


class UserCodeError(Exception):
    """The user's model, loss, optimizer or factory raised ``exc`` while doing ``what``."""

    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(f"{what} raised {type(exc).__name__}: {exc}")
        self.what = what
        self.exc = exc

    @property
    def reason(self) -> str:
        """One line: what raised what."""
        first = str(self.exc).strip().splitlines()[0] if str(self.exc).strip() else ""
        return f"{self.what} raised {type(self.exc).__name__}" + (f": {first}" if first else "")

    def traceback(self) -> str:
        return user_traceback(self.exc)


def call_user(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call user code; any exception becomes a :class:`UserCodeError` naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except UserCodeError:
        raise
    except Exception as exc:
        raise UserCodeError(what, exc) from exc


_CALL_IMPL = ("_call_impl", "_wrapped_call_impl")


def _is_ours(frame: traceback.FrameSummary) -> bool:
    """Frames of sentinel itself, importlib's bootstrap and torch's module-call plumbing."""
    filename = frame.filename
    if filename.startswith(_NOISE):
        return True
    path = os.path.abspath(filename)
    if path.startswith(_SENTINEL_DIR + os.sep):
        return True
    return frame.name in _CALL_IMPL and path.endswith(os.path.join("torch", "nn", "modules", "module.py"))


def user_traceback(exc: BaseException) -> str:
    """The formatted traceback of ``exc`` (and its chain) without sentinel's or importlib's frames."""
    te = traceback.TracebackException.from_exception(exc)
    _trim(te, set())
    return "".join(te.format())


def _trim(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    kept = [f for f in te.stack if not _is_ours(f)]
    te.stack = traceback.StackSummary.from_list(kept)
    for nxt in (te.__cause__, te.__context__):
        if nxt is not None:
            _trim(nxt, seen)
