"""Jupyter notebooks (``.ipynb``) as one Python source, and the way back to cell coordinates.

A notebook is linted as one program: its code cells in order. LibCST does not understand IPython
syntax, so before parsing:

- a cell whose first line is indented loses that indentation on every line that has it, as IPython
  runs it (a block pasted from inside a function); :meth:`Notebook.column` adds it back to a column;
- a cell whose first line is a cell magic (``%%time``, ``%%bash`` ...) is skipped entirely, as are
  code cells whose language is not Python (``metadata.vscode.languageId``) and every cell of a
  notebook whose kernel language is not Python;
- IPython line magics (``%matplotlib inline``, ``x = %time f()``), shell escapes (``!pip install``,
  ``files = !ls``) and help lines (``?obj``, ``obj?``, ``obj??``) are masked: the line is replaced by
  ``pass`` at the same indentation followed by the original text as a comment, so the line count,
  the line numbers and any ``# noqa`` comment on the line stay where they were. A help line is a
  statement ending in ``?`` or ``??`` (``torch.*Tensor?``), which Python never allows.

:func:`load_notebook` returns a :class:`Notebook` whose ``source`` is that program and whose
:meth:`Notebook.locate` maps a line of it to ``(cell, line in cell)``: ``cell`` is the 1-based index
of the cell among *all* cells of the notebook, markdown included (as ruff and Jupyter number them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

__all__ = ["Notebook", "NotebookError", "cell_program", "load_notebook", "mask_ipython"]

_PYTHON = {"python", "python3", "ipython", "ipython3", ""}
_RELATED = re.compile(r"\(([^()]*) on line (\d+)\)$")


class NotebookError(Exception):
    """The file is not a notebook sentinel can read (bad JSON, no ``cells`` list ...)."""


@dataclass
class Notebook:
    """One notebook flattened to Python: ``source`` and, per line of it, where it came from."""

    source: str
    #: for line ``i`` (0-based) of ``source``: (1-based cell index among all cells, 1-based line in cell)
    line_map: list[tuple[int, int]] = field(default_factory=list)
    #: every cell's original text by 1-based cell index (code cells only)
    cells: dict[int, list[str]] = field(default_factory=dict)
    #: the indentation IPython removes from every line of a cell, by cell index (indented cells only)
    margins: dict[int, str] = field(default_factory=dict)

    def locate(self, line: int) -> tuple[int, int]:
        """(cell, line in cell) of 1-based ``line`` of :attr:`source` (clamped to the last line)."""
        if not self.line_map:
            return 1, line
        index = min(max(line, 1), len(self.line_map)) - 1
        return self.line_map[index]

    def column(self, cell: int, line: int, column: int) -> int:
        """A 1-based column of line ``line`` of ``cell`` as linted (dedented) in the original text."""
        margin = self.margins.get(cell, "")
        text = self.cell_line(cell, line)
        if margin and text is not None and text.startswith(margin):
            return column + len(margin)
        return column

    def cell_syntax_error(self) -> tuple[int, int, int | None, str] | None:
        """The first of :meth:`broken_cells`, or None."""
        broken = self.broken_cells()
        return broken[0] if broken else None

    def broken_cells(self) -> list[tuple[int, int, int | None, str]]:
        """``(cell, line, column, reason)`` of every cell that is not valid Python on its own, as
        IPython runs each cell separately (``@decorator`` closing one cell, ``def f():`` opening the
        next is one valid program but two broken cells). A cell only this Python's parser rejects (a
        newer grammar that LibCST reads) is not broken: LibCST decides."""
        lines = self.source.splitlines()
        out: list[tuple[int, int, int | None, str]] = []
        start = 0
        while start < len(self.line_map):
            cell = self.line_map[start][0]
            end = start
            while end < len(self.line_map) and self.line_map[end][0] == cell:
                end += 1
            try:
                exc = compile_error(lines[start:end])
            except (ValueError, RecursionError, MemoryError):
                exc = None
            if exc is not None and not _newer_grammar(lines[start:end]):
                line = min(max(exc.lineno or 1, 1), end - start)
                column = self.column(cell, line, exc.offset) if exc.offset else None
                out.append((cell, line, column, f"syntax error: {exc.msg} (the cell does not run on its own)"))
            start = end
        return out

    def before_cell(self, cell: int) -> str:
        """:attr:`source` up to ``cell`` (excluded), the later lines left empty (line numbers kept):
        what runs before a cell that does not compile, whose definitions later cells may need."""
        lines = self.source.splitlines()
        kept = [line if self.line_map[i][0] < cell else "" for i, line in enumerate(lines)]
        return "\n".join(kept) + "\n"

    def relocate_message(self, message: str, cell: int) -> str:
        """Rewrite a trailing ``(... on line N)`` of a finding in ``cell`` into cell coordinates."""
        match = _RELATED.search(message)
        if not match:
            return message
        other_cell, other_line = self.locate(int(match.group(2)))
        where = f"on line {other_line}" if other_cell == cell else f"in cell {other_cell}, line {other_line}"
        return f"{message[: match.start()]}({match.group(1)} {where})"

    def cell_line(self, cell: int, line: int) -> str | None:
        """The original text of ``line`` (1-based) of ``cell``, or None."""
        lines = self.cells.get(cell)
        if lines is None or not 0 < line <= len(lines):
            return None
        return lines[line - 1]


def _cell_text(cell: dict) -> str:
    src = cell.get("source", "")
    if isinstance(src, list):
        if not all(isinstance(s, str) for s in src):
            raise NotebookError("a cell's source is not text")
        return "".join(src)
    if not isinstance(src, str):
        raise NotebookError("a cell's source is not text")
    return src


def _notebook_language(data: dict) -> str:
    meta = data.get("metadata")
    if not isinstance(meta, dict):
        return ""
    for key, sub in (("language_info", "name"), ("kernelspec", "language")):
        table = meta.get(key)
        if isinstance(table, dict) and isinstance(table.get(sub), str):
            return table[sub].lower()
    return ""


def _cell_language(cell: dict) -> str:
    meta = cell.get("metadata")
    if isinstance(meta, dict):
        vscode = meta.get("vscode")
        if isinstance(vscode, dict) and isinstance(vscode.get("languageId"), str):
            return vscode["languageId"].lower()
    return ""


def load_notebook(text: str) -> Notebook:
    """Parse notebook JSON ``text``; raise :class:`NotebookError` with the reason if it is not one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise NotebookError("the top level is not a JSON object")
    cells = data.get("cells")
    if not isinstance(cells, list):
        raise NotebookError("no 'cells' list (only nbformat 4 notebooks are supported)")
    python_kernel = _notebook_language(data) in _PYTHON
    out_lines: list[str] = []
    line_map: list[tuple[int, int]] = []
    originals: dict[int, list[str]] = {}
    margins: dict[int, str] = {}
    for number, cell in enumerate(cells, start=1):
        if not isinstance(cell, dict):
            raise NotebookError(f"cell {number} is not a JSON object")
        if cell.get("cell_type") != "code" or not python_kernel or _cell_language(cell) not in _PYTHON:
            continue
        text_ = _cell_text(cell)
        lines = text_.splitlines()
        originals[number] = lines
        program = cell_program(lines)
        if program is None:
            continue
        margin, python = program
        if margin:
            margins[number] = margin
        for index, masked in enumerate(python, start=1):
            out_lines.append(masked)
            line_map.append((number, index))
    source = "".join(line + "\n" for line in out_lines)
    return Notebook(source, line_map, originals, margins)


