"""``sentinel probe TARGET``: load the user's factory (or script), run the probes, print, exit.

Exit status: 0 no findings, 1 findings, 2 usage or import error, or the user's code raised (its
traceback, without sentinel's frames, and a one-line reason go to stderr).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sentinel.console import make_console
from sentinel.findings import Report

__all__ = ["TargetError", "load_factory", "parse_target", "run_probe_command"]

_FACTORY_KEYS = ("model", "loss_fn", "batch", "optimizer", "compute_loss")


class TargetError(Exception):
    """A usage or import problem with TARGET: exit 2. ``traceback`` is the user's, if any."""

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback


@dataclass
class Target:
    kind: str  # "file", "module" or "script"
    location: str  # path or dotted module name
    attr: str = ""


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def parse_target(target: str) -> Target:
    """``path/to/file.py:factory``, ``package.module:factory`` or ``path/to/train.py``."""
    location, sep, attr = target.rpartition(":")
    if sep and re.fullmatch(r"[A-Za-z]", location) and attr[:1] in ("\\", "/"):
        location, sep, attr = "", "", target  # a Windows drive letter, not a factory
    if not sep:
        path = attr
        if path.endswith(".py"):
            return Target("script", path)
        raise TargetError(
            f"bad TARGET {target!r}: expected path/to/file.py:factory, package.module:factory or path/to/train.py"
        )
    if not location or not attr:
        raise TargetError(f"bad TARGET {target!r}: both sides of ':' are needed (e.g. model.py:make)")
    if not _DOTTED.match(attr):
        raise TargetError(f"bad TARGET {target!r}: {attr!r} is not a function name")
    if location.endswith(".py") or "/" in location or os.sep in location:
        return Target("file", location, attr)
    if not _DOTTED.match(location):
        raise TargetError(f"bad TARGET {target!r}: {location!r} is neither a .py file nor a module name")
    return Target("module", location, attr)


@contextlib.contextmanager
def _on_path(directory: str) -> Iterator[None]:
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(directory)


