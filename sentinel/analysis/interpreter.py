"""A small abstract interpreter for training code: the one traversal every rule shares.

It executes a module's statements over :class:`~sentinel.analysis.values.V` values instead of real
ones: it resolves import aliases, learns which names hold models, optimizers, losses and tensors,
tracks each model's train/eval mode and the grad mode (``no_grad``, ``set_grad_enabled(phase ==
"train")``), partially evaluates conditions on constants (phase loops, ``train=False`` arguments),
unrolls loops over literal lists, runs loop bodies until their state is stable (two passes), and
*inlines* calls to functions, methods and classes defined in the same file so every call site gets
its own context. What it sees is recorded in :class:`~sentinel.analysis.facts.Facts`.

Functions no call in the file reaches are analysed on their own afterwards, with parameters typed by
their names (``model``, ``optimizer``, ``criterion``...) and unknown modes, so nothing that depends on
the caller is claimed about them.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path
from typing import Any

import libcst as cst

from sentinel.analysis.calls import CallsMixin
from sentinel.analysis.expressions import ExpressionsMixin
from sentinel.analysis.facts import (
    Facts,
)
from sentinel.analysis.idioms import IdiomsMixin
from sentinel.analysis.imports import ImportsMixin
from sentinel.analysis.inlining import InliningMixin
from sentinel.analysis.methods import MethodsMixin
from sentinel.analysis.objects import (
    BUDGET_BASE,
    BUDGET_PER_LINE,
    ENTRY_IMPORT_GROWTH,
    TRAIN,
    ClassInfo,
    Ctx,
    FuncInfo,
    Ident,
    Instance,
    State,
    _Budget,
)
from sentinel.analysis.project import Project
from sentinel.analysis.shapes import ShapesMixin
from sentinel.analysis.statements import StatementsMixin
from sentinel.analysis.syntax import _CALLED, _dotted
from sentinel.analysis.values import (
    CONST,
    INSTANCE,
    MODEL,
    Alt,
    V,
)

_SHAPE_STATEMENTS = 4
_SHAPE_CHARS = 600
_PYTEST_FILE = re.compile(r"(test_\w*|\w*_test|conftest)\.py$")
_PYTEST_FUNC = re.compile(r"_?test", re.IGNORECASE)
_TEST_WORD = re.compile(r"test", re.IGNORECASE)
#: registered factories of one decorator analysed on their own per file (the rest are configurations)
_ZOO_FACTORIES = 3
#: string and number literals (prefixed strings included)
_LITERAL = re.compile(r"""[rbfuRBFU]{0,2}(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")|\b\d[\d_.eE+-]*\b""")