def compile_error(program: list[str]) -> SyntaxError | None:
    """Why IPython could not run these lines (one cell's program, magics masked) on their own, or None.
    Top-level ``await`` is allowed, as IPython allows it."""
    import ast

    try:
        compile("".join(line + "\n" for line in program), "<cell>", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, True)
    except SyntaxError as exc:
        return exc
    return None


def _newer_grammar(program: list[str]) -> bool:
    """Do these lines, which this Python does not compile, parse as a grammar it does not know (a
    newer Python's, which LibCST reads)? Not when Python's own parser reads them (``return`` outside
    a function fails only to compile)."""
    import ast

    text = "".join(line + "\n" for line in program)
    try:
        ast.parse(text)
        return False  # Python reads it: the error is a compile-time one
    except SyntaxError:
        pass
    except (ValueError, RecursionError, MemoryError):
        return False
    import libcst as cst

    try:
        cst.parse_module(text)
    except Exception:  # noqa: BLE001 - any LibCST failure: not a grammar it knows either
        return False
    return True


def _blank(line: str) -> bool:
    return not line.strip(" \t")


def cell_program(lines: list[str]) -> tuple[str, list[str]] | None:
    """One code cell as IPython runs it, as Python lines (as many as ``lines``) and the indentation
    removed from them: the indentation of its first non-blank line is removed from every line that
    starts with it (IPython's ``leading_indent``: a block pasted from inside a function, or `` def f():``
    typed with a stray space), then its IPython lines masked. None for a cell-magic (``%%``) cell."""
    first = next((line for line in lines if not _blank(line)), None)
    if first is None:
        return "", ["" for _ in lines]
    margin = first[: len(first) - len(first.lstrip(" \t"))]
    dedented = ["" if _blank(line) else line[len(margin) :] if line.startswith(margin) else line for line in lines]
    if next(line for line in dedented if line).startswith("%%"):
        return None
    return margin, mask_ipython(dedented)


