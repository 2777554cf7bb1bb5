"""The project a file belongs to: its root, how its imports resolve to files, and module indexes.

A file is analysed together with the project files it imports, never the whole tree. This module
owns the file-system side of that:

- :func:`find_root`: the nearest directory up holding ``pyproject.toml``, ``setup.cfg``, ``setup.py``
  or ``.git`` (the file's own directory when there is none).
- :class:`Project`: resolves an import (absolute from the importing script's directory, the root or a
  ``src/`` layout; relative imports; packages with ``__init__.py``) to a file inside the root.
- :class:`ModuleIndex`: what a module binds at top level and on which lines, built with CPython's
  ``ast`` (about ten times cheaper than LibCST) and cached by content, so the interpreter parses with
  LibCST only the definitions an importer actually uses (:mod:`sentinel.analysis.imports`).
- :meth:`Project.closure`: the project files a source imports, transitively, found by a text scan;
  the engine reads their text to decide which rules can trigger before parsing anything.
- :meth:`Project.registered`: the classes a registering decorator (``@register_model("cnn")``) files
  into a module-level dict, found in the files that use that decorator, imported or not: the
  registry holds them once the package is imported, so they belong to every closure reaching it.

Nothing here imports LibCST.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT_MARKERS = ("pyproject.toml", "setup.cfg", "setup.py", ".git")
#: transitive imports followed for trigger text and cache keys; deeper chains are rare in training code
MAX_CLOSURE = 64
MAX_CLOSURE_DEPTH = 4
MAX_MODULE_BYTES = 2_000_000
#: files searched for the definitions a registry's decorator registered (a monorepo stops here)
MAX_REGISTRY_FILES = 2000
#: a registry holding more definitions is a model zoo: which one a run builds is unknown, and reading
#: them all (timm registers over a thousand) would cost more than the file being linted
MAX_REGISTERED = 24
_NOT_PROJECT_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "venv", "env", "build", "dist"})
#: ``MODELS = {}`` / ``MODELS: dict[str, type] = dict()`` at the top level: where a registry starts
_EMPTY_DICT = re.compile(r"^[A-Za-z_]\w*[ \t]*(?::[^\n=]*)?=[ \t]*(?:\{[ \t]*\}|dict\([ \t]*\))", re.M)


@functools.lru_cache(maxsize=1 << 16)
def real(path: Path) -> Path:
    """``path.resolve()``, remembered: a run asks for the same few hundred files tens of thousands of times."""
    return path.resolve()


def find_root(path: Path) -> Path:
    """The project root of ``path``: the nearest directory up with a root marker, else its directory."""
    start = path.resolve().parent if not path.is_dir() else path.resolve()
    cur = start
    while True:
        if any((cur / m).exists() for m in ROOT_MARKERS):
            return cur
        if cur.parent == cur:
            return start
        cur = cur.parent


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclass
class ModuleIndex:
    """Top-level bindings of one module: ``name -> [(first line, last line, ordinal), ...]`` of the
    statements that bind it (decorators included; ``ordinal``: its index among the module's top-level
    statements), in source order; ``star`` lists ``from X import *`` sources as ``(module, level)``.
    Statements under ``if __name__ == "__main__":`` bind nothing here."""

    bindings: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    star: list[tuple[str, int]] = field(default_factory=list)
    ok: bool = True  # False: the module does not parse; it contributes nothing
    #: module-level dicts filled by the module's own functions (``REGISTRY = {}`` and a decorator that
    #: does ``REGISTRY[name] = cls``): dict name -> those functions' names
    fillers: dict[str, list[str]] = field(default_factory=dict)
    #: top-level classes and functions with decorators: ``(decorator's name, definition's name, the
    #: decorator's string argument or None)``
    decorated: list[tuple[str, str, str | None]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"b": self.bindings, "s": self.star, "ok": self.ok, "f": self.fillers, "d": self.decorated}

    @classmethod
    def from_json(cls, data: dict) -> ModuleIndex:
        return cls(
            {k: [tuple(r) for r in v] for k, v in data["b"].items()},
            [tuple(s) for s in data["s"]],
            data["ok"],
            data["f"],
            [tuple(d) for d in data["d"]],
        )


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If):
        return False
    t = node.test
    return (
        isinstance(t, ast.Compare)
        and isinstance(t.left, ast.Name)
        and t.left.id == "__name__"
        and len(t.comparators) == 1
        and isinstance(t.comparators[0], ast.Constant)
        and t.comparators[0].value == "__main__"
    )


def _bound_names(node: ast.AST) -> set[str]:
    out: set[str] = set()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        out.add(node.name)
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
        for a in node.names:
            if a.name != "*":
                out.add(a.asname or a.name.split(".")[0])
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name):
                    out.add(n.id)
    elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)) or type(node).__name__ == "TryStar":
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                out |= _bound_names(child)
            elif isinstance(child, ast.ExceptHandler):
                for s in child.body:
                    out |= _bound_names(s)
    return out


def build_index(source: str) -> ModuleIndex:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ModuleIndex(ok=False)
    index = ModuleIndex()
    for ordinal, node in enumerate(tree.body):
        if _is_main_guard(node) or isinstance(node, (ast.For, ast.While, ast.With, ast.AsyncFor, ast.AsyncWith)):
            continue  # run only as a script; loops and blocks at import time define nothing we follow
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            index.star.append((node.module or "", node.level))
            continue
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))])
        span = (first, node.end_lineno or node.lineno, ordinal)
        for name in _bound_names(node):
            index.bindings.setdefault(name, []).append(span)
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                callee = dec.func if isinstance(dec, ast.Call) else dec
                name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", None)
                if name:
                    index.decorated.append((name, node.name, _registry_key(dec)))
    index.fillers = _fillers(tree)
    return index


def _registry_key(dec: ast.expr) -> str | None:
    """The name a registering decorator files a definition under, when written as a string:
    ``@register_model("cnn")``, ``@register(name="cnn")``."""
    if not isinstance(dec, ast.Call):
        return None
    args = [*dec.args[:1], *(k.value for k in dec.keywords if k.arg == "name")]
    for a in args:
        if isinstance(a, ast.Constant) and isinstance(a.value, str):
            return a.value
    return None


def _fillers(tree: ast.Module) -> dict[str, list[str]]:
    """Module-level dicts (``REGISTRY = {}``) and the top-level functions that store into them
    (``REGISTRY[name] = cls`` anywhere in their body, as a registering decorator does)."""
    dicts: set[str] = set()
    for node in tree.body:
        value = getattr(node, "value", None)
        is_dict = isinstance(value, ast.Dict) or (
            isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict"
        )
        if is_dict and isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            dicts.update(t.id for t in targets if isinstance(t, ast.Name))
    out: dict[str, list[str]] = {}
    if not dicts:
        return out
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = {
            a.arg
            for f in ast.walk(node)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for a in (*f.args.posonlyargs, *f.args.args, *f.args.kwonlyargs)
        }
        for sub in ast.walk(node):
            # the value stored is what the function was given (the decorated class), not a result it
            # computed (a memo cache)
            if not (isinstance(sub, ast.Assign) and isinstance(sub.value, ast.Name) and sub.value.id in params):
                continue
            for t in sub.targets:
                if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id in dicts:
                    names = out.setdefault(t.value.id, [])
                    if node.name not in names:
                        names.append(node.name)
    return out


_IMPORT_LINE = re.compile(r"^[ \t]*(?:from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(.+)|import[ \t]+(.+))", re.M)


_WORD = re.compile(r"[A-Za-z_]\w*")
#: a string literal or a comment, matched from the left so a quote inside a comment (or a ``#`` inside
#: a string) is not mistaken for the other
_NOISE = re.compile(
    r"""(?P<s>[rRbBuUfF]{0,2}(?:\"\"\"(?:[^"\\]|\\.|"(?!""))*(?:\"\"\"|$)|'''(?:[^'\\]|\\.|'(?!''))*(?:'''|$)"""
    r"""|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'))|(?P<c>\#[^\n]*)""",
    re.S,
)


