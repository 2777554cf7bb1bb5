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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import libcst as cst

from sentinel.analysis import torchapi as api
from sentinel.analysis.facts import (
    AccumEvent,
    BackwardEvent,
    Facts,
    ForwardEvent,
    Frame,
    LossCallEvent,
    ResetEvent,
    SnapshotEvent,
    StepEvent,
)
from sentinel.analysis.values import (
    CLASS,
    CONST,
    DICT,
    FUNC,
    GRAD_CTX,
    INSTANCE,
    LIST,
    LOADER,
    LOSS,
    MODEL,
    NOCONST,
    OPTIMIZER,
    PARAMS,
    QUAL,
    SCALER,
    SCHEDULER,
    SOFTMAX,
    STATE_DICT,
    TENSOR,
    TOP,
    TUPLE,
    UNKNOWN,
    Alt,
    V,
    graph_of,
    join,
    join_grad,
    join_modes,
    merge_taints,
)

MAX_DEPTH = 8
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
    kind: str = "function"  # function | staticmethod | classmethod | property

    @property
    def name(self) -> str:
        return self.node.name.value


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
    returns: list[V] = field(default_factory=list)
    self_value: V | None = None
    closure: dict | None = None
    call_node: Any = None  # the call (and its statement) in the caller that started this activation
    call_stmt: Any = None

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
    __slots__ = ("env", "modes", "grad", "returned", "jumped", "default_mode", "parents")

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


def _dotted(node: cst.BaseExpression) -> str | None:
    t = type(node)
    if t is cst.Name:
        return node.value
    if t is cst.Attribute:
        base = _dotted(node.value)
        return f"{base}.{node.attr.value}" if base else None
    return None


def _code(node: cst.CSTNode) -> str:
    return _EMPTY_MODULE.code_for_node(node)


_EMPTY_MODULE = cst.Module([])


def _target_text(node: cst.BaseExpression) -> str:
    d = _dotted(node)
    if d:
        return d
    if isinstance(node, cst.Subscript):
        base = _dotted(node.value)
        return f"{base}[]" if base else "<subscript>"
    return "<expr>"


def _string_value(node: cst.BaseExpression) -> Any:
    if type(node) is cst.SimpleString:
        raw = node.value
        q = raw[-1]
        # the common case, a plain 'text' or "text" without escapes, without ast.literal_eval
        if raw[0] == q and "\\" not in raw and len(raw) >= 2 and not raw.startswith(q * 3):
            return raw[1:-1]
        try:
            return node.evaluated_value
        except Exception:  # pragma: no cover - malformed escapes
            return NOCONST
    if isinstance(node, cst.ConcatenatedString):
        left, right = _string_value(node.left), _string_value(node.right)
        if isinstance(left, str) and isinstance(right, str):
            return left + right
    return NOCONST


