"""``--format text`` (the default): each finding with its source line and a caret under the flagged
code, then a summary line. Coloured only when the report says so (a TTY, no ``NO_COLOR``)."""

from __future__ import annotations

import io

from sentinel.reporters.base import Report, Reporter, summary


class TextReporter(Reporter):
    NAME = "text"
    HELP = "findings with their source line, and a summary"
    MACHINE = False

    def render(self, report: Report) -> str:
        from rich.text import Text

        from sentinel.console import make_console

        buf = io.StringIO()
        console = make_console(report.color, file=buf)
        for d in report.diagnostics:
            head = Text()
            head.append(d.location, style="bold")
            head.append(" ")
            head.append(d.code, style="bold red")
            head.append(f" {d.message}")
            console.print(head)
            src = report.sources.line(d.path, d.line, d.cell)
            if src is not None:
                text = src.rstrip()
                gutter = f"{d.line:>4} | "
                console.print(Text(gutter, style="blue") + Text(text))
                width = (d.end_column - d.column) if d.end_line == d.line else max(1, len(text) - d.column + 1)
                caret = Text("^" * max(1, width), style="bold red")
                console.print(Text(" " * (len(gutter) + d.column - 1)) + caret)
            console.print(Text(f"     = help: sentinel rule {d.code}", style="dim"))
            console.print()
        if not report.quiet:
            style = "bold red" if report.diagnostics else "bold green"
            console.print(Text(summary(report), style=style))
        return buf.getvalue().rstrip("\n")