class Interpreter(
    ImportsMixin,
    StatementsMixin,
    ExpressionsMixin,
    CallsMixin,
    MethodsMixin,
    InliningMixin,
    IdiomsMixin,
    ShapesMixin,
):
    """Run the abstract interpretation of one module and return its :class:`Facts`."""

    def __init__(
        self,
        module: cst.Module,
        source: str = "",
        *,
        budget: int = 0,
        path: Path | None = None,
        project: Project | None = None,
        model_methods: bool = True,
    ) -> None:
        self._init_imports(project, path)
        #: analyse the methods of ``nn.Module`` classes no call reached as entries of their own
        self.model_methods = model_methods
        self._pytest_module = path is not None and bool(_PYTEST_FILE.match(Path(path).name))
        self.module = module
        self.source = source
        self.facts = Facts()
        self.seq = itertools.count()
        self.ids = itertools.count(1)
        self.frame_stack: list[int] = []
        # keys of the non-constant conditions guarding the current point
        self.cond_stack: list[str] = []
        # one id per pass over each open loop's body: tells iterations of the same loop apart
        self.pass_stack: list[int] = []
        # state captured at the `yield` of a local @contextmanager
        self._yields: list[Any] = []
        self._subidents: dict[tuple, Ident] = {}
        self.fresh_stack: list[set[str]] = []
        self.stmt: cst.CSTNode = module
        self.active: list[FuncInfo] = []
        self.executed: set[int] = set()
        self.functions: list[FuncInfo] = []
        self.classes: list[ClassInfo] = []
        self.module_state: State | None = None
        self.n_lines = n_lines = max(1, source.count("\n"))
        self.budget = BUDGET_BASE + BUDGET_PER_LINE * n_lines if budget == 0 else budget
        #: what reading definitions from other files may still add to the budget (see objects.py)
        self.growth_left = 1 << 62 if budget == 0 else 0
        self.exhausted = False  # the budget ran out: what was cut short was dropped, not guessed
        self._global_state: State | None = None
        self.entry_state: State | None = None
        self.steps = 0
        self.module_calls = 0  # calls of a module (a forward), anywhere: did a method run any layer?
        #: per running plain function: how often its own code read a hand-made model's weights
        self.leaf_reads: list[int] = []
        #: `nn.ModuleList()` / `nn.ModuleDict()` built empty: whether what was appended holds dropout/batch norm
        self.containers: dict[Ident, bool | None] = {}
        #: models made by `copy.deepcopy`: a snapshot of one made in the same iteration is a copy, not an alias
        self.copies: set[Ident] = set()
        self._functional_models: dict[int, Ident] = {}
        self.tracked_module_calls = 0  # ... with gradient tracking possibly on
        self.ctx_ids = itertools.count(1)

    # =============================================================================================
    # driver
    # =============================================================================================
    def run(self) -> Facts:
        state = State(TRAIN, self.facts.parent_of)
        state.env["__name__"] = V(CONST, const="__main__")
        self._global_state = self.entry_state = state
        if self.project is not None and self.path is not None:
            state.loader = self._load_deferred  # `from models import Net`: read when `Net` is first used
        ctx = Ctx(id=0, name="<module>", func=None, parent=None, depth=0, module_level=True)
        self.module_ctx = ctx
        for stmt in self.module.body:
            if state.returned:
                break
            if not self._bounded(lambda s=stmt: self.exec_block([s], state, ctx)):
                break
        self.module_state = state
        # functions and methods no call reached: analyse them on their own, within what the file's own
        # size allows (a model zoo's hundreds of methods do not get the room of a training script's main)
        self.growth_left = min(self.growth_left, ENTRY_IMPORT_GROWTH)
        self.budget = min(self.budget, self.steps + BUDGET_BASE + BUDGET_PER_LINE * self.n_lines)
        called = self._called_names()
        pending = [f for f in self.functions if id(f.node) not in self.executed and self._entry_wanted(f)]
        if not self.model_methods:
            builders = self._zoo_builders(pending)
            pending = [f for f in pending if f.name not in builders or f.cls is not None]
        pending.sort(key=lambda f: (f.name in called, 0))
        shapes: set[str] = set()
        registered: dict[str, int] = {}
        for info in pending:
            if self.exhausted:
                break
            if id(info.node) in self.executed:
                continue
            shape = self._entry_shape(info)
            if shape is not None:
                if shape in shapes:
                    continue  # a near-copy of an entry already analysed (a model registry's factories)
                shapes.add(shape)
            zoo = _registering_decorator(info)
            if zoo is not None:
                registered[zoo] = registered.get(zoo, 0) + 1
                if registered[zoo] > _ZOO_FACTORIES or not self.model_methods:
                    # `@register_model def resnet50(...)`: one more configuration of the same builders;
                    # and building a model is model code, which no enabled rule then reads
                    continue
            entry = info.wrapper if info.wrapper is not None else info  # called through its decorator
            self._bounded(lambda i=entry: self.run_entry(i, state))
        return self.facts

    def _bounded(self, work) -> bool:
        """Run ``work``; if the budget runs out inside it, drop every fact it recorded and say so.

        A half-analysed statement could make a rule believe something is *missing* (a reset, an
        ``eval()``) that the rest of it would have shown: cut-short work is unknown, never evidence.
        """
        mark = self.facts.checkpoint()
        saved_globals = self._global_state
        try:
            work()
            return True
        except _Budget:
            self.exhausted = True
            self.facts.rollback(mark)
            self._global_state = saved_globals
            self.frame_stack, self.cond_stack, self.pass_stack, self.fresh_stack = [], [], [], []
            self.active.clear()
            return False

    def _zoo_builders(self, pending: list[FuncInfo]) -> set[str]:
        """The top-level functions only a model zoo's registered factories call (``_create_resnet``):
        like the factories, they build a model, which is model code."""
        factories = [f for f in pending if _registering_decorator(f) is not None]
        if not factories:
            return set()
        inside: Counter[str] = Counter()
        for f in factories:
            inside.update(_CALLED.findall(self.module.code_for_node(f.node.body)))
        everywhere = Counter(_CALLED.findall(self.source))
        return {name for name, n in inside.items() if everywhere[name] == n}

    def _entry_wanted(self, info: FuncInfo) -> bool:
        """Is ``info`` worth analysing on its own? Not a model's own method (run as the model's code, with
        :attr:`Ctx.model_method`) when no enabled rule can fire there. Not a test that runs with parts
        of the program replaced by fakes (``@mock.patch(...)``): what it drives is not what trains."""
        if info.mocked:
            return False
        return self.model_methods or info.cls is None or not info.cls.is_module or info.cls.is_lightning

    def _entry_shape(self, info: FuncInfo) -> str | None:
        """The code of a short function with its literals and own name masked, or None.

        Model zoos define dozens of factories that differ only in a name or a number
        (``def resnet50(pretrained=False, **kw): return _create("resnet50", pretrained, **kw)``); each,
        analysed on its own, builds the same model again. They are analysed once per shape: what one
        finds, the others would find on the same lines."""
        body = info.node.body
        if info.cls is not None or not isinstance(body, cst.IndentedBlock) or len(body.body) > _SHAPE_STATEMENTS:
            return None
        code = self.module.code_for_node(info.node.with_changes(name=cst.Name("_"), decorators=()))
        if len(code) > _SHAPE_CHARS:
            return None
        return _LITERAL.sub("0", code)

    def _called_names(self) -> set[str]:
        return set(_CALLED.findall(self.source))

    def run_entry(self, info: FuncInfo, module_state: State) -> None:
        state = State(None, self.facts.parent_of)
        state.grad = None
        ctx = Ctx(
            id=next(self.ctx_ids),
            name=info.name,
            func=info,
            parent=None,
            depth=1,
            entry=True,
            closure=info.closure,
        )
        self._global_state = info.globals if info.globals is not None else module_state
        self_value = None
        if info.cls is not None and info.kind not in ("staticmethod",):
            self_value = self._static_self(info.cls)
        ctx.model_method = bool(info.cls is not None and info.cls.is_module and not info.cls.is_lightning)
        if (
            info.cls is not None
            and info.cls.is_lightning
            and info.name.startswith(("validation_step", "test_step", "predict_step", "on_validation", "on_test"))
        ):
            ctx.lightning_eval = True
        self._bind_params(info, ctx, state, args=[], kwargs={}, self_value=self_value, unknown_callers=True)
        if info.grad is not None:
            state.grad = info.grad
        self.executed.add(id(info.node))
        self.active.append(info)
        try:
            self.exec_body(info.node.body, state, ctx)
        finally:
            self.active.pop()

    def _static_self(self, cls: ClassInfo) -> V:
        if cls._static_instance is None:
            inst = Instance(cls)
            value = V(MODEL if cls.is_module else INSTANCE, ident=inst, ref=inst)
            cls._static_instance = value
            init = cls.method("__init__")
            if init is not None:
                st = State(None, self.facts.parent_of)
                st.grad = None
                ctx = Ctx(
                    id=next(self.ctx_ids),
                    name="__init__",
                    func=init,
                    parent=None,
                    depth=1,
                    entry=True,
                    model_method=cls.is_module,
                )
                self._bind_params(init, ctx, st, args=[], kwargs={}, self_value=value, unknown_callers=True)
                saved_globals = self._global_state
                if init.globals is not None:
                    self._global_state = init.globals
                self.active.append(init)
                try:
                    self.exec_body(init.node.body, st, ctx)
                finally:
                    self.active.pop()
                    self._global_state = saved_globals
        return cls._static_instance

    # =============================================================================================
    # events
    # =============================================================================================
    def _ev(self, cls, node, ctx: Ctx, **kw):
        if ctx.id not in self.facts.functions:
            self.facts.functions[ctx.id] = ctx.func.node if ctx.func is not None else None
        names, c = self.facts.ctx_names, ctx
        while c is not None and c.id not in names:  # what each activation on an event's stack is called
            # a unittest case's `test_step` / `test_train_epoch` tests code; it evaluates nothing
            names[c.id] = self._activation_name(c)
            self.facts.functions.setdefault(c.id, c.func.node if c.func is not None else None)
            c = c.parent
        return cls(
            seq=next(self.seq),
            node=node,
            stmt=self.stmt,
            frames=tuple(self.frame_stack),
            ctx=ctx.id,
            conds=tuple(self.cond_stack),
            stack=ctx.stack,
            passes=tuple(self.pass_stack),
            **kw,
        )

    def _activation_name(self, c: Ctx) -> str:
        """What an activation is called for the rules' reading of names. A unit test (a ``TestCase``
        method, or ``test_*`` / ``_test_*`` functions of a pytest module) tests code: "test" in its name
        says nothing of test data."""
        if _test_case(c.func):
            return f"{c.func.cls.name}.{c.name}"
        if c.func is not None and c.func.cls is None and self._pytest_module and _PYTEST_FUNC.match(c.name):
            return _TEST_WORD.sub("unittest", c.name)
        return c.name

    def _part_of(self, child: Any, parent: Any) -> None:
        """Record that ``child`` is a submodule of ``parent`` (its tensors are the parent's too)."""
        if child is not None and parent is not None and child is not parent:
            roots = self.facts.root_of
            roots.setdefault(child, roots.get(parent, parent))
            if isinstance(child, (tuple, Alt)):
                return
            first = self.facts.parent_of.setdefault(child, parent)
            if first is not parent:  # adopted by another model too (`self.features = backbone.features`)
                others = self.facts.other_parents.setdefault(child, [])
                if parent not in others:
                    others.append(parent)

    def _where(self, node: cst.CSTNode) -> cst.CSTNode:
        """Remember which statement ``node`` is in, so a message can point at it later."""
        self.facts.stmt_of[id(node)] = self.stmt
        return node

    def _tick(self) -> None:
        self.steps += 1
        if self.steps > self.budget:
            raise _Budget


def _registering_decorator(info: FuncInfo) -> str | None:
    """The registering decorator of a top-level function (``@register_model``, ``@MODELS.register()``),
    or None: a model zoo files hundreds of factories with it, each one more configuration."""
    if info.cls is not None:
        return None
    for dec in info.node.decorators:
        target = dec.decorator.func if isinstance(dec.decorator, cst.Call) else dec.decorator
        name = _dotted(target)
        if name is not None and "regist" in name.lower():
            return name
    return None


def analyze(module: cst.Module, source: str = "", *, path: Path | None = None, project: Project | None = None) -> Facts:
    """Run the shared analysis on a parsed module (with the project it belongs to, when given)."""
    return Interpreter(module, source, path=path, project=project).run()


def _test_case(func: FuncInfo | None) -> bool:
    """A method of a ``unittest.TestCase`` (or of a pytest-style ``Test*`` class)."""
    if func is None or func.cls is None:
        return False
    cls = func.cls
    return cls.name.startswith("Test") or any(q.rsplit(".", 1)[-1] == "TestCase" for q in cls._qual_bases())
