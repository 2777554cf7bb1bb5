"""The loop monitor's report: :class:`WatchReport`, and merging the reports of the ranks of a job.

A :class:`WatchReport` is a :class:`sentinel.findings.Report` (same JSON contract) that also

- prints readably with ``print(w.report)`` (``__str__``: one line per finding, plain text);
- says "nothing to watch" instead of "All probes passed" when the monitor saw no optimizer step
  (probe status ``skipped``: the script trains without ``torch.optim``, or never reached a step);
- carries ``world_size`` under ``torchrun``: the JSON object gains ``"world_size"`` and every finding
  ``details["ranks"]``, the ranks where it was seen (see :func:`merge_rank_reports`).

Torch-free, like :mod:`sentinel.findings`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from sentinel.findings import Finding, ProbeResult, Report

__all__ = [
    "MONITOR_RULES",
    "PROBE_NAME",
    "WatchReport",
    "finding",
    "full_dict",
    "merge_rank_reports",
    "report_from_dict",
]

PROBE_NAME = "loop-monitor"

# Codes of the monitor that the probe suite's table does not list.
MONITOR_RULES = {"SEN109": "ranks-out-of-sync"}

# SEN105 stages in the order a step runs them: the earliest one is where a NaN came from.
_STAGE_ORDER = {"input": 0, "forward": 1, "loss": 2, "backward": 3, "update": 4}

# details keys that hold lists of named items, unioned across ranks (by "name", else by value)
_LIST_KEYS = ("parameters", "tensors", "modules")


def finding(code: str, message: str, details: dict[str, Any]) -> Finding:
    """A :class:`Finding` for any monitor code (SEN109 included)."""
    return Finding(code, message, details, name=MONITOR_RULES.get(code, ""))


@dataclass
class WatchReport(Report):
    """What the loop monitor saw (see the module docstring)."""

    world_size: int | None = None
    rank: int | None = None  # under torchrun: the rank that made it (not part of the JSON)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.world_size is not None:
            out["world_size"] = self.world_size
        return out

    @property
    def nothing_watched(self) -> bool:
        return bool(self.probes) and all(p.status == "skipped" for p in self.probes)

    def summary(self) -> str:
        n = len(self.findings)
        if n:
            return f"Found {n} problem{'s' if n != 1 else ''}."
        if any(p.status == "error" for p in self.probes):
            return "The monitored run ended with an error."
        if self.nothing_watched:
            return "Nothing to watch: no optimizer step ran under the monitor."
        return "All probes passed."

    def __str__(self) -> str:
        head = f"sentinel probe {self.target}  on {self.device}"
        if self.world_size is not None:
            head += f"  ({self.world_size} ranks)"
        lines = [head]
        for p in self.probes:
            line = f"{p.status.upper():<7} {p.name}  ({p.seconds:.2f}s)"
            if p.message:
                line += f"  {p.message}"
            lines.append(line)
            for f in p.findings:
                lines.append(f"  {f.code} [{f.name}] {f.message}")
        lines.append(self.summary())
        return "\n".join(lines)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        head = Text.assemble(("sentinel probe ", "bold"), self.target, (f"  on {self.device}", "dim"))
        if self.world_size is not None:
            head.append(f"  ({self.world_size} ranks)", style="dim")
        yield head
        yield from self.probes
        style = "bold red" if self.findings else ("bold magenta" if not self.ok else "bold green")
        if self.nothing_watched:
            style = "yellow"
        yield Text(self.summary(), style=style)


def report_from_dict(data: dict[str, Any]) -> WatchReport:
    """The inverse of ``to_dict`` (for reports sent between ranks)."""
    probes = []
    for p in data.get("probes", []):
        findings = [
            Finding(f["code"], f["message"], f.get("details", {}), name=f.get("name", ""))
            for f in p.get("findings", [])
        ]
        probes.append(
            ProbeResult(
                p["name"],
                p["status"],
                p.get("seconds", 0.0),
                findings,
                p.get("message", ""),
                p.get("data", {}),
                p.get("traceback", ""),
            )
        )
    return WatchReport(data.get("target", ""), data.get("device", "cpu"), probes, data.get("world_size"))


def full_dict(report: Report) -> dict[str, Any]:
    """Like ``to_dict`` but with each probe's findings, data and traceback (for sending to rank 0)."""
    return {
        "target": report.target,
        "device": report.device,
        "world_size": getattr(report, "world_size", None),
        "probes": [
            {
                "name": p.name,
                "status": p.status,
                "seconds": p.seconds,
                "message": p.message,
                "data": p.data,
                "traceback": p.traceback,
                "findings": [f.to_dict() for f in p.findings],
            }
            for p in report.probes
        ],
    }


