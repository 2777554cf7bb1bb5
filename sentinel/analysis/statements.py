"""Statement execution: blocks, branches on partially evaluated conditions, loops (two passes, unrolled
over literals), ``with`` blocks (grad-mode contexts and local ``@contextmanager`` helpers), ``try``,
definitions, assignments, snapshots of state dicts and accumulations."""

from __future__ import annotations

import re
from typing import Any

import libcst as cst

from sentinel.analysis import torchapi as api
from sentinel.analysis.facts import (
    FIRST_ITERATION,
    AccumEvent,
    Event,
    Frame,
    LoaderIterEvent,
    ResetEvent,
    SnapshotEvent,
)
from sentinel.analysis.idioms import element_of
from sentinel.analysis.objects import ClassInfo, Ctx, FuncInfo, Instance, State, join_states
from sentinel.analysis.regions import LAST_ITERATION
from sentinel.analysis.syntax import (
    _MISSING,
    _code,
    _cond_key,
    _counter,
    _dotted,
    _first_index,
    _last_index_of,
    _none_test,
    _self_add,
    _target_names,
    _target_text,
    extended_tail,
    negated,
    union_sensitive,
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
    MODEL,
    QUAL,
    SOFTMAX,
    STATE_DICT,
    TENSOR,
    TOP,
    TRAINABLE,
    TUPLE,
    UNKNOWN,
    V,
    graph_of,
    is_param,
    merge_taints,
    param_models,
)

#: a decorator whose code switches the model it wraps to eval mode
_EVAL_CALL = re.compile(r"\.eval\(\s*\)")
#: a decorator whose code runs what it wraps without gradients (and never turns them on)
_NO_GRAD_CODE = re.compile(r"\bno_grad\b|\binference_mode\b")
_GRAD_ON_CODE = re.compile(r"enable_grad|set_grad_enabled")


