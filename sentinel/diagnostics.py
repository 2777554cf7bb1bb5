"""What a lint run reports: a finding (:class:`Diagnostic`), a file that could not be checked
(:class:`InputError`), and :class:`SourceError`, raised when a source cannot be analysed.

Both serialise to the same JSON shape (``sentinel lint --format json``): every element has ``kind``
(``"finding"`` or ``"error"``), ``code``, ``name``, ``path``, ``line``, ``column``, ``end_line``,
``end_column``, ``message`` and ``url``; an error has ``code``, ``name`` and ``url`` null, and null
lines/columns where the reason has no location. Notebook elements add ``cell``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One finding. Lines and columns are 1-based; ``end_*`` point just past the flagged code."""

    path: str
    line: int
    column: int
    end_line: int
    end_column: int
    code: str
    name: str
    message: str
    #: notebooks: the 1-based index of the cell among all cells; ``line``/``column`` are inside it
    cell: int | None = None

    @property
    def location(self) -> str:
        """``path:line:col``, or ``path:cell N:line:col`` in a notebook."""
        cell = f"cell {self.cell}:" if self.cell is not None else ""
        return f"{self.path}:{cell}{self.line}:{self.column}"

    def format_concise(self) -> str:
        return f"{self.location}: {self.code} {self.message}"

    @property
    def sort_key(self) -> tuple:
        return (self.path, self.cell or 0, self.line, self.column, self.code, self.end_line, self.end_column)

    @property
    def url(self) -> str | None:
        from sentinel.rules import rule_by_selector

        rule = rule_by_selector(self.code)
        return rule.url() if rule is not None else None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["url"] = self.url
        out["kind"] = "finding"
        return {k: out[k] for k in _json_keys(self.cell)}


def _json_keys(cell: int | None) -> list[str]:
    keys = ["kind", "code", "name", "path", "line", "column", "end_line", "end_column", "message", "url"]
    if cell is not None:
        keys.insert(4, "cell")
    return keys


@dataclass(frozen=True)
class InputError:
    """A path that could not be checked: missing, unreadable, not valid Python, not a notebook."""

    path: str
    reason: str
    line: int | None = None
    column: int | None = None
    cell: int | None = None

    @property
    def location(self) -> str:
        out = self.path
        if self.cell is not None:
            out += f":cell {self.cell}"
        if self.line:
            out += f":{self.line}"
            if self.column:
                out += f":{self.column}"
        return out

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"

    @property
    def sort_key(self) -> tuple:
        return (self.path, self.cell or 0, self.line or 0, self.column or 0)

    def to_dict(self) -> dict:
        out = {
            "kind": "error",
            "code": None,
            "name": None,
            "path": self.path,
            "cell": self.cell,
            "line": self.line,
            "column": self.column,
            "end_line": None,
            "end_column": None,
            "message": self.reason,
            "url": None,
        }
        return {k: out[k] for k in _json_keys(self.cell)}


class SourceError(Exception):
    """The source could not be analysed; ``line``/``column`` are 1-based when known."""

    def __init__(self, reason: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line
        self.column = column
