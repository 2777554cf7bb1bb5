"""Imports: the analysed file together with the project modules it imports.

``import models as M``, ``from models.resnet import ResNet``, ``from .layers import Block``, names
re-exported by a package's ``__init__`` and ``from utils import *`` bind to what the project file
defines, exactly as if it were defined in the importing file: a class is a :class:`ClassInfo` whose
``forward`` is inlined at every call, a function a :class:`FuncInfo` inlined at every call site.

Imported modules are not interpreted as a whole. A :class:`Unit` stands for one project module; its
top-level names are bound lazily: the first lookup of a name parses, with LibCST, only the top-level
statement(s) that bind it (located by the module's :class:`~sentinel.analysis.project.ModuleIndex`)
and executes them in that module's own global scope (``__name__`` is the module's name, so a
``__main__`` block never runs). A definition is parsed on its own, and its locations are offset by
the lines before it, so findings inside an imported file are located at that file's lines.

Anything that does not resolve to a project file keeps its qualified name (``torch.nn.Linear``),
as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libcst as cst

from sentinel.analysis import torchapi as api
from sentinel.analysis.idioms import Registry
from sentinel.analysis.objects import IMPORT_BUDGET_PER_LINE, IMPORT_TICKS_PER_LINE, Ctx, State
from sentinel.analysis.project import ModuleIndex, Project, real
from sentinel.analysis.syntax import _dotted
from sentinel.analysis.values import CONST, MODULE, NOCONST, QUAL, V

#: project modules one analysis may load (bounded, like everything else in the interpreter)
MAX_UNITS = 64


@dataclass(eq=False)
class Unit:
    """One imported project module as the interpreter sees it."""

    path: Path
    name: str
    index: ModuleIndex
    source: str
    state: State
    ctx: Ctx
    done: set[tuple] = field(default_factory=set)  # spans executed, (*span, name) for one name of an import
    loading: set[str] = field(default_factory=set)  # names being bound now (import cycles)
    # (module, its source, lines of the file before it) of every definition parsed from the file
    snippets: list[tuple[cst.Module, str, int]] = field(default_factory=list)
    _lines: list[str] | None = None

    @property
    def lines(self) -> list[str]:
        return self.source.splitlines(keepends=True)

    def source_line(self, number: int) -> str:
        """Line ``number`` (1-based) of the module's text."""
        if self._lines is None:
            self._lines = self.source.splitlines()
        return self._lines[number - 1] if 0 < number <= len(self._lines) else ""


