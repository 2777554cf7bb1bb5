"""Every rule against the whole corpus: each fixture's findings are exactly its ``# expect:`` lines.

Buggy fixtures must be found on the annotated line (recall); tricky-clean and clean fixtures, and the
buggy fixtures of *other* rules, must produce nothing else (precision).
"""

from __future__ import annotations

import collections

import pytest

from sentinel.lint import lint_source
from sentinel.rules import all_rules
from tests.lint_corpus import CORPUS, corpus_files, expectations

FILES = corpus_files()


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
def test_fixture_findings_match_expectations(path):
    source = path.read_text(encoding="utf-8")
    expected = expectations(source)
    found = {(d.code, d.line) for d in lint_source(source, str(path))}
    assert found == expected, f"missing: {sorted(expected - found)}; unexpected: {sorted(found - expected)}"


def test_corpus_covers_every_rule():
    """At least 8 buggy and 4 tricky-clean programs per rule, and 10 clean programs."""
    buggy = collections.Counter()
    tricky = collections.Counter()
    for path in FILES:
        rel = path.relative_to(CORPUS)
        codes = {code for code, _ in expectations(path.read_text(encoding="utf-8"))}
        if rel.parts[0] == "buggy":
            buggy.update(codes)
        elif rel.parts[0] == "tricky":
            tricky.update({path.name[:6].upper()})
    for rule in all_rules():
        assert buggy[rule.CODE] >= 8, rule.CODE
        assert tricky[rule.CODE] >= 4, rule.CODE
    assert len(list((CORPUS / "clean").glob("*.py"))) >= 10
