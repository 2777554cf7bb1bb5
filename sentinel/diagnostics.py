"""What a lint run reports: a finding (:class:`Diagnostic`) and a source that could not be analysed."""

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

    def to_dict(self) -> dict:
        from sentinel.rules import rule_by_selector

        out = asdict(self)
        rule = rule_by_selector(self.code)
        out["url"] = rule.url() if rule is not None else None
        keys = ["code", "name", "path", "line", "column", "end_line", "end_column", "message", "url"]
        if self.cell is not None:
            keys.insert(3, "cell")
        return {k: out[k] for k in keys}


class SourceError(Exception):
    """The source could not be analysed; ``line``/``column`` are 1-based when known."""

    def __init__(self, reason: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line
        self.column = column
