"""Reading a Python source as the interpreter would, and checking that it parses, without LibCST."""

from __future__ import annotations

import ast

from sentinel.diagnostics import SourceError


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
        from sentinel.parse import parse

        parse(source)
