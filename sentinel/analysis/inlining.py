"""Forward passes and inlining: a model call records a forward event (mode, grad mode, whether the
model has dropout/batch norm) and runs the class's ``forward``; calls to the program's own functions,
methods and classes are inlined with their arguments bound, so every call site gets its own context."""

from __future__ import annotations

import libcst as cst

from sentinel.analysis import torchapi as api
from sentinel.analysis.facts import (
    ForwardEvent,
)
from sentinel.analysis.idioms import generated
from sentinel.analysis.objects import MAX_DEPTH, ClassInfo, Ctx, FuncInfo, Ident, Instance, State
from sentinel.analysis.shapes import apply_shape
from sentinel.analysis.syntax import _dotted, _is_factory
from sentinel.analysis.values import (
    CLASS,
    CONST,
    DICT,
    FUNC,
    INSTANCE,
    LIST,
    MODEL,
    TENSOR,
    TOP,
    TRAINABLE,
    TUPLE,
    UNKNOWN,
    V,
    graph_of,
    join,
    merge_taints,
)


def _operand_names(expr: cst.BaseExpression) -> str:
    """The names an arithmetic argument is made of (``test_set.data / 255.``): what the data is."""
    parts: list[str] = []
    while type(expr) is cst.BinaryOperation:
        right = _dotted(expr.right)
        if right:
            parts.append(right)
        expr = expr.left
    left = _dotted(expr)
    return " ".join([left, *parts] if left else parts)


