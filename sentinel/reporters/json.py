"""``--format json``: one JSON array, findings then paths that could not be checked.

Each element: ``kind`` (``"finding"`` | ``"error"``), ``code``, ``name``, ``path``, ``line``,
``column``, ``end_line``, ``end_column`` (1-based), ``message``, ``url``, and ``cell`` in a
notebook. An ``"error"`` element has ``code``/``name``/``url`` null (it is no rule's finding) and
null positions where the reason has none.
"""

from __future__ import annotations

import json

from sentinel.reporters.base import Report, Reporter


class JsonReporter(Reporter):
    NAME = "json"
    HELP = "one JSON array (findings, and errors with kind=error)"

    def render(self, report: Report) -> str:
        items = [d.to_dict() for d in report.diagnostics] + [e.to_dict() for e in report.errors]
        return json.dumps(items, indent=2)
