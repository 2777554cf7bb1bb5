"""Fixing notebooks: the code cells are fixed as one program, and each edit is written back into
exactly one code cell of the notebook JSON, changing nothing else in the file.

The fixed program is mapped back onto the cells line by line (``difflib``):

- unchanged lines keep their cell and their original text (IPython magics come back as they were, an
  indented cell gets its indentation back);
- a rewritten block belongs to the cell its old lines came from (a block spanning two cells is only
  placed when it keeps its line count, line by line);
- an inserted block inside a cell stays there; at a boundary between two cells it belongs to the
  statement it decorates or opens (it ends with a decorator or a ``:`` header: the next cell), else to
  the cell it continues (the previous one).

A placement is accepted only if every modified cell compiles on its own as IPython runs it (dedented,
magics masked) and the cells, read back as a notebook, give exactly the program that was verified.
A fix that cannot be placed so is not applied (``FixOutcome.unfixable``); the notebook is never
written with it.

Writing back is a splice: only the ``source`` values of the modified cells are replaced in the text,
formatted like the original (its indentation, line endings, string or list form, ``\\uXXXX`` escapes
or not), so the file's diff is the fix.
"""

from __future__ import annotations

import difflib
import json
import re

from sentinel.fixes import FixOutcome, fix_source
from sentinel.notebook import Notebook, cell_program, compile_error, load_notebook

__all__ = ["fix_notebook", "place_edits", "splice_sources"]


def _program_line(notebook: Notebook, cell: int, line: int) -> str:
    """Line ``line`` of ``cell`` as the program has it before masking (dedented, blank lines empty)."""
    text = notebook.cell_line(cell, line) or ""
    if not text.strip(" \t"):
        return ""
    margin = notebook.margins.get(cell, "")
    return text[len(margin) :] if text.startswith(margin) else text


def _restore(notebook: Notebook, cell: int, lines: list[str]) -> list[str]:
    """New program lines as cell text: the cell's margin added back to the non-blank ones."""
    margin = notebook.margins.get(cell, "")
    return [margin + line if line.strip() else line for line in lines]


def _opens_next(lines: list[str]) -> bool:
    """An inserted block that belongs to the statement after it: it ends with a decorator or a header."""
    code = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return bool(code) and (code[-1].startswith("@") or code[-1].endswith(":"))


def place_edits(notebook: Notebook, new_source: str) -> dict[int, list[str]] | None:
    """The new lines of every modified cell when ``notebook``'s program becomes ``new_source``, or
    None when an edit cannot stay inside one cell, would rewrite a masked IPython line, or leaves a
    modified cell that does not compile on its own."""
    old = notebook.source.splitlines()
    new = new_source.splitlines()
    where = notebook.line_map
    if not where or len(where) != len(old):
        return None
    cells: dict[int, list[str]] = {}
    for cell, _ in where:
        cells.setdefault(cell, [])
    touched: set[int] = set()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal":
            for i in range(i1, i2):
                cell, line = where[i]
                cells[cell].append(notebook.cell_line(cell, line) or "")
            continue
        for i in range(i1, i2):
            cell, line = where[i]
            if old[i] != _program_line(notebook, cell, line):
                return None  # a masked IPython line would be rewritten
        owners = sorted({where[i][0] for i in range(i1, i2)})
        if len(owners) > 1:
            if i2 - i1 != j2 - j1:
                return None  # one edit across cells: it has no cell to live in
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                cell = where[i][0]
                touched.add(cell)
                cells[cell].extend(_restore(notebook, cell, [new[j]]))
            continue
        if owners:
            cell = owners[0]
        elif i1 == 0 or i1 == len(old):
            cell = where[min(i1, len(old) - 1)][0]
        else:
            before, after = where[i1 - 1][0], where[i1][0]
            cell = after if before == after or _opens_next(new[j1:j2]) else before
        touched.add(cell)
        cells[cell].extend(_restore(notebook, cell, new[j1:j2]))
    modified = {c: lines for c, lines in cells.items() if c in touched}
    for lines in modified.values():
        if not _runs_alone(lines):
            return None
    program = [line for c, lines in cells.items() for line in (_program_of(lines) or [])]
    if "".join(line + "\n" for line in program) != new_source:
        return None  # read back, the cells would not be the program that was verified
    return modified


def _program_of(lines: list[str]) -> list[str] | None:
    program = cell_program(lines)
    return None if program is None else program[1]


def _runs_alone(lines: list[str]) -> bool:
    """The cell compiles on its own as IPython runs it (top-level ``await`` allowed, as IPython does)."""
    program = _program_of(lines)
    if program is None:
        return False  # a fix turned the cell into a cell magic
    try:
        return compile_error(program) is None
    except ValueError:  # a null byte
        return False


