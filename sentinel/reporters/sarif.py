"""``--format sarif``: SARIF 2.1.0 for GitHub code scanning and other SARIF viewers.

One run. ``tool.driver.rules`` lists every *enabled* rule (id, name, short and full description,
help text and ``helpUri``), sorted by code; each result refers to its rule by ``ruleId`` and
``ruleIndex``. Paths inside the project root are relative URIs with ``uriBaseId: "%SRCROOT%"`` (and
``originalUriBaseIds`` giving the root as a ``file://`` URI), so alerts keep their identity between
runs and machines; paths outside the root are absolute ``file://`` URIs.

``partialFingerprints["sentinel/v1"]`` is a hash of the code, the relative path, the notebook cell,
the flagged line's text without surrounding whitespace, and how many identical (code, path, cell,
text) findings came before it: it survives lines moving up or down, not an edit of the line itself.

Notebook findings: the region's lines and columns are inside the cell (as in the JSON format), the
result's ``properties.cell`` holds the 1-based cell index, a logical location names it
(``path:cell N``), and the message starts with ``cell N:`` so viewers that only show the raw .ipynb
still say where the finding is.

Paths that could not be checked are ``invocations[0].toolExecutionNotifications`` (level ``error``)
and make ``executionSuccessful`` false.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from sentinel import __version__
from sentinel.diagnostics import Diagnostic, InputError
from sentinel.reporters.base import Report, Reporter

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/torch-sentinel/torch-sentinel"
BASE_ID = "%SRCROOT%"


def _rule_descriptor(rule) -> dict:
    doc = rule.doc()
    return {
        "id": rule.CODE,
        "name": rule.NAME,
        "shortDescription": {"text": rule.SUMMARY},
        "fullDescription": {"text": doc, "markdown": doc},
        "help": {"text": f"{rule.SUMMARY}\nDocumentation: {rule.url()}", "markdown": doc},
        "helpUri": rule.url(),
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["pytorch", "correctness"], "problem.severity": "error"},
    }


class SarifReporter(Reporter):
    NAME = "sarif"
    HELP = "SARIF 2.1.0 (GitHub code scanning)"

    def render(self, report: Report) -> str:
        rules = sorted(report.rules, key=lambda r: r.CODE)
        index = {r.CODE: i for i, r in enumerate(rules)}
        occurrences: Counter[tuple] = Counter()
        results = []
        for d in report.diagnostics:
            results.append(self._result(report, d, index, occurrences))
        notifications = [self._notification(report, e) for e in report.errors]
        root_uri = Path(os.path.abspath(report.root)).as_uri().rstrip("/") + "/"
        run = {
            "tool": {
                "driver": {
                    "name": "sentinel",
                    "fullName": "torch-sentinel",
                    "version": __version__,
                    "semanticVersion": __version__,
                    "informationUri": INFORMATION_URI,
                    "rules": [_rule_descriptor(r) for r in rules],
                }
            },
            "originalUriBaseIds": {BASE_ID: {"uri": root_uri}},
            "invocations": [
                {
                    "executionSuccessful": not report.errors,
                    "toolExecutionNotifications": notifications,
                }
            ],
            "results": results,
            "columnKind": "unicodeCodePoints",
        }
        log = {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}
        return json.dumps(log, indent=2)

    # -- pieces ----------------------------------------------------------------------------------------
    def _artifact(self, report: Report, path: str) -> dict:
        rel = report.relative(path)
        if rel is not None:
            return {"uri": _quote(rel), "uriBaseId": BASE_ID}
        return {"uri": Path(os.path.abspath(path)).as_uri()}

    def _result(self, report: Report, d: Diagnostic, index: dict[str, int], seen: Counter) -> dict:
        rel = report.relative(d.path) or Path(os.path.abspath(d.path)).as_posix()
        text = (report.sources.line(d.path, d.line, d.cell) or "").strip()
        key = (d.code, rel, d.cell, text)
        occurrence = seen[key]
        seen[key] += 1
        digest = hashlib.sha256("\0".join([d.code, rel, str(d.cell or ""), text, str(occurrence)]).encode())
        region = {"startLine": d.line, "startColumn": d.column, "endLine": d.end_line, "endColumn": d.end_column}
        location: dict = {"physicalLocation": {"artifactLocation": self._artifact(report, d.path), "region": region}}
        message = d.message
        result: dict = {"ruleId": d.code, "level": "error"}
        if d.code in index:
            result["ruleIndex"] = index[d.code]
        if d.cell is not None:
            message = f"cell {d.cell}: {message}"
            location["logicalLocations"] = [{"fullyQualifiedName": f"{rel}:cell {d.cell}", "kind": "notebookCell"}]
            result["properties"] = {"cell": d.cell}
        result["message"] = {"text": message}
        result["locations"] = [location]
        result["partialFingerprints"] = {"sentinel/v1": digest.hexdigest()[:32]}
        return result

    def _notification(self, report: Report, e: InputError) -> dict:
        physical: dict = {"artifactLocation": self._artifact(report, e.path)}
        if e.line and e.cell is None:
            region: dict = {"startLine": e.line}
            if e.column:
                region["startColumn"] = e.column
            physical["region"] = region
        out: dict = {
            "level": "error",
            "message": {"text": str(e)},
            "locations": [{"physicalLocation": physical}],
            "descriptor": {"id": "input-error"},
        }
        if e.cell is not None:
            out["properties"] = {"cell": e.cell, "line": e.line, "column": e.column}
        return out


def _quote(rel: str) -> str:
    from urllib.parse import quote

    return quote(rel, safe="/")