class InliningMixin:
    """Forward passes and inlined calls; part of :class:`~sentinel.analysis.interpreter.Interpreter`."""

    # -- forward passes -----------------------------------------------------------------------------
    def forward(self, model: V, node: cst.Call, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx) -> V:
        if model.ref == "dropout" and args and all(_is_factory(a.origin) for a in args):
            # a dropout layer on its own applied to a tensor made here (`drop(torch.ones(shape))`): a
            # random mask, the noise of a denoising autoencoder, not a model run
            x = args[0]
            return V(TENSOR, graph=False, taints=merge_taints(*args), origin=node, shape=x.shape)
        if model.ref == "stateless":
            # an activation / pooling layer called on its own: a function of its input, not a model run
            x = args[0] if args else TOP
            graph = False if state.grad == "off" else graph_of(x)
            shape = apply_shape(model.shape, x.shape)
            return V(TENSOR, graph=graph, taints=merge_taints(*args), origin=node, shape=shape)
        self.module_calls += 1
        if state.grad != "off" and not ctx.summary:
            self.tracked_module_calls += 1
        act = model.act
        transform = model.shape  # how the model maps its input's layout
        inst = model.ref if isinstance(model.ref, Instance) else None
        result = None
        absolute = False  # the result comes from running forward on these very arguments
        if inst is not None and inst.cls.is_module:
            summary = result = self.class_forward(inst)
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
                absolute = True
            if result is not None:
                act = result.act
            transform = summary.shape if summary is not None else None
        head = self._head_probs_of(model)
        if head is not None:
            act = head  # the head was replaced by one ending in an activation (nn.Softmax...)
        self._forward_runs = getattr(self, "_forward_runs", 0) + 1
        x = args[0] if args else TOP
        if result is None and transform is not None and len(transform) == 3 and model.kind == MODEL:
            # a recurrent layer: `out, hidden = self.lstm(x)`, where `out` keeps the input's layout
            result = V(TUPLE, elems=(V(TENSOR, shape=apply_shape(transform, x.shape)), V(TENSOR)))
        if absolute:
            out_act = act
            if act is not None and not ctx.model_method:
                self._note_over_batch(act, x, ctx, model_output=True)
        else:
            out_act = self.model_output_act(act, x, node, ctx)
        out_shape = apply_shape(transform, x.shape)
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
            return V(TENSOR, act=out_act, graph=graph, taints=taints | extra, origin=node, shape=out_shape)

        if ctx.model_method or ctx.name == "forward":
            return output(frozenset())
        # `model(x, y, make_adv=True)`: a keyword asking the model's own forward for an input gradient
        wants_grad = any(api.gradish(k) and not (v.is_const and not v.const) for k, v in kwargs.items())
        return output(frozenset({self._forward_event(model, node, args, state, ctx, wants_grad=wants_grad)}))

    def _forward_event(
        self,
        model: V,
        node: cst.Call,
        args: list[V],
        state: State,
        ctx: Ctx,
        grad: str | None = None,
        wants_grad: bool = False,
    ) -> int:
        """Record a forward pass of ``model`` at ``node`` (outside the model's own code); return its id."""
        func = node.func
        # `model(x)` names the model; `model.forward(x)` / `model.predict(x)` name it before the method
        called = (
            func.value
            if type(func) is cst.Attribute
            and model.kind == MODEL
            and (
                func.attr.value == "forward"
                or self._is_method(model, func.attr.value)
                or func.attr.value in api.FORWARD_METHODS
            )
            else func
        )
        model_expr = _dotted(called) or "the model"
        fid = next(self.ids)
        input_labels = " ".join(a.label for a in args if a.label)
        arg_text = " ".join(_dotted(a.value) or _operand_names(a.value) for a in node.args)
        fn_names = ctx.names()
        frames = [self.facts.frames[f] for f in self.frame_stack]
        evalish = (
            any(api.evalish_function(n) for n in fn_names)
            or any(api.evalish(f.label) for f in frames[-1:])
            or api.evalish(input_labels)
            or api.evalish(arg_text)
        )
        dummy = bool(args) and not api.evalish(arg_text) and all(_is_factory(a.origin) for a in args)
        grad = grad if grad is not None else state.grad
        modes = state.mode_of(model.ident)
        ev = self._ev(
            ForwardEvent,
            node,
            ctx,
            id=fid,
            model=model,
            modes=modes,
            sensitive=self.sensitivity(model),
            grad=grad,
            evalish=evalish,
            dummy_input=dummy,
            lightning_eval=ctx.lightning_eval,
            model_expr=model_expr,
            from_checkpoint=model.ref == "loaded",
            deliberate_train=self._deliberate_train(model, modes, grad, ctx),
            via=model.wrapper if model.wrapper in ("module", "inner") else None,
            wants_grad=wants_grad,
        )
        self.facts.forwards.append(ev)
        return fid

    def sensitivity(self, model: V, _seen: set | None = None) -> bool | None:
        """Does the model hold layers that behave differently in train and eval mode? None: unknown."""
        if model.sensitive is not None:
            return model.sensitive
        if model.ident in self.containers:
            return self.containers[model.ident]  # an `nn.ModuleList()` filled by `.append(...)`
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
        # what a class's forward returns, not a run of it: its layers run under no known grad mode
        ctx = Ctx(
            id=next(self.ctx_ids), name="forward", func=fwd, parent=None, depth=1, model_method=True, summary=True
        )
        self_value = V(MODEL, ident=inst, ref=inst)
        self._bind_params(
            fwd, ctx, st, args=[], kwargs={}, self_value=self_value, unknown_callers=True, default_kind=TENSOR
        )
        inputs = [*fwd.node.params.posonly_params, *fwd.node.params.params][1:2]
        for p in inputs:  # the first input stands for "a batch": the result's layout is relative to it
            bound = st.env.get(p.name.value)
            if bound is not None and bound.kind in (TENSOR, UNKNOWN):
                st.env[p.name.value] = bound.with_(shape=(0, True))
        saved_frames, saved_fresh, saved_stmt = self.frame_stack, self.fresh_stack, self.stmt
        saved_globals = self._global_state
        self.frame_stack, self.fresh_stack = [], []
        if fwd.globals is not None:
            self._global_state = fwd.globals
        self.active.append(fwd)
        losses_before = len(self.facts.loss_calls)
        try:
            self.exec_body(fwd.node.body, st, ctx)
        finally:
            self.active.pop()
            self.frame_stack, self.fresh_stack, self.stmt = saved_frames, saved_fresh, saved_stmt
            self._global_state = saved_globals
        # a forward that computes a loss is worth re-running on each call's real arguments
        cls.calls_loss = len(self.facts.loss_calls) > losses_before
        result = None
        for r in ctx.returns:
            result = r if result is None else join(result, r)
        if result is not None and result.elems is None and result.items is None and result.act is None:
            result = V(TENSOR, shape=result.shape)
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
        name: str | None = None,
    ) -> V:
        self.executed.add(id(info.node))
        if info in self.active or ctx.depth >= MAX_DEPTH or info.mocked:
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
            name=name or info.name,
            func=info,
            parent=ctx,
            depth=ctx.depth + 1,
            model_method=is_model_method or ctx.model_method,
            lightning_eval=lightning_eval or ctx.lightning_eval,
            closure=info.closure,
            entry=False,
            call_node=node,
            call_stmt=self.stmt,
            summary=ctx.summary,
            cond_base=len(self.cond_stack),
        )
        if node is not None:
            self.facts.call_sites[callee.id] = (node, self.stmt)
        if info.cls is not None and info.kind == "staticmethod":
            self_value = None
        self._bind_params(info, callee, callee_state, args, kwargs, self_value=self_value, unknown_callers=False)
        saved_stmt, saved_globals = self.stmt, self._global_state
        if info.globals is not None:
            self._global_state = info.globals  # a function from another module sees that module's names
        self.active.append(info)
        # a plain function over hand-made weights (`def net(X): return X @ W + b`) is a model's forward
        functional = cls is None and node is not None and not callee.model_method and not ctx.summary
        if functional:
            self.leaf_reads.append(0)
            marks = (len(self.facts.backwards), len(self.facts.steps), self.module_calls)
        reads = 0
        try:
            self.exec_body(info.node.body, callee_state, callee)
        finally:
            self.active.pop()
            self.stmt, self._global_state = saved_stmt, saved_globals
            if functional:
                reads = self.leaf_reads.pop()
        if callee_state.grad != state.grad and info.grad is None:
            # set_grad_enabled(...) as a statement inside the callee leaks out, like the real thing
            state.grad = callee_state.grad
        state.modes = callee_state.modes
        if callee.yielded and not callee.returns:
            # a generator (`def batches(...): ... yield x, y`): iterating it binds what it yields
            element = None
            for y in callee.yielded:
                element = y if element is None else join(element, y)
            return V(LIST, ident=object(), taints=merge_taints(*callee.yielded), ref=generated(element), origin=node)
        result = None
        for r in callee.returns:
            result = r if result is None else join(result, r)
        if reads and result is not None and self._functional_model_ran(result, args, kwargs, marks):
            result = self._functional_forward(info, node, result, args, callee_state.grad, state, ctx)
        return result if result is not None else V(CONST, const=None)

    def _functional_model_ran(self, result: V, args: list[V], kwargs: dict[str, V], marks: tuple) -> bool:
        """Did the call just run a model written as a plain function: its own code read leaf tensors
        that require grad, it was given data (a tensor that is not one of those weights), it returns a
        tensor computed from them, and it neither trained (no backward, no step) nor ran a module?"""
        if result.kind not in (TENSOR, TUPLE) or result.ref is TRAINABLE:
            return False  # `return W`: handing out the weights is no forward
        if (len(self.facts.backwards), len(self.facts.steps), self.module_calls) != marks:
            return False
        return any(
            a.kind in (TENSOR, UNKNOWN, LIST, TUPLE) and a.ref is not TRAINABLE and not a.is_const
            for a in (*args, *kwargs.values())
        )

    def _functional_forward(
        self, info: FuncInfo, node: cst.Call, result: V, args: list[V], grad: str | None, state: State, ctx: Ctx
    ) -> V:
        """Record the call as a forward pass of the hand-made model ``info`` (no train/eval modes, no
        layers that depend on them) and give its output that forward's graph."""
        ident = self._functional_models.setdefault(id(info), Ident(next(self.seq)))
        model = V(FUNC, ident=ident, ref=info, sensitive=False, label=info.name)
        fid = frozenset({self._forward_event(model, node, args, state, ctx, grad=grad)})
        graph = True if grad == "on" else (False if grad == "off" else None)
        if result.kind == TUPLE and result.elems is not None:
            elems = tuple(
                e.with_(taints=e.taints | fid, graph=graph) if e.kind in (TENSOR, UNKNOWN) else e for e in result.elems
            )
            return result.with_(elems=elems, taints=result.taints | fid)
        return result.with_(taints=result.taints | fid, graph=graph)

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