class Interpreter:
    """Run the abstract interpretation of one module and return its :class:`Facts`."""

    def __init__(self, module: cst.Module, source: str = "", *, budget: int = 0) -> None:
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
        n_lines = max(1, source.count("\n"))
        self.budget = 4000 + 60 * n_lines if budget == 0 else budget
        self._global_state: State | None = None
        self.steps = 0
        self.ctx_ids = itertools.count(1)

    # =============================================================================================
    # driver
    # =============================================================================================
    def run(self) -> Facts:
        state = State(TRAIN, self.facts.parent_of)
        state.env["__name__"] = V(CONST, const="__main__")
        self._global_state = state
        ctx = Ctx(id=0, name="<module>", func=None, parent=None, depth=0)
        self.module_ctx = ctx
        try:
            self.exec_block(self.module.body, state, ctx)
        except _Budget:
            pass
        self.module_state = state
        # functions and methods no call reached: analyse them on their own
        called = self._called_names()
        pending = [f for f in self.functions if id(f.node) not in self.executed]
        pending.sort(key=lambda f: (f.name in called, 0))
        for info in pending:
            if id(info.node) in self.executed:
                continue
            try:
                self.run_entry(info, state)
            except _Budget:
                break
        return self.facts

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
        self._global_state = module_state
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
                self.active.append(init)
                try:
                    self.exec_body(init.node.body, st, ctx)
                finally:
                    self.active.pop()
        return cls._static_instance

    # =============================================================================================
    # events
    # =============================================================================================
    def _ev(self, cls, node, ctx: Ctx, **kw):
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

    def _part_of(self, child: Any, parent: Any) -> None:
        """Record that ``child`` is a submodule of ``parent`` (its tensors are the parent's too)."""
        if child is not None and parent is not None and child is not parent:
            roots = self.facts.root_of
            roots.setdefault(child, roots.get(parent, parent))
            if not isinstance(child, (tuple, Alt)) and child not in self.facts.parent_of:
                self.facts.parent_of[child] = parent

    def _where(self, node: cst.CSTNode) -> cst.CSTNode:
        """Remember which statement ``node`` is in, so a message can point at it later."""
        self.facts.stmt_of[id(node)] = self.stmt
        return node

    def _tick(self) -> None:
        self.steps += 1
        if self.steps > self.budget:
            raise _Budget

    # =============================================================================================
    # statements
    # =============================================================================================
    def exec_body(self, body: cst.BaseSuite, state: State, ctx: Ctx) -> None:
        if isinstance(body, cst.IndentedBlock):
            self.exec_block(body.body, state, ctx)
        elif isinstance(body, cst.SimpleStatementSuite):
            for small in body.body:
                if state.returned or state.jumped:
                    return
                self.exec_small(small, state, ctx)

    def exec_block(self, stmts, state: State, ctx: Ctx) -> None:
        for stmt in stmts:
            if state.returned or state.jumped:
                return
            if isinstance(stmt, cst.SimpleStatementLine):
                for small in stmt.body:
                    if state.returned or state.jumped:
                        return
                    self.exec_small(small, state, ctx)
            else:
                self.exec_compound(stmt, state, ctx)

    def exec_small(self, node: cst.BaseSmallStatement, state: State, ctx: Ctx) -> None:
        self._tick()
        self.stmt = node
        if isinstance(node, cst.Expr):
            self.eval_stmt_expr(node.value, state, ctx)
        elif isinstance(node, cst.Assign):
            target = node.targets[0].target if len(node.targets) == 1 else None
            acc = _self_add(target, node.value) if target is not None else None
            if acc is None and target is not None:
                acc = self._self_cat(target, node.value, state, ctx)
            if acc is not None:
                old = self.eval(target, state, ctx)
                value = self.eval(acc, state, ctx)
                new = self._accumulate(node, target, old, value, state, ctx)
                if isinstance(target, cst.Name):
                    state.env[target.value] = new.with_(label=old.label)
                elif isinstance(target, cst.Attribute) and _dotted(target):
                    state.env[_dotted(target)] = new
                return
            value = self.eval(node.value, state, ctx)
            for t in node.targets:
                self.assign(t.target, value, state, ctx, node.value)
        elif isinstance(node, cst.AnnAssign):
            if node.value is not None:
                value = self.eval(node.value, state, ctx)
                self.assign(node.target, value, state, ctx, node.value)
        elif isinstance(node, cst.AugAssign):
            self.exec_augassign(node, state, ctx)
        elif isinstance(node, cst.Return):
            value = self.eval(node.value, state, ctx) if node.value is not None else V(CONST, const=None)
            ctx.returns.append(value)
            if ctx.entry and value.taints:
                self.facts.escaped_taints.update(value.taints)
            state.returned = True
        elif isinstance(node, (cst.Break, cst.Continue)):
            state.jumped = True
        elif isinstance(node, cst.Import):
            for alias in node.names:
                full = _dotted(alias.name) or ""
                if alias.asname is not None:
                    state.env[alias.asname.name.value] = V(QUAL, const=api.normalize(full))
                else:
                    top = full.split(".")[0]
                    state.env[top] = V(QUAL, const=top)
        elif isinstance(node, cst.ImportFrom):
            if node.module is None or isinstance(node.names, cst.ImportStar):
                return
            mod = _dotted(node.module) or ""
            for alias in node.names:
                name = alias.name.value if isinstance(alias.name, cst.Name) else _dotted(alias.name) or ""
                bound = alias.asname.name.value if alias.asname is not None else name
                state.env[bound] = V(QUAL, const=api.normalize(f"{mod}.{name}"))
        elif isinstance(node, cst.Del):
            pass
        elif isinstance(node, (cst.Raise, cst.Assert)):
            for child in (getattr(node, "exc", None), getattr(node, "test", None)):
                if isinstance(child, cst.BaseExpression):
                    self.eval(child, state, ctx)
            if isinstance(node, cst.Raise):
                state.returned = True

    def exec_compound(self, node: cst.BaseCompoundStatement, state: State, ctx: Ctx) -> None:
        self._tick()
        self.stmt = node
        if isinstance(node, cst.FunctionDef):
            self.define_function(node, state, ctx)
        elif isinstance(node, cst.ClassDef):
            self.define_class(node, state, ctx)
        elif isinstance(node, cst.If):
            self.exec_if(node, state, ctx)
        elif isinstance(node, cst.For):
            self.exec_for(node, state, ctx)
        elif isinstance(node, cst.While):
            self.exec_while(node, state, ctx)
        elif isinstance(node, cst.With):
            self.exec_with(node, state, ctx)
        elif isinstance(node, (cst.Try, cst.TryStar)):
            self.exec_try(node, state, ctx)
        elif isinstance(node, cst.Match):
            self.eval(node.subject, state, ctx)
            outs = []
            for case in node.cases:
                s = state.copy()
                self.exec_body(case.body, s, ctx)
                outs.append(s)
            outs.append(state.copy())
            self._replace(state, join_states(outs))

    @staticmethod
    def _replace(state: State, new: State) -> None:
        state.env, state.modes, state.grad = new.env, new.modes, new.grad
        state.returned = new.returned
        state.jumped = False

    def exec_if(self, node: cst.If, state: State, ctx: Ctx) -> None:
        test = self.eval(node.test, state, ctx)
        if test.is_const:
            if test.const:
                self.exec_body(node.body, state, ctx)
            elif isinstance(node.orelse, cst.If):
                self.exec_if(node.orelse, state, ctx)
            elif isinstance(node.orelse, cst.Else):
                self.exec_body(node.orelse.body, state, ctx)
            return
        key = _cond_key(node.test)
        a = state.copy()
        self.cond_stack.append(key)
        try:
            self.exec_body(node.body, a, ctx)
        finally:
            self.cond_stack.pop()
        b = state.copy()
        self.cond_stack.append("not " + key)
        try:
            if isinstance(node.orelse, cst.If):
                self.exec_if(node.orelse, b, ctx)
            elif isinstance(node.orelse, cst.Else):
                self.exec_body(node.orelse.body, b, ctx)
        finally:
            self.cond_stack.pop()
        jumped = a.jumped and b.jumped
        self._replace(state, join_states([a, b]))
        state.jumped = jumped

    def _push_frame(self, node: cst.CSTNode, ctx: Ctx, label: str, unrolled: bool = False) -> Frame:
        fid = next(self.ids)
        frame = Frame(
            id=fid,
            node=node,
            parent=self.frame_stack[-1] if self.frame_stack else None,
            ctx=ctx.id,
            start=next(self.seq),
            label=label,
            unrolled=unrolled,
            cond_depth=len(self.cond_stack),
        )
        self.facts.frames[fid] = frame
        self.frame_stack.append(fid)
        self.pass_stack.append(next(self.ids))
        self.fresh_stack.append(set())
        return frame

    def _pop_frame(self, frame: Frame) -> None:
        frame.end = next(self.seq)
        self.frame_stack.pop()
        self.pass_stack.pop()
        self.fresh_stack.pop()

    def _loop_body(self, node, state: State, ctx: Ctx, bind) -> State:
        """Run a loop body until the state it leaves is the state it starts from (at most twice).

        Values join with the loop's entry (the body may not run), but model and grad modes are taken
        from the body only: a loop that calls ``model.eval()`` leaves the model in eval mode (assuming
        it ran at least once), as every training script that tests after its epoch loop expects.
        """
        entry = state.copy()
        s1 = entry.copy()
        self.fresh_stack[-1] = set()
        self.pass_stack[-1] = next(self.ids)  # a new pass over the body: a new iteration
        bind(s1)
        self.exec_body(node.body, s1, ctx)
        s1.jumped = False
        if s1.returned or s1.signature() == entry.signature():
            return self._after_loop([entry, s1], [s1])
        s2 = join_states([entry, s1])
        self.fresh_stack[-1] = set()
        self.pass_stack[-1] = next(self.ids)  # a new pass over the body: a new iteration
        bind(s2)
        self.exec_body(node.body, s2, ctx)
        s2.jumped = False
        return self._after_loop([entry, s1, s2], [s1, s2])

    @staticmethod
    def _after_loop(all_states: list[State], body_states: list[State]) -> State:
        out = join_states(all_states)
        ran = join_states(body_states)
        if not ran.returned:
            out.modes, out.grad = ran.modes, ran.grad
        return out

    def exec_for(self, node: cst.For, state: State, ctx: Ctx) -> None:
        it = self.eval(node.iter, state, ctx)
        label = it.label or self._expr_label(node.iter)
        elems = it.elems if it.kind in (TUPLE, LIST) else None
        if elems is not None and 0 < len(elems) <= 6 and isinstance(node.target, (cst.Name, cst.Tuple)):
            # a loop over a literal list (phases, loaders, learning rates): unroll it
            for elem in elems:
                frame = self._push_frame(node, ctx, f"{label}={elem.const if elem.is_const else elem.label}", True)
                try:
                    self.assign(node.target, elem, state, ctx, None, loop_target=True)
                    self.exec_body(node.body, state, ctx)
                    state.jumped = False
                finally:
                    self._pop_frame(frame)
                if state.returned:
                    return
        else:
            element = self.iter_element(it, node.iter, state, ctx)
            frame = self._push_frame(node, ctx, label)
            try:
                out = self._loop_body(
                    node,
                    state,
                    ctx,
                    lambda s: self.assign(node.target, element, s, ctx, None, loop_target=True),
                )
            finally:
                self._pop_frame(frame)
            self._replace(state, out)
        if node.orelse is not None:
            self.exec_body(node.orelse.body, state, ctx)

    def exec_while(self, node: cst.While, state: State, ctx: Ctx) -> None:
        test = self.eval(node.test, state, ctx)
        if test.is_const and not test.const:
            return
        frame = self._push_frame(node, ctx, self._expr_label(node.test))
        try:
            out = self._loop_body(node, state, ctx, lambda s: None)
        finally:
            self._pop_frame(frame)
        self._replace(state, out)
        if node.orelse is not None:
            self.exec_body(node.orelse.body, state, ctx)

    def exec_with(self, node: cst.With, state: State, ctx: Ctx) -> None:
        saved = state.grad
        exits: list[dict] = []
        for item in node.items:
            cm = self._local_contextmanager(item.item, state, ctx)
            if cm is not None:
                v, at_yield, after = self._enter_contextmanager(cm, item.item, state, ctx)
                exits.append(after)
            else:
                v = self.eval(item.item, state, ctx)
                g = self._grad_of_ctx(v)
                if g != "keep":
                    state.grad = g
            if item.asname is not None:
                self.assign(item.asname.name, v if v.kind != GRAD_CTX else TOP, state, ctx, None)
        changed = state.grad != saved
        self.exec_body(node.body, state, ctx)
        if changed or state.grad != saved:
            state.grad = saved
        for after in exits:  # what the context manager does after its `yield` (restoring a mode)
            state.modes.update(after)

    def _local_contextmanager(self, expr, state: State, ctx: Ctx) -> FuncInfo | None:
        if type(expr) is not cst.Call:
            return None
        fv = self.eval(expr.func, state, ctx, record=False)
        if fv.kind == FUNC and isinstance(fv.ref, FuncInfo) and fv.ref.kind == "contextmanager":
            return fv.ref
        return None

    def _enter_contextmanager(self, info: FuncInfo, call: cst.Call, state: State, ctx: Ctx):
        """Run a local ``@contextmanager``: the body of the ``with`` sees the state at its ``yield``."""
        self._yields.append(None)
        try:
            args, kwargs, _ = self._args(call, state, ctx)
            self.inline(info, call, args, kwargs, state, ctx)
        finally:
            captured = self._yields.pop()
        end_modes = dict(state.modes)
        if captured is None:
            return TOP, None, {}
        value, grad, modes = captured
        after = {k: v for k, v in end_modes.items() if modes.get(k, _MISSING) != v}
        state.modes.clear()
        state.modes.update(modes)
        state.grad = grad
        return value, captured, after

    def _grad_of_ctx(self, v: V) -> Any:
        if v.kind == GRAD_CTX:
            return v.const if v.is_const else None
        if v.kind == QUAL and v.const in api.NO_GRAD_CTX:
            return "off"
        return "keep"

    def exec_try(self, node, state: State, ctx: Ctx) -> None:
        entry = state.copy()
        self.exec_body(node.body, state, ctx)
        outs = [state.copy()]
        for handler in node.handlers:
            s = join_states([entry, state])
            self.exec_body(handler.body, s, ctx)
            outs.append(s)
        if node.orelse is not None:
            self.exec_body(node.orelse.body, outs[0], ctx)
        merged = join_states(outs)
        self._replace(state, merged)
        if node.finalbody is not None:
            returned = state.returned
            state.returned = False
            self.exec_body(node.finalbody.body, state, ctx)
            state.returned = state.returned or returned

    # -- definitions --------------------------------------------------------------------------------
    def define_function(self, node: cst.FunctionDef, state: State, ctx: Ctx, cls: ClassInfo | None = None) -> FuncInfo:
        info = FuncInfo(node=node, cls=cls)
        for dec in node.decorators:
            d = dec.decorator
            name = _dotted(d.func) if isinstance(d, cst.Call) else _dotted(d)
            if name in ("staticmethod", "classmethod", "property"):
                info.kind = name
                continue
            if name and name.rsplit(".", 1)[-1] in ("contextmanager", "asynccontextmanager"):
                info.kind = "contextmanager"
                continue
            v = self.eval(d, state, ctx)
            g = self._grad_of_ctx(v)
            if g == "off":
                info.grad = "off"
        if ctx.func is not None or cls is None and ctx is not self.module_ctx:
            info.closure = state.env
        self.functions.append(info)
        if cls is None:
            state.env[node.name.value] = V(FUNC, ref=info, origin=node)
        return info

    def define_class(self, node: cst.ClassDef, state: State, ctx: Ctx) -> None:
        bases = [self.eval(arg.value, state, ctx) for arg in node.bases]
        info = ClassInfo(node=node, bases=bases)
        self.classes.append(info)
        body = node.body.body if isinstance(node.body, cst.IndentedBlock) else []
        for stmt in body:
            if isinstance(stmt, cst.FunctionDef):
                info.methods[stmt.name.value] = self.define_function(stmt, state, ctx, cls=info)
            elif isinstance(stmt, cst.SimpleStatementLine):
                for small in stmt.body:
                    if isinstance(small, (cst.Assign, cst.AnnAssign)) and getattr(small, "value", None) is not None:
                        targets = [t.target for t in small.targets] if isinstance(small, cst.Assign) else [small.target]
                        for t in targets:
                            if isinstance(t, cst.Name):
                                info.class_attrs[t.value] = self.eval(small.value, state, ctx)
        state.env[node.name.value] = V(CLASS, ref=info, origin=node)

    # -- assignment ---------------------------------------------------------------------------------
    def assign(self, target, value: V, state: State, ctx: Ctx, value_node, *, loop_target: bool = False) -> None:
        if isinstance(target, cst.Name):
            name = target.value
            if value.kind in (LOADER, TENSOR, UNKNOWN, LIST, DICT, TUPLE) and not value.label:
                value = value.with_(label=name)
            if not loop_target:
                self._maybe_snapshot(target, name, value, value_node, ctx)
            state.env[name] = value
            if self.fresh_stack:
                self.fresh_stack[-1].add(name)
        elif isinstance(target, (cst.Tuple, cst.List)):
            elements = [e.value for e in target.elements]
            if (
                value.elems is not None
                and len(value.elems) == len(elements)
                and not any(isinstance(e, cst.StarredElement) for e in target.elements)
            ):
                for t, v in zip(elements, value.elems):
                    self.assign(t, v, state, ctx, None, loop_target=loop_target)
            else:
                part = V(
                    TENSOR if value.kind == TENSOR else UNKNOWN,
                    graph=value.graph,
                    taints=value.taints,
                    label=value.label,
                )
                for t in elements:
                    self.assign(t, part, state, ctx, None, loop_target=loop_target)
        elif isinstance(target, cst.Attribute):
            path = _dotted(target)
            if target.attr.value == "grad":
                self.facts.resets.append(self._ev(ResetEvent, target, ctx))
                return
            owner = self.eval(target.value, state, ctx, record=False)
            if path is not None:
                if not loop_target:
                    self._maybe_snapshot(target, path, value, value_node, ctx, persistent=self._outlives(path))
                state.env[path] = value
            if owner.kind in (INSTANCE, MODEL) and isinstance(owner.ref, Instance):
                owner.ref.attrs[target.attr.value] = value
            if owner.kind == MODEL and value.kind == MODEL:
                self._part_of(value.ident, owner.ident)  # `model.fc = nn.Linear(...)`
        elif isinstance(target, cst.Subscript):
            self.eval(target.value, state, ctx, record=False)
            if not loop_target:
                text = _target_text(target)
                self._maybe_snapshot(target, text, value, value_node, ctx, persistent=self._outlives(text))
                if isinstance(value_node, cst.Name) and value.alias is not None and self._outlives(text):
                    self.facts.stored.add((ctx.id, value_node.value))
        elif isinstance(target, cst.StarredElement):
            self.assign(target.value, TOP, state, ctx, None, loop_target=loop_target)

    def _outlives(self, path: str) -> bool:
        """Does the object at ``path`` (a name, ``self.x``, ``d[k]``) outlive the current loop iteration?"""
        base = path.split(".")[0].split("[")[0]
        if not self.fresh_stack:
            return True
        return base == "self" or base not in self.fresh_stack[-1]

    def _maybe_snapshot(self, target, name: str, value: V, value_node, ctx: Ctx, persistent: bool = False) -> None:
        if not self.frame_stack or ctx.model_method:
            return
        what = None
        if value.alias is not None and value.kind in (STATE_DICT, DICT):
            what = "state_dict"
        elif value.kind == MODEL and isinstance(value_node, (cst.Name, cst.Attribute, cst.Subscript)):
            # `best_model = model`, `nets["G_best"] = nets["G"]`: a second name for the same model
            src = _code(value_node)
            if src != _code(target) and api.last(src) != api.last(_code(target)):
                what = "model"
        if what is None:
            return
        source = "optimizer" if value.const == "optimizer" else "model"
        self.facts.snapshots.append(
            self._ev(
                SnapshotEvent,
                target,
                ctx,
                target=name,
                what=what,
                source=source,
                persistent=persistent,
                alias=value.ident if what == "model" else value.alias,
                value=value,
            )
        )

    def exec_augassign(self, node: cst.AugAssign, state: State, ctx: Ctx) -> None:
        value = self.eval(node.value, state, ctx)
        old = self.eval(node.target, state, ctx)
        if old.kind == LIST and value.kind in (LIST, TUPLE) and isinstance(node.operator, cst.AddAssign):
            elems = old.elems + value.elems if old.elems is not None and value.elems is not None else None
            new = old.with_(elems=elems, taints=old.taints | value.taints)
        elif isinstance(node.operator, (cst.AddAssign, cst.SubtractAssign)):
            new = self._accumulate(node, node.target, old, value, state, ctx)
        else:
            new = V(
                TENSOR if TENSOR in (old.kind, value.kind) else UNKNOWN,
                graph=graph_of(old, value),
                taints=merge_taints(old, value),
            )
        if isinstance(node.target, cst.Name):
            state.env[node.target.value] = new.with_(label=old.label)
        elif isinstance(node.target, cst.Attribute):
            path = _dotted(node.target)
            if path:
                state.env[path] = new

    def _accumulate(self, node, target, old: V, value: V, state: State, ctx: Ctx) -> V:
        text = _target_text(target)
        acc_id = next(self.ids)
        if (
            self.frame_stack
            and not ctx.model_method
            and value.kind in (TENSOR, UNKNOWN)
            and (value.graph is not False)
            and value.taints
        ):
            base = text.split(".")[0].split("[")[0]
            persistent = isinstance(target, (cst.Attribute, cst.Subscript))
            outlives = persistent or base not in self.fresh_stack[-1]
            where, stmt = self._accumulation_site(node, ctx)
            self.facts.accums.append(
                self._ev(AccumEvent, where, ctx, id=acc_id, target=text, value=value, outlives=outlives, site=stmt)
            )
        return V(
            TENSOR if TENSOR in (old.kind, value.kind) else UNKNOWN,
            graph=graph_of(old, value),
            taints=old.taints | value.taints | {acc_id},
        )

    # =============================================================================================
    # expressions
    # =============================================================================================
    def eval_stmt_expr(self, expr: cst.BaseExpression, state: State, ctx: Ctx) -> None:
        # torch.set_grad_enabled(False) as a statement changes the grad mode from here on
        if type(expr) is cst.Call and _dotted(expr.func) is not None:
            fv = self.eval(expr.func, state, ctx, record=False)
            if fv.kind == QUAL and fv.const in api.SET_GRAD_ENABLED and expr.args:
                arg = self.eval(expr.args[0].value, state, ctx)
                state.grad = ("on" if arg.const else "off") if arg.is_const else None
                return
        self.eval(expr, state, ctx)

    def eval(self, node: cst.BaseExpression | None, state: State, ctx: Ctx, record: bool = True) -> V:
        if node is None:
            return TOP
        t = type(node)
        if t is cst.Name:
            return self.eval_name(node, state, ctx, record)
        if t is cst.Attribute:
            return self.eval_attribute(node, state, ctx, record)
        if t is cst.Call:
            return self.eval_call(node, state, ctx)
        if t is cst.Integer or t is cst.Float:
            try:
                text = node.value.replace("_", "")
                return V(CONST, const=int(text, 0) if t is cst.Integer else float(text))
            except ValueError:
                return V(CONST)
        if t is cst.Imaginary:
            return V(CONST)
        if t in (cst.SimpleString, cst.ConcatenatedString):
            return V(CONST, const=_string_value(node))
        if t is cst.FormattedString:
            for part in node.parts:
                if isinstance(part, cst.FormattedStringExpression):
                    self.eval(part.expression, state, ctx)
            return V(CONST)
        if t is cst.Comparison:
            return self.eval_comparison(node, state, ctx)
        if t is cst.BinaryOperation:
            left = self.eval(node.left, state, ctx)
            right = self.eval(node.right, state, ctx)
            if left.is_const and right.is_const:
                try:
                    return V(CONST, const=_BINOPS[type(node.operator)](left.const, right.const))
                except Exception:
                    pass
            if left.kind == PARAMS and right.kind == PARAMS:
                both = left.ident | right.ident if left.ident is not None and right.ident is not None else None
                return V(PARAMS, ident=both)
            kind = TENSOR if TENSOR in (left.kind, right.kind) else UNKNOWN
            return V(kind, graph=graph_of(left, right), taints=merge_taints(left, right))
        if t is cst.UnaryOperation:
            v = self.eval(node.expression, state, ctx)
            if isinstance(node.operator, cst.Not):
                return V(CONST, const=not v.const) if v.is_const else V(CONST)
            if v.is_const:
                try:
                    return V(CONST, const=-v.const if isinstance(node.operator, cst.Minus) else v.const)
                except Exception:
                    return V(CONST)
            return v.with_(probs=None)
        if t is cst.BooleanOperation:
            left = self.eval(node.left, state, ctx)
            if left.is_const:
                if isinstance(node.operator, cst.And):
                    return self.eval(node.right, state, ctx) if left.const else left
                return left if left.const else self.eval(node.right, state, ctx)
            right = self.eval(node.right, state, ctx)
            if right.is_const and isinstance(node.operator, cst.And) and not right.const:
                return right
            return V(CONST, taints=merge_taints(left, right))
        if t is cst.Subscript:
            return self.eval_subscript(node, state, ctx)
        if t in (cst.Tuple, cst.List, cst.Set):
            elems = []
            for el in node.elements:
                ev = self.eval(el.value, state, ctx)
                if isinstance(el, cst.StarredElement):
                    if ev.elems is not None:
                        elems.extend(ev.elems)
                        continue
                    return V(TUPLE if t is cst.Tuple else LIST, taints=ev.taints, ident=object())
                elems.append(ev)
            kind = TUPLE if t is cst.Tuple else LIST
            return V(
                kind,
                elems=tuple(elems),
                taints=merge_taints(*elems),
                graph=graph_of(*elems) if elems else False,
                ident=object() if kind == LIST else None,
                alias=next((e.alias for e in elems if e.alias is not None), None),
            )
        if t is cst.Dict:
            vals = []
            items = []
            for el in node.elements:
                if isinstance(el, cst.DictElement):
                    key = self.eval(el.key, state, ctx)
                    value = self.eval(el.value, state, ctx)
                    if key.is_const and isinstance(key.const, (str, int)):
                        items.append((key.const, value))
                    vals.append(value)
                else:
                    vals.append(self.eval(el.value, state, ctx))
            return V(
                DICT,
                taints=merge_taints(*vals),
                graph=graph_of(*vals) if vals else False,
                alias=next((v.alias for v in vals if v.alias is not None), None),
                ident=object(),
                items=tuple(items) if len(items) == len(vals) else None,
            )
        if t in (cst.ListComp, cst.SetComp, cst.GeneratorExp, cst.DictComp):
            return self.eval_comprehension(node, state, ctx)
        if t is cst.IfExp:
            test = self.eval(node.test, state, ctx)
            if test.is_const:
                return self.eval(node.body if test.const else node.orelse, state, ctx)
            return join(self.eval(node.body, state, ctx), self.eval(node.orelse, state, ctx))
        if t is cst.NamedExpr:
            v = self.eval(node.value, state, ctx)
            self.assign(node.target, v, state, ctx, node.value)
            return v
        if t is cst.Lambda:
            return V(FUNC, ref=node, origin=node, ident=(state.env, self.stmt))
        if t is cst.Yield:
            value = self.eval(node.value, state, ctx) if isinstance(node.value, cst.BaseExpression) else TOP
            if self._yields and self._yields[-1] is None:
                self._yields[-1] = (value, state.grad, dict(state.modes))
            return TOP
        if t is cst.Await:
            return self.eval(node.expression, state, ctx)
        if t is cst.StarredElement:
            return self.eval(node.value, state, ctx)
        if t is cst.Ellipsis:
            return V(CONST, const=...)
        return TOP

    def _lookup(self, name: str, state: State, ctx: Ctx) -> V | None:
        v = state.env.get(name)
        if v is not None:
            return v
        c: Ctx | None = ctx
        while c is not None:
            if c.closure is not None and name in c.closure:
                return c.closure[name]
            c = c.parent
        g = self._global_state.env if self._global_state is not None else None
        if g is not None and name in g:
            return g[name]
        if name in ("True", "False", "None"):
            return V(CONST, const={"True": True, "False": False, "None": None}[name])
        return None

    def eval_name(self, node: cst.Name, state: State, ctx: Ctx, record: bool = True) -> V:
        name = node.value
        if record:
            self.facts.last_read[(ctx.id, name)] = next(self.seq)
        v = self._lookup(name, state, ctx)
        if v is not None:
            if v.alias is not None and record and self.frame_stack and v.kind in (STATE_DICT, DICT, MODEL):
                # a snapshot read back (e.g. a rollback `model.load_state_dict(best)` in a later epoch)
                self.facts.snapshot_reads.append((v, tuple(self.frame_stack), tuple(self.pass_stack)))
            return v
        if name in _BUILTINS:
            return V(QUAL, const=f"builtins.{name}")
        if name in _CONVENTIONAL:  # `from utils import *` brought torch/nn/F in
            return V(QUAL, const=_CONVENTIONAL[name])
        return TOP

    def eval_attribute(self, node: cst.Attribute, state: State, ctx: Ctx, record: bool = True) -> V:
        path = _dotted(node)
        if path is not None and path in state.env:
            return state.env[path]
        base = self.eval(node.value, state, ctx, record)
        attr = node.attr.value
        if base.kind == QUAL and isinstance(base.const, str):
            return V(QUAL, const=api.normalize(f"{base.const}.{attr}"))
        if base.kind in (INSTANCE, MODEL, CLASS) and base.ref is not None:
            inst = base.ref
            if isinstance(inst, Instance):
                if attr in inst.attrs:
                    value = inst.attrs[attr]
                    if base.kind == MODEL and value.kind == MODEL:
                        self._part_of(value.ident, base.ident)
                    return value
                cls = inst.cls
            else:
                cls = inst
            if attr == "training" and isinstance(cls, ClassInfo):
                cls.uses_mode = True
                return V(CONST)
            if isinstance(cls, ClassInfo):
                m = cls.method(attr)
                if m is not None:
                    return V(FUNC, ref=m, ident=base)  # bound method: ident carries self
                for c in cls.mro():
                    if attr in c.class_attrs:
                        return c.class_attrs[attr]
                if (
                    isinstance(inst, Instance)
                    and cls._static_instance is not None
                    and cls._static_instance.ref is not inst
                ):
                    st = cls._static_instance.ref.attrs.get(attr)
                    if st is not None:
                        return st
            return self._guess(attr)
        if base.kind == MODEL:
            if attr == "module":
                return base
            if attr in ("weight", "bias"):
                return V(TENSOR, graph=False)
            if attr == "training":
                return V(CONST)
            if attr.startswith("_"):
                return TOP
            # `model.fc` of a model whose class sentinel cannot see: one stable identity per attribute
            key = (base.ident, attr)
            ident = self._subidents.get(key)
            if ident is None:
                ident = self._subidents[key] = Ident(next(self.seq))
                self._part_of(ident, base.ident)
            return V(MODEL, ident=ident, sensitive=base.sensitive)
        if base.kind == TENSOR:
            if attr == "data":
                return base.with_(graph=False)
            if attr == "grad":
                return V(TENSOR, graph=False)
            if attr in ("shape", "dtype", "device", "requires_grad", "is_cuda", "ndim"):
                return V(CONST)
            if attr in ("T", "mT", "real"):
                return base
            return V(TENSOR, graph=base.graph, taints=base.taints)
        if base.kind in (UNKNOWN,) and path is not None:
            return self._guess(attr)
        return TOP

    def _guess(self, name: str) -> V:
        """A value we cannot see (parameter, unknown attribute): type it by its name."""
        if api.modelish(name):
            return V(MODEL, ident=("guess", name), label=name)
        if api.optimizerish(name):
            return V(OPTIMIZER, ident=("guess", name), label=name)
        if api.schedulerish(name):
            return V(SCHEDULER, label=name)
        if api.scalerish(name):
            return V(SCALER, label=name)
        if api.criterionish(name):
            return V(LOSS, label=name)
        if "loader" in name.lower():
            return V(LOADER, label=name)
        return V(UNKNOWN, label=name)

    def eval_comparison(self, node: cst.Comparison, state: State, ctx: Ctx) -> V:
        left = self.eval(node.left, state, ctx)
        result: Any = True
        for comp in node.comparisons:
            right = self.eval(comp.comparator, state, ctx)
            if result is True and left.is_const and (right.is_const or right.elems is not None):
                op = type(comp.operator)
                try:
                    if op in (cst.In, cst.NotIn) and right.elems is not None:
                        if not all(e.is_const for e in right.elems):
                            result = NOCONST
                        else:
                            inside = left.const in [e.const for e in right.elems]
                            result = inside if op is cst.In else not inside
                    else:
                        result = _CMPOPS[op](left.const, right.const)
                except Exception:
                    result = NOCONST
            else:
                result = NOCONST
            left = right
        return V(CONST, const=result) if result is not NOCONST else V(CONST, graph=False)

    def eval_subscript(self, node: cst.Subscript, state: State, ctx: Ctx) -> V:
        base = self.eval(node.value, state, ctx)
        index: V = TOP
        if len(node.slice) == 1 and isinstance(node.slice[0].slice, cst.Index):
            index = self.eval(node.slice[0].slice.value, state, ctx)
        else:
            for s in node.slice:
                if isinstance(s.slice, cst.Index):
                    self.eval(s.slice.value, state, ctx)
        if base.items is not None and index.is_const:
            for key, value in base.items:
                if key == index.const:
                    return value
        if base.elems is not None and index.is_const and isinstance(index.const, int):
            try:
                return base.elems[index.const]
            except IndexError:
                return TOP
        label = base.label
        if index.is_const and isinstance(index.const, str):
            label = f"{label}[{index.const}]" if label else index.const
        if base.kind == TENSOR:
            return base.with_(label=label)
        if base.kind == MODEL:
            return base
        if base.kind in (DICT, LIST, TUPLE, STATE_DICT):
            return V(
                UNKNOWN, graph=base.graph if base.graph else None, taints=base.taints, label=label, alias=base.alias
            )
        if base.kind == LOADER:
            return V(LOADER, label=label)
        return V(UNKNOWN, taints=base.taints, label=label)

    def eval_comprehension(self, node, state: State, ctx: Ctx) -> V:
        s = state.copy()
        comp = node.for_in
        while comp is not None:
            it = self.eval(comp.iter, s, ctx)
            self.assign(comp.target, self.iter_element(it, comp.iter, s, ctx), s, ctx, None, loop_target=True)
            for cond in comp.ifs:
                self.eval(cond.test, s, ctx)
            comp = comp.inner_for_in
        if isinstance(node, cst.DictComp):
            self.eval(node.key, s, ctx)
            elt = self.eval(node.value, s, ctx)
            return V(DICT, taints=elt.taints, graph=elt.graph, alias=elt.alias, ident=object())
        elt = self.eval(node.elt, s, ctx)
        return V(LIST, taints=elt.taints, graph=elt.graph, alias=elt.alias, ident=object())

    def iter_element(self, it: V, node, state: State, ctx: Ctx) -> V:
        """The value one iteration over ``it`` binds."""
        if it.kind == PARAMS:
            return V(TENSOR, graph=False, label="param")
        if it.kind == STATE_DICT:
            return V(UNKNOWN)
        if it.elems is not None:
            out = None
            for e in it.elems:
                out = join(out, e) if out is not None else e
            return out if out is not None else TOP
        if it.kind == QUAL:
            return TOP
        if it.kind == TUPLE and it.ref == "items":
            return V(TUPLE, elems=(V(CONST), V(TENSOR, graph=False, alias=it.alias)), alias=it.alias)
        # batches from a loader: tensors without a graph, labelled by the loader
        return V(
            UNKNOWN,
            graph=False if it.graph is False else None,
            label=it.label,
            taints=it.taints if it.graph is not False else frozenset(),
        )

    @staticmethod
    def _expr_label(node) -> str:
        d = _dotted(node) if node is not None else None
        if d:
            return d
        if isinstance(node, cst.Call):
            parts = [_dotted(a.value) or "" for a in node.args]
            return ",".join(p for p in parts if p)
        if isinstance(node, cst.Subscript):
            return _target_text(node)
        return ""

    # =============================================================================================
    # calls
    # =============================================================================================
    def _args(self, node: cst.Call, state: State, ctx: Ctx) -> tuple[list[V], dict[str, V], bool]:
        args: list[V] = []
        kwargs: dict[str, V] = {}
        starred = False
        for a in node.args:
            v = self.eval(a.value, state, ctx)
            if a.keyword is not None:
                kwargs[a.keyword.value] = v
            elif a.star:
                starred = True
                if v.elems is not None and a.star == "*":
                    args.extend(v.elems)
                elif a.star == "*":
                    args.append(V(UNKNOWN, taints=v.taints))  # unknown elements
            else:
                args.append(v)
        return args, kwargs, starred

    def eval_call(self, node: cst.Call, state: State, ctx: Ctx) -> V:
        func = node.func
        if isinstance(func, cst.Attribute):
            path = _dotted(func)
            receiver = state.env.get(path) if path is not None and path in state.env else None
            if receiver is not None and receiver.kind not in (QUAL,):
                args, kwargs, _ = self._args(node, state, ctx)
                return self.call_value(receiver, node, args, kwargs, state, ctx)
            recv = self.eval(func.value, state, ctx)
            if isinstance(recv.ref, Instance) and recv.kind in (INSTANCE, MODEL):
                attr_value = recv.ref.attrs.get(func.attr.value)
                if attr_value is None:
                    for c in recv.ref.cls.mro():
                        if func.attr.value in c.class_attrs:
                            attr_value = c.class_attrs[func.attr.value]
                            break
                if attr_value is not None:
                    args, kwargs, _ = self._args(node, state, ctx)
                    return self.call_value(attr_value, node, args, kwargs, state, ctx)
            if recv.kind == QUAL and isinstance(recv.const, str):
                fv = V(QUAL, const=api.normalize(f"{recv.const}.{func.attr.value}"))
                args, kwargs, star = self._args(node, state, ctx)
                return self.call_value(fv, node, args, kwargs, state, ctx)
            args, kwargs, _ = self._args(node, state, ctx)
            return self.call_method(recv, func.attr.value, node, args, kwargs, state, ctx)
        fv = self.eval(func, state, ctx)
        args, kwargs, _ = self._args(node, state, ctx)
        return self.call_value(fv, node, args, kwargs, state, ctx)

    def call_value(self, fv: V, node: cst.Call, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx) -> V:
        kind = fv.kind
        if kind == FUNC and isinstance(fv.ref, cst.Lambda):
            return self.call_lambda(fv, node, args, kwargs, state, ctx)
        if kind == FUNC and isinstance(fv.ref, FuncInfo):
            self_value = fv.ident if isinstance(fv.ident, V) else None
            return self.inline(fv.ref, node, args, kwargs, state, ctx, self_value=self_value)
        if kind == CLASS and isinstance(fv.ref, ClassInfo):
            return self.instantiate(fv.ref, node, args, kwargs, state, ctx)
        if kind == QUAL and isinstance(fv.const, str):
            return self.call_api(fv.const, node, args, kwargs, state, ctx)
        if kind == MODEL:
            return self.forward(fv, node, args, kwargs, state, ctx)
        if kind == SOFTMAX:
            x = args[0] if args else TOP
            return V(TENSOR, probs=self._where(node), graph=x.graph, taints=x.taints)
        if kind == LOSS:
            return self.loss_call(fv.const == "ce", node, args, kwargs, ctx)
        if kind == INSTANCE and isinstance(fv.ref, Instance):
            call = fv.ref.cls.method("__call__")
            if call is not None:
                return self.inline(call, node, args, kwargs, state, ctx, self_value=fv)
        # unknown callable
        name = _dotted(node.func) or ""
        if name and api.resetish(api.last(name)):
            self.facts.resets.append(self._ev(ResetEvent, node, ctx))
        self._opaque_training_step(node, [*args, *kwargs.values()], ctx)
        self._stored_by_call(node, state, ctx)
        # `Net()` brought in by `from models import *`: a class being instantiated
        ctor = fv is TOP and type(node.func) is cst.Name and node.func.value[:1].isupper()
        return V(
            UNKNOWN, taints=merge_taints(*args, *kwargs.values()), graph=None, origin=node, ref="ctor" if ctor else None
        )

    def _opaque_training_step(self, node, values: list[V], ctx: Ctx) -> None:
        """A call sentinel cannot see into that gets a model output *and* an optimizer (MAE's
        ``loss_scaler(loss, optimizer)``, a user's ``backward_and_step(loss, opt)``) backpropagates it."""
        if not any(v.kind == OPTIMIZER for v in values):
            return
        taints = merge_taints(*(v for v in values if v.kind in (TENSOR, UNKNOWN)))
        if taints:
            self._backward(node, V(TENSOR, taints=taints), ctx)

    def call_lambda(self, fv: V, node, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx) -> V:
        lam: cst.Lambda = fv.ref
        if ctx.depth >= MAX_DEPTH:
            return TOP
        inner = State(state.default_mode, state.parents)
        inner.modes, inner.grad = state.modes, state.grad
        params = [*lam.params.posonly_params, *lam.params.params]
        for i, p in enumerate(params):
            name = p.name.value
            inner.env[name] = args[i] if i < len(args) else kwargs.get(name, self._guess(name))
        closure, stmt = fv.ident if isinstance(fv.ident, tuple) else (None, self.stmt)
        callee = Ctx(
            id=next(self.ctx_ids),
            name="<lambda>",
            func=None,
            parent=ctx,
            depth=ctx.depth + 1,
            model_method=ctx.model_method,
            lightning_eval=ctx.lightning_eval,
            closure=closure,
        )
        saved, self.stmt = self.stmt, stmt
        try:
            return self.eval(lam.body, inner, callee)
        finally:
            self.stmt = saved

    def loss_call(self, is_ce: bool, node: cst.Call, args: list[V], kwargs: dict[str, V], ctx: Ctx) -> V:
        inp = args[0] if args else kwargs.get("input", TOP)
        tgt = args[1] if len(args) > 1 else kwargs.get("target", TOP)
        self.facts.loss_calls.append(self._ev(LossCallEvent, node, ctx, is_ce=is_ce, input=inp))
        vals = [*args, *kwargs.values()]
        return V(TENSOR, graph=graph_of(inp, tgt), taints=merge_taints(*vals), origin=node)

    # -- torch API --------------------------------------------------------------------------------
    def call_api(self, qual: str, node: cst.Call, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx) -> V:
        name = api.last(qual)
        x = args[0] if args else TOP
        if name in _MODE_FUNCS and ctx.func is not None and ctx.func.cls is not None:
            ctx.func.cls.uses_mode = True
        if qual in api.SOFTMAX_FUNCS:
            return V(TENSOR, probs=self._where(node), graph=x.graph, taints=x.taints, origin=node)
        if qual in api.CROSS_ENTROPY_FUNCS:
            return self.loss_call(True, node, args, kwargs, ctx)
        if api.is_functional_loss(qual):
            return self.loss_call(False, node, args, kwargs, ctx)
        if qual in api.CROSS_ENTROPY_CLASSES:
            return V(LOSS, const="ce", origin=node)
        if qual in api.SOFTMAX_CLASSES:
            return V(SOFTMAX, origin=self._where(node))
        if api.is_loss_class(qual):
            return V(LOSS, const=name, origin=node)
        if qual in api.NO_GRAD_CTX:
            return V(GRAD_CTX, const="off")
        if qual in api.ENABLE_GRAD_CTX:
            return V(GRAD_CTX, const="on")
        if qual in api.SET_GRAD_ENABLED:
            return V(GRAD_CTX, const=("on" if x.const else "off") if x.is_const else NOCONST)
        if qual in api.WRAPPERS:
            return x if x.kind == MODEL else V(MODEL, ident=Ident(next(self.seq)))
        if qual == "torch.nn.Sequential":
            return self._sequential(node, args)
        if qual in ("torch.nn.ModuleList", "torch.nn.ModuleDict"):
            return V(
                MODEL, ident=object(), origin=node, sensitive=_any_sensitive(x.elems) if x.elems is not None else None
            )
        if api.is_module_class(qual):
            return V(MODEL, ident=Ident(next(self.seq)), origin=node, sensitive=_layer_sensitive(qual, kwargs))
        if api.is_scaler_class(qual):
            return V(SCALER, origin=node)
        if api.is_optimizer_class(qual):
            params = args[0] if args else kwargs.get("params", TOP)
            return V(
                OPTIMIZER,
                ident=Ident(next(self.seq)),
                origin=node,
                alias=params.ident if params.kind == PARAMS else None,
            )
        if qual == "functools.partial":
            return x if x.kind in (QUAL, FUNC, LOSS, MODEL) else TOP
        if api.is_scheduler(qual):
            return V(SCHEDULER, origin=node)
        if name == "DataLoader":
            return V(LOADER, origin=node, label=(args[0].label if args else ""))
        if qual in ("copy.deepcopy",):
            if x.kind == MODEL:
                return x.with_(ident=Ident(next(self.seq)))
            return x.with_(alias=None, graph=False if x.graph else x.graph)
        if x.kind == PARAMS and qual in ("builtins.list", "builtins.tuple", "builtins.iter"):
            return x
        if qual in ("copy.copy", "builtins.dict", "collections.OrderedDict", "builtins.list"):
            if x.kind in (STATE_DICT, DICT) or x.alias is not None:
                return x
            if qual == "collections.OrderedDict" and x.elems is not None:
                return V(DICT, elems=x.elems, taints=x.taints)  # OrderedDict([(name, layer), ...])
            if qual == "builtins.list" and x.kind in (LIST, TUPLE):
                return x.with_(kind=LIST)
            return V(DICT if "ict" in qual else UNKNOWN, taints=x.taints)
        if qual in ("torch.autograd.backward",):
            self._backward(node, x, ctx)
            return TOP
        if qual.startswith("builtins."):
            return self._builtin(name, node, args, kwargs, state, ctx)
        if qual.startswith("tqdm") or name in ("tqdm", "trange"):
            return x if x.kind != QUAL else TOP
        if qual.startswith("torch.") or qual.startswith("numpy.") or qual.startswith("np."):
            if name in api.NO_GRAPH_FUNCS or qual.startswith(("numpy.", "np.")):
                return V(TENSOR, graph=False, origin=node)
            if name in ("log_softmax",):
                return V(TENSOR, graph=x.graph, taints=x.taints)
            if name in ("max", "min", "sort", "topk", "kthvalue", "median", "mode") and (
                len(args) > 1 or "dim" in kwargs
            ):
                return V(
                    TUPLE, elems=(V(TENSOR, graph=x.graph, taints=x.taints), V(TENSOR, graph=False)), taints=x.taints
                )
            vals = [*args, *kwargs.values()]
            flat = []
            for v in vals:
                flat.extend(v.elems if v.elems is not None and v.kind != DICT else (v,))
            probs = None
            if name in _JOIN_FUNCS and args:
                parts = x.elems if x.elems else (x,)
                if parts and all(p.probs is not None for p in parts):
                    probs = parts[0].probs
            return V(
                TENSOR,
                graph=graph_of(*flat) if flat else False,
                taints=merge_taints(*flat, *vals),  # the containers' own history too (accumulated lists)
                origin=node,
                probs=probs,
            )
        if api.resetish(name):
            self.facts.resets.append(self._ev(ResetEvent, node, ctx))
        self._opaque_training_step(node, [*args, *kwargs.values()], ctx)
        self._stored_by_call(node, state, ctx)
        # a CamelCase name from another module is most likely a class being instantiated
        return V(
            UNKNOWN,
            taints=merge_taints(*args, *kwargs.values()),
            origin=node,
            ref="ctor" if name[:1].isupper() else None,
        )

    def _sequential(self, node: cst.Call, args: list[V]) -> V:
        probs = None
        if args:
            last = args[-1]
            if last.kind == SOFTMAX:
                probs = last.origin or node
            elif last.kind == MODEL and last.probs is not None:
                probs = last.probs
            elif last.kind == DICT or last.elems:
                elems = last.elems or ()
                if elems and elems[-1].elems and len(elems[-1].elems) == 2:
                    mod = elems[-1].elems[1]
                    if mod.kind == SOFTMAX:
                        probs = mod.origin or node
        return V(MODEL, ident=Ident(next(self.seq)), probs=probs, origin=node, sensitive=_any_sensitive(args))

    def _builtin(self, name: str, node, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx) -> V:
        x = args[0] if args else TOP
        if name in ("float", "int", "bool", "str", "len", "round", "abs", "repr", "print", "isinstance", "format"):
            if name == "abs":
                return x
            return V(CONST, graph=False)
        if name in ("enumerate",):
            return (
                V(UNKNOWN, label=x.label, graph=x.graph, taints=x.taints, alias=x.alias, ref="enumerate", elems=None)
                if x.kind != PARAMS
                else x
            )
        if name in ("list", "tuple", "iter") and x.kind == PARAMS:
            return x
        if name in ("zip", "iter", "reversed", "sorted", "list", "tuple", "next"):
            if name == "list" and x.kind in (LIST, TUPLE):
                return x.with_(kind=LIST)
            labels = ",".join(a.label for a in args if a.label)
            return V(UNKNOWN, label=labels, taints=merge_taints(*args))
        if name == "range":
            return V(UNKNOWN, graph=False, label="range")
        if name in ("sum", "max", "min"):
            return V(TENSOR if x.graph else UNKNOWN, graph=x.graph, taints=x.taints)
        if name == "dict":
            return x if x.kind in (STATE_DICT, DICT) else V(DICT, taints=x.taints, ident=object())
        if name == "getattr":
            # getattr(nn, cfg["criterion"]) with a constant name is just an attribute
            if len(args) >= 2 and x.kind == QUAL and isinstance(x.const, str) and isinstance(args[1].const, str):
                return V(QUAL, const=api.normalize(f"{x.const}.{args[1].const}"))
            return TOP
        return V(UNKNOWN, taints=merge_taints(*args))

    # -- methods ----------------------------------------------------------------------------------
    def call_method(
        self, recv: V, meth: str, node: cst.Call, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx
    ) -> V:
        # a method defined in this file wins over everything else
        if recv.kind in (INSTANCE, MODEL) and isinstance(recv.ref, Instance):
            m = recv.ref.cls.method(meth)
            if m is not None and m.kind != "property":
                module = recv.kind == MODEL and recv.ref.cls.is_module
                if meth == "forward" and module:
                    return self.forward(recv, node, args, kwargs, state, ctx)
                before = len(self.facts.backwards) + len(self.facts.steps)
                result = self.inline(m, node, args, kwargs, state, ctx, self_value=recv)
                if (
                    module
                    and not ctx.model_method
                    and not meth.startswith("_")
                    and not api.non_forward_method(meth)
                    and result.kind in (TENSOR, TUPLE, DICT)
                    and len(self.facts.backwards) + len(self.facts.steps) == before
                ):
                    # `model.predict(x)`, `model.encode(x)`: the model runs its layers, like a forward
                    fid = self._forward_event(recv, node, args, state, ctx)
                    result = result.with_(taints=result.taints | {fid})
                return result
        if recv.kind == FUNC or recv.kind == CLASS:
            return TOP
        x = args[0] if args else TOP
        receiver_name = _dotted(node.func.value) if isinstance(node.func, cst.Attribute) else None
        if meth in _STORE_METHODS and receiver_name and self.frame_stack and self._outlives(receiver_name):
            self._note_stored(node.args, state, ctx)
        rname = api.last(receiver_name) if receiver_name else recv.label

        if meth == "backward":
            target = recv if recv.kind in (TENSOR, UNKNOWN) and (recv.taints or not args) else x
            self._backward(node, target if target.taints else recv, ctx)
            return TOP
        if "backward" in meth and (args or kwargs):
            self._backward(node, x, ctx)
            return TOP
        if meth == "zero_grad":
            kind = "optimizer" if recv.kind == OPTIMIZER else ("model" if recv.kind in (MODEL, INSTANCE) else None)
            self.facts.resets.append(self._ev(ResetEvent, node, ctx, target=recv.ident if kind else None, kind=kind))
            return TOP
        if meth == "step":
            if recv.kind == OPTIMIZER or (
                recv.kind not in (SCHEDULER, SCALER, MODEL, LOADER) and rname and api.optimizerish(rname)
            ):
                self.facts.steps.append(
                    self._ev(StepEvent, node, ctx, optimizer=rname or "", ident=recv.ident, model=recv.alias)
                )
                self._closure(args, kwargs, node, state, ctx)
            elif recv.kind == SCALER or (rname and api.scalerish(rname)):
                self.facts.steps.append(
                    self._ev(
                        StepEvent,
                        node,
                        ctx,
                        optimizer=x.label or "scaler",
                        ident=x.ident if x.kind == OPTIMIZER else None,
                        model=x.alias,
                    )
                )
                self._closure(args[1:], kwargs, node, state, ctx)
            return TOP
        if recv.kind == SCALER or (recv.kind == UNKNOWN and rname and api.scalerish(rname)):
            if meth == "scale":
                return x
            return TOP
        if recv.kind == UNKNOWN and meth in _MODULE_ONLY_METHODS and isinstance(node.func, cst.Attribute):
            # `net = Net()` from a module sentinel cannot see: `.parameters()`/`.train()` say it is a model
            recv = self._as_model(recv, node.func.value, state)
        if recv.kind == MODEL:
            return self._model_method(recv, meth, node, args, kwargs, state, ctx)
        if recv.kind == OPTIMIZER:
            if meth == "state_dict":
                return V(STATE_DICT, alias=recv.ident or object(), const="optimizer", ident=object())
            return TOP
        if meth == "state_dict" and rname and (api.modelish(rname) or api.optimizerish(rname)):
            return V(
                STATE_DICT, alias=object(), const="optimizer" if api.optimizerish(rname) else NOCONST, ident=object()
            )
        if recv.kind in (STATE_DICT, DICT):
            if meth in ("copy",):
                return recv
            if meth == "items":
                return V(TUPLE, ref="items", alias=recv.alias)
            if meth == "values":
                return V(LIST, elems=None, alias=recv.alias)
            return V(UNKNOWN)
        if recv.kind in (LIST, UNKNOWN, TUPLE) and meth in ("append", "extend", "insert", "add"):
            return self._append(recv, meth, node, args, state, ctx)
        if recv.kind == PARAMS:
            return TOP
        if recv.kind in (TENSOR, UNKNOWN):
            return self._tensor_method(recv, meth, node, args, kwargs, ctx)
        self._opaque_training_step(node, [*args, *kwargs.values()], ctx)
        return TOP

    def _self_cat(self, target, value, state: State, ctx: Ctx) -> cst.BaseExpression | None:
        """For ``t = torch.cat((t, x))`` return ``x``: growing a tensor across iterations."""
        text = _dotted(target)
        if text is None or type(value) is not cst.Call or not value.args:
            return None
        fv = self.eval(value.func, state, ctx, record=False)
        if fv.kind != QUAL or api.last(str(fv.const)) not in _JOIN_FUNCS:
            return None
        seq = value.args[0].value
        if type(seq) not in (cst.Tuple, cst.List) or len(seq.elements) != 2:
            return None
        first, second = (e.value for e in seq.elements)
        if _dotted(first) == text:
            return second
        if _dotted(second) == text:
            return first
        return None

    @staticmethod
    def _is_method(model: V, name: str) -> bool:
        return isinstance(model.ref, Instance) and model.ref.cls.method(name) is not None

    def _as_model(self, value: V, expr: cst.BaseExpression, state: State) -> V:
        path = _dotted(expr)
        name = (path or "").rsplit(".", 1)[-1]
        ident = Ident(next(self.seq)) if value.ref == "ctor" else ("guess", path or name)
        model = V(MODEL, ident=ident, label=value.label or name, origin=value.origin)
        if path is not None and (path in state.env or "." not in path):
            state.env[path] = model
        return model

    def _accumulation_site(self, node: cst.CSTNode, ctx: Ctx) -> tuple[cst.CSTNode, cst.CSTNode]:
        """Where to report an accumulation: inside a meter's ``update()``/``add()`` the user's mistake
        is the call that hands it a tensor (`losses.update(loss)`), so point there."""
        where, stmt = node, self.stmt
        c: Ctx | None = ctx
        while c is not None and c.func is not None and c.call_node is not None and c.name in _CONTAINER_API:
            where, stmt = c.call_node, c.call_stmt
            c = c.parent
        return where, stmt

    def _note_stored(self, args: Sequence[cst.Arg], state: State, ctx: Ctx) -> None:
        """Snapshot variables among ``args`` (or inside tuple/list arguments) go into a container that
        outlives the iteration (`history.append((epoch, best))`, `heapq.heappush(self.heap, (v, ckpt))`)."""
        for a in args:
            nodes = [e.value for e in a.value.elements] if type(a.value) in (cst.Tuple, cst.List) else [a.value]
            for n in nodes:
                if type(n) is cst.Name:
                    v = state.env.get(n.value)
                    if v is not None and v.alias is not None and v.kind in (STATE_DICT, DICT):
                        self.facts.stored.add((ctx.id, n.value))

    def _stored_by_call(self, node: cst.Call, state: State, ctx: Ctx) -> None:
        """An unknown call given a long-lived container and a snapshot stores the snapshot in it."""
        if not self.frame_stack or len(node.args) < 2:
            return
        containers = [_dotted(a.value) for a in node.args if _dotted(a.value)]
        if any(c and self._outlives(c) and ("." in c or c in state.env) for c in containers):
            self._note_stored(node.args, state, ctx)

    def _closure(self, args: list[V], kwargs: dict[str, V], node, state: State, ctx: Ctx) -> None:
        for v in [*args, *kwargs.values()]:
            if v.kind == FUNC and isinstance(v.ref, FuncInfo):
                self.inline(v.ref, node, [], {}, state, ctx)

    def _backward(self, node, value: V, ctx: Ctx) -> None:
        self.facts.backwards.append(self._ev(BackwardEvent, node, ctx, taints=value.taints))
        self.facts.proven_graph_taints.update(value.taints)

    def _append(self, recv: V, meth: str, node, args: list[V], state: State, ctx: Ctx) -> V:
        x = args[-1] if args else TOP
        path = _dotted(node.func.value) if isinstance(node.func, cst.Attribute) else None
        if x.kind in (STATE_DICT, DICT) and x.alias is not None and self.frame_stack and not ctx.model_method:
            self.facts.snapshots.append(
                self._ev(
                    SnapshotEvent,
                    node,
                    ctx,
                    target=path or "<list>",
                    what="append",
                    persistent=True,
                    source="optimizer" if x.const == "optimizer" else "model",
                    alias=x.alias,
                )
            )
        acc_id = next(self.ids)
        items = x.elems if (meth == "extend" and x.elems is not None) else (x,)
        for item in items:
            if (
                self.frame_stack
                and not ctx.model_method
                and item.kind in (TENSOR, UNKNOWN)
                and item.taints
                and (item.graph is not False)
            ):
                container = path or (
                    _target_text(node.func.value) if isinstance(node.func, cst.Attribute) else ""
                )  # `history["loss"].append(loss)`: the dict outlives the iteration
                outlives = bool(container) and not container.startswith("<") and self._outlives(container)
                where, stmt = self._accumulation_site(node, ctx)
                self.facts.accums.append(
                    self._ev(
                        AccumEvent,
                        where,
                        ctx,
                        id=acc_id,
                        target=path or (_code(node.func.value) if isinstance(node.func, cst.Attribute) else "<list>"),
                        value=item,
                        outlives=outlives,
                        site=stmt,
                    )
                )
        first = recv.elems == () or recv.probs is not None
        new = recv.with_(
            taints=recv.taints | x.taints | {acc_id},
            graph=True if x.graph else recv.graph,
            probs=x.probs if (first and x.probs is not None) else None,
            elems=recv.elems + (x,) if recv.elems is not None and meth == "append" else None,
        )
        if isinstance(node.func, cst.Attribute) and isinstance(node.func.value, cst.Attribute):
            owner = self.eval(node.func.value.value, state, ctx, record=False)
            if isinstance(owner.ref, Instance):
                owner.ref.attrs[node.func.value.attr.value] = new
        if path is not None:
            if path in state.env or "." not in path:
                state.env[path] = new
        return TOP

    def _model_method(self, recv: V, meth: str, node, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx) -> V:
        if meth in ("train", "eval"):
            if meth == "eval":
                mode: frozenset | None = EVAL
            else:
                flag = args[0] if args else kwargs.get("mode", V(CONST, const=True))
                mode = (TRAIN if flag.const else EVAL) if flag.is_const else None
            if isinstance(recv.ident, Alt):
                for member in recv.ident:
                    state.set_mode(member, mode)
            elif recv.ident is not None:
                state.set_mode(recv.ident, mode)
            # `model.module.eval()` on a DataParallel-style wrapper switches what the wrapper runs
            func = node.func if isinstance(node, cst.Call) else None
            if isinstance(func, cst.Attribute) and isinstance(func.value, cst.Attribute):
                if func.value.attr.value in ("module", "model", "_orig_mod"):
                    owner = self.eval(func.value.value, state, ctx, record=False)
                    if owner.kind == MODEL and owner.ident is not None and not isinstance(owner.ident, Alt):
                        state.modes[owner.ident] = mode
            return recv
        if meth in api.MODEL_SELF_METHODS:
            return recv
        if meth == "forward":
            return self.forward(recv, node, args, kwargs, state, ctx)
        if meth in ("parameters", "named_parameters", "modules", "children", "buffers"):
            return V(PARAMS, ident=frozenset({recv.ident}) if recv.ident is not None else None)
        if meth == "state_dict":
            return V(STATE_DICT, alias=recv.ident if recv.ident is not None else object(), ident=object())
        if meth in ("load_state_dict", "register_forward_hook", "register_buffer", "add_module"):
            return TOP
        if meth in ("generate", "predict", "sample", "encode", "decode", "embed"):
            return V(TENSOR, graph=None, taints=merge_taints(*args))
        return TOP

    def _tensor_method(self, recv: V, meth: str, node, args: list[V], kwargs: dict[str, V], ctx: Ctx) -> V:
        if meth in api.TENSOR_SCALAR_METHODS:
            return V(CONST, graph=False)
        if meth in ("detach", "detach_"):
            return recv.with_(graph=False)
        if meth == "clone":
            return recv.with_(alias=None)
        if meth in api.TENSOR_MOVE_METHODS:
            return recv.with_(alias=None)
        if meth in api.TENSOR_IDENTITY_METHODS:
            return recv
        if meth == "softmax":
            return V(TENSOR, probs=self._where(node), graph=recv.graph, taints=recv.taints, origin=node)
        if meth in api.TENSOR_NO_GRAPH_METHODS:
            return V(TENSOR, graph=False)
        if meth in ("max", "min", "sort", "topk", "kthvalue", "median", "mode") and (args or kwargs):
            return V(
                TUPLE,
                elems=(V(TENSOR, graph=recv.graph, taints=recv.taints), V(TENSOR, graph=False)),
                taints=recv.taints,
            )
        if meth in ("zero_", "fill_") and isinstance(node.func, cst.Attribute):
            text = _dotted(node.func.value) or ""
            if text.endswith(".grad") or text.endswith(".grad.data"):
                self.facts.resets.append(self._ev(ResetEvent, node, ctx))
            return TOP
        if meth in ("get", "pop", "keys", "split", "format", "join", "startswith", "endswith", "replace", "lower"):
            return V(UNKNOWN)
        vals = [recv, *args, *kwargs.values()]
        if recv.kind == UNKNOWN:
            self._opaque_training_step(node, vals[1:], ctx)
        kind = TENSOR if recv.kind == TENSOR else UNKNOWN
        return V(kind, graph=graph_of(*vals), taints=merge_taints(*vals), alias=None)

    # -- forward passes -----------------------------------------------------------------------------
    def forward(self, model: V, node: cst.Call, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx) -> V:
        probs = model.probs
        inst = model.ref if isinstance(model.ref, Instance) else None
        result = None
        if inst is not None and inst.cls.is_module:
            result = self.class_forward(inst)
            fwd = inst.cls.method("forward")
            if (
                fwd is not None
                and inst.cls.calls_loss
                and not ctx.model_method
                and fwd not in self.active
                and ctx.depth < MAX_DEPTH - 1
            ):
                # the model's own code, run on these arguments: a loss module gets the real predictions
                result = self.inline(fwd, node, args, kwargs, state, ctx, self_value=model, model_method=True)
            if result is not None:
                probs = result.probs
        taints: frozenset = merge_taints(*args, *kwargs.values())
        graph = True if state.grad == "on" else (False if state.grad == "off" else None)

        def output(extra: frozenset) -> V:
            """The forward's value: a tensor, or the tuple / dict the class's forward returns."""

            def part(e: V) -> V:
                return e.with_(
                    taints=e.taints | taints | extra, graph=graph if e.kind in (TENSOR, UNKNOWN) else e.graph
                )

            if result is not None and result.elems is not None:
                return V(
                    TUPLE, elems=tuple(part(e) for e in result.elems), taints=taints | extra, graph=graph, origin=node
                )
            if result is not None and result.items is not None:
                return V(
                    DICT,
                    items=tuple((k, part(e)) for k, e in result.items),
                    taints=taints | extra,
                    graph=graph,
                    origin=node,
                )
            return V(TENSOR, probs=probs, graph=graph, taints=taints | extra, origin=node)

        if ctx.model_method or ctx.name == "forward":
            return output(frozenset())
        return output(frozenset({self._forward_event(model, node, args, state, ctx)}))

    def _forward_event(self, model: V, node: cst.Call, args: list[V], state: State, ctx: Ctx) -> int:
        """Record a forward pass of ``model`` at ``node`` (outside the model's own code); return its id."""
        func = node.func
        # `model(x)` names the model; `model.forward(x)` / `model.predict(x)` name it before the method
        called = (
            func.value
            if type(func) is cst.Attribute
            and model.kind == MODEL
            and (func.attr.value == "forward" or self._is_method(model, func.attr.value))
            else func
        )
        model_expr = _dotted(called) or "the model"
        fid = next(self.ids)
        input_labels = " ".join(a.label for a in args if a.label)
        arg_text = " ".join(_dotted(a.value) or "" for a in node.args)
        fn_names = ctx.names()
        frames = [self.facts.frames[f] for f in self.frame_stack]
        evalish = (
            any(api.evalish_function(n) for n in fn_names)
            or any(api.evalish(f.label) for f in frames[-1:])
            or api.evalish(input_labels)
            or api.evalish(arg_text)
        )
        dummy = bool(args) and not api.evalish(arg_text) and all(_is_factory(a.origin) for a in args)
        ev = self._ev(
            ForwardEvent,
            node,
            ctx,
            id=fid,
            model=model,
            modes=state.mode_of(model.ident),
            sensitive=self.sensitivity(model),
            grad=state.grad,
            evalish=evalish,
            dummy_input=dummy,
            lightning_eval=ctx.lightning_eval,
            model_expr=model_expr,
        )
        self.facts.forwards.append(ev)
        return fid

    def sensitivity(self, model: V, _seen: set | None = None) -> bool | None:
        """Does the model hold layers that behave differently in train and eval mode? None: unknown."""
        if model.sensitive is not None:
            return model.sensitive
        inst = model.ref
        if not (isinstance(inst, Instance) and inst.cls.is_module):
            return None
        seen = _seen if _seen is not None else set()
        if id(inst) in seen:
            return False
        seen.add(id(inst))
        cls = inst.cls
        self.class_forward(inst)
        if any(c.uses_mode for c in cls.mro()):
            return True
        if any(not q.startswith("torch.nn.") for q in cls._qual_bases()):
            return None  # a subclass of some library model: cannot tell
        result: bool | None = False
        static = (
            cls._static_instance.ref.attrs
            if cls._static_instance is not None and isinstance(cls._static_instance.ref, Instance)
            else {}
        )
        for v in [*inst.attrs.values(), *static.values()]:
            if v.kind != MODEL:
                continue
            sub = self.sensitivity(v, seen)
            if sub:
                return True
            if sub is None:
                result = None
        return result

    def class_forward(self, inst: Instance) -> V | None:
        """What the model class's ``forward`` returns (probabilities? a tuple?), analysed once per class."""
        cls = inst.cls
        if cls._forward_probs is not None:
            return cls._forward_probs if isinstance(cls._forward_probs, V) else None
        cls._forward_probs = False  # recursion guard
        fwd = cls.method("forward")
        if fwd is None or len(self.active) > MAX_DEPTH:
            return None
        st = State(None, self.facts.parent_of)
        st.grad = None
        ctx = Ctx(id=next(self.ctx_ids), name="forward", func=fwd, parent=None, depth=1, model_method=True, entry=False)
        self_value = V(MODEL, ident=inst, ref=inst)
        self._bind_params(
            fwd, ctx, st, args=[], kwargs={}, self_value=self_value, unknown_callers=True, default_kind=TENSOR
        )
        saved_frames, saved_fresh, saved_stmt = self.frame_stack, self.fresh_stack, self.stmt
        self.frame_stack, self.fresh_stack = [], []
        self.active.append(fwd)
        losses_before = len(self.facts.loss_calls)
        try:
            self.exec_body(fwd.node.body, st, ctx)
        finally:
            self.active.pop()
            self.frame_stack, self.fresh_stack, self.stmt = saved_frames, saved_fresh, saved_stmt
        # a forward that computes a loss is worth re-running on each call's real arguments
        cls.calls_loss = len(self.facts.loss_calls) > losses_before
        result = None
        for r in ctx.returns:
            result = r if result is None else join(result, r)
        if result is not None and result.elems is None and result.items is None and result.probs is None:
            result = V(TENSOR)
        cls._forward_probs = result if result is not None else False
        return result

    # -- inlining ---------------------------------------------------------------------------------
    def instantiate(self, cls: ClassInfo, node, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx) -> V:
        inst = Instance(cls, created=next(self.seq))
        value = V(MODEL if cls.is_module else INSTANCE, ident=inst, ref=inst, origin=node)
        init = cls.method("__init__")
        if init is not None:
            self.inline(init, node, args, kwargs, state, ctx, self_value=value, model_method=cls.is_module)
        if cls._static_instance is None:
            cls._static_instance = value  # what `self` looks like to methods analysed on their own
        return value

    def inline(
        self,
        info: FuncInfo,
        node,
        args: list[V],
        kwargs: dict[str, V],
        state: State,
        ctx: Ctx,
        *,
        self_value: V | None = None,
        model_method: bool | None = None,
    ) -> V:
        self.executed.add(id(info.node))
        if info in self.active or ctx.depth >= MAX_DEPTH:
            return V(UNKNOWN, taints=merge_taints(*args, *kwargs.values()))
        callee_state = State(state.default_mode, state.parents)
        callee_state.modes = state.modes  # mode changes inside the callee are visible after the call
        callee_state.grad = info.grad if info.grad is not None else state.grad
        cls = info.cls
        is_model_method = (
            model_method
            if model_method is not None
            else bool(cls is not None and cls.is_module and not cls.is_lightning and info.name != "__call__")
        )
        lightning_eval = bool(
            cls is not None
            and cls.is_lightning
            and info.name.startswith(("validation_step", "test_step", "predict_step"))
        )
        callee = Ctx(
            id=next(self.ctx_ids),
            name=info.name,
            func=info,
            parent=ctx,
            depth=ctx.depth + 1,
            model_method=is_model_method or ctx.model_method,
            lightning_eval=lightning_eval or ctx.lightning_eval,
            closure=info.closure,
            entry=False,
            call_node=node,
            call_stmt=self.stmt,
        )
        if info.cls is not None and info.kind == "staticmethod":
            self_value = None
        self._bind_params(info, callee, callee_state, args, kwargs, self_value=self_value, unknown_callers=False)
        saved_stmt = self.stmt
        self.active.append(info)
        try:
            self.exec_body(info.node.body, callee_state, callee)
        finally:
            self.active.pop()
            self.stmt = saved_stmt
        if callee_state.grad != state.grad and info.grad is None:
            # set_grad_enabled(...) as a statement inside the callee leaks out, like the real thing
            state.grad = callee_state.grad
        state.modes = callee_state.modes
        result = None
        for r in callee.returns:
            result = r if result is None else join(result, r)
        return result if result is not None else V(CONST, const=None)

    def _bind_params(
        self,
        info: FuncInfo,
        ctx: Ctx,
        state: State,
        args: list[V],
        kwargs: dict[str, V],
        *,
        self_value: V | None,
        unknown_callers: bool,
        default_kind: str | None = None,
    ) -> None:
        params = info.node.params
        positional = [*params.posonly_params, *params.params]
        args = list(args)
        if info.cls is not None and info.kind != "staticmethod" and positional:
            first = positional[0]
            state.env[first.name.value] = self_value if self_value is not None else V(CLASS, ref=info.cls)
            ctx.self_value = state.env[first.name.value]
            positional = positional[1:]
        for i, p in enumerate(positional):
            name = p.name.value
            if i < len(args):
                v = args[i]
            elif name in kwargs:
                v = kwargs[name]
            elif p.default is not None:
                v = (
                    self.eval(p.default, state, ctx, record=False)
                    if unknown_callers is False
                    else self._param_default(p, name, state, ctx)
                )
            else:
                v = self._guess(name) if default_kind is None else V(default_kind, label=name)
            state.env[name] = v if not (v.kind == UNKNOWN and not v.label) else v.with_(label=name)
        for p in params.kwonly_params:
            name = p.name.value
            if name in kwargs:
                v = kwargs[name]
            elif p.default is not None:
                v = self._param_default(p, name, state, ctx)
            else:
                v = self._guess(name)
            state.env[name] = v
        if isinstance(params.star_arg, cst.Param):
            state.env[params.star_arg.name.value] = V(
                TUPLE, elems=tuple(args[len(positional) :]) if not unknown_callers else None
            )
        if params.star_kwarg is not None:
            state.env[params.star_kwarg.name.value] = V(DICT)

    def _param_default(self, p: cst.Param, name: str, state: State, ctx: Ctx) -> V:
        assert p.default is not None
        v = self.eval(p.default, state, ctx, record=False)
        if v.kind == CONST and v.const is None:
            return self._guess(name)
        return v


