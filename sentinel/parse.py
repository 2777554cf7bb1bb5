"""The one LibCST parse of a file, with CPython's wording of syntax errors where it agrees."""

from __future__ import annotations

import ast

import libcst as cst

from sentinel.diagnostics import SourceError


def parse(source: str) -> cst.Module:
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
