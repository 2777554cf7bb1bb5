"""Locations of findings: LibCST nodes to 1-based line/column ranges, via CPython's ``ast``.

Line numbers are not computed with LibCST's ``PositionProvider`` (more expensive than the parse itself);
only files that have findings pay for positions, through CPython's own ``ast`` parser, which is about
ten times faster than LibCST's.
"""

from __future__ import annotations

import ast
import bisect
from collections.abc import Sequence

import libcst as cst


class Locator:
    """Maps LibCST nodes to 1-based (line, column) ranges using CPython's ``ast`` for statements."""

    def __init__(self, source: str, module: cst.Module, line_offset: int = 0) -> None:
        #: lines of the file before ``source`` (a definition parsed on its own from an imported file)
        self.line_offset = line_offset
        self.source = source
        self.module = module
        self.lines = source.splitlines(keepends=True)
        self.offsets = [0]
        for ln in self.lines:
            self.offsets.append(self.offsets[-1] + len(ln))
        self._stmt_pos: dict[int, tuple[int, int]] | None = None

    def _build(self) -> dict[int, tuple[int, int]]:
        out: dict[int, tuple[int, int]] = {}
        try:
            tree = ast.parse(self.source)
            _map_block(self.module.body, tree.body, out, self)
        except (SyntaxError, ValueError, IndexError, AttributeError):  # pragma: no cover - defensive
            pass
        return out

    def _char_col(self, line: int, byte_col: int) -> int:
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return len(text.encode("utf-8")[:byte_col].decode("utf-8", "replace"))

    def knows(self, stmt: cst.CSTNode) -> bool:
        """Is ``stmt`` a statement of this module?"""
        if self._stmt_pos is None:
            self._stmt_pos = self._build()
        return id(stmt) in self._stmt_pos

    def statement_start(self, stmt: cst.CSTNode) -> tuple[int, int]:
        if self._stmt_pos is None:
            self._stmt_pos = self._build()
        return self._stmt_pos.get(id(stmt), (1, 0))

    def locate(self, node: cst.CSTNode, stmt: cst.CSTNode) -> tuple[int, int, int, int]:
        """1-based ``(line, column, end line, end column)`` of ``node`` (inside statement ``stmt``)."""
        sline, scol, eline, ecol = self._locate(node, stmt)
        return sline + self.line_offset, scol, eline + self.line_offset, ecol

    def _locate(self, node: cst.CSTNode, stmt: cst.CSTNode) -> tuple[int, int, int, int]:
        line, col = self.statement_start(stmt)
        start = self.offsets[line - 1] + col if line - 1 < len(self.offsets) else 0
        code = self.module.code_for_node(node).strip()
        found = self.source.find(code, start) if code else -1
        if found < 0 and code:
            found = self.source.find(code)
        if found < 0:
            first = code.splitlines()[0] if code else ""
            found = self.source.find(first, start) if first else -1
            if found < 0:
                return line, col + 1, line, col + 1
            code = first
        # offsets -> (line, col)
        sline = bisect.bisect_right(self.offsets, found) - 1
        scol = found - self.offsets[sline]
        end = found + len(code)
        eline = bisect.bisect_right(self.offsets, end - 1) - 1 if code else sline
        ecol = end - self.offsets[eline]
        return sline + 1, scol + 1, eline + 1, ecol + 1


def _map_block(cst_body: Sequence[cst.CSTNode], ast_body: list[ast.stmt], out: dict, loc: Locator) -> None:
    i = 0
    for st in cst_body:
        if isinstance(st, cst.SimpleStatementLine):
            first = None
            for small in st.body:
                a = ast_body[i]
                i += 1
                pos = (a.lineno, loc._char_col(a.lineno, a.col_offset))
                out[id(small)] = pos
                first = first or pos
            if first:
                out[id(st)] = first
        else:
            a = ast_body[i]
            i += 1
            _map_compound(st, a, out, loc)


def _map_suite(suite: cst.BaseSuite, ast_body: list[ast.stmt], out: dict, loc: Locator) -> None:
    if isinstance(suite, cst.IndentedBlock):
        _map_block(suite.body, ast_body, out, loc)
    elif isinstance(suite, cst.SimpleStatementSuite):
        for small, a in zip(suite.body, ast_body):
            out[id(small)] = (a.lineno, loc._char_col(a.lineno, a.col_offset))


def _map_compound(st: cst.CSTNode, a: ast.stmt, out: dict, loc: Locator) -> None:
    out[id(st)] = (a.lineno, loc._char_col(a.lineno, a.col_offset))
    if isinstance(st, (cst.FunctionDef, cst.ClassDef, cst.With)):
        _map_suite(st.body, a.body, out, loc)  # type: ignore[attr-defined]
    elif isinstance(st, cst.If):
        _map_suite(st.body, a.body, out, loc)  # type: ignore[attr-defined]
        if isinstance(st.orelse, cst.If):
            _map_compound(st.orelse, a.orelse[0], out, loc)  # type: ignore[attr-defined]
        elif isinstance(st.orelse, cst.Else):
            _map_suite(st.orelse.body, a.orelse, out, loc)  # type: ignore[attr-defined]
    elif isinstance(st, (cst.For, cst.While)):
        _map_suite(st.body, a.body, out, loc)  # type: ignore[attr-defined]
        if st.orelse is not None:
            _map_suite(st.orelse.body, a.orelse, out, loc)  # type: ignore[attr-defined]
    elif isinstance(st, (cst.Try, cst.TryStar)):
        _map_suite(st.body, a.body, out, loc)  # type: ignore[attr-defined]
        for h, ah in zip(st.handlers, a.handlers):  # type: ignore[attr-defined]
            _map_suite(h.body, ah.body, out, loc)
        if st.orelse is not None:
            _map_suite(st.orelse.body, a.orelse, out, loc)  # type: ignore[attr-defined]
        if st.finalbody is not None:
            _map_suite(st.finalbody.body, a.finalbody, out, loc)  # type: ignore[attr-defined]
    elif isinstance(st, cst.Match):
        for case, acase in zip(st.cases, a.cases):  # type: ignore[attr-defined]
            _map_suite(case.body, acase.body, out, loc)
