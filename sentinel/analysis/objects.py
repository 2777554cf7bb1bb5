"""What the interpreter knows about the analysed program's objects and control state.

Definitions (:class:`FuncInfo`, :class:`ClassInfo`, instances), function activations (:class:`Ctx`) and
the abstract state at a program point (:class:`State`: bindings, each model's train/eval mode, the
grad mode), with the join of states where control flow merges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import libcst as cst

from sentinel.analysis import torchapi as api
from sentinel.analysis.values import (
    CLASS,
    QUAL,
    Alt,
    V,
    join,
    join_grad,
    join_modes,
)

MAX_DEPTH = 8
#: Analysis steps (one per statement and per expression evaluated) allowed per file: a fixed
#: allowance plus so many per line of the linted file. Reading a definition from another file is
#: charged like its parse (``IMPORT_TICKS_PER_LINE`` per line) and, while the module's own flow runs
#: (top-level statements, ``main()``), adds ``IMPORT_BUDGET_PER_LINE`` per line: a 1,500-line training
#: script that calls into 10,000 lines of its library needs that room. Functions and methods no call
#: reached are analysed afterwards within ``BUDGET_BASE + BUDGET_PER_LINE * lines`` more, and what
#: they import adds at most ``ENTRY_IMPORT_GROWTH`` in all: a launcher whose ``Trainer.__call__`` runs
#: another file's ``main()`` has room, and a model zoo file (hundreds of methods, each building the
#: model from library layers) stays about proportional to its own size. Real training scripts need
#: less than they get (public corpus: pytorch/examples' imagenet 7,800 steps for 530 lines; timm's
#: train.py 133,000 with its library). A step costs about
#: a ninth of a line's LibCST parse. What the budget cuts short is dropped (``_bounded``): a finding is
#: never made from it. On 702 triggered files of 20 public repositories, 8 ran out (22 with the
#: earlier 8,000 + 12 per line, among them ordinary 400-line training scripts).
BUDGET_BASE = 12_000
BUDGET_PER_LINE = 16
IMPORT_TICKS_PER_LINE = 8
IMPORT_BUDGET_PER_LINE = 30
ENTRY_IMPORT_GROWTH = 25_000
TRAIN = frozenset({"train"})
EVAL = frozenset({"eval"})


class _Budget(Exception):
    pass


class Ident:
    """Identity of an object the analysed code creates; ``created`` orders it among the events."""

    __slots__ = ("created",)

    def __init__(self, created: int) -> None:
        self.created = created


@dataclass(eq=False, repr=False)
class FuncInfo:
    node: cst.FunctionDef
    cls: ClassInfo | None = None
    closure: dict | None = None
    grad: str | None = None  # "off" when decorated with @torch.no_grad()
    #: a method whose project decorator puts the model in eval mode for the call (`@eval_decorator`)
    evaluates: bool = False
    #: a test decorated with ``@mock.patch(...)``: it runs parts of the program as fakes
    mocked: bool = False
    kind: str = "function"  # function | staticmethod | classmethod | property
    globals: Any = None  # the State of the module defining it: its body looks names up there
    wrapper: Any = None  # the FuncInfo a project decorator replaced it with (analysed in its place)
    _code: str | None = None

    @property
    def name(self) -> str:
        return self.node.name.value

    @property
    def code(self) -> str:
        """The function's text as LibCST prints it, computed once (printing a tree is not cheap)."""
        if self._code is None:
            self._code = cst.Module([]).code_for_node(self.node)
        return self._code


@dataclass(eq=False, repr=False)
class ClassInfo:
    node: cst.ClassDef
    bases: list[V]
    methods: dict[str, FuncInfo] = field(default_factory=dict)
    class_attrs: dict[str, V] = field(default_factory=dict)
    _forward_probs: Any = None
    uses_mode: bool = False  # forward reads self.training or calls F.dropout / F.batch_norm
    calls_loss: bool = False  # forward computes a loss (a criterion module, a model returning its loss)
    _static_instance: Any = None

    @property
    def name(self) -> str:
        return self.node.name.value

    def local_bases(self) -> list[ClassInfo]:
        return [b.ref for b in self.bases if b.kind == CLASS and isinstance(b.ref, ClassInfo)]

    def mro(self) -> list[ClassInfo]:
        out, todo, seen = [], [self], set()
        while todo:
            c = todo.pop(0)
            if id(c) in seen:
                continue
            seen.add(id(c))
            out.append(c)
            todo.extend(c.local_bases())
        return out

    def method(self, name: str) -> FuncInfo | None:
        for c in self.mro():
            if name in c.methods:
                return c.methods[name]
        return None

    def _qual_bases(self) -> list[str]:
        out = []
        for c in self.mro():
            out.extend(b.const for b in c.bases if b.kind == QUAL)
        return out

    @property
    def is_module(self) -> bool:
        for q in self._qual_bases():
            name = api.last(q)
            if (
                q.startswith("torch.nn.")
                or name in ("Module", "LightningModule")
                or name.endswith(("Module", "PreTrainedModel"))
            ):
                return True
        return False

    @property
    def is_lightning(self) -> bool:
        return any(api.last(q) == "LightningModule" for q in self._qual_bases())