class ImportsMixin:
    """Binds imports to project modules; part of :class:`~sentinel.analysis.interpreter.Interpreter`."""

    project: Project | None
    path: Path | None

    def _init_imports(self, project: Project | None, path: Path | None) -> None:
        self.project = project
        self.path = real(path) if path is not None else None
        self.units: dict[Path, Unit] = {}
        #: the linted module's ``from X import name`` of project modules, bound when first looked up:
        #: a model zoo's file imports dozens of layers from a package and uses a few
        self._deferred: dict[str, tuple[Unit, str, int, str]] = {}
        #: while a name of an imported module is being bound: the only name its import statement binds
        self._only_binding: str | None = None

    def _load_deferred(self, bound: str) -> None:
        """Bind ``bound`` in the linted module's globals from the import that named it (the global
        state's loader; looked up again after a branch join forgot it, it is the same value)."""
        found = self._deferred.get(bound)
        if found is None or self.entry_state is None:
            return
        unit, mod, level, name = found
        value = self._from_unit(unit, mod, level, name)
        self.entry_state.env[bound] = value if value is not None else _unseen(mod, level, name)

    # -- statements ------------------------------------------------------------------------------
    def exec_import(self, node: cst.Import, state: State) -> None:
        for alias in node.names:
            full = _dotted(alias.name) or ""
            if alias.asname is not None:
                bound = alias.asname.name.value
                unit = self._unit_for(full, 0)
                state.env[bound] = self._module_value(unit) if unit else V(QUAL, const=api.normalize(full))
            else:
                top = full.split(".")[0]
                unit = self._unit_for(top, 0)
                state.env[top] = self._module_value(unit) if unit else V(QUAL, const=top)

    def exec_import_from(self, node: cst.ImportFrom, state: State) -> None:
        level = len(node.relative)
        mod = _dotted(node.module) if node.module is not None else ""
        mod = mod or ""
        if isinstance(node.names, cst.ImportStar):
            unit = self._unit_for(mod, level)
            if unit is not None:
                stars = getattr(state, "stars", None)
                if stars is not None:
                    stars.append(unit)
            return
        unit = self._unit_for(mod, level) if (mod or level) else None
        lazy = unit is not None and state is self.entry_state and state.loader is not None
        for alias in node.names:
            name = alias.name.value if isinstance(alias.name, cst.Name) else _dotted(alias.name) or ""
            bound = alias.asname.name.value if alias.asname is not None else name
            if lazy:
                self._deferred[bound] = (unit, mod, level, name)
                state.env.pop(bound, None)
                continue
            if self._only_binding is not None and bound != self._only_binding and state is not self.entry_state:
                continue  # another name of the statement an imported module's lookup is reading
            value = self._from_unit(unit, mod, level, name) if (unit is not None or level) else None
            state.env[bound] = value if value is not None else _unseen(mod, level, name)

    # -- units -----------------------------------------------------------------------------------
    def _current_file(self) -> Path | None:
        gs = self._global_state
        return gs.unit.path if gs is not None and gs.unit is not None else self.path

    def _unit_for(self, module: str, level: int) -> Unit | None:
        if self.project is None or self.path is None:
            return None
        importer = self._current_file()
        if importer is None:
            return None
        if not level and api.normalize(module).split(".", 1)[0] in ("torch", "numpy", "builtins"):
            return None  # the libraries themselves (a project's own `torch_utils` is the project's)
        target = self.project.resolve(importer, module, level, self.path)
        return self._unit(target) if target is not None else None

    def _unit(self, target: Path) -> Unit | None:
        target = real(target)
        unit = self.units.get(target)
        if unit is not None:
            return unit
        if len(self.units) >= MAX_UNITS or target == self.path:
            return None
        text = self.project.text(target) if self.project else None
        index = self.project.index(target) if self.project else None
        if text is None or index is None or not index.ok:
            return None
        try:
            rel = target.relative_to(self.project.root)
            parts = list(rel.with_suffix("").parts)
        except ValueError:  # pragma: no cover - resolve() keeps files inside the root
            parts = [target.stem]
        if parts and parts[-1] == "__init__":
            parts.pop()
        if parts and parts[0] == "src":
            parts.pop(0)
        name = ".".join(parts) or target.parent.name
        state = State(None, self.facts.parent_of)
        state.grad = None
        state.env["__name__"] = V(CONST, const=name)
        ctx = Ctx(id=next(self.ctx_ids), name=f"<module {name}>", func=None, parent=None, depth=1, entry=True)
        ctx.module_level = True
        unit = Unit(target, name, index, text, state, ctx)
        state.loader = lambda key, u=unit: self._load_name(u, key)
        state.unit = unit
        self.units[target] = unit
        return unit

    @staticmethod
    def _module_value(unit: Unit) -> V:
        return V(MODULE, ref=unit, label=unit.name)

    def _from_unit(self, unit: Unit | None, mod: str, level: int, name: str) -> V | None:
        """``from mod import name``: a name the module binds, else a submodule ``mod.name``."""
        if unit is not None:
            value = self.unit_attr(unit, name)
            if value is not None:
                return value
        sub = self._unit_for(f"{mod}.{name}" if mod else name, level)
        return self._module_value(sub) if sub is not None else None

    def unit_attr(self, unit: Unit, name: str) -> V | None:
        """``unit.name``: a top-level binding of the module, else its submodule."""
        value = unit.state.env.get(name)
        if value is None:
            self._load_name(unit, name)
            value = unit.state.env.get(name)
        if value is None and unit.path.name == "__init__.py" and self.project is not None:
            sub = self.project._find(unit.path.parent, [name])
            if sub is not None:
                subunit = self._unit(sub)
                if subunit is not None:
                    value = self._module_value(subunit)
        return value

    def _load_name(self, unit: Unit, name: str) -> None:
        """Bind ``name`` in ``unit`` by executing the top-level statements that bind it."""
        spans = unit.index.bindings.get(name)
        if not spans:
            for mod, level in unit.index.star:
                if name in unit.loading:
                    return
                star = self._unit_for_in(unit, mod, level)
                if star is not None and star is not unit:
                    unit.loading.add(name)
                    try:
                        value = self.unit_attr(star, name)
                    finally:
                        unit.loading.discard(name)
                    if value is not None:
                        unit.state.env[name] = value
                        return
            return
        if name in unit.loading:
            return
        unit.loading.add(name)
        try:
            for span in spans:
                # `from .layers import (A, B, ... Z)`: bind the one name looked up, not all of them
                importing = unit.source_line(span[0]).lstrip().startswith("from ")
                key = (*span, name) if importing else span
                if key in unit.done:
                    continue
                charge = span not in unit.done
                unit.done.add(key)
                saved, self._only_binding = self._only_binding, name if importing else None
                try:
                    self._exec_span(unit, span, charge=charge)
                finally:
                    self._only_binding = saved
                unit.done.add(span)
        finally:
            unit.loading.discard(name)

    def _unit_for_in(self, unit: Unit, module: str, level: int) -> Unit | None:
        saved, self._global_state = self._global_state, unit.state
        try:
            return self._unit_for(module, level)
        finally:
            self._global_state = saved

    def _exec_span(self, unit: Unit, span: tuple[int, int, int], charge: bool = True) -> None:
        found = self.project.definition(unit.path, span) if self.project is not None else None
        if found is None:
            return
        module, text, statements, offset = found
        if not any(m is module for m, _, _ in unit.snippets):
            unit.snippets.append((module, text, offset))
        n = span[1] - span[0] + 1 if charge else 1  # an import statement is read once, whatever it binds
        if self.growth_left > 0:
            grow = min(self.growth_left, IMPORT_BUDGET_PER_LINE * n)
            self.budget += grow
            self.growth_left -= grow
        self.steps += IMPORT_TICKS_PER_LINE * n  # reading it costs about a parse
        self._tick()
        saved = (self.stmt, self.frame_stack, self.cond_stack, self.pass_stack, self._global_state)
        self.frame_stack, self.cond_stack, self.pass_stack = [], [], []
        self._global_state = unit.state
        try:
            self.exec_block(statements, unit.state, unit.ctx)
        finally:
            self.stmt, self.frame_stack, self.cond_stack, self.pass_stack, self._global_state = saved
            unit.state.returned = unit.state.jumped = False

    def registered_values(self, dict_name: str, key: object = NOCONST) -> list[tuple[str | None, V]]:
        """The classes and functions a decorator of the current module stored into its module-level
        dict ``dict_name`` (``@register_model("cnn") class SmallCNN``), wherever they are defined, with
        the key each was filed under when the decorator names it. Given the ``key`` looked up, only the
        definitions filed under it (or under no known key) are read; without one, a registry of more
        than :attr:`Registry.LIMIT` definitions is not read at all (which one runs stays unknown)."""
        current = self._current_file()
        if self.project is None or current is None:
            return []
        entries = self.project.registered(current, dict_name)
        if key is not NOCONST and any(k == key for _, _, k in entries):
            entries = [e for e in entries if e[2] == key or e[2] is None]
        elif len(entries) > Registry.LIMIT:
            return []
        out: list[tuple[str | None, V]] = []
        for file, name, key in entries:
            if file == self.path:
                value = self.entry_state.env.get(name) if self.entry_state is not None else None
            else:
                unit = self._unit(file)
                value = self.unit_attr(unit, name) if unit is not None else None
            if value is None:
                return []  # one of them unknown: so is the registry
            out.append((key, value))
        return out

    # -- where nodes come from ---------------------------------------------------------------------
    def imported_sources(self) -> list[tuple[Path, str, list[tuple[cst.Module, str]]]]:
        """Every project file this analysis read, with the snippets parsed from it."""
        return [(u.path, u.source, u.snippets) for u in self.units.values()]

    def read_paths(self) -> list[Path]:
        return [u.path for u in self.units.values()]


def _unseen(mod: str, level: int, name: str) -> V:
    """An imported name the project does not define: a library's (or a relative import we cannot see)."""
    return V(QUAL, const=name) if level else V(QUAL, const=api.normalize(f"{mod}.{name}"))


def lookup_star(interp: Any, state: State, name: str) -> V | None:
    """A name no binding provides, looked up in the modules ``from X import *`` brought in."""
    for unit in getattr(state, "stars", ()) or ():
        value = interp.unit_attr(unit, name)
        if value is not None:
            return value
    return None