def _merge_findings(per_rank: Sequence[tuple[int, Finding]]) -> Finding:
    """One finding for one code seen on several ranks."""
    ranks = sorted({r for r, _ in per_rank})
    if per_rank[0][1].code == "SEN105":
        # the earliest step, then the earliest stage: where the NaN came from
        _, best = min(
            per_rank,
            key=lambda rf: (rf[1].details.get("step", 0), _STAGE_ORDER.get(rf[1].details.get("stage", ""), 9), rf[0]),
        )
        base = best
    elif per_rank[0][1].code == "SEN106":
        _, base = min(per_rank, key=lambda rf: (rf[1].details.get("step", 0), rf[0]))
    else:
        base = min(per_rank, key=lambda rf: rf[0])[1]
    details = dict(base.details)
    for key in _LIST_KEYS:
        if not isinstance(details.get(key), list) or per_rank[0][1].code == "SEN109":
            continue
        merged: list[Any] = []
        seen: set[str] = set()
        for _, f in sorted(per_rank, key=lambda rf: rf[0]):
            for item in f.details.get(key, []):
                ident = repr(item.get("name", item) if isinstance(item, dict) else item)
                if ident not in seen:
                    seen.add(ident)
                    merged.append(item)
        details[key] = merged
    details["ranks"] = ranks
    message = base.message
    if len(ranks) > 1 or ranks != [0]:
        message += f" (rank{'s' if len(ranks) != 1 else ''} {', '.join(map(str, ranks))})"
    if base.code == "SEN105":
        # where the first non-finite value was made, apart from the ranks it reached afterwards (a
        # NaN batch on one rank spreads to every rank through DDP's gradient all-reduce)
        origin = sorted({r for r, f in per_rank if _origin(f) == _origin(base)})
        details["origin_ranks"] = origin
        if origin != ranks:
            message += f"; it started on rank{'s' if len(origin) != 1 else ''} {', '.join(map(str, origin))}"
    return Finding(base.code, message, details, name=base.name)


def _origin(f: Finding) -> tuple[Any, ...]:
    d = f.details
    return (d.get("step"), d.get("stage"), d.get("module"), d.get("parameter"), d.get("tensor"))


def merge_rank_reports(reports: dict[int, Report | None], world_size: int, target: str) -> WatchReport:
    """One report for a ``torchrun`` job from each rank's report (``None``: that rank never
    reported). Every finding gets ``details["ranks"]``; a code seen on several ranks is reported once."""
    by_code: dict[str, list[tuple[int, Finding]]] = {}
    statuses: list[str] = []
    # (when the rank's script failed, rank, message, traceback): the rank that failed first leads,
    # the others' errors (a peer's closed connection) usually follow from it
    messages: list[tuple[float, int, str, str]] = []
    seconds = 0.0
    data: dict[str, Any] = {"ranks": {}}
    device = "cpu"
    for rank in range(world_size):
        rep = reports.get(rank)
        if rep is None:
            statuses.append("error")
            messages.append((math.inf, rank, f"rank {rank} did not report", ""))
            continue
        if rank == 0 or device == "cpu":
            device = rep.device
        for p in rep.probes:
            statuses.append(p.status)
            seconds = max(seconds, p.seconds)
            if p.message or p.traceback:
                failed_at = p.data.get("failed_at") or math.inf
                messages.append((failed_at, rank, f"rank {rank}: {p.message}" if p.message else "", p.traceback))
            data["ranks"][str(rank)] = {k: v for k, v in p.data.items() if k in ("steps", "stopped", "error")}
            for f in p.findings:
                by_code.setdefault(f.code, []).append((rank, f))
    messages.sort(key=lambda m: (m[0], m[1]))
    traceback = next((f"(rank {rank})\n{tb}" for _, rank, _, tb in messages if tb), "")
    findings = [_merge_findings(v) for _, v in sorted(by_code.items())]
    if "error" in statuses:
        status = "error"
    elif findings:
        status = "fail"
    elif statuses and all(s == "skipped" for s in statuses):
        status = "skipped"
    else:
        status = "pass"
    message = "; ".join(m for _, _, m, _ in messages if m)
    probe = ProbeResult(PROBE_NAME, status, seconds, findings, message, data, traceback)  # type: ignore[arg-type]
    return WatchReport(target, device, [probe], world_size)
