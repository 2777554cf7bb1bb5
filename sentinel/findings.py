"""Result types of the runtime half (probes and the loop monitor).

Torch-free on purpose: the CLI, the pytest plugin and users' scripts can build, compare and print
these without importing torch. The JSON shape is the contract of ``sentinel probe --format json``
(see DESIGN.md): ``{"target", "device", "findings": [...], "probes": [...]}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

PROBE_RULES: dict[str, str] = {
    "SEN101": "cannot-overfit-one-batch",
    "SEN102": "parameter-not-updated",
    "SEN103": "device-mismatch",
    "SEN104": "dtype-mismatch",
    "SEN105": "non-finite-value",
    "SEN106": "gradients-accumulate",
    "SEN107": "evaluation-in-train-mode",
    "SEN108": "graph-retained-across-steps",
    "SEN109": "ranks-out-of-sync",
    "SEN110": "unexpected-initial-loss",
    "SEN111": "batch-samples-mixed",
}

Status = Literal["pass", "fail", "error", "skipped"]


@dataclass
class Finding:
    """One runtime finding: a contract code, its kebab-case name, a message and structured details."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = PROBE_RULES[self.code]

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "message": self.message, "details": self.details}

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        line = Text()
        line.append(self.code, style="bold red")
        line.append(f" [{self.name}] ", style="dim")
        line.append(self.message)
        yield line


_STATUS_STYLE = {"pass": "green", "fail": "bold red", "error": "bold magenta", "skipped": "yellow"}


@dataclass
class ProbeResult:
    """The outcome of one probe (or of one monitored run).

    ``status`` is ``pass`` (ran, no finding), ``fail`` (ran, findings), ``error`` (could not run:
    ``message`` says why) or ``skipped`` (not applicable: ``message`` says why). ``data`` holds figures
    a user may want to assert on (e.g. the loss curve of the overfit probe). ``traceback`` is the
    formatted traceback of the user's exception when the user's code raised (sentinel's own frames
    removed); it is not part of the JSON output.
    """

    name: str
    status: Status
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    traceback: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "skipped")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "seconds": round(self.seconds, 6)}
        if self.message:
            out["message"] = self.message
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        style = _STATUS_STYLE[self.status]
        head = Text()
        head.append(f"{self.status.upper():<7}", style=style)
        head.append(f" {self.name}")
        head.append(f"  ({self.seconds:.2f}s)", style="dim")
        if self.message:
            head.append(f"  {self.message}", style="dim")
        yield head
        curve = _curve_line(self)
        if curve is not None:
            yield curve
        for finding in self.findings:
            yield Text("  ") + _finding_text(finding)


def sparkline(curve: list[float], width: int = 40) -> str:
    """``curve`` as a row of block characters, lowest value lowest; NaN/Inf as ``!``."""
    if not curve:
        return ""
    n = len(curve)
    idx = [round(i * (n - 1) / (width - 1)) for i in range(width)] if n > width else list(range(n))
    values = [curve[i] for i in idx]
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append("!")
        elif hi == lo:
            out.append(_BLOCKS[0])
        else:
            out.append(_BLOCKS[min(len(_BLOCKS) - 1, int((v - lo) / (hi - lo) * len(_BLOCKS)))])
    return "".join(out)


_BLOCKS = "▁▂▃▄▅▆▇█"


def _curve_line(result: ProbeResult) -> Text | None:
    """The overfit probe's loss curve as a sparkline with its end points and target."""
    source = result.findings[0].details if result.findings else result.data
    curve = source.get("curve") if isinstance(source, dict) else None
    if not curve or not isinstance(curve, list):
        return None
    line = Text("  loss ")
    line.append(sparkline(curve), style="cyan")
    first, last = curve[0], curve[-1]
    line.append(f"  {first:.4g} -> {last:.4g}", style="dim")
    target = source.get("threshold")
    if isinstance(target, (int, float)):
        line.append(f" (target <= {target:.4g}, {source.get('steps', len(curve))} steps)", style="dim")
    return line


def _finding_text(finding: Finding) -> Text:
    text = Text()
    text.append(finding.code, style="bold red")
    text.append(f" {finding.message}")
    return text


@dataclass
class Report:
    """Everything one ``sentinel probe`` run found: per-probe outcomes and their findings."""

    target: str
    device: str
    probes: list[ProbeResult] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for p in self.probes for f in p.findings]

    @property
    def ok(self) -> bool:
        return not self.findings and all(p.status != "error" for p in self.probes)

    def codes(self) -> list[str]:
        return [f.code for f in self.findings]

    def exit_code(self) -> int:
        """0 no findings, 1 findings, 2 a probe could not run."""
        if any(p.status == "error" for p in self.probes):
            return 2
        return 1 if self.findings else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "device": self.device,
            "findings": [f.to_dict() for f in self.findings],
            "probes": [p.to_dict() for p in self.probes],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON: NaN and infinities (a diverging loss) become the strings ``"NaN"``,
        ``"Infinity"`` and ``"-Infinity"``, which every JSON parser accepts."""
        return json.dumps(_strict(self.to_dict()), indent=indent, default=_json_default, allow_nan=False)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text.assemble(("sentinel probe ", "bold"), self.target, (f"  on {self.device}", "dim"))
        yield from self.probes
        n = len(self.findings)
        if n:
            yield Text(f"Found {n} problem{'s' if n != 1 else ''}.", style="bold red")
        elif self.ok:
            yield Text("All probes passed.", style="bold green")


def merge(target: str, device: str, results: Iterable[ProbeResult]) -> Report:
    return Report(target=target, device=device, probes=list(results))


def _strict(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy/torch scalars
        try:
            return _strict(obj.item())
        except Exception:  # not a scalar: left to _json_default
            return obj
    return obj


def _json_default(obj: Any) -> Any:
    # numbers that came from numpy/torch scalars, tuples of shapes, etc.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)
