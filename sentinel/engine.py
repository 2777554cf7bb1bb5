"""Lint one source with the project it belongs to: pre-filter, one parse, one analysis, every enabled
rule, locations, suppressions.

Cost model (see ``benchmarks/lint_speed.py``): LibCST's parser dominates. A file whose text, together
with the project files it imports, cannot trigger any enabled rule (no ``backward``, no ``softmax`` ...
see each rule's ``TRIGGER``) is never parsed, and LibCST is not even imported for it: CPython's parser
still checks its syntax. Imported project files are parsed only where the analysis uses one of their
definitions (:mod:`sentinel.analysis.imports`). While a file is parsed and analysed, the cyclic garbage
collector runs far less often (:func:`fewer_collections`). Findings may lie in an imported file (a ``validate()``
helper in ``engine.py`` called from ``train.py``): they are reported at that file's lines.
"""

from __future__ import annotations

import ast
import gc
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sentinel.analysis.project import code_text
from sentinel.diagnostics import Diagnostic, SourceError
from sentinel.rules import Rule, Violation, all_rules
from sentinel.sourcefile import decode, syntax_check

if TYPE_CHECKING:
    from sentinel.analysis.project import Project

__all__ = ["Diagnostic", "SourceError", "check_source", "decode", "project_for", "syntax_check"]


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


# -- projects ----------------------------------------------------------------------------------------
_PROJECTS: dict[tuple[Path, bool], Project] = {}


def project_for(path: Path, *, cache: bool = False, cache_dir: Path | None = None) -> Project:
    """The :class:`Project` of ``path``, shared by every file of that root linted in this process;
    with ``cache``, backed by its ``.sentinel_cache/`` (or ``cache_dir``, given the first time)."""
    from sentinel.analysis.project import Project, find_root

    root = find_root(path)
    project = _PROJECTS.get((root, cache))
    if project is None:
        store = None
        if cache:
            from sentinel.cache import Cache

            store = Cache(root, cache_dir)
        project = _PROJECTS[(root, cache)] = Project(root, store)
    return project


def _real_file(path: str) -> Path | None:
    if not path or path.startswith("<"):
        return None
    p = Path(path)
    return p if p.parent.is_dir() else None


def _display(dep: Path, path: str) -> str:
    """How to print an imported file's path: like the linted file's (relative stays relative)."""
    if os.path.isabs(path):
        return str(dep)
    try:
        return os.path.relpath(dep)
    except ValueError:  # pragma: no cover - another drive on Windows
        return str(dep)