def _user_tb(exc: BaseException) -> str:
    from sentinel.probes.errors import user_traceback

    return user_traceback(exc)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _import(target: Target) -> Any:
    if target.kind == "file":
        path = os.path.abspath(target.location)
        if not os.path.isfile(path):
            raise TargetError(f"no such file: {target.location}")
        stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
        name = f"_sentinel_target_{stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:  # pragma: no cover - not a Python file
            raise TargetError(f"cannot import {target.location}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise TargetError(f"importing {target.location} raised {_reason(exc)}", _user_tb(exc)) from exc
        return module
    try:
        return importlib.import_module(target.location)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if target.location == missing or target.location.startswith(missing + "."):
            raise TargetError(f"no module named {target.location!r} (is it on sys.path?)") from exc
        raise TargetError(f"importing {target.location} raised {_reason(exc)}", _user_tb(exc)) from exc
    except Exception as exc:
        raise TargetError(f"importing {target.location} raised {_reason(exc)}", _user_tb(exc)) from exc


def load_factory(target: Target) -> tuple[Any, str]:
    """Import the module of ``target`` and return ``(factory, its display name)``."""
    module = _import(target)
    obj: Any = module
    for part in target.attr.split("."):
        if not hasattr(obj, part):
            makers = sorted(n for n in dir(module) if n.startswith("make") and callable(getattr(module, n)))
            hint = f" (it has: {', '.join(makers)})" if makers else ""
            raise TargetError(f"{target.location} has no attribute {target.attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TargetError(f"{target.location}:{target.attr} is not callable")
    return obj, f"{target.location}:{target.attr}"


def _call_factory(factory: Any, name: str) -> Mapping[str, Any]:
    try:
        made = factory()
    except Exception as exc:
        raise TargetError(f"the factory {name} raised {_reason(exc)}", _user_tb(exc)) from exc
    if not isinstance(made, Mapping):
        raise TargetError(
            f"the factory {name} returned a {type(made).__name__}; it must return a mapping with"
            " 'model', 'loss_fn', 'batch' and optionally 'optimizer'"
        )
    missing = [k for k in ("model", "batch") if k not in made]
    if "loss_fn" not in made and "compute_loss" not in made:
        missing.insert(1, "loss_fn")
    if missing:
        raise TargetError(f"the mapping returned by {name} lacks {', '.join(repr(k) for k in missing)}")
    from torch import nn, optim

    if not isinstance(made["model"], nn.Module):
        raise TargetError(f"{name}: 'model' is a {type(made['model']).__name__}, not a torch.nn.Module")
    opt = made.get("optimizer")
    if opt is not None and not isinstance(opt, optim.Optimizer):
        raise TargetError(f"{name}: 'optimizer' is a {type(opt).__name__}, not a torch.optim.Optimizer")
    unknown = sorted(set(made) - set(_FACTORY_KEYS))
    if unknown:
        print(f"sentinel probe: ignoring unknown keys from {name}: {', '.join(unknown)}", file=sys.stderr)
    return made


def _print_report(report: Report, fmt: str, color: str) -> None:
    if fmt == "json":
        sys.stdout.write(report.to_json() + "\n")
        sys.stdout.flush()
    else:
        make_console(color).print(report)


def _print_errors(report: Report) -> None:
    """The user's traceback (once per distinct one) and a one-line reason, on stderr."""
    tracebacks: list[str] = []
    reasons: dict[str, list[str]] = {}
    for probe in report.probes:
        if probe.status != "error":
            continue
        if probe.traceback and probe.traceback not in tracebacks:
            tracebacks.append(probe.traceback)
        reasons.setdefault(probe.message, []).append(probe.name)
    for tb in tracebacks:
        sys.stderr.write(tb if tb.endswith("\n") else tb + "\n")
    for message, names in reasons.items():
        sys.stderr.write(f"sentinel probe: {', '.join(names)}: {message}\n")
    sys.stderr.flush()


def _fail(message: str, traceback: str = "") -> int:
    if traceback:
        sys.stderr.write(traceback if traceback.endswith("\n") else traceback + "\n")
    sys.stderr.write(f"sentinel probe: {message}\n")
    sys.stderr.flush()
    return 2


def run_probe_command(
    target: str,
    *,
    steps: int | None,
    device: str,
    fmt: str,
    color: str,
    script_args: list[str],
) -> int:
    """Entry point of ``sentinel probe`` (see :mod:`sentinel.cli`). Returns the exit status."""
    try:
        parsed = parse_target(target)
    except TargetError as exc:
        return _fail(str(exc))
    if parsed.kind == "script":
        return _run_script(parsed.location, steps=steps, device=device, fmt=fmt, color=color, script_args=script_args)
    if script_args:
        return _fail(
            f"extra arguments {' '.join(script_args)!r} are only passed to training scripts (TARGET = path/to/train.py)"
        )

    from sentinel.probes.checks import run_probes
    from sentinel.probes.workspace import resolve_device

    bad_device = _check_device(device)
    if bad_device:
        return _fail(bad_device)
    try:
        dev = resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        return _fail(str(exc))
    # User code may print: keep stdout clean for --format json.
    quiet = contextlib.redirect_stdout(sys.stderr) if fmt == "json" else contextlib.nullcontext()
    directory = os.path.dirname(os.path.abspath(parsed.location)) if parsed.kind == "file" else os.getcwd()
    with _on_path(directory):
        try:
            with quiet:
                factory, name = load_factory(parsed)
                made = _call_factory(factory, name)
                report = run_probes(
                    made["model"],
                    made.get("loss_fn"),
                    made["batch"],
                    made.get("optimizer"),
                    steps=steps,
                    device=dev,
                    target=target,
                    compute_loss=made.get("compute_loss"),
                )
        except TargetError as exc:
            return _fail(str(exc), exc.traceback)
        except Exception as exc:  # the mapping's contents were unusable (e.g. a bad batch)
            return _fail(f"could not run the probes on {target}: {_reason(exc)}")
    _print_report(report, fmt, color)
    _print_errors(report)
    return report.exit_code()


def _check_device(device: str) -> str | None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a message when it is none of them."""
    if device in ("auto", "cpu", "cuda"):
        return None
    head, _, index = device.partition(":")
    if head == "cuda" and index.isdigit():
        return None
    return f"--device {device!r}: expected auto, cpu, cuda or cuda:N"


def _run_script(path: str, *, steps: int | None, device: str, fmt: str, color: str, script_args: list[str]) -> int:
    if not os.path.isfile(path):
        return _fail(f"no such file: {path}")
    bad_device = _check_device(device)
    if bad_device:
        return _fail(bad_device)
    try:
        from sentinel.probes.script import run_script  # the loop monitor's runner
    except ImportError as exc:
        return _fail(f"running training scripts is not available: {exc}")
    quiet = contextlib.redirect_stdout(sys.stderr) if fmt == "json" else contextlib.nullcontext()
    try:
        with quiet:
            report = run_script(path, steps=steps, device=device, script_args=list(script_args))
    except SystemExit as exc:
        return _fail(f"{path} exited (status {exc.code}) before the monitor could report")
    except Exception as exc:
        return _fail(f"{path} raised {_reason(exc)}", _user_tb(exc))
    if getattr(report, "rank", None) not in (None, 0):
        return 0  # under torchrun only rank 0 prints (the report of every rank); exit 0 keeps torchrun from killing it
    _print_report(report, fmt, color)
    _print_errors(report)
    return report.exit_code()
