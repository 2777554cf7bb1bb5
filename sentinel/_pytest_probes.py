"""The object behind the ``sentinel`` pytest fixture: runtime probes as assertion helpers.

Imported when a test first requests the fixture; torch and :mod:`sentinel.probes` are imported only
when a helper runs. A helper that sees a finding raises ``AssertionError`` with a formatted report
(the helpers' own frames are hidden from pytest's traceback, so the failure points at the test's
line), so ``pytest.raises(AssertionError, match="SEN102")`` works for tests that expect a bug.
The exception carries the probe outcome(s) as ``.result``.
"""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sentinel.findings import Finding, ProbeResult, Report

__all__ = ["SentinelFixture", "format_failure"]


class SentinelFixture:
    """Assertion helpers that run sentinel's training probes on a model.

    Every helper takes keyword arguments ``model``, ``loss_fn``, ``batch`` (``(inputs, targets)``)
    and optionally ``optimizer`` plus probe options (``steps``, ``device``, ...). Options not given
    fall back to the run's defaults (``--sentinel-steps`` / ``--sentinel-device`` or the ini keys
    ``sentinel_steps`` / ``sentinel_device``), which apply only to probes that take that option.
    """

    def __init__(self, defaults: Mapping[str, object] | None = None) -> None:
        self._defaults: dict[str, object] = dict(defaults or {})

    @property
    def defaults(self) -> dict[str, object]:
        """The probe options configured for this run (a copy): ``steps`` and/or ``device`` when set."""
        return dict(self._defaults)

    def __repr__(self) -> str:
        return f"<sentinel fixture defaults={self._defaults!r}>"

    # -- one helper per probe -------------------------------------------------------------------

    def assert_overfits(
        self, *, model: Any, loss_fn: Any, batch: Any, optimizer: Any = None, **options: Any
    ) -> ProbeResult:
        """Fail unless the model drives the loss on this one batch close to zero (SEN101)."""
        __tracebackhide__ = True
        return self._check("assert_overfits", "check_overfit", model, loss_fn, batch, optimizer, options)

    def assert_updates(
        self, *, model: Any, loss_fn: Any, batch: Any, optimizer: Any = None, **options: Any
    ) -> ProbeResult:
        """Fail if an optimizer step leaves some trainable parameter unchanged (SEN102)."""
        __tracebackhide__ = True
        return self._check("assert_updates", "check_updates", model, loss_fn, batch, optimizer, options)

    def assert_devices(
        self, *, model: Any, loss_fn: Any, batch: Any, optimizer: Any = None, **options: Any
    ) -> ProbeResult:
        """Fail if parameters, buffers, batch or optimizer state disagree on device or dtype (SEN103/104)."""
        __tracebackhide__ = True
        return self._check("assert_devices", "check_devices", model, loss_fn, batch, optimizer, options)

    def assert_finite(
        self, *, model: Any, loss_fn: Any, batch: Any, optimizer: Any = None, **options: Any
    ) -> ProbeResult:
        """Fail if a NaN/inf appears in the inputs, a module's output, the loss, a gradient or an update
        (SEN105), naming where it first appeared."""
        __tracebackhide__ = True
        return self._check("assert_finite", "check_finite", model, loss_fn, batch, optimizer, options)

    def assert_initial_loss(
        self, *, model: Any, loss_fn: Any, batch: Any, optimizer: Any = None, **options: Any
    ) -> ProbeResult:
        """Fail if a classification loss at initialisation is far from ln C for C classes (SEN110).
        Returns the result (``.status == "skipped"`` with the reason when the loss is not a
        recognisable classification loss)."""
        __tracebackhide__ = True
        return self._check("assert_initial_loss", "check_initial_loss", model, loss_fn, batch, optimizer, options)

    def assert_batch_independent(
        self, *, model: Any, loss_fn: Any, batch: Any, optimizer: Any = None, **options: Any
    ) -> ProbeResult:
        """Fail if, in eval mode, one sample's output depends on other samples' inputs (SEN111).
        Returns the result (``.status == "skipped"`` with the reason where it does not apply)."""
        __tracebackhide__ = True
        return self._check(
            "assert_batch_independent", "check_batch_independence", model, loss_fn, batch, optimizer, options
        )

    def assert_trains(self, *, model: Any, loss_fn: Any, batch: Any, optimizer: Any = None, **options: Any) -> Report:
        """Run the whole probe suite (``run_probes``) and fail on any finding or probe that could not
        run; returns the :class:`~sentinel.findings.Report` (``.probes``, ``.findings``)."""
        __tracebackhide__ = True
        probes = _probes("assert_trains")

        fn = probes.run_probes
        kwargs = self._options(fn, "assert_trains", options)
        outcome = _call_probe("assert_trains", fn, model, loss_fn, batch, optimizer, kwargs)
        results = _probe_results(outcome)
        if any(r.findings or r.status == "error" for r in results):
            raise _failure("assert_trains", results, outcome)
        return outcome

    # -- machinery ------------------------------------------------------------------------------

    def _check(
        self,
        helper: str,
        probe: str,
        model: Any,
        loss_fn: Any,
        batch: Any,
        optimizer: Any,
        options: dict[str, Any],
    ) -> ProbeResult:
        __tracebackhide__ = True
        probes = _probes(helper)

        fn = getattr(probes, probe)
        kwargs = self._options(fn, helper, options)
        result = _call_probe(helper, fn, model, loss_fn, batch, optimizer, kwargs)
        if result.findings or result.status in ("fail", "error"):
            raise _failure(helper, [result], result)
        return result

    def _options(self, fn: Callable[..., Any], helper: str, given: dict[str, Any]) -> dict[str, Any]:
        """Run defaults the probe accepts, overridden by the options the test passed explicitly."""
        accepted, takes_any = _keywords(fn)
        unknown = sorted(k for k in given if k not in accepted)
        if unknown and not takes_any:
            names = ", ".join(repr(k) for k in unknown)
            valid = ", ".join(sorted(accepted)) or "none"
            raise TypeError(f"sentinel.{helper}() got unexpected option(s) {names} (it accepts: {valid})")
        options = {k: v for k, v in self._defaults.items() if k in accepted or takes_any}
        options.update(given)
        return options