# -- the check ---------------------------------------------------------------------------------------
#: generation thresholds while a file is analysed (CPython's default is (700, 10, 10))
GC_THRESHOLDS = (100_000, 50, 100)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect cyclic garbage rarely while a file is parsed and analysed.

    A LibCST tree is hundreds of thousands of small objects, and the project's parses stay alive for
    the run: with CPython's default thresholds the collector traverses them again and again, about
    40% of a whole-repository lint (measured with ``benchmarks/lint_speed.py``). The trees are acyclic
    and freed by reference counting, so fewer collections lose nothing; the analysis' own cycles are
    still collected. The previous thresholds come back afterwards, so a host process (the pytest
    plugin, an editor) keeps its own."""
    old = gc.get_threshold()
    if old[0] >= GC_THRESHOLDS[0]:  # already relaxed (a nested call, or the host chose so)
        yield
        return
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*old)


CUT_SHORT = (
    "the analysis of this file ran out of its budget: what it could not finish is not checked"
    " (no finding is made from half-analysed code)"
)


def check_source(
    source: str,
    path: str = "<string>",
    rules: Iterable[type[Rule]] | None = None,
    *,
    prefilter: bool = True,
    project: Project | None | bool = None,
    cache: bool = False,
    notes: list[str] | None = None,
) -> list[Diagnostic]:
    """Lint ``source`` with ``rules`` (default: all). Raises :class:`SourceError` on a syntax error.

    ``notes`` (when given) receives what the user should know about this file's analysis: that its
    budget cut it short (what was cut is not reported; such a result is not cached, so the note
    comes back on every run).

    ``path`` names the file; when it is a real file's path, the project it belongs to is read too
    (``project=False`` turns that off; a :class:`Project` may be passed in). ``prefilter=False``
    analyses the file even when no rule's trigger text occurs in it. With ``cache``, findings are
    kept in the project's ``.sentinel_cache/`` (see :mod:`sentinel.cache`) and reused while the file
    and every project file it imports are unchanged.
    """
    rule_list = _not_suppressed_in_file(source, list(all_rules() if rules is None else rules))
    if rule_list is None:
        return []
    file = _real_file(path)
    proj: Project | None = None
    if project is not False and file is not None:
        if project in (None, True):
            proj = project_for(file, cache=cache)
        else:
            proj = project  # type: ignore[assignment]
    deps: list[Path] = []
    pieces: list[str] = [code_text(source)] if prefilter else []
    # a package `__init__` of re-exports: importing names runs none of their code, nothing can be found
    inert = prefilter and _declarative(source)
    if proj is not None:
        proj.set_text(file, source)
        deps = [] if inert else proj.closure(file, source, file)
        if deps and prefilter:
            pieces += proj.trigger_texts(file, source, file)
    store = proj.cache if proj is not None and cache else None
    key = ""
    if store is not None:
        from sentinel.cache import settings_key

        key = settings_key([r.CODE for r in rule_list], "prefilter" if prefilter else "all")
        hit = store.get(file, source, key, proj.text)
        if hit is not None:
            return [_redisplay(d, path, file) for d in hit]
    active = [] if inert else _triggered(rule_list, pieces, proj, source) if prefilter else rule_list
    if proj is not None and file is not None:
        proj.triggers = partial(_would_trigger, rule_list, proj) if prefilter else None
    if not active:
        # nothing here can trigger a rule: skip LibCST, but still report a file Python cannot parse
        syntax_check(source)
        found: list[Diagnostic] = []
    else:
        cut: list[str] = []
        with fewer_collections():
            found = _analyse(source, path, file, proj, active, cut)[0]
        if cut:
            store = None
            if notes is not None:
                notes.extend(cut)
    if store is not None:
        absolute = [replace(d, path=str(file.resolve() if d.path == path else Path(d.path).resolve())) for d in found]
        store.put(file, source, key, {d: proj.text(d) or "" for d in deps}, absolute)
    return found


_DEFINES = re.compile(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]", re.M)


def _declarative(source: str) -> bool:
    """Does the file only import and name things (imports, ``__all__``, constants, under ``if``/``try``)?

    Importing a name from a project module runs none of that module's code here (the analysis reads
    only the definitions a call reaches), so such a file, a package ``__init__`` that re-exports a
    model zoo, has nothing any rule could find, however much its imports bring in."""
    if _DEFINES.search(source):
        return False
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return all(_names_only(stmt) for stmt in tree.body)


def _names_only(stmt: ast.stmt) -> bool:
    if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Pass)):
        return True
    if isinstance(stmt, ast.Expr):
        return isinstance(stmt.value, ast.Constant)
    if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        return stmt.value is None or _inert(stmt.value)
    if isinstance(stmt, ast.If):
        return _inert(stmt.test) and all(_names_only(s) for s in (*stmt.body, *stmt.orelse))
    if isinstance(stmt, ast.Try):
        parts = [*stmt.body, *stmt.orelse, *stmt.finalbody, *(s for h in stmt.handlers for s in h.body)]
        return all(_names_only(s) for s in parts)
    return False


def _inert(node: ast.expr) -> bool:
    """A value built of constants and names only (``__all__ = ["ResNet", ...]``, ``X = a.b``)."""
    return all(
        isinstance(n, (ast.Constant, ast.Name, ast.Attribute, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.expr_context))
        or isinstance(
            n, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)
        )
        for n in ast.walk(node)
    )


#: a top-level function filed by a registering decorator (``@register_model``, ``@MODELS.register()``)
_ZOO_FACTORY = re.compile(r"^@[ \t]*[\w.]*regist\w*\b[^\n]*\n(?:@[^\n]*\n)*(?:async[ \t]+)?def[ \t]", re.M | re.I)


def _triggered(rules: list[type[Rule]], pieces: list[str], proj: Project | None, source: str = "") -> list[type[Rule]]:
    """The rules each of whose trigger patterns occurs in the file's code or in the project code it
    imports. Each imported piece is searched once per run (a model zoo's files share their layers), and
    a rule's patterns are tried in order until one is missing: its later, costlier patterns (SEN020's
    reduction-dimension pattern) are searched only in code that has the earlier ones.

    A model zoo's file (factories filed by a registering decorator) is model code: the rules that do
    not read model code (:attr:`Rule.MODEL_METHODS`) trigger there on its own code only, not on the
    checkpoint loading and mode switches of the package helpers its factories build with."""
    if len(pieces) > 1 and _ZOO_FACTORY.search(source):
        found = set(_triggered([r for r in rules if not r.MODEL_METHODS], pieces[:1], proj))
        found.update(_triggered([r for r in rules if r.MODEL_METHODS], pieces, proj))
        return [r for r in rules if r in found]
    memo = proj.trigger_hits if proj is not None else {}
    tables: list[dict] = []
    for i, text in enumerate(pieces):
        cached = memo.get(id(text)) if i else None
        if cached is None or cached[0] is not text:
            cached = (text, {})
            if i:
                memo[id(text)] = cached
        tables.append(cached[1])
    found: dict[re.Pattern[str], bool] = {}

    def occurs(pattern: re.Pattern[str]) -> bool:
        hit = found.get(pattern)
        if hit is None:
            hit = False
            for text, hits in zip(pieces, tables):
                in_piece = hits.get(pattern)
                if in_piece is None:
                    in_piece = hits[pattern] = pattern.search(text) is not None
                if in_piece:
                    hit = True
                    break
            found[pattern] = hit
        return hit

    return [r for r in rules if all(occurs(p) for p in r.TRIGGER)]


def _would_trigger(rules: list[type[Rule]], proj: Project, path: Path) -> bool:
    """Would linting ``path`` (another file of this run) analyse it?"""
    text = proj.text(path)
    if text is None or _declarative(text):
        return False
    return bool(_triggered(rules, [code_text(text), *proj.trigger_texts(path, text, path)], proj, text))


def _redisplay(d: Diagnostic, path: str, file: Path) -> Diagnostic:
    """A cached finding (absolute path) as this run names it: the linted file as given."""
    where = Path(d.path)
    return replace(d, path=path if where == file.resolve() else _display(where, path))


def lint_with_violations(source: str, path: str, rules: Iterable[type[Rule]]) -> tuple[list, list, object]:
    """For fixes: ``(diagnostics, fixable, module)``, where ``fixable`` lists ``(rule, violation,
    diagnostic)`` for the findings located in ``source`` itself, and ``module`` is its LibCST tree.
    Raises :class:`SourceError` when ``source`` does not parse."""
    file = _real_file(path)
    proj = project_for(file) if file is not None else None
    rule_list = _not_suppressed_in_file(source, list(rules))
    if not rule_list:
        return [], [], None
    with fewer_collections():
        return _analyse(source, path, file, proj, rule_list)


def _not_suppressed_in_file(source: str, rules: list[type[Rule]]) -> list[type[Rule]] | None:
    """``rules`` less those a file-level ``# sentinel: noqa[: codes]`` silences; None: all of them."""
    file_level = file_suppressions(source) if "sentinel" in source else []
    if any(codes is None for codes in file_level):
        return None
    return [r for r in rules if not any(_matches(codes, r) for codes in file_level)]