def code_text(text: str) -> str:
    """``text`` without its comments and triple-quoted strings (docstrings): what rule triggers read,
    so ``# for backwards compatibility`` or a docstring mentioning ``torch.no_grad`` triggers nothing."""
    if "#" not in text and '"""' not in text and "'''" not in text:
        return text
    return _NOISE.sub(_keep_code, text)


def _keep_code(m: re.Match[str]) -> str:
    s = m.group("s")
    if s is None or s.endswith(('"""', "'''")) or s.lstrip("rRbBuUfF").startswith(('"""', "'''")):
        return "\n" * m.group(0).count("\n")
    return s


def scan_imports(source: str) -> list[tuple[str, int, list[str]]]:
    """Imports found by a text scan: ``(module, level, names)``; over-approximates, never parses."""
    out = []
    for m in _IMPORT_LINE.finditer(source):
        if m.group(4) is not None:
            for part in m.group(4).split(","):
                name = part.strip().split(" ")[0].strip("()\\ ")
                if name and re.fullmatch(r"[\w.]+", name):
                    out.append((name, 0, []))
        else:
            names = [p.strip().split(" ")[0].strip("()\\ ") for p in m.group(3).split(",")]
            out.append((m.group(2), len(m.group(1)), [n for n in names if re.fullmatch(r"\w+", n or "")]))
    return out