INSTALL_HINT = (
    "install the probe extra: pip install 'torch-sentinel[probe]' (for a CPU-only machine, install the CPU"
    " wheel of torch first: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
)


def _probes(helper: str) -> Any:
    """:mod:`sentinel.probes`, or a failed test that says how to install PyTorch when it is missing."""
    __tracebackhide__ = True
    try:
        from sentinel import probes
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if not (missing == "torch" or missing.startswith("torch.") or "torch" in str(exc)):
            raise
    else:
        return probes
    # outside the except block, so that the report is this one line, not the chained ImportError
    pytest.fail(
        f"sentinel.{helper}: the training probes need PyTorch, which is not installed here; {INSTALL_HINT}",
        pytrace=False,
    )


_POSITIONAL = ("model", "loss_fn", "batch", "optimizer")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _call_probe(
    helper: str,
    fn: Callable[..., Any],
    model: Any,
    loss_fn: Any,
    batch: Any,
    optimizer: Any,
    kwargs: dict[str, Any],
) -> Any:
    """Run one probe. Errors in the user's code come back as a result with status "error"; what
    sentinel itself rejects before running (a bad ``device``, say) fails the test with that one line
    rather than a traceback through sentinel's internals. Anything else propagates untouched."""
    __tracebackhide__ = True
    try:
        return fn(model, loss_fn, batch, optimizer, **kwargs)
    except (ValueError, RuntimeError) as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        if not frames or not os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep):
            raise
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        pytest.fail(f"sentinel.{helper}: cannot run the probe ({shown}): {exc}", pytrace=False)


def _keywords(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """(option names ``fn`` accepts by keyword besides model/loss_fn/batch/optimizer, takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins/C callables: pass everything through
        return set(), True
    names = {
        p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in _POSITIONAL
    }
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _probe_results(outcome: Any) -> list[ProbeResult]:
    """The ProbeResults inside whatever ``run_probes`` returned (a Report, a list, a dict, one result)."""
    if hasattr(outcome, "status") and hasattr(outcome, "findings"):
        return [outcome]
    if hasattr(outcome, "probes"):
        return list(outcome.probes)
    if isinstance(outcome, Mapping):
        return list(outcome.values())
    return list(outcome)


def _failure(helper: str, results: list[ProbeResult], outcome: Any) -> AssertionError:
    err = AssertionError(format_failure(helper, results))
    err.result = outcome  # type: ignore[attr-defined]
    return err


# -- report formatting ----------------------------------------------------------------------------


def format_failure(helper: str, results: Iterable[ProbeResult]) -> str:
    """The message of a failed helper: one block per probe that found something or could not run."""
    results = list(results)
    findings = [f for r in results for f in r.findings]
    errors = [r for r in results if r.status == "error"]
    parts = []
    if findings:
        parts.append(f"{len(findings)} finding{'s' if len(findings) != 1 else ''}")
    if errors:
        parts.append(f"{len(errors)} probe{'s' if len(errors) != 1 else ''} could not run")
    if not parts:  # status "fail" without a Finding object: still a failure, say so
        parts.append("probe failed")
    if len(findings) == 1:
        parts[0] = f"{findings[0].code} {findings[0].name}"
    elif findings:
        parts[0] += f" ({', '.join(dict.fromkeys(f.code for f in findings))})"
    lines = [f"sentinel.{helper}: {', '.join(parts)}"]
    for result in results:
        if not result.findings and result.status != "error" and result.status != "fail":
            continue
        lines.append("")
        head = f"probe {result.name!r}: {result.status}"
        if result.message:
            head += f": {result.message}"
        lines.append(head)
        for finding in result.findings:
            lines.extend(_format_finding(finding))
    return "\n".join(lines)


def _format_finding(finding: Finding) -> list[str]:
    lines = [f"  {finding.code} {finding.name}: {finding.message}"]
    for key, value in (finding.details or {}).items():
        lines.extend(_format_detail(key, value, indent="      "))
    return lines


def _format_detail(key: str, value: Any, indent: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        out = [f"{indent}{key}:"]
        for k, v in value.items():
            out.extend(_format_detail(str(k), v, indent + "  "))
        return out
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
        return [f"{indent}{key}:"] + [f"{indent}  - {_format_entry(v)}" for v in value]
    if isinstance(value, (list, tuple)):
        return [f"{indent}{key}: [{', '.join(_scalar(v) for v in value)}]"]
    return [f"{indent}{key}: {_scalar(value)}"]


def _format_entry(entry: Mapping[str, Any]) -> str:
    """``{"name": "fc.weight", "reason": "no-grad"}`` -> ``fc.weight (reason: no-grad)``."""
    rest = {k: v for k, v in entry.items() if k != "name" and v is not None}
    extra = ", ".join(f"{k}: {_scalar(v)}" for k, v in rest.items())
    if "name" in entry:
        return f"{entry['name']} ({extra})" if extra else str(entry["name"])
    return extra


def _scalar(value: Any) -> str:
    if hasattr(value, "item") and callable(value.item):  # 0-d numpy/torch values
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
