"""Lint one source: pre-filter, one parse, one analysis, every enabled rule, locations, suppressions.

Cost model (see ``benchmarks/lint_speed.py``): LibCST's parser dominates. A file whose text cannot
trigger any enabled rule (no ``backward``, no ``softmax`` ... see each rule's ``TRIGGER``) is never
parsed. Line numbers are not computed with LibCST's ``PositionProvider`` (more expensive than the parse
itself); only files that have findings pay for positions, through CPython's own ``ast`` parser, which
is about ten times faster than LibCST's.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence

import libcst as cst

from sentinel.analysis import analyze
from sentinel.diagnostics import Diagnostic, SourceError
from sentinel.rules import Rule, Violation, all_rules


def rule_class(code: str) -> type[Rule] | None:
    for r in all_rules():
        if r.CODE == code:
            return r
    return None


# -- suppressions ------------------------------------------------------------------------------------
_NOQA = re.compile(r"#\s*noqa(?P<sep>:\s*(?P<codes>[A-Za-z]+[0-9]+(?:[\s,]+[A-Za-z]+[0-9]+)*))?", re.I)
_IGNORE = re.compile(r"#\s*sentinel:\s*ignore(?:\[(?P<codes>[^\]]*)\])?", re.I)
_FILE_NOQA = re.compile(r"^\s*#\s*sentinel:\s*noqa(?::\s*(?P<codes>[\w\s,-]+))?\s*$", re.I | re.M)


def _split_codes(text: str) -> set[str]:
    return {c.strip().upper() for c in re.split(r"[\s,]+", text) if c.strip()}


def _matches(codes: set[str] | None, rule: type[Rule]) -> bool:
    return codes is None or rule.CODE in codes or rule.NAME.upper() in codes


def line_suppressions(line: str) -> list[set[str] | None]:
    """Suppression directives in one source line: ``None`` is a blanket suppression."""
    out: list[set[str] | None] = []
    if "#" not in line:
        return out
    for m in _NOQA.finditer(line):
        out.append(_split_codes(m.group("codes")) if m.group("codes") else None)
    for m in _IGNORE.finditer(line):
        out.append(_split_codes(m.group("codes")) if m.group("codes") is not None else None)
    return out


def file_suppressions(source: str) -> list[set[str] | None]:
    return [_split_codes(m.group("codes")) if m.group("codes") else None for m in _FILE_NOQA.finditer(source)]


# -- locations ---------------------------------------------------------------------------------------
class Locator:
    """Maps LibCST nodes to 1-based (line, column) ranges using CPython's ``ast`` for statements."""

    def __init__(self, source: str, module: cst.Module) -> None:
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

    def statement_start(self, stmt: cst.CSTNode) -> tuple[int, int]:
        if self._stmt_pos is None:
            self._stmt_pos = self._build()
        return self._stmt_pos.get(id(stmt), (1, 0))

    def locate(self, node: cst.CSTNode, stmt: cst.CSTNode) -> tuple[int, int, int, int]:
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
        import bisect

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


# -- the check ---------------------------------------------------------------------------------------
def decode(data: bytes) -> str:
    """Decode a Python source as the interpreter would (PEP 263 cookie, BOM); raise SourceError."""
    import io
    import tokenize

    if b"\x00" in data:
        raise SourceError("binary file (contains NUL bytes), not Python source")
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as exc:
        if "encoding problem" in str(exc) or "unknown encoding" in str(exc):
            raise SourceError(str(exc)) from None
        encoding = "utf-8"  # an undecodable first line: report it like any other bad byte below
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            line = data[: exc.start].count(b"\n") + 1
            byte = data[exc.start : exc.start + 1].hex()
            raise SourceError(f"not valid {encoding} text (byte 0x{byte}) and no encoding declaration", line) from None
        raise SourceError(f"unknown encoding {encoding!r}") from None
    return text.lstrip("\ufeff")


def syntax_check(source: str) -> None:
    """Raise :class:`SourceError` if ``source`` is not valid Python (cheaply: CPython's parser first)."""
    try:
        ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        # CPython's grammar may be older than the file's (3.12 syntax on 3.11): LibCST decides
        _parse(source)


def _parse(source: str) -> cst.Module:
    try:
        return cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        # CPython words syntax errors better ("'(' was never closed"); use it when it agrees
        try:
            ast.parse(source)
        except SyntaxError as py:
            raise SourceError(f"syntax error: {py.msg}", py.lineno, py.offset) from None
        except (ValueError, RecursionError, MemoryError):
            pass
        raise SourceError(f"syntax error: {exc.message}", exc.raw_line, exc.raw_column + 1) from None
    except RecursionError:
        raise SourceError("too deeply nested for the parser") from None


def check_source(
    source: str,
    path: str = "<string>",
    rules: Iterable[type[Rule]] | None = None,
    *,
    prefilter: bool = True,
) -> list[Diagnostic]:
    """Lint ``source`` with ``rules`` (default: all). Raises :class:`SourceError` on a syntax error.

    ``prefilter=False`` analyses the file even when no rule's trigger text occurs in it.
    """
    rule_list = list(all_rules() if rules is None else rules)
    file_level = file_suppressions(source) if "sentinel" in source else []
    if any(codes is None for codes in file_level):
        return []
    if file_level:
        rule_list = [r for r in rule_list if not any(_matches(codes, r) for codes in file_level)]
    active = [r for r in rule_list if r.triggered(source)] if prefilter else rule_list
    if not active:
        # nothing here can trigger a rule: skip LibCST, but still report a file Python cannot parse
        syntax_check(source)
        return []
    module = _parse(source)
    facts = analyze(module, source)
    violations: list[tuple[type[Rule], Violation]] = []
    for rule_cls in active:
        for v in rule_cls().check(facts):
            violations.append((rule_cls, v))
    if not violations:
        return []
    locator = Locator(source, module)
    lines = locator.lines
    seen: set[tuple[str, int]] = set()
    out: list[Diagnostic] = []
    for rule_cls, v in violations:
        key = (rule_cls.CODE, id(v.node))
        if key in seen:
            continue
        seen.add(key)
        line, col, eline, ecol = locator.locate(v.node, v.stmt)
        if _suppressed(rule_cls, lines, line, eline):
            continue
        message = v.message
        if v.related is not None:
            rline = locator.locate(v.related, v.related_stmt or v.related)[0]
            if rline != line:
                message += f" ({v.related_label} on line {rline})"
        out.append(Diagnostic(path, line, col, eline, ecol, rule_cls.CODE, rule_cls.NAME, message))
    return sorted(set(out))


def _suppressed(rule: type[Rule], lines: list[str], line: int, end_line: int) -> bool:
    for ln in {line, end_line}:
        if 0 < ln <= len(lines):
            for codes in line_suppressions(lines[ln - 1]):
                if _matches(codes, rule):
                    return True
    return False