def fix_notebook(text: str, path: str, rules, *, unsafe: bool) -> tuple[str, FixOutcome]:
    """Fix notebook JSON ``text``: the new text (``text`` itself when nothing could be fixed) and the
    outcome. Raises :class:`sentinel.notebook.NotebookError` when it is not a notebook."""
    notebook = load_notebook(text)
    if not notebook.line_map or notebook.cell_syntax_error() is not None:
        return text, FixOutcome(notebook.source, [], [])  # nothing to fix, or a cell Jupyter cannot run
    outcome = fix_source(
        notebook.source, path, rules, unsafe=unsafe, accept=lambda new: place_edits(notebook, new) is not None
    )
    if outcome.source == notebook.source:
        return text, outcome
    modified = place_edits(notebook, outcome.source)
    new_text = splice_sources(text, modified) if modified is not None else None
    if new_text is None or load_notebook(new_text).source != outcome.source:
        # never expected (the placement was accepted during verification): write nothing
        outcome = FixOutcome(notebook.source, [], [], outcome.unsafe_hidden, outcome.unfixable + len(outcome.fixed))
        return text, outcome
    return new_text, outcome


# -- the JSON text ------------------------------------------------------------------------------------
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _ws(text: str, i: int) -> int:
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def _members(text: str, i: int) -> list[tuple[str, int, int]]:
    """``(key, start, end)`` of each member of the JSON object starting at ``text[i]``."""
    out: list[tuple[str, int, int]] = []
    i = _ws(text, i + 1)
    while text[i] != "}":
        key, i = json.decoder.scanstring(text, i + 1)
        start = _ws(text, _ws(text, i) + 1)  # past the ':'
        _, end = _DECODER.raw_decode(text, start)
        out.append((key, start, end))
        i = _ws(text, end)
        if text[i] == ",":
            i = _ws(text, i + 1)
    return out


def _elements(text: str, i: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each element of the JSON array starting at ``text[i]``."""
    out: list[tuple[int, int]] = []
    i = _ws(text, i + 1)
    while text[i] != "]":
        _, end = _DECODER.raw_decode(text, i)
        out.append((i, end))
        i = _ws(text, end)
        if text[i] == ",":
            i = _ws(text, i + 1)
    return out


def _source_spans(text: str) -> dict[int, tuple[int, int]]:
    """Where each cell's ``source`` value is in ``text``, by 1-based cell index (the last duplicate
    key wins, as in ``json.loads``)."""
    start = _ws(text, 0)
    cells = [(s, e) for key, s, e in _members(text, start) if key == "cells"]
    spans: dict[int, tuple[int, int]] = {}
    if not cells or text[cells[-1][0]] != "[":
        return spans
    for number, (s, _) in enumerate(_elements(text, cells[-1][0]), start=1):
        if text[s] == "{":
            sources = [(a, b) for key, a, b in _members(text, s) if key == "source"]
            if sources:
                spans[number] = sources[-1]
    return spans


def _line_indent(text: str, pos: int) -> str:
    start = text.rfind("\n", 0, pos) + 1
    line = text[start:pos]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _format_source(text: str, start: int, end: int, parts: list[str], ensure_ascii: bool) -> str:
    """The JSON of a cell's new ``source`` (``parts``: nbformat's list of lines), formatted like the
    original value at ``text[start:end]``; elements that did not change keep their original text."""
    original = text[start:end]
    if original.startswith('"'):
        return json.dumps("".join(parts), ensure_ascii=ensure_ascii)
    raw = {}
    for s, e in _elements(text, start):
        raw.setdefault(json.loads(text[s:e]), text[s:e])
    items = [raw.get(p) or json.dumps(p, ensure_ascii=ensure_ascii) for p in parts]
    if not items:
        return "[]"
    newline = "\r\n" if "\r\n" in text else "\n"
    if "\n" not in original and original != "[]":
        return "[" + ", ".join(items) + "]"
    if "\n" in original:
        inner = original[original.index("\n") + 1 :]
        element_indent = inner[: len(inner) - len(inner.lstrip(" \t"))]
        closing_indent = _line_indent(text, end - 1)
    else:  # an empty list `[]`: indent one level deeper than the `"source"` key
        closing_indent = _line_indent(text, start)
        second = text.split("\n", 2)[1] if text.count("\n") >= 2 else " "
        element_indent = closing_indent + (second[: len(second) - len(second.lstrip(" \t"))] or " ")
    body = ("," + newline).join(element_indent + item for item in items)
    return "[" + newline + body + newline + closing_indent + "]"


def splice_sources(text: str, modified: dict[int, list[str]]) -> str | None:
    """``text`` with the ``source`` of each cell of ``modified`` (cell index: its lines) replaced and
    every other byte kept; None when the cells cannot be found in the text."""
    data = json.loads(text)
    try:
        spans = _source_spans(text)
    except (ValueError, IndexError, json.JSONDecodeError):
        return None
    # json.dumps escapes non-ASCII text with ensure_ascii; Jupyter writes it as is
    ensure_ascii = text.isascii() and any(int(h, 16) > 0x7F for h in re.findall(r"\\u([0-9a-fA-F]{4})", text))
    out = text
    for number in sorted(modified, reverse=True):
        if number not in spans:
            return None
        old = data["cells"][number - 1].get("source", "")
        old_text = "".join(old) if isinstance(old, list) else old
        lines = modified[number]
        newline = "\r\n" if "\r\n" in old_text else "\n"
        new_text = newline.join(lines) + (newline if old_text.endswith(("\n", "\r")) and lines else "")
        parts = new_text.splitlines(keepends=True)
        start, end = spans[number]
        out = out[:start] + _format_source(text, start, end, parts, ensure_ascii) + out[end:]
    return out