_CALLED = re.compile(r"(?<!def )\b([A-Za-z_]\w*)\s*\(")
_MODE_FUNCS = frozenset(
    {
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "feature_alpha_dropout",
        "batch_norm",
        "instance_norm",
    }
)


def _layer_sensitive(qual: str, kwargs: dict[str, V]) -> bool | None:
    """Whether a layer constructor builds a module whose output depends on train/eval mode."""
    name = api.last(qual)
    if not qual.startswith("torch.nn."):
        return True  # zoo models (torchvision, timm, transformers) have dropout and batch norm
    if "Dropout" in name or "BatchNorm" in name:
        return True
    if name.startswith("Transformer"):
        d = kwargs.get("dropout")
        return not (d is not None and d.is_const and d.const == 0)
    if name in ("MultiheadAttention", "RNN", "LSTM", "GRU"):
        d = kwargs.get("dropout")
        if d is None:
            return False
        return bool(d.const) if d.is_const else None
    if name.startswith("InstanceNorm"):
        t = kwargs.get("track_running_stats")
        return bool(t.const) if t is not None and t.is_const else (None if t is not None else False)
    if name in ("Sequential", "ModuleList", "ModuleDict"):
        return None
    return False


def _any_sensitive(values) -> bool | None:
    result: bool | None = False
    for v in values or ():
        if v.kind == MODEL:
            if v.sensitive:
                return True
            if v.sensitive is None:
                result = None
        elif v.kind not in (SOFTMAX, CONST):
            result = None
    return result