class StatementsMixin:
    """Executes statements over abstract states; part of :class:`~sentinel.analysis.interpreter.Interpreter`."""

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
            carried = self._carried_names(node, state, ctx)
            before = {n: state.env.get(n) for n in carried}
            value = self.eval(node.value, state, ctx)
            for t in node.targets:
                self.assign(t.target, value, state, ctx, node.value)
            if carried:
                self._record_carried(node, carried, before, state, ctx)
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
            self.exec_import(node, state)
        elif isinstance(node, cst.ImportFrom):
            self.exec_import_from(node, state)
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
        if isinstance(node.test, cst.Name) and isinstance(test.origin, cst.Comparison):
            key = _cond_key(test.origin)  # a parameter bound to the caller's condition
        key = self._iteration_key(node.test) or key  # `if i == 0:` in `for i, mb in enumerate(...)`
        a = state.copy()
        none_name, none_in_body = _none_test(node.test)
        if none_name is not None and none_in_body and none_name in a.env:
            a.env[none_name] = V(CONST, const=None)  # `if x is None:` runs with x None
        self.cond_stack.append(key)
        try:
            self.exec_body(node.body, a, ctx)
        finally:
            self.cond_stack.pop()
        b = state.copy()
        if none_name is not None and not none_in_body and none_name in b.env:
            b.env[none_name] = V(CONST, const=None)  # `if x is not None: ...` skipped: x is None
        self.cond_stack.append(negated(key))
        try:
            if isinstance(node.orelse, cst.If):
                self.exec_if(node.orelse, b, ctx)
            elif isinstance(node.orelse, cst.Else):
                self.exec_body(node.orelse.body, b, ctx)
        finally:
            self.cond_stack.pop()
        jumped = a.jumped and b.jumped
        self._settle_models(a, b)
        self._replace(state, join_states([a, b]))
        self._unknown_branch_modes(state, a, b)
        state.jumped = jumped

    def _settle_models(self, a: State, b: State) -> None:
        """A name bound to a different model on each branch (``model = Bigram()`` / ``model = MLP()``):
        say on each whether it holds dropout or batch norm before the join forgets which class it was."""
        if a.returned or b.returned:
            return
        for name, va in a.env.items():
            vb = b.env.get(name)
            if vb is None or va is vb or va.kind != MODEL or vb.kind != MODEL or va.ref is vb.ref:
                continue
            if va.sensitive is None:
                a.env[name] = va.with_(sensitive=self.sensitivity(va))
            if vb.sensitive is None:
                b.env[name] = vb.with_(sensitive=self.sensitivity(vb))

    def _iteration_key(self, test: cst.BaseExpression) -> str | None:
        """``if i == 0:`` / ``if i == len(xs) - 1:`` on the index of an enclosing loop: the condition key
        of that loop's first iteration (its body runs once per run of the loop: a reset there clears
        every step that follows the loop) or of its last (no iteration of that loop follows it)."""
        first = _first_index(test)
        last = _last_index_of(test) if first is None else None
        for fid in reversed(self.frame_stack):
            loop = self.facts.frames[fid]
            if not isinstance(loop.node, cst.For):
                continue
            if first is not None and _counter(loop.node) == first:
                return None if loop.unrolled else f"{FIRST_ITERATION} {fid}"
            if last is not None and not loop.unrolled and last in _target_names(loop.node.target):
                return f"{LAST_ITERATION} {fid}"
        return None

    def _counts_layers(self, it: cst.BaseExpression, state: State, ctx: Ctx) -> bool:
        """``range(len(model))``: the indices of a model's layers."""
        if not (isinstance(it, cst.Call) and _dotted(it.func) == "range" and len(it.args) == 1):
            return False
        inner = it.args[0].value
        if not (isinstance(inner, cst.Call) and _dotted(inner.func) == "len" and len(inner.args) == 1):
            return False
        return self.eval(inner.args[0].value, state, ctx, record=False).kind == MODEL

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
            self._flush_carried(s1, last=True)
            return self._after_loop([entry, s1], [s1])
        s2 = join_states([entry, s1])
        self._flush_carried(s1)
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
        sampled = None
        if it.ident is not None and it.ident in self.facts.loader_sampler:
            sampler = self.facts.loader_sampler[it.ident]
            sampled = self._ev(LoaderIterEvent, node, ctx, sampler=sampler, loop=node)
            self.facts.loader_iters.append(sampled)
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
            frame.over_layers = it.kind == MODEL or self._counts_layers(node.iter, state, ctx)
            if element.kind == MODEL and element.ident is not None and element_of(it) is not None:
                frame.each = frozenset({element.ident})  # one member of an ensemble per iteration
            if sampled is not None:
                sampled.frame_id = frame.id
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
        if any(self._mock_patch(item.item, state, ctx) for item in node.items):
            return  # the body runs with parts of the program replaced by fakes: a unit test's, not training
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

    def _mock_patch(self, expr, state: State, ctx: Ctx) -> bool:
        """Is ``expr`` ``unittest.mock.patch(...)`` / ``patch.object(...)`` (or the ``mock`` package's), as a
        context manager or a decorator?"""
        fv = self.eval(expr.func if type(expr) is cst.Call else expr, state, ctx, record=False)
        return fv.kind == QUAL and isinstance(fv.const, str) and fv.const.startswith(_MOCK_PATCH)

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
        wrappers: list[tuple[V, cst.Decorator]] = []
        for dec in node.decorators:
            d = dec.decorator
            name = _dotted(d.func) if isinstance(d, cst.Call) else _dotted(d)
            if name in ("staticmethod", "classmethod", "property"):
                info.kind = name
                continue
            if name and name.rsplit(".", 1)[-1] in ("contextmanager", "asynccontextmanager"):
                info.kind = "contextmanager"
                continue
            if self._mock_patch(d, state, ctx):
                info.mocked = True
                continue
            v = self.eval(d, state, ctx)
            g = self._grad_of_ctx(v)
            project = v.kind == FUNC and isinstance(v.ref, FuncInfo)
            if g == "off" or project and _NO_GRAD_CODE.search(v.ref.code) and not _GRAD_ON_CODE.search(v.ref.code):
                # `@torch.no_grad()`, or the project's own (`@smart_inference_mode()` wrapping the function in
                # `torch.inference_mode()` or `torch.no_grad()`, whichever the version has)
                info.grad = "off"
            if project and cls is None:
                wrappers.append((v, dec))  # the project's own decorator: applied below
            if project and cls is not None and _EVAL_CALL.search(v.ref.code):
                info.evaluates = True  # `@eval_decorator def generate(self, ...)`: runs with the model in eval()
        if ctx.func is not None or cls is None and not ctx.module_level:
            info.closure = state.env
        info.globals = self._global_state
        if self._global_state is self.entry_state:  # the linted file's own functions, not imported ones
            self.functions.append(info)
        if cls is None:
            value = V(FUNC, ref=info, origin=node)
            for deco, dec in reversed(wrappers):
                # `@evaluation_mode def val_loss(...)`: val_loss is what the decorator returns (its
                # wrapper, which may switch modes or turn gradients off around the call)
                wrapped = self.call_value(deco, dec.decorator, [value], {}, state, ctx)
                if wrapped.kind != FUNC or not isinstance(wrapped.ref, FuncInfo):
                    break
                value = wrapped
            if value.ref is not info:
                info.wrapper = value.ref
            state.env[node.name.value] = value
        return info

    def define_class(self, node: cst.ClassDef, state: State, ctx: Ctx) -> None:
        bases = [self.eval(arg.value, state, ctx) for arg in node.bases]
        info = ClassInfo(node=node, bases=bases)
        if self._global_state is self.entry_state:
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
        if value.wrapper == "ddp" and isinstance(target, (cst.Name, cst.Attribute)):
            self._mark_wrapped(target, value_node, state, ctx)
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
                    shape=value.shape if value.kind == UNKNOWN else None,  # `x, y = batch` of a loader
                )
                for t in elements:
                    self.assign(t, part, state, ctx, None, loop_target=loop_target)
        elif isinstance(target, cst.Attribute):
            path = _dotted(target)
            if target.attr.value == "grad":
                owner = self.eval(target.value, state, ctx, record=False)
                models = param_models(owner)
                if models and value.kind == CONST and value.const is None:
                    # `p.grad = None` for every parameter of known models
                    self.facts.resets.append(self._ev(ResetEvent, target, ctx, target=models, kind="params"))
                else:
                    self.facts.resets.append(self._ev(ResetEvent, target, ctx))
                    if not (value.kind == CONST and value.const is None):
                        self.facts.grad_writes.append(self._ev(Event, target, ctx))
                return
            owner = self.eval(target.value, state, ctx, record=False)
            if target.attr.value == "requires_grad":
                self.facts.grad_flags.append(self._ev(Event, target, ctx))
            if target.attr.value == "requires_grad":
                self._flag_requires_grad(owner, value)
                self._mark_trainable(target.value, owner, value, state, ctx)
            if path is not None:
                if not loop_target:
                    self._maybe_snapshot(target, path, value, value_node, ctx, persistent=self._outlives(path))
                state.env[path] = value
            if owner.kind in (INSTANCE, MODEL) and isinstance(owner.ref, Instance):
                owner.ref.attrs[target.attr.value] = value
            if owner.kind == MODEL and value.kind == MODEL:
                self._part_of(value.ident, owner.ident)  # `model.fc = nn.Linear(...)`
            if owner.kind == MODEL and value.kind in (MODEL, SOFTMAX) and not ctx.model_method:
                self._replace_head(owner, target.attr.value, value, None)
        elif isinstance(target, cst.Subscript):
            self.eval(target.value, state, ctx, record=False)
            if not loop_target:
                text = _target_text(target)
                self._maybe_snapshot(target, text, value, value_node, ctx, persistent=self._outlives(text))
                if isinstance(value_node, cst.Name) and value.alias is not None and self._outlives(text):
                    self.facts.stored.add((ctx.id, value_node.value))
                self._store_item(target, value, state, ctx)
            if value.kind in (MODEL, SOFTMAX) and not ctx.model_method:
                self._assign_item_head(target, value, state, ctx)
        elif isinstance(target, cst.StarredElement):
            self.assign(target.value, TOP, state, ctx, None, loop_target=loop_target)

    def _mark_wrapped(self, target, value_node, state: State, ctx: Ctx) -> None:
        """``ddp = DDP(model)``: from here on ``model`` names the model *inside* the wrapper (a forward
        through it skips gradient synchronisation). ``model = DDP(model)`` rebinds the name instead."""
        if type(value_node) is not cst.Call or not value_node.args:
            return
        inner = value_node.args[0].value
        while isinstance(inner, cst.Call) and isinstance(inner.func, cst.Attribute):
            if inner.func.attr.value not in api.MODEL_SELF_METHODS:
                return
            inner = inner.func.value  # `DDP(model.to(rank))`
        path = _dotted(inner)
        if path is None or path == _dotted(target):
            return
        current = self.eval(inner, state, ctx, record=False)
        if current.kind != MODEL or current.wrapper is not None:
            return
        marked = current.with_(wrapper="inner")
        state.env[path] = marked
        if isinstance(inner, cst.Attribute):
            owner = self.eval(inner.value, state, ctx, record=False)
            if owner.kind in (INSTANCE, MODEL) and isinstance(owner.ref, Instance):
                owner.ref.attrs[inner.attr.value] = marked
        # other names of the same model (`self.model = model; self.ddp = DDP(model)`) are the inner one too
        ident, target_path = current.ident, _dotted(target)
        if ident is None:
            return
        for name, v in list(state.env.items()):
            if v.kind == MODEL and v.ident is ident and v.wrapper is None and name != target_path:
                state.env[name] = v.with_(wrapper="inner")
        holder = ctx.self_value
        if holder is not None and isinstance(holder.ref, Instance):
            for attr, v in list(holder.ref.attrs.items()):
                if v.kind == MODEL and v.ident is ident and v.wrapper is None and f"self.{attr}" != target_path:
                    holder.ref.attrs[attr] = v.with_(wrapper="inner")

    def fresh_in(self, name: str) -> tuple:
        """The loops (frame ids, outermost first) in whose current iteration ``name`` was bound."""
        return tuple(f for f, names in zip(self.frame_stack, self.fresh_stack) if name in names)

    def _outlives(self, path: str) -> bool:
        """Does the object at ``path`` (a name, ``self.x``, ``d[k]``) outlive the current loop iteration?"""
        base = path.split(".")[0].split("[")[0]
        if not self.fresh_stack:
            return True
        return base == "self" or base not in self.fresh_stack[-1]

    def _flag_requires_grad(self, owner: V, flag: V | None, method: bool = False) -> None:
        """``p.requires_grad = flag`` / ``p.requires_grad_(flag)`` on parameters of known models, or
        ``model.requires_grad_(flag)``: which models are frozen (a backbone, an EMA copy) or thawed again.
        (``model.requires_grad = False`` only sets an attribute on the module: it freezes nothing.)"""
        whole = method and owner.kind == MODEL and owner.ident is not None
        models = {owner.ident} if whole else set(param_models(owner) or ())
        models.discard(None)
        if not models:
            return
        if flag is None or flag.is_const and flag.const is True:
            self.facts.freezes.extend((next(self.seq), m, False) for m in models)
        elif flag.is_const and flag.const is False:
            self.facts.frozen.update(models)
            if not self._picked_in_loop():
                self.facts.freezes.extend((next(self.seq), m, True) for m in models)

    def _mark_trainable(self, name_node, owner: V, flag: V | None, state: State, ctx: Ctx) -> None:
        """``W.requires_grad = True`` / ``W.requires_grad_()`` on a plain tensor: ``W`` is now a weight of a
        model written by hand."""
        if (
            type(name_node) is cst.Name
            and owner.kind in (TENSOR, UNKNOWN)
            and not is_param(owner)
            and not ctx.model_method
            and (flag is None or flag.const is True)
            and name_node.value in state.env
        ):
            state.env[name_node.value] = owner.with_(kind=TENSOR, ref=TRAINABLE, graph=False)

    def _picked_in_loop(self) -> bool:
        """Is the current point under a condition opened inside the innermost loop (``for name, p in
        model.named_parameters(): if name.startswith("emb"): ...``): does it pick some iterations?"""
        if not self.frame_stack:
            return False
        return len(self.cond_stack) > self.facts.frames[self.frame_stack[-1]].cond_depth

    def _maybe_snapshot(self, target, name: str, value: V, value_node, ctx: Ctx, persistent: bool = False) -> None:
        if not self.frame_stack or ctx.model_method:
            return
        what = None
        if value.alias is not None and value.kind in (STATE_DICT, DICT):
            what = "state_dict"
        elif value.kind == MODEL and isinstance(value_node, (cst.Name, cst.Attribute, cst.Subscript)):
            # `best_model = model`, `nets["G_best"] = nets["G"]`: a second name for the same model
            if value.ident in self.copies and value.ident.created > self.facts.frames[self.frame_stack[-1]].start:
                return  # `module = copy.deepcopy(module)` just now, then stored: the copy is the snapshot
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
        if (_dotted(node.target) or "").endswith(".grad"):
            self.facts.grad_writes.append(self._ev(Event, node.target, ctx))  # `p.grad += noise`
        value = self.eval(node.value, state, ctx)
        old = self.eval(node.target, state, ctx)
        if old.kind == LIST and value.kind in (LIST, TUPLE) and isinstance(node.operator, cst.AddAssign):
            elems = old.elems + value.elems if old.elems is not None and value.elems is not None else None
            sensitive = union_sensitive(self.layers_sensitive(old), self.layers_sensitive(value))
            new = old.with_(
                elems=elems, taints=old.taints | value.taints, sensitive=sensitive, tail=extended_tail(old, value)
            )
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
            # `self.total += loss` in a loss object's method: the object keeps it for its backward()
            owner = self.eval(node.target.value, state, ctx, record=False)
            if owner.kind in (INSTANCE, MODEL) and isinstance(owner.ref, Instance):
                owner.ref.attrs[node.target.attr.value] = new

    def _accumulate(self, node, target, old: V, value: V, state: State, ctx: Ctx) -> V:
        text = _target_text(target)
        acc_id = next(self.ids)
        no_grad = state.grad == "off"  # `with torch.no_grad(): total += loss`: the sum records no graph
        if (
            self.frame_stack
            and not ctx.model_method
            and not no_grad
            and value.kind in (TENSOR, UNKNOWN)
            and (value.graph is not False)
            and (value.taints or value.graph is None)
        ):
            base = text.split(".")[0].split("[")[0]
            persistent = isinstance(target, (cst.Attribute, cst.Subscript))
            outlives = persistent or base not in self.fresh_stack[-1]
            where, stmt = self._accumulation_site(node, ctx)
            fresh = () if persistent else self.fresh_in(base)
            self.facts.accums.append(
                self._ev(
                    AccumEvent,
                    where,
                    ctx,
                    id=acc_id,
                    target=text,
                    value=value,
                    outlives=outlives,
                    site=stmt,
                    fresh_in=fresh,
                )
            )
        return V(
            TENSOR if TENSOR in (old.kind, value.kind) else UNKNOWN,
            graph=False if no_grad else graph_of(old, value),
            taints=old.taints | value.taints | (frozenset() if no_grad else {acc_id}),
        )


_MOCK_PATCH = ("unittest.mock.patch", "mock.patch")