@dataclass(eq=False, repr=False)
class Instance:
    cls: ClassInfo
    attrs: dict[str, V] = field(default_factory=dict)
    created: int = -1


@dataclass
class Ctx:
    """One function activation (or the module body)."""

    id: int
    name: str
    func: FuncInfo | None
    parent: Ctx | None
    depth: int
    model_method: bool = False  # inside a method of an nn.Module subclass: calls are sub-module calls
    lightning_eval: bool = False
    entry: bool = False  # analysed standalone: the caller is unknown
    summary: bool = False  # inside a class's forward run for its summary (what it returns), not a real call
    returns: list[V] = field(default_factory=list)
    yielded: list[V] = field(default_factory=list)  # a generator's values, one per `yield`
    self_value: V | None = None
    closure: dict | None = None
    call_node: Any = None  # the call (and its statement) in the caller that started this activation
    call_stmt: Any = None
    module_level: bool = False  # a module body: functions defined here take no closure
    cond_base: int = 0  # how many conditions were open where this activation was called

    @property
    def stack(self) -> tuple[int, ...]:
        """Ids of the activations on the call stack, outermost first, ending with this one."""
        out, c = [], self
        while c is not None:
            out.append(c.id)
            c = c.parent
        return tuple(reversed(out))

    def names(self) -> list[str]:
        out, c = [], self
        while c is not None:
            out.append(c.name)
            c = c.parent
        return out


class State:
    __slots__ = ("env", "modes", "grad", "returned", "jumped", "default_mode", "parents", "loader", "stars", "unit")

    def __init__(self, default_mode: frozenset | None = None, parents: dict | None = None) -> None:
        self.env: dict[str, V] = {}
        self.modes: dict[Any, frozenset | None] = {}
        self.grad: str | None = "on"
        self.returned = False
        self.jumped = False
        # the mode of a model nothing has switched yet: "train" for models this code built, unknown
        # when the caller is unknown (a function analysed on its own)
        self.default_mode = default_mode
        # submodule -> the model it is an attribute of: `model.eval()` switches `model.backbone` too
        self.parents: dict = parents if parents is not None else {}
        # module globals only: binds a missing name lazily (an imported project module), the modules
        # `from X import *` brought in, and the project module (imports.Unit) these globals belong to
        self.loader: Any = None
        self.stars: list = []
        self.unit: Any = None

    def mode_of(self, ident: Any) -> frozenset | None:
        if isinstance(ident, Alt):
            out: frozenset | None = frozenset()
            for member in ident:
                out = join_modes(out, self.mode_of(member))
            return out
        seen = 0
        node = ident
        while node is not None and seen < 16:
            if node in self.modes:
                return self.modes[node]
            node = self.parents.get(node)
            seen += 1
        if ident is None or isinstance(ident, tuple):
            return None
        return self.default_mode

    def set_mode(self, ident: Any, mode: frozenset | None) -> None:
        """``module.train(mode)`` sets the module and, recursively, every submodule."""
        self.modes[ident] = mode
        for child, parent in self.parents.items():
            if parent is ident:
                self._clear_below(child)

    def _clear_below(self, ident: Any) -> None:
        self.modes.pop(ident, None)
        for child, parent in self.parents.items():
            if parent is ident:
                self._clear_below(child)

    def copy(self) -> State:
        s = State(self.default_mode, self.parents)
        s.env = dict(self.env)
        s.modes = dict(self.modes)
        s.grad = self.grad
        return s

    def signature(self) -> tuple:
        return (
            tuple(sorted((k, v.kind, v.graph, v.probs is not None) for k, v in self.env.items())),
            tuple(sorted((id(k), v) for k, v in self.modes.items() if v is not None)),
            self.grad,
        )


def join_states(states: list[State]) -> State:
    live = [s for s in states if not s.returned]
    if not live:
        s = states[0].copy()
        s.returned = True
        return s
    if len(live) == 1:
        s = live[0].copy()
        return s
    out = State(live[0].default_mode, live[0].parents)
    env = out.env = dict(live[0].env)
    for s in live[1:]:
        for k, v in s.env.items():
            cur = env.get(k)
            if cur is None:
                env[k] = v  # bound on one path only: keep what that path knows
            elif cur is not v:
                env[k] = join(cur, v)
    mkeys = set().union(*(s.modes.keys() for s in live))
    for k in mkeys:
        m: Any = "unset"
        for s in live:
            cur = s.mode_of(k)
            m = cur if m == "unset" else join_modes(m, cur)
        out.modes[k] = m
    g = live[0].grad
    for s in live[1:]:
        g = join_grad(g, s.grad)
    out.grad = g
    return out