def _is_factory(node: Any) -> bool:
    """Was this tensor made by ``torch.randn(...)``-style factories (a smoke test, a shape probe)?"""
    return isinstance(node, cst.Call) and (_dotted(node.func) or "").rsplit(".", 1)[-1] in _DUMMY_FACTORIES


_MISSING = object()
_CONVENTIONAL = {"torch": "torch", "nn": "torch.nn", "F": "torch.nn.functional", "optim": "torch.optim"}
_MODULE_ONLY_METHODS = frozenset(
    {
        "parameters",
        "named_parameters",
        "train",
        "eval",
        "load_state_dict",
        "modules",
        "named_modules",
        "children",
        "named_children",
        "register_forward_hook",
        "register_forward_pre_hook",
    }
)
_JOIN_FUNCS = frozenset({"stack", "cat", "concat", "concatenate", "hstack", "vstack", "dstack"})
_CONTAINER_API = frozenset({"update", "add", "append", "extend", "record", "push", "accumulate", "log", "put"})
_STORE_METHODS = frozenset({"update", "append", "extend", "insert", "setdefault", "add"})
_DUMMY_FACTORIES = frozenset({"zeros", "ones", "randn", "rand", "empty", "full", "randint", "zeros_like", "ones_like"})

_BUILTINS = frozenset(
    {
        "len",
        "range",
        "enumerate",
        "zip",
        "print",
        "float",
        "int",
        "str",
        "bool",
        "sum",
        "max",
        "min",
        "abs",
        "round",
        "list",
        "tuple",
        "dict",
        "set",
        "sorted",
        "reversed",
        "iter",
        "next",
        "isinstance",
        "getattr",
        "format",
        "repr",
        "open",
        "map",
        "filter",
        "any",
        "all",
        "super",
        "type",
        "hasattr",
        "setattr",
    }
)

