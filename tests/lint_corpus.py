"""Shared helpers for the lint tests: the fixture corpus and its ``# expect:`` annotations.

Single-file programs live under ``fixtures/lint/<kind>/``; multi-file projects under
``fixtures/lint/projects/<name>/`` (each its own project root), linted as a whole.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fixtures" / "lint"
PROJECTS = CORPUS / "projects"
EXPECT = re.compile(r"#\s*expect:\s*([A-Z0-9 ,]+)")


def corpus_files() -> list[Path]:
    """Every single-file program of the corpus (project files are linted with their project)."""
    return sorted(p for p in CORPUS.rglob("*.py") if PROJECTS not in p.parents)


def project_dirs() -> list[Path]:
    return sorted(d for d in PROJECTS.iterdir() if d.is_dir()) if PROJECTS.is_dir() else []


def expectations(source: str) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for lineno, line in enumerate(source.splitlines(), 1):
        m = EXPECT.search(line)
        if m:
            out.update((code, lineno) for code in re.split(r"[\s,]+", m.group(1).strip()) if code)
    return out
