"""Fixes: what a rule can rewrite, applied and verified before anything is written.

A rule that can fix what it finds declares it beside its check: ``FIX = "safe"`` or ``"unsafe"`` and a
``fix(violation)`` method returning a :class:`Fix`: LibCST nodes of the linted module to replace, and
the modules the new code needs imported. Safe fixes keep everything the program does except the bug;
unsafe ones may change behaviour beyond it (``--unsafe-fixes`` opts in), and say why in the rule's
``## Fix safety`` section.

:func:`fix_source` applies every available fix to one source, then verifies the result: it must
parse, compile, and lint with fewer findings of each fixed rule than before and no new finding of any
other rule; a fix that fails this is dropped, never written. The caller writes the file atomically.
A finding that lies in another file (a helper in an imported module) is fixed when that file is linted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import libcst as cst

from sentinel.diagnostics import Diagnostic

if TYPE_CHECKING:
    from sentinel.rules.base import Rule

#: passes of fix-and-relint per file: a fix can expose another finding of the same kind
MAX_PASSES = 3


@dataclass
class Fix:
    """Replacements of nodes of the linted module (by identity) and imports the new code needs."""

    edits: list[tuple[cst.CSTNode, cst.CSTNode | None]]  # None: remove the node (a whole statement)
    imports: list[str] = field(default_factory=list)  # "copy", "torch" (plain `import X`)
    description: str = ""
    #: this particular fix may change behaviour even though the rule's fixes are usually safe
    unsafe: bool = False


@dataclass
class FixOutcome:
    source: str  # the fixed source (unchanged when nothing was fixed)
    fixed: list[Diagnostic]  # the findings the fixes removed
    remaining: list[Diagnostic]  # findings of the fixed source
    unsafe_hidden: int = 0  # findings an unsafe fix could remove (not applied without --unsafe-fixes)
    unfixable: int = 0  # fixes that were available but did not verify, so were not applied


def wrap_attribute_call(expr: cst.BaseExpression, method: str) -> cst.BaseExpression:
    """``expr.method()``, parenthesising ``expr`` when it is not an atom."""
    atom = isinstance(expr, (cst.Name, cst.Attribute, cst.Call, cst.Subscript))
    if not atom:
        expr = expr.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return cst.Call(func=cst.Attribute(value=expr, attr=cst.Name(method)))


def call_of(func: str, arg: cst.BaseExpression) -> cst.Call:
    """``func(arg)`` for a dotted ``func``."""
    return cst.Call(func=cst.parse_expression(func), args=[cst.Arg(arg)])


def module_binds(module: cst.Module, name: str) -> str | None:
    """How ``module`` refers to stdlib/torch module ``name`` at top level: ``name`` itself when it is
    imported as such, an alias (``import torch as th``), or None when it is not imported."""
    for stmt in module.body:
        if not isinstance(stmt, cst.SimpleStatementLine):
            continue
        for small in stmt.body:
            if isinstance(small, cst.Import):
                for alias in small.names:
                    full = cst.Module([]).code_for_node(alias.name)
                    if full == name:
                        return alias.asname.name.value if alias.asname is not None else name  # type: ignore[union-attr]
    return None


def _apply(module: cst.Module, fixes: list[Fix]) -> cst.Module:
    from libcst.codemod import CodemodContext
    from libcst.codemod.visitors import AddImportsVisitor

    new = module
    for fix in fixes:
        for old, repl in fix.edits:
            new = new.deep_remove(old) if repl is None else new.deep_replace(old, repl)  # type: ignore[assignment]
    imports = sorted({m for f in fixes for m in f.imports if module_binds(module, m) is None})
    if imports:
        context = CodemodContext()
        for name in imports:
            AddImportsVisitor.add_needed_import(context, name)
        new = AddImportsVisitor(context).transform_module(new)
    return new


def fix_source(
    source: str,
    path: str,
    rules: Iterable[type[Rule]],
    *,
    unsafe: bool = False,
    lint=None,
    accept: Callable[[str], bool] | None = None,
) -> FixOutcome:
    """Fix ``source`` with ``rules`` (safe fixes, and unsafe ones too with ``unsafe``) and verify it.

    ``lint(source, path, rules)`` returns ``(diagnostics, fixable)`` where ``fixable`` lists
    ``(rule, violation, module, diagnostic)`` of findings in this very source; the default is the
    engine's. ``accept(new_source)``, when given, is one more check a fixed source must pass (a
    notebook's: every edit fits in one cell).
    """
    from sentinel.engine import lint_with_violations

    lint = lint or lint_with_violations
    rules = list(rules)
    current = source
    fixed: list[Diagnostic] = []
    linted = lint(current, path, rules)
    hidden = 0
    unfixable = 0
    for _ in range(MAX_PASSES):
        diags, fixable, module = linted
        chosen: list[tuple[Fix, Diagnostic]] = []
        hidden = 0
        for rule_cls, violation, diag in fixable:
            if rule_cls.FIX is None:
                continue
            if rule_cls.FIX == "unsafe" and not unsafe:
                hidden += 1
                continue
            fix = rule_cls().fix(violation, module)
            if fix is not None and fix.unsafe and not unsafe:
                hidden += 1
            elif fix is not None:
                chosen.append((fix, diag))
        if not chosen or module is None:
            break
        accepted = _verified(module, current, path, rules, diags, chosen, lint, accept)
        if accepted is None:
            unfixable = len(chosen)
            break
        current, newly, linted = accepted
        fixed.extend(newly)
        unfixable = len(chosen) - len(newly)
    return FixOutcome(current, fixed, linted[0], hidden, unfixable)


def _verified(module, current, path, rules, before, chosen, lint, accept=None):
    """Apply the chosen fixes together; if the result does not verify, try them one at a time.
    Returns ``(new source, the findings fixed, the lint of the new source)`` or None."""
    batches = [chosen] + ([[c] for c in chosen] if len(chosen) > 1 else [])
    for batch in batches:
        try:
            new_source = _apply(module, [f for f, _ in batch]).code
        except Exception:  # a fix that LibCST cannot render is no fix
            continue
        if new_source == current or not _compiles(new_source, path):
            continue
        if accept is not None and not accept(new_source):
            continue
        linted = lint(new_source, path, rules)
        if _improved(before, linted[0], [d for _, d in batch]):
            return new_source, [d for _, d in batch], linted
    return None


def _compiles(source: str, path: str) -> bool:
    try:
        compile(source, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def _improved(before: list[Diagnostic], after: list[Diagnostic], targets: list[Diagnostic]) -> bool:
    """Every fixed rule has fewer findings by the number fixed, and nothing else appeared."""
    from collections import Counter

    b = Counter(d.code for d in before)
    a = Counter(d.code for d in after)
    t = Counter(d.code for d in targets)
    for code in set(a) | set(b):
        if a[code] > b[code] - t[code]:
            return False
    return True


def accumulated_expression(node: cst.CSTNode) -> cst.BaseExpression | None:
    """The value an accumulation statement adds: ``total += X``, ``total = total + X``,
    ``xs.append(X)``, ``meter.update(X, n)``; None when the shape is not one of these."""
    if isinstance(node, cst.AugAssign) and isinstance(node.operator, cst.AddAssign):
        return node.value
    if isinstance(node, cst.Assign) and len(node.targets) == 1 and isinstance(node.value, cst.BinaryOperation):
        target = cst.Module([]).code_for_node(node.targets[0].target)
        op = node.value
        if isinstance(op.operator, cst.Add):
            # `total = total + X`, and running averages `avg = 0.9 * avg + 0.1 * X`: the side without
            # the accumulator is what is added
            mentions = re.compile(rf"(?<![\w.]){re.escape(target)}(?![\w])")
            left = bool(mentions.search(cst.Module([]).code_for_node(op.left)))
            right = bool(mentions.search(cst.Module([]).code_for_node(op.right)))
            if left and not right:
                return op.right
            if right and not left:
                return op.left
        return None
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.args:
        meth = node.func.attr.value
        positional = [a for a in node.args if a.keyword is None and not a.star]
        if meth == "insert" and len(positional) == 2:
            return positional[1].value
        if meth in ("append", "add", "update", "record", "push", "put", "log", "accumulate") and positional:
            return positional[0].value
    return None


def torch_name(module: cst.Module) -> tuple[str, list[str]]:
    """How ``module`` names torch, and the import to add when it does not import it."""
    bound = module_binds(module, "torch")
    return (bound, []) if bound is not None else ("torch", ["torch"])


def no_grad_region(loop: cst.CSTNode, torch: str) -> cst.With:
    """``with torch.no_grad():`` around ``loop`` (its comments and blank lines above stay above)."""
    inner = loop.with_changes(leading_lines=[])
    return cst.With(
        items=[cst.WithItem(cst.parse_expression(f"{torch}.no_grad()"))],
        body=cst.IndentedBlock(body=[inner]),
        leading_lines=loop.leading_lines,
    )


def no_grad_decorated(func: cst.FunctionDef, torch: str) -> cst.FunctionDef:
    decorator = cst.Decorator(decorator=cst.parse_expression(f"{torch}.no_grad()"))
    return func.with_changes(decorators=[*func.decorators, decorator])


def statement_line(module: cst.Module, small: cst.CSTNode) -> cst.SimpleStatementLine | None:
    """The line (``SimpleStatementLine``) holding the small statement ``small``."""
    found: list[cst.SimpleStatementLine] = []

    class _Find(cst.CSTVisitor):
        def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
            if any(s is small for s in node.body):
                found.append(node)
            return False

        def visit_BaseExpression(self, node: cst.BaseExpression) -> bool:  # no statements inside
            return False

    module.visit(_Find())
    return found[0] if found else None


_FUNCTIONAL = ("torch", "F", "functional", "torch.nn.functional", "nn.functional")


def softmax_input(call: cst.Call) -> cst.BaseExpression | None:
    """What a softmax call normalises: ``F.softmax(x, 1)``/``torch.softmax(x, 1)``/``nn.Softmax(1)(x)``/
    ``self.softmax(x)`` take it as their first argument, ``x.softmax(1)`` is called on it."""
    func = call.func
    positional = [a for a in call.args if a.keyword is None and not a.star]
    if isinstance(func, cst.Attribute) and func.attr.value == "softmax":
        receiver = cst.Module([]).code_for_node(func.value)
        if receiver not in _FUNCTIONAL:
            return func.value  # the method form
    return positional[0].value if positional else None


def unified_diff(before: str, after: str, path: str) -> str:
    import difflib

    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), fromfile=path, tofile=path
        )
    )


def write_atomically(path, text: str, encoding: str = "utf-8") -> None:
    """Replace ``path``'s content with ``text`` in one rename, keeping its permission bits."""
    import os
    import tempfile
    from pathlib import Path

    target = Path(path)
    mode = target.stat().st_mode & 0o7777 if target.exists() else None
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".sentinel-fix")
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as fh:
            fh.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@dataclass