_BINOPS: dict[type, Any] = {
    cst.Add: lambda a, b: a + b,
    cst.Subtract: lambda a, b: a - b,
    cst.Multiply: lambda a, b: a * b,
    cst.Divide: lambda a, b: a / b,
    cst.FloorDivide: lambda a, b: a // b,
    cst.Modulo: lambda a, b: a % b,
    cst.Power: lambda a, b: a**b if abs(b) < 64 else NOCONST,
}
_CMPOPS: dict[type, Any] = {
    cst.Equal: lambda a, b: a == b,
    cst.NotEqual: lambda a, b: a != b,
    cst.LessThan: lambda a, b: a < b,
    cst.LessThanEqual: lambda a, b: a <= b,
    cst.GreaterThan: lambda a, b: a > b,
    cst.GreaterThanEqual: lambda a, b: a >= b,
    cst.Is: lambda a, b: a is b,
    cst.IsNot: lambda a, b: a is not b,
    cst.In: lambda a, b: a in b,
    cst.NotIn: lambda a, b: a not in b,
}


def _cond_key(test: cst.BaseExpression) -> str:
    """A key under which two guards count as the same condition.

    ``i % accum == 0`` and ``(i + 1) % accum == 0`` both pace on ``accum``: gradient accumulation written
    with the reset at the top and the step at the bottom of the iteration shares one key.
    """
    if isinstance(test, cst.Comparison) and isinstance(test.left, cst.BinaryOperation):
        if isinstance(test.left.operator, cst.Modulo):
            return "% " + cst.Module([]).code_for_node(test.left.right).strip()
    if isinstance(test, cst.BinaryOperation) and isinstance(test.operator, cst.Modulo):
        return "% " + cst.Module([]).code_for_node(test.right).strip()
    return cst.Module([]).code_for_node(test).strip()


def _self_add(target: cst.BaseExpression, value: cst.BaseExpression) -> cst.BaseExpression | None:
    """For ``t = t + x`` (or ``x + t``, or a running average ``t = 0.9 * t + 0.1 * x``) return ``x``:
    an accumulation spelled without ``+=``."""
    if not isinstance(value, cst.BinaryOperation) or not isinstance(value.operator, cst.Add):
        return None
    text = _dotted(target)
    if text is None:
        return None
    if _is_scaled(value.left, text):
        return value.right
    if _is_scaled(value.right, text):
        return value.left
    return None


def _is_scaled(node: cst.BaseExpression, text: str) -> bool:
    """``t`` itself, or ``t`` times / divided by something (``0.9 * t``, ``t * momentum``)."""
    if _dotted(node) == text:
        return True
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, (cst.Multiply, cst.Divide)):
        return _dotted(node.left) == text or (isinstance(node.operator, cst.Multiply) and _dotted(node.right) == text)
    return False


def analyze(module: cst.Module, source: str = "") -> Facts:
    """Run the shared analysis on a parsed module."""
    return Interpreter(module, source).run()
