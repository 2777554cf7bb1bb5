"""``--format github``: GitHub Actions workflow commands that annotate the pull request.

``::error title=sentinel (CODE),file=PATH,line=L,col=C,endColumn=EC,endLine=EL::PATH:L:C: CODE message``.
``col``/``endColumn`` are left out when the finding spans lines (GitHub rejects them then); a notebook
finding carries no line or column at all (lines of the .ipynb JSON would be meaningless), as in ruff,
and its message says the cell. A path that could not be checked is an ``::error`` titled
``sentinel (error)``.
"""

from __future__ import annotations

from sentinel.reporters.base import Report, Reporter


def escape(text: str, prop: bool = False) -> str:
    """Escape workflow-command data (and, with ``prop``, a property value)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


class GithubReporter(Reporter):
    NAME = "github"
    HELP = "GitHub Actions annotations"

    def render(self, report: Report) -> str:
        lines = []
        for d in report.diagnostics:
            props = f"title={escape(f'sentinel ({d.code})', True)},file={escape(d.path, True)}"
            if d.cell is None:
                props += f",line={d.line}"
                if d.end_line == d.line:
                    props += f",col={d.column},endColumn={d.end_column}"
                props += f",endLine={d.end_line}"
            lines.append(f"::error {props}::{escape(d.format_concise())}")
        for e in report.errors:
            props = f"title={escape('sentinel (error)', True)},file={escape(e.path, True)}"
            if e.line and e.cell is None:
                props += f",line={e.line}"
                if e.column:
                    props += f",col={e.column}"
            lines.append(f"::error {props}::{escape(str(e))}")
        return "\n".join(lines)
