"""``sentinel probe path/to/train.py``: run an unmodified training script under the loop monitor.

:func:`run_script` runs the script the way ``python train.py ARGS`` would (``__name__ ==
"__main__"``, its own ``sys.argv``, its directory first on ``sys.path``), inside a
:func:`sentinel.watch`, stops it after ``steps`` optimizer steps, and returns what the monitor saw as
a :class:`~sentinel.findings.Report`.

- A script that ends (or calls ``sys.exit(0)``) before ``steps`` is fine: the report covers the steps
  it ran.
- A script that raises (or exits with a non-zero status) is an *error*, not a finding: the probe's
  status is ``error`` (exit status 2), its ``message`` says what was raised and its ``traceback``
  is the script's traceback without sentinel's frames (``sentinel probe`` prints it on stderr).
  Findings seen before the crash are still reported; a script that stops on a NaN/Inf itself (``if
  torch.isnan(loss): raise``) gets the SEN105 of the forward pass that made it, with its error in
  ``details["error"]``.
- The script sees what ``python train.py ARGS`` gives it: ``sys.argv == [path, *ARGS]``,
  ``sys.path[0]`` its own directory (replacing the working directory that ``python -m sentinel``
  put there, so a sibling module shadows nothing it would not shadow under ``python``), and a fresh
  ``__main__`` module (``__file__`` absolute, ``__spec__`` None) registered as
  ``sys.modules['__main__']``, so classes it defines pickle as ``__main__.Name``.
- Global state the script changes in-process is put back afterwards: ``sys.argv``, ``sys.path``,
  ``sys.modules['__main__']`` (and modules it imported from its own directory), torch grad mode,
  anomaly mode, default dtype and the current CUDA device.
- A script that runs no ``torch.optim`` optimizer step has nothing to watch: the probe's status is
  ``skipped`` and the report says so (exit status 0), never "passed".
- Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank runs this; :mod:`sentinel.probes.distributed`
  sends each rank's report to rank 0, which returns the merged report (``world_size`` set, every
  finding with ``details["ranks"]``); the other ranks return their own report with ``rank`` set,
  which ``sentinel probe`` does not print. A rank whose script raised releases its peers (destroys
  the process group) so that no rank hangs.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sys
import time
import traceback
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from sentinel.findings import ProbeResult
from sentinel.probes.errors import user_traceback
from sentinel.probes.report import PROBE_NAME, WatchReport

__all__ = ["run_script"]

_SENTINEL_DIR = str(Path(__file__).resolve().parent.parent)


def run_script(
    path: str,
    *,
    steps: int | None,
    device: str = "auto",
    script_args: Sequence[str] = (),
    mode: str = "default",
    stdout: TextIO | None = None,
) -> WatchReport:
    """Run the training script ``path`` under :func:`sentinel.watch` for at most ``steps`` optimizer steps.

    Args:
        path: the script (run as ``__main__``).
        steps: stop after this many optimizer steps (``None``: run the script to its end).
        device: ``auto`` (the script decides), ``cpu`` (hide CUDA devices from the script when CUDA
            was not initialised yet in this process), ``cuda`` or ``cuda:N`` (an error if that GPU
            is not available; ``cuda:N`` becomes the current CUDA device while the script runs).
        script_args: the script's ``sys.argv[1:]``.
        mode: the monitor's mode, ``default`` or ``full`` (see :func:`sentinel.watch`).
        stdout: where the script's ``sys.stdout`` goes (default: unchanged; ``sentinel probe
            --format json`` sends it to stderr to keep its own stdout parseable).
    """
    import torch

    # imported now: the script's run replaces sys.path[0], which may be how sentinel is found
    from sentinel.probes import _watch_findings, distributed, nonfinite  # noqa: F401
    from sentinel.probes.watch import Watch, _StopTraining

    script = Path(path)
    cuda_index: int | None = None
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return _error_report(path, device, f"--device {device}: no CUDA device is available")
        if ":" in device:
            cuda_index = int(device.partition(":")[2])
            if cuda_index >= torch.cuda.device_count():
                return _error_report(
                    path, device, f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here"
                )
    try:
        source = script.read_bytes()
    except OSError as exc:
        return _error_report(path, device, f"cannot read the script: {exc.strerror or exc}")
    abspath = str(script.resolve())
    try:
        code = compile(source, abspath, "exec", dont_inherit=True)
    except SyntaxError as exc:
        report = _error_report(path, device, f"the script does not compile: {exc.msg} (line {exc.lineno})")
        report.probes[0].traceback = "".join(traceback.format_exception_only(type(exc), exc))
        return report

    main = types.ModuleType("__main__")
    main.__file__ = abspath
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    main.__spec__ = None
    main.__package__ = None
    main.__loader__ = None  # type: ignore[assignment]

    saved = _SavedState(str(script.resolve().parent), device, cuda_index)
    exchange = distributed.RankExchange.from_env()
    watcher = Watch(max_steps=steps, mode=mode, target=path)  # type: ignore[arg-type]
    error: str | None = None
    user_tb = ""
    failed_at = 0.0
    started = time.perf_counter()
    saved.enter(main, [path, *script_args])
    redirect = contextlib.redirect_stdout(stdout) if stdout is not None else contextlib.nullcontext()
    try:
        with redirect:
            watcher.start()
            try:
                exec(code, main.__dict__)
            except _StopTraining:
                pass
            except SystemExit as exc:
                status = exc.code
                if status not in (None, 0):
                    error = f"the script exited with status {status!r}"
                    failed_at = time.time()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - the user's error, reported as such
                failed_at = time.time()  # under torchrun: the rank that failed first is the cause
                user_tb = user_traceback(exc)
                error = f"the script raised {_reason(exc)}"
            finally:
                watcher.stop()
                if error is not None and exchange is not None:
                    distributed.release_peers()
    finally:
        saved.exit()
        # main.__dict__ is not cleared: torch.compile keeps weak references into the script's globals
        # and its cleanup callbacks expect them (the module is freed with its last reference)

    report = watcher.report
    probe = report.probes[0]
    probe.seconds = time.perf_counter() - started
    if error is not None:
        probe.status = "error"
        probe.message = f"{error}; {probe.message}" if probe.message else error
        probe.data["error"] = error
        probe.data["failed_at"] = failed_at
        probe.traceback = user_tb
        for f in probe.findings:
            if f.code == "SEN105":  # the script stopped on the NaN/Inf the monitor localized
                f.details.setdefault("error", error.removeprefix("the script raised "))
    if device != "auto" and not watcher.models:
        report.device = device
    if exchange is not None:
        merged = exchange.exchange(report)
        if merged is None:
            report.rank = exchange.rank
            return report
        merged.rank = 0
        return merged
    return report


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _error_report(path: str, device: str, message: str) -> WatchReport:
    return WatchReport(
        target=path,
        device=device if device != "auto" else "cpu",
        probes=[ProbeResult(PROBE_NAME, "error", 0.0, message=message)],
    )


class _SavedState:
    """Process-wide state a script changes while it runs in-process, put back afterwards."""

    def __init__(self, script_dir: str, device: str, cuda_index: int | None = None) -> None:
        self.script_dir = script_dir
        self.device = device
        self.cuda_index = cuda_index

    def enter(self, main: types.ModuleType, argv: list[str]) -> None:
        import torch

        self.argv = sys.argv
        self.path = list(sys.path)
        self.main = sys.modules.get("__main__")
        self.modules = set(sys.modules)
        self.grad = torch.is_grad_enabled()
        self.anomaly = torch.is_anomaly_enabled()
        self.dtype = torch.get_default_dtype()
        self.env_cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.hid_cuda = False
        if self.device == "cpu" and not torch.cuda.is_initialized():
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
            self.hid_cuda = True
        self.cuda_device: int | None = None
        if self.cuda_index is not None:
            self.cuda_device = torch.cuda.current_device()
            torch.cuda.set_device(self.cuda_index)
        sys.argv = argv
        # `python train.py` puts the script's directory first; `python -m sentinel` had put the
        # working directory there: replace it (sentinel itself is imported already)
        first = sys.path[0] if sys.path else None
        if first is not None and first in ("", os.getcwd()):
            sys.path[0] = self.script_dir
        else:
            sys.path.insert(0, self.script_dir)
        sys.modules["__main__"] = main

    def exit(self) -> None:
        import torch

        sys.argv = self.argv
        sys.path[:] = self.path
        if self.main is not None:
            sys.modules["__main__"] = self.main
        for name in [m for m in sys.modules if m not in self.modules]:
            if _local_module(sys.modules[name], self.script_dir):
                del sys.modules[name]
        torch.set_grad_enabled(self.grad)
        torch.autograd.set_detect_anomaly(self.anomaly)
        torch.set_default_dtype(self.dtype)
        if self.cuda_device is not None:
            torch.cuda.set_device(self.cuda_device)
        if self.hid_cuda:
            if self.env_cuda is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = self.env_cuda


def _local_module(module: object, script_dir: str) -> bool:
    """A module the script imported from its own directory (not an installed package)."""
    file = getattr(module, "__file__", None)
    if not file:
        return False
    file = os.path.abspath(file)
    if not file.startswith(script_dir.rstrip(os.sep) + os.sep):
        return False
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    installed = any(file.startswith(p.rstrip(os.sep) + os.sep) for p in prefixes)
    return not installed and not file.startswith(_SENTINEL_DIR + os.sep)