class Project:
    """One project root and everything read from it during a run (texts and indexes, by path)."""

    def __init__(self, root: Path, index_cache: Any = None) -> None:
        self.root = root.resolve()
        self._texts: dict[Path, tuple[tuple[int, int] | None, str | None]] = {}
        self._indexes: dict[Path, ModuleIndex] = {}
        self._resolved: dict[tuple, Path | None] = {}
        # LibCST parses shared by every analysis of this run: whole modules of files that are both
        # linted and imported, and single definitions of the other imported files
        self.run_files: set[Path] = set()
        #: set by the engine: does some rule trigger on this file (it will be parsed whole)?
        self.triggers: Any = None
        self._will_analyse: dict[Path, bool] = {}
        self._scans: dict[Path, tuple[str, list]] = {}
        self._targets: dict[tuple, list] = {}
        self._used: dict[tuple, tuple[str, str]] = {}
        #: which trigger patterns occur in each imported piece of code (see ``sentinel.engine``)
        self.trigger_hits: dict[int, tuple[str, dict]] = {}
        self._modules: dict[Path, tuple[str, Any]] = {}
        self._definitions: dict[tuple[Path, int, int, str], tuple[Any, str, list, int]] = {}
        self._registered: dict[tuple[Path, str], list[tuple[Path, str, str | None]]] = {}
        self._files: list[Path] | None = None
        self.cache = index_cache  # a sentinel.cache.Cache (indexes and results), or None

    # -- files -------------------------------------------------------------------------------------
    def contains(self, path: Path) -> bool:
        try:
            real(path).relative_to(self.root)
        except ValueError:
            return False
        return True

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def text(self, path: Path) -> str | None:
        """The decoded text of a project file, or None when it cannot be read as Python source.

        Re-read when the file changed since (a long-lived process: the pytest plugin, an editor)."""
        path = real(path)
        stamp = self._stamp(path)
        cached = self._texts.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        from sentinel.diagnostics import SourceError
        from sentinel.sourcefile import decode

        try:
            data = path.read_bytes()
            text = decode(data) if len(data) <= MAX_MODULE_BYTES else None
        except (OSError, SourceError):
            text = None
        if cached is not None:  # the file changed during this process: forget what was derived from it
            self._targets.clear()
            self._will_analyse.clear()
        self._texts[path] = (stamp, text)
        self._indexes.pop(path, None)
        return text

    def set_text(self, path: Path, text: str) -> None:
        """Use ``text`` for ``path`` while the file is unchanged (the source being linted: from stdin,
        a notebook's code cells)."""
        path = real(path)
        cached = self._texts.get(path)
        if cached is None or cached[1] != text:
            self._indexes.pop(path, None)
        self._texts[path] = (self._stamp(path), text)

    def index(self, path: Path) -> ModuleIndex:
        path = real(path)
        text = self.text(path)  # re-reads (and drops the index) when the file changed
        idx = self._indexes.get(path)
        if idx is None:
            if text is None:
                idx = ModuleIndex(ok=False)
            else:
                key = digest(text)
                idx = self.cache.get_index(key) if self.cache is not None else None
                if idx is None:
                    idx = build_index(text)
                    if self.cache is not None:
                        self.cache.put_index(key, idx)
            self._indexes[path] = idx
        return idx

    # -- parses ------------------------------------------------------------------------------------
    def expect(self, paths: list[Path]) -> None:
        """These files are linted in this run: when one is imported, parse it whole, once, and reuse
        that parse for its own analysis (each file is parsed at most once per run)."""
        self.run_files.update(real(p) for p in paths)

    def _analysed(self, path: Path) -> bool:
        """Will this run analyse ``path`` itself (so its whole parse is shared), as far as the
        engine can tell from its triggers? A linted file no rule triggers on is read like any other
        imported file: only the definitions used."""
        found = self._will_analyse.get(path)
        if found is None:
            found = self._will_analyse[path] = self.triggers is None or self.triggers(path)
        return found

    def module(self, path: Path, text: str) -> Any:
        """The LibCST module of a linted file (the run's shared parse when there is one)."""
        from sentinel.parse import parse

        path = real(path)
        key = digest(text)
        cached = self._modules.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        module = parse(text)
        if path in self.run_files:
            self._modules[path] = (key, module)
        return module

    def definition(self, path: Path, span: tuple[int, int, int]) -> tuple[Any, str, list, int] | None:
        """The top-level statement(s) at ``span`` of an imported file, parsed at most once per run:
        ``(module, source of that module, statements, lines before it in the file)``. A file linted in
        this run is parsed whole; any other only at that definition."""
        import libcst as cst

        path = real(path)
        text = self.text(path)
        if text is None:
            return None
        key = digest(text)
        if path in self.run_files and self._analysed(path):
            try:
                module = self.module(path, text)
            except Exception:  # a syntax error there is reported when that file is linted
                return None
            stmt = _nth_statement(module, span[2])
            return (module, text, [stmt], 0) if stmt is not None else None
        dkey = (path, span[0], span[1], key)
        found = self._definitions.get(dkey)
        if found is None:
            first, last, _ = span
            lines = text.splitlines(keepends=True)
            snippet = "".join(lines[first - 1 : last])
            if not snippet.endswith("\n"):
                snippet += "\n"
            try:
                module = cst.parse_module(snippet)
            except (cst.ParserSyntaxError, RecursionError):
                return None
            found = self._definitions[dkey] = (module, snippet, list(module.body), first - 1)
        return found

    # -- imports -----------------------------------------------------------------------------------
    def _bases(self, importer: Path, entry: Path | None) -> list[Path]:
        out = []
        for b in (importer.parent, entry.parent if entry else None, self.root, self.root / "src"):
            if b is not None and b not in out:
                out.append(b)
        return out

    def resolve(self, importer: Path, module: str, level: int = 0, entry: Path | None = None) -> Path | None:
        """The file that ``import module`` (or ``from .module import``, ``level`` dots) in ``importer``
        loads, when it is a file of this project; a package resolves to its ``__init__.py``."""
        importer = real(importer)
        key = (importer.parent, entry.parent if entry and not level else None, module, level)
        if key in self._resolved:
            return self._resolved[key]
        parts = [p for p in module.split(".") if p]
        found: Path | None = None
        if level:
            base = importer.parent
            for _ in range(level - 1):
                base = base.parent
            found = self._find(base, parts) if parts else self._package(base)
        else:
            for base in self._bases(importer, entry):
                found = self._find(base, parts)
                if found is not None:
                    break
        if found is not None and (not self.contains(found) or found == importer):
            found = None
        self._resolved[key] = found
        return found

    @staticmethod
    def _package(d: Path) -> Path | None:
        init = d / "__init__.py"
        return init if init.is_file() else None

    def _find(self, base: Path, parts: list[str]) -> Path | None:
        if not parts:
            return None
        d = base.joinpath(*parts)
        f = d.with_suffix(".py")
        if f.is_file():
            return f
        init = d / "__init__.py"
        if init.is_file():
            return init
        return None

    def closure(self, path: Path, source: str, entry: Path | None = None) -> list[Path]:
        """Project files that ``source`` (at ``path``) imports, transitively (text scan, bounded).

        ``from pkg import A`` through a package's ``__init__`` follows only the lines of the
        ``__init__`` that bind ``A`` (a package that re-exports a hundred modules is not a hundred
        dependencies of every importer)."""
        path = real(path)
        seen: list[Path] = []
        visited = {path}
        scanned = {path}  # files whose every import was followed already
        todo: list[tuple[Path, str, int]] = [(path, source, 0)]
        while todo and len(seen) < MAX_CLOSURE:
            cur, text, depth = todo.pop()
            if depth >= MAX_CLOSURE_DEPTH:
                continue
            for module, level, names in self._scan(cur, text):
                for target, scan in self._import_targets(cur, module, level, names, entry):
                    if target not in visited:
                        visited.add(target)
                        seen.append(target)
                    if scan is None:
                        if target in scanned:
                            continue
                        scanned.add(target)
                        scan = self.text(target)
                    if scan:
                        todo.append((target, scan, depth + 1))
        for dep in [path, *seen]:
            for file, _, _ in self.registrations_from(dep):
                if file not in visited:
                    visited.add(file)
                    seen.append(file)
        return [p for p in seen if self.text(p) is not None]

    def trigger_texts(self, path: Path, source: str, entry: Path | None = None) -> list[str]:
        """The project code that ``source`` can reach through its imports, as rule triggers read it.

        Only what is imported is followed: ``from models import Net`` reads the lines that define
        ``Net`` in ``models.py``, then the names those lines use that ``models.py`` binds (its helpers,
        its own imports, followed the same way); ``import models`` reads all of ``models.py``. A model
        zoo whose files import a few layers from a large package is not triggered by the rest of it."""
        path = real(path)
        out: list[str] = []
        seen: set[tuple[Path, tuple[str, ...] | None]] = set()
        todo: list[tuple[Path, str, int]] = [(path, source, 0)]
        while todo and len(seen) < MAX_CLOSURE * 4:
            cur, text, depth = todo.pop()
            if depth >= MAX_CLOSURE_DEPTH + 2:
                continue
            for module, level, names in self._scan(cur, text):
                for target, scan in self._import_targets(cur, module, level, names, entry):
                    named = target.stem in names or (target.name == "__init__.py" and target.parent.name in names)
                    wanted = tuple(sorted(names)) if names and target.name != "__init__.py" and not named else None
                    if scan is not None:
                        wanted = ("<init>", *sorted(names))  # the lines of a package __init__ binding them
                    if (target, wanted) in seen or target == path:
                        continue
                    seen.add((target, wanted))
                    if scan is None:
                        piece = self._used_text(target, wanted) if wanted else self._code(target)
                    else:
                        piece = scan
                    if piece:
                        out.append(piece)
                        todo.append((target, piece, depth + 1))
        # a registry the code reaches holds the definitions its decorator registered elsewhere
        for dep in {path, *(t for t, _ in seen)}:
            for file, name, _ in self.registrations_from(dep):
                piece = self._used_text(file, (name,))
                if piece:
                    out.append(piece)
        return out

    # -- registries ----------------------------------------------------------------------------------
    def registered(self, path: Path, dict_name: str) -> list[tuple[Path, str, str | None]]:
        """The definitions a decorator of ``path`` stores into its module-level dict ``dict_name``
        (``@register_model("cnn") class SmallCNN``), wherever in the project they are: ``(file, name,
        key)`` (``key``: the decorator's string argument, when it has one). Empty for a registry of more
        than :data:`MAX_REGISTERED` definitions: the registry is then unknown, and none of them is read."""
        path = real(path)
        key = (path, dict_name)
        found = self._registered.get(key)
        if found is not None:
            return found
        fillers = set(self.index(path).fillers.get(dict_name, ()))
        found = []
        if fillers:
            pattern = re.compile(r"@[ \t]*(?:[\w.]+\.)?(?:" + "|".join(map(re.escape, sorted(fillers))) + r")\b")
            for file in self._python_files():
                text = self.text(file)
                if text is not None and pattern.search(text):
                    found += [(file, name, key) for dec, name, key in self.index(file).decorated if dec in fillers]
                    if len(found) > MAX_REGISTERED:
                        found = []
                        break
        self._registered[key] = found
        return found

    def registrations_from(self, path: Path) -> list[tuple[Path, str, str | None]]:
        """:meth:`registered` for every registry dict of ``path`` (a module without an empty dict at
        top level has none: its text says so without parsing it)."""
        out: list[tuple[Path, str, str | None]] = []
        text = self.text(path)
        if text is None or not _EMPTY_DICT.search(text):
            return out
        for dict_name in self.index(path).fillers:
            out += self.registered(path, dict_name)
        return out

    def _python_files(self) -> list[Path]:
        """The project's Python files (not in hidden directories or environments), listed once per run."""
        if self._files is None:
            files: list[Path] = []
            stack = [self.root]
            while stack and len(files) < MAX_REGISTRY_FILES:
                d = stack.pop()
                try:
                    entries = sorted(d.iterdir())
                except OSError:
                    continue
                for e in entries:
                    if e.is_dir():
                        if not e.name.startswith(".") and e.name not in _NOT_PROJECT_DIRS:
                            stack.append(e)
                    elif e.suffix == ".py":
                        files.append(real(e))
            self._files = files
        return self._files

    def _code(self, target: Path) -> str | None:
        text = self.text(target)
        if text is None:
            return None
        cached = self._used.get((target, None))
        if cached is None or cached[0] is not text:
            cached = self._used[(target, None)] = (text, code_text(text))
        return cached[1]

    def _used_text(self, target: Path, names: tuple[str, ...]) -> str | None:
        """The top-level statements of ``target`` that bind ``names``, with those of every name they
        use that ``target`` binds too, in source order (memoised per run while the file is unchanged)."""
        text = self.text(target)
        if text is None:
            return None
        key = (target, names)
        cached = self._used.get(key)
        if cached is not None and cached[0] is text:
            return cached[1]
        index = self.index(target)
        lines = text.splitlines(keepends=True)
        spans: set[tuple[int, int, int]] = set()
        want, got = list(names), set()
        while want:
            name = want.pop()
            if name in got:
                continue
            got.add(name)
            for span in index.bindings.get(name, ()):
                if span not in spans:
                    spans.add(span)
                    want.extend(w for w in _WORD.findall("".join(lines[span[0] - 1 : span[1]])) if w in index.bindings)
        pieces = ["".join(lines[a - 1 : b]) for a, b, _ in sorted(spans)]
        if index.star and not set(names) <= set(index.bindings):
            pieces += [line for line in lines if "import *" in line]
        found = code_text("".join(pieces))
        self._used[key] = (text, found)
        return found

    def _scan(self, path: Path, text: str) -> list[tuple[str, int, list[str]]]:
        """:func:`scan_imports` of ``text``, remembered per file while its text is the same."""
        cached = self._scans.get(path)
        if cached is None or cached[0] is not text:
            cached = self._scans[path] = (text, scan_imports(text))
        return cached[1]

    def _import_targets(
        self, importer: Path, module: str, level: int, names: list[str], entry: Path | None
    ) -> list[tuple[Path, str | None]]:
        """Files one import statement reads, each with the text to scan further (None: all of it)."""
        key = (importer.parent, entry.parent if entry is not None else None, module, level, tuple(names))
        found = self._targets.get(key)
        if found is None:
            found = self._targets[key] = self._compute_targets(importer, module, level, names, entry)
        return found

    def _compute_targets(
        self, importer: Path, module: str, level: int, names: list[str], entry: Path | None
    ) -> list[tuple[Path, str | None]]:
        out: list[tuple[Path, str | None]] = []
        target = self.resolve(importer, module, level, entry) if (module or not level) else None
        if target is None and level and not module:  # `from . import a, b`
            base = importer.parent
            for _ in range(level - 1):
                base = base.parent
            target = self._package(base)
            if target is None:
                return [(real(t), None) for n in names if (t := self._find(base, [n])) is not None]
        if target is None:
            return out
        target = real(target)
        if target.name != "__init__.py" or not names:
            return [(target, None)]
        text = self.text(target) or ""
        lines = text.splitlines(keepends=True)
        index = self.index(target)
        for n in names:
            sub = self._find(target.parent, [n])
            if sub is not None:
                out.append((real(sub), None))
        # the lines binding the names, with those of what they use (`build_model` reading a `MODELS`
        # registry whose classes `from .mlp import MLP` brings in)
        binding_text = [self._used_text(target, tuple(sorted(names))) or ""]
        if index.star:
            binding_text += [line for line in lines if "import *" in line]
        out.insert(0, (target, "".join(binding_text)))
        return out


def _nth_statement(module: Any, ordinal: int) -> Any:
    """The top-level LibCST statement holding the ``ordinal``-th ``ast`` statement (a line of several
    ``;``-separated statements is one LibCST statement)."""
    import libcst as cst

    count = 0
    for stmt in module.body:
        width = len(stmt.body) if isinstance(stmt, cst.SimpleStatementLine) else 1
        if ordinal < count + width:
            return stmt
        count += width
    return None