# -- IPython syntax ----------------------------------------------------------------------------------
_MAGIC_START = re.compile(r"^\s*[%!?]")
_ASSIGN_MAGIC = re.compile(r"^\s*[\w.\[\], ()*]+?\s*=\s*[%!]")


def _is_help(line: str) -> bool:
    """``obj?``, ``obj??``, ``torch.*Tensor?``: a statement ending in ``?`` outside strings and comments."""
    code = line.strip()
    target = code.rstrip("?")
    if not target or len(code) - len(target) not in (1, 2) or "#" in target:
        return False
    return _scan(target, 0, None) == (0, None)


def _is_ipython(line: str) -> bool:
    return bool(_MAGIC_START.match(line) or _ASSIGN_MAGIC.match(line) or _is_help(line))


def _mask(line: str) -> str:
    indent = line[: len(line) - len(line.lstrip())]
    return f"{indent}pass  # {line.strip()}"


def mask_ipython(lines: list[str]) -> list[str]:
    """Replace the IPython-only lines of one cell by ``pass  # <original>`` (same number of lines).

    A line is only considered at the start of a statement: never inside brackets or a triple-quoted
    string (``x = (a\\n % b)`` is Python). A masked line ending in a backslash masks the next one too.
    """
    out: list[str] = []
    depth = 0
    in_string: str | None = None
    continued = False
    for line in lines:
        at_statement_start = depth == 0 and in_string is None
        if continued:  # a continuation line: a comment at any indentation is harmless
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# {line.strip()}")
            continued = line.rstrip().endswith("\\")
            continue
        if at_statement_start and _is_ipython(line):
            out.append(_mask(line))
            continued = line.rstrip().endswith("\\")
            continue
        out.append(line)
        depth, in_string = _scan(line, depth, in_string)
    return out


def _scan(line: str, depth: int, in_string: str | None) -> tuple[int, str | None]:
    """Bracket depth and open triple-quoted string after ``line`` (a cheap tokenizer)."""
    i = 0
    n = len(line)
    while i < n:
        if in_string is not None:
            end = line.find(in_string, i)
            if end < 0:
                return depth, in_string
            i = end + 3
            in_string = None
            continue
        ch = line[i]
        if ch == "#":
            break
        if ch in "\"'":
            if line.startswith(ch * 3, i):
                in_string = ch * 3
                i += 3
                continue
            i += 1
            while i < n and line[i] != ch:
                i += 2 if line[i] == "\\" else 1
            i += 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        i += 1
    return depth, in_string