def _analyse(
    source: str,
    path: str,
    file: Path | None,
    proj: Project | None,
    active: list[type[Rule]],
    notes: list[str] | None = None,
) -> tuple[list[Diagnostic], list, object]:
    from sentinel.analysis.interpreter import Interpreter
    from sentinel.locate import Locator
    from sentinel.parse import parse

    if proj is not None and file is not None:
        proj.set_text(file, source)
        module = proj.module(file, source)
    else:
        module = parse(source)
    interp = Interpreter(module, source, path=file, project=proj, model_methods=any(r.MODEL_METHODS for r in active))
    facts = interp.run()
    if interp.exhausted and notes is not None:
        notes.append(CUT_SHORT)
    violations: list[tuple[type[Rule], Violation]] = []
    for rule_cls in active:
        for v in rule_cls().check(facts):
            violations.append((rule_cls, v))
    if not violations:
        return [], [], module
    # where each flagged statement lives: the linted file, or a snippet of an imported one
    entry = Locator(source, module)
    places: list[tuple[str, Locator, list[str]]] = [(path, entry, entry.lines)]
    for dep, dep_source, snippets in interp.imported_sources():
        dep_lines = dep_source.splitlines(keepends=True)
        for snippet, text, offset in snippets:
            places.append((_display(dep, path), Locator(text, snippet, line_offset=offset), dep_lines))

    def where(stmt) -> tuple[str, Locator, list[str]]:
        for place in places:
            if place[1].knows(stmt):
                return place
        return places[0]

    seen: set[tuple[str, int]] = set()
    out: list[Diagnostic] = []
    fixable: list = []
    for rule_cls, v in violations:
        key = (rule_cls.CODE, id(v.node))
        if key in seen:
            continue
        seen.add(key)
        at, locator, lines = where(v.stmt)
        line, col, eline, ecol = locator.locate(v.node, v.stmt)
        if _suppressed(rule_cls, lines, line, eline):
            continue
        if at != path and file_suppressions_apply(lines, rule_cls):
            continue
        message = v.message
        if v.related is not None:
            rstmt = v.related_stmt or v.related
            rat, rloc, _ = where(rstmt)
            rline = rloc.locate(v.related, rstmt)[0]
            if rat != at:
                message += f" ({v.related_label} at {rat}:{rline})"
            elif rline != line:
                message += f" ({v.related_label} on line {rline})"
        diag = Diagnostic(at, line, col, eline, ecol, rule_cls.CODE, rule_cls.NAME, message)
        out.append(diag)
        if locator is entry:
            fixable.append((rule_cls, v, diag))
    return sorted(set(out)), fixable, module


def file_suppressions_apply(lines: list[str], rule: type[Rule]) -> bool:
    """Does an imported file's own ``# sentinel: noqa`` line silence ``rule`` there?"""
    text = "".join(lines)
    if "sentinel" not in text:
        return False
    return any(_matches(codes, rule) for codes in file_suppressions(text))


def _suppressed(rule: type[Rule], lines: list[str], line: int, end_line: int) -> bool:
    for ln in {line, end_line}:
        if 0 < ln <= len(lines):
            for codes in line_suppressions(lines[ln - 1]):
                if _matches(codes, rule):
                    return True
    return False
