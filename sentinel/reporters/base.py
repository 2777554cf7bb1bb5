"""The reporter interface: a :class:`Report` of one lint run in, the text of one output format out.

A :class:`Report` holds every finding of the run, deduplicated (same path, cell, line, column and
code) and sorted by path and position across all files: with project-aware analysis a finding may
be located in a project file other than the one linted, so reporters never assume one path per
linted file. It also holds the paths that could not be checked (:class:`InputError`), the rules that
were enabled, the project root (for repository-relative paths) and a reader of source lines (for
code frames and fingerprints) that knows notebooks and standard input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from sentinel.diagnostics import Diagnostic, InputError

if TYPE_CHECKING:
    from sentinel.notebook import Notebook
    from sentinel.rules import Rule

__all__ = ["Report", "Reporter", "SourceLines", "dedupe", "summary"]


class SourceLines:
    """Source lines by path (and notebook cell), read once; in-memory texts (stdin) take precedence."""

    def __init__(self) -> None:
        self._texts: dict[str, list[str]] = {}
        self._notebooks: dict[str, Notebook | None] = {}

    def add_text(self, path: str, text: str) -> None:
        self._texts[path] = text.splitlines()

    def add_notebook(self, path: str, notebook: Notebook) -> None:
        self._notebooks[path] = notebook

    def line(self, path: str, line: int, cell: int | None = None) -> str | None:
        """The text of 1-based ``line`` of ``path`` (of ``cell`` for a notebook), or None."""
        if cell is not None:
            nb = self._notebook(path)
            return nb.cell_line(cell, line) if nb is not None else None
        if path not in self._texts:
            try:
                self._texts[path] = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                self._texts[path] = []
        lines = self._texts[path]
        return lines[line - 1] if 0 < line <= len(lines) else None

    def _notebook(self, path: str) -> Notebook | None:
        if path not in self._notebooks:
            from sentinel.notebook import NotebookError, load_notebook

            try:
                self._notebooks[path] = load_notebook(Path(path).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, NotebookError):
                self._notebooks[path] = None
        return self._notebooks[path]


@dataclass
class Report:
    """Everything a reporter may print about one run."""

    diagnostics: list[Diagnostic]
    errors: list[InputError] = field(default_factory=list)
    #: how many files were read and analysed (errors excluded)
    files_checked: int = 0
    #: the enabled rules (SARIF lists them all in ``tool.driver.rules``)
    rules: list[type[Rule]] = field(default_factory=list)
    #: repository-relative paths (SARIF) are relative to this directory
    root: Path = field(default_factory=Path.cwd)
    sources: SourceLines = field(default_factory=SourceLines)
    #: ``always`` or ``never`` (resolved from ``--color auto`` by the caller)
    color: str = "never"
    #: ``-q``: findings only, no summary
    quiet: bool = False

    @property
    def paths_with_findings(self) -> int:
        return len({d.path for d in self.diagnostics})

    def relative(self, path: str) -> str | None:
        """``path`` relative to :attr:`root` in POSIX form, or None when it lies outside it."""
        absolute = os.path.abspath(path)
        try:
            rel = Path(absolute).relative_to(os.path.abspath(self.root))
        except ValueError:
            return None
        return rel.as_posix()


def dedupe(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """One finding per (path, cell, line, column, code), sorted by path and position."""
    seen: dict[tuple, Diagnostic] = {}
    for d in diagnostics:
        key = (os.path.realpath(d.path), d.cell, d.line, d.column, d.code)
        seen.setdefault(key, d)
    return sorted(seen.values(), key=lambda d: d.sort_key)


def summary(report: Report) -> str:
    """The closing line of the text format: ``Found N problems in M of K files.`` and the like."""
    n = len(report.diagnostics)
    errors = len(report.errors)
    checked = max(report.files_checked, report.paths_with_findings)
    files = f"{checked} file{'s' if checked != 1 else ''}"
    if n:
        where = report.paths_with_findings
        text = f"Found {n} problem{'s' if n != 1 else ''} in {where} of {files}."
    elif errors:
        text = f"No problems found in {files}."
    else:
        text = f"All checks passed! ({files})"
    if errors:
        text += f" {errors} path{'s' if errors != 1 else ''} could not be checked."
    return text


class Reporter:
    """One output format. ``render`` returns the whole output (without a trailing newline)."""

    NAME: ClassVar[str]
    HELP: ClassVar[str]
    #: machine-readable formats also carry the paths that could not be checked
    MACHINE: ClassVar[bool] = True

    def render(self, report: Report) -> str:  # pragma: no cover - abstract
        raise NotImplementedError
