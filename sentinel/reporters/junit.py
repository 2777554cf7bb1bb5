"""``--format junit``: JUnit XML in ruff's layout, for CI systems that show test reports.

``<testsuites>`` holds one ``<testsuite name=PATH>`` per file with findings, each finding a
``<testcase name="sentinel.CODE" classname=PATH line= column=>`` with a ``<failure>``. A path that
could not be checked is a testcase ``sentinel.error`` with an ``<error>``. A clean run is one passing
testcase ``No errors found``.
"""

from __future__ import annotations

from itertools import groupby
from xml.etree import ElementTree as ET

from sentinel.diagnostics import Diagnostic
from sentinel.reporters.base import Report, Reporter


class JunitReporter(Reporter):
    NAME = "junit"
    HELP = "JUnit XML (one testsuite per file)"

    def render(self, report: Report) -> str:
        failures = len(report.diagnostics)
        errors = len(report.errors)
        root = ET.Element("testsuites", name="sentinel", tests=str(max(1, failures + errors)))
        root.set("failures", str(failures))
        root.set("errors", str(errors))
        entries = [(d.path, d) for d in report.diagnostics] + [(e.path, e) for e in report.errors]
        entries.sort(key=lambda pair: (pair[0], pair[1].sort_key))
        for path, group in groupby(entries, key=lambda pair: pair[0]):
            items = [item for _, item in group]
            suite = ET.SubElement(root, "testsuite", name=path, tests=str(len(items)))
            suite.set("failures", str(sum(1 for i in items if isinstance(i, Diagnostic))))
            suite.set("errors", str(sum(1 for i in items if not isinstance(i, Diagnostic))))
            for item in items:
                if isinstance(item, Diagnostic):
                    case = ET.SubElement(suite, "testcase", name=f"sentinel.{item.code}", classname=path)
                    case.set("line", str(item.line))
                    case.set("column", str(item.column))
                    where = f"cell {item.cell}, " if item.cell is not None else ""
                    failure = ET.SubElement(case, "failure", message=item.message)
                    failure.text = f"{where}line {item.line}, col {item.column}, {item.message}"
                else:
                    case = ET.SubElement(suite, "testcase", name="sentinel.error", classname=path)
                    if item.line:
                        case.set("line", str(item.line))
                    error = ET.SubElement(case, "error", message=item.reason)
                    error.text = str(item)
        if not entries:
            suite = ET.SubElement(root, "testsuite", name="sentinel", tests="1", failures="0", errors="0")
            ET.SubElement(suite, "testcase", name="No errors found", classname="sentinel")
        ET.indent(root, space="    ")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")