class FixRun:
    """What ``sentinel lint --fix`` / ``--diff`` did over a set of files."""

    fixed: int = 0  # findings removed
    files_changed: int = 0
    diffs: list[str] = field(default_factory=list)
    unsafe_hidden: int = 0
    unfixable: int = 0  # available fixes not applied because the result did not verify


def fix_files(files, *, unsafe: bool, write: bool) -> FixRun:
    """Fix each ``(path, rules)`` of ``files`` (Python sources; a file that cannot be read or parsed
    is left alone, and reported by the lint that follows). With ``write``, a changed file is replaced
    atomically; without, its diff is collected."""
    from pathlib import Path

    from sentinel.diagnostics import SourceError
    from sentinel.sourcefile import decode

    run = FixRun()
    for path, rules in files:
        p = Path(path)
        if p.suffix.lower() == ".ipynb":
            _fix_notebook_file(p, rules, unsafe, write, run)
            continue
        try:
            raw = p.read_bytes()
            source = decode(raw)
            outcome = fix_source(source, str(p), rules, unsafe=unsafe)
        except (OSError, SourceError, RecursionError):
            continue
        run.unsafe_hidden += outcome.unsafe_hidden
        run.unfixable += outcome.unfixable
        if outcome.source == source:
            continue
        run.fixed += len(outcome.fixed)
        run.files_changed += 1
        if write:
            encoding = "utf-8"
            if not raw.startswith(b"\xef\xbb\xbf"):
                import io
                import tokenize

                encoding = tokenize.detect_encoding(io.BytesIO(raw).readline)[0]
            write_atomically(p, outcome.source, encoding)
        else:
            run.diffs.append(unified_diff(source, outcome.source, str(p)))
    return run


def _fix_notebook_file(p, rules, unsafe: bool, write: bool, run: FixRun) -> None:
    from sentinel.notebook import NotebookError
    from sentinel.notebook_fix import fix_notebook

    try:
        raw = p.read_bytes()
        text = raw.decode("utf-8-sig")
        new_text, outcome = fix_notebook(text, str(p), rules, unsafe=unsafe)
    except (OSError, UnicodeDecodeError, NotebookError, ValueError, RecursionError):
        return
    run.unsafe_hidden += outcome.unsafe_hidden
    run.unfixable += outcome.unfixable
    if new_text == text:
        return
    run.fixed += len(outcome.fixed)
    run.files_changed += 1
    if write:
        write_atomically(p, new_text, "utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8")
    else:
        run.diffs.append(unified_diff(text, new_text, str(p)))
