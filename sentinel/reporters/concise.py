"""``--format concise``: one ``path:line:col: CODE message`` line per finding (``path:cell N:...`` in a
notebook), as ruff's and flake8's one-line formats."""

from __future__ import annotations

from sentinel.reporters.base import Report, Reporter


class ConciseReporter(Reporter):
    NAME = "concise"
    HELP = "one path:line:col: CODE message line per finding"
    MACHINE = False

    def render(self, report: Report) -> str:
        return "\n".join(d.format_concise() for d in report.diagnostics)
