"""Shared helpers for the lint tests: the fixture corpus and its ``# expect:`` annotations."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fixtures" / "lint"
EXPECT = re.compile(r"#\s*expect:\s*([A-Z0-9 ,]+)")


def corpus_files() -> list[Path]:
    return sorted(CORPUS.rglob("*.py"))


def expectations(source: str) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for lineno, line in enumerate(source.splitlines(), 1):
        m = EXPECT.search(line)
        if m:
            out.update((code, lineno) for code in re.split(r"[\s,]+", m.group(1).strip()) if code)
    return out
