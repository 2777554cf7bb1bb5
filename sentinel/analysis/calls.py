"""Calls: argument evaluation, dispatch on what is called (a local function, a class, a lambda, a
model, the torch API, a builtin), and the model of the torch API's constructors and functions
(layers, ``nn.Sequential``, losses, optimizers, grad-mode functions, softmax)."""

from __future__ import annotations

import re

import libcst as cst

from sentinel.analysis import torchapi as api
from sentinel.analysis.facts import (
    ClipEvent,
    CtorEvent,
    Event,
    LossCallEvent,
    ResetEvent,
    SamplerEvent,
    SetEpochEvent,
)
from sentinel.analysis.idioms import BoundModelMethod, Candidates, Framework, Registry, element_of
from sentinel.analysis.objects import EVAL, MAX_DEPTH, ClassInfo, Ctx, FuncInfo, Ident, Instance, State
from sentinel.analysis.syntax import (
    _JOIN_FUNCS,
    _MODE_FUNCS,
    _any_sensitive,
    _code,
    _dotted,
    _layer_sensitive,
    list_sensitive,
)
from sentinel.analysis.values import (
    ACT_LOG_SOFTMAX,
    ACT_SIGMOID,
    ACT_SOFTMAX,
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
    MODULE,
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
    TRAINABLE,
    TUPLE,
    UNKNOWN,
    Alt,
    V,
    graph_of,
    is_param,
    join,
    join_act,
    merge_taints,
    param_models,
)

#: ``nn.Parameter(t)``: a leaf tensor the optimizer trains
_PARAMETER = frozenset({"torch.nn.Parameter", "torch.nn.parameter.Parameter"})


class CallsMixin:
    """Dispatches calls; part of :class:`~sentinel.analysis.interpreter.Interpreter`."""

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
                elif a.star == "*" and v.kind in (LIST, TUPLE) and (v.sensitive is not None or v.tail is not None):
                    args.append(v)  # elements unknown, but what kind of layers they are (or the last) is known
                elif a.star == "*":
                    args.append(V(UNKNOWN, taints=v.taints))  # unknown elements
            else:
                args.append(v)
        return args, kwargs, starred

    def eval_call(self, node: cst.Call, state: State, ctx: Ctx) -> V:
        func = node.func
        if isinstance(func, cst.Attribute) and _is_super(func.value):
            return self.call_super(func.attr.value, node, state, ctx)
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
            if recv.kind == MODULE:  # `M.Net(...)`, `utils.evaluate(...)`: what the project module binds
                # (one of several modules, imported under one name on different paths: unknown)
                fv = (self.unit_attr(recv.ref, func.attr.value) if recv.ref is not None else None) or TOP
                args, kwargs, _ = self._args(node, state, ctx)
                return self.call_value(fv, node, args, kwargs, state, ctx)
            if recv.kind == QUAL and isinstance(recv.const, str):
                fv = V(QUAL, const=api.normalize(f"{recv.const}.{func.attr.value}"))
                args, kwargs, star = self._args(node, state, ctx)
                return self.call_value(fv, node, args, kwargs, state, ctx)
            args, kwargs, _ = self._args(node, state, ctx)
            return self.call_method(recv, func.attr.value, node, args, kwargs, state, ctx)
        fv = self.eval(func, state, ctx)
        args, kwargs, _ = self._args(node, state, ctx)
        return self.call_value(fv, node, args, kwargs, state, ctx)

    def _call_registry(
        self, registry: Registry, node: cst.Call, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx
    ) -> V:
        """One of a registry's classes or factories, called: what every choice has in common. Models
        keep what all of them share: a head ending in softmax, dropout or batch norm in every one."""
        results = [self.call_value(choice, node, args, kwargs, state, ctx) for choice in registry.choices]
        out: V | None = None
        for r in results:
            out = join(out, r)
        if out is None or out.kind != MODEL or out.ref is not None:
            return out if out is not None else TOP
        if not all(isinstance(r.ref, Instance) and r.ref.cls.is_module for r in results):
            return out
        summaries = [self.class_forward(r.ref) for r in results]
        act = shape = None
        if all(s is not None for s in summaries):
            act = summaries[0].act
            for summary in summaries[1:]:
                act = join_act(act, summary.act)
            shapes = {summary.shape for summary in summaries}
            shape = shapes.pop() if len(shapes) == 1 else None
        sensitive = {self.sensitivity(r) for r in results}
        return out.with_(act=act, shape=shape, sensitive=sensitive.pop() if len(sensitive) == 1 else None)

    def call_super(self, meth: str, node: cst.Call, state: State, ctx: Ctx) -> V:
        """``super().meth(...)`` in a method: the next class in the MRO that defines ``meth`` (a base
        class of this file or of another project file); a torch base class's method does nothing
        sentinel models (``nn.Module.__init__``)."""
        args, kwargs, _ = self._args(node, state, ctx)
        c: Ctx | None = ctx
        while c is not None and (c.func is None or c.func.cls is None):
            c = c.parent if c.closure is not None else None
        if c is None or c.self_value is None:
            return TOP
        mro = c.func.cls.mro()
        for cls in mro[1:]:
            m = cls.methods.get(meth)
            if m is not None and m.kind != "property":
                return self.inline(m, node, args, kwargs, state, ctx, self_value=c.self_value)
        return V(CONST, const=None) if meth == "__init__" else TOP

    def call_value(self, fv: V, node: cst.Call, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx) -> V:
        kind = fv.kind
        if isinstance(fv.ref, Registry):
            return self._call_registry(fv.ref, node, args, kwargs, state, ctx)
        if kind == FUNC and isinstance(fv.ref, cst.Lambda):
            return self.call_lambda(fv, node, args, kwargs, state, ctx)
        if kind == FUNC and isinstance(fv.ref, BoundModelMethod):  # `set_mode = model.eval; set_mode()`
            return self.call_method(fv.ref.model, fv.ref.name, node, args, kwargs, state, ctx)
        if kind == FUNC and isinstance(fv.ref, FuncInfo):
            self_value = fv.ident if isinstance(fv.ident, V) else None
            return self.inline(fv.ref, node, args, kwargs, state, ctx, self_value=self_value)
        if kind == CLASS and isinstance(fv.ref, ClassInfo):
            return self.instantiate(fv.ref, node, args, kwargs, state, ctx)
        if kind == QUAL and isinstance(fv.const, str):
            if isinstance(fv.ref, tuple) and fv.ref[0] == "partial":  # the arguments partial() bound come first
                args, kwargs = [*fv.ref[1], *args], {**fv.ref[2], **kwargs}
            return self.call_api(fv.const, node, args, kwargs, state, ctx)
        if kind == MODEL:
            return self.forward(fv, node, args, kwargs, state, ctx)
        if kind == UNKNOWN and fv.ref == "loaded":  # `model = torch.load(path)` then `model(x)`
            return self.forward(self._loaded_model(fv, node.func, state), node, args, kwargs, state, ctx)
        if kind == SOFTMAX:
            return self.apply_activation_layer(fv, node, args[0] if args else TOP, ctx)
        if kind == LOSS:
            loss = api.loss_kind(fv.const) if isinstance(fv.const, str) else ""
            return self.loss_call(fv.const == "ce", node, args, kwargs, ctx, loss=loss)
        if kind == INSTANCE and isinstance(fv.ref, Instance):
            call = fv.ref.cls.method("__call__")
            if call is not None:
                return self.inline(call, node, args, kwargs, state, ctx, self_value=fv)
        # unknown callable
        self.note_maybe_reset(node, fv, None, [*args, *kwargs.values()], ctx)
        name = _dotted(node.func) or ""
        if "freeze" in api.last(name).lower():
            self.facts.grad_flags.append(self._ev(Event, node, ctx))  # `unfreeze(model, n)` from a library
        if name and api.resetish(api.last(name)):
            self.facts.resets.append(self._ev(ResetEvent, node, ctx))
        elif "grad" in api.last(name).lower():
            self.facts.grad_writes.append(self._ev(Event, node, ctx))  # `set_flat_grad(model, g)`
        if "set_epoch" in api.last(name):
            self.facts.set_epochs.append(self._ev(SetEpochEvent, node, ctx))  # `utils.set_epoch(loader, e)`
        self._opaque_training_step(node, [*args, *kwargs.values()], ctx)
        self._stored_by_call(node, state, ctx, [*args, *kwargs.values()])
        # `Net()` brought in by `from models import *`: a class being instantiated
        ctor = fv is TOP and type(node.func) is cst.Name and node.func.value[:1].isupper()
        return V(
            UNKNOWN, taints=merge_taints(*args, *kwargs.values()), graph=None, origin=node, ref="ctor" if ctor else None
        )

    def _opaque_training_step(self, node, values: list[V], ctx: Ctx) -> None:
        """A call sentinel cannot see into that gets a model output *and* an optimizer (MAE's
        ``loss_scaler(loss, optimizer)``, a user's ``backward_and_step(loss, opt)``) backpropagates it.
        One that gets the optimizer, or an object holding it (a callback given the trainer), may reset
        its gradients (:meth:`note_maybe_reset`). An optimizer from a library factory (timm's
        ``create_optimizer``) is known by its name."""
        if not any(v.kind == OPTIMIZER or v.kind == UNKNOWN and _OPTIMIZER_NAME.search(v.label) for v in values):
            return
        taints = merge_taints(*(v for v in values if v.kind in (TENSOR, UNKNOWN)))
        if taints:
            self._backward(node, V(TENSOR, taints=taints), ctx)

    def note_maybe_reset(self, node, callee: V, method: str | None, values: list[V], ctx: Ctx) -> None:
        """A call sentinel cannot follow may reset gradients: a method of one of several known objects
        whose text resets them (``for cb in callbacks: cb.on_batch_start(self)``), or an unknown callable
        given the optimizer or an object holding it. A missing reset is then not proven (SEN002)."""
        if isinstance(callee.ref, Candidates):
            maybe = callee.ref.may_reset(method if method is not None else callee.ref.attr)
        else:
            maybe = any(
                v.kind == OPTIMIZER
                or v.kind == INSTANCE
                and isinstance(v.ref, Instance)
                and any(a.kind == OPTIMIZER for a in v.ref.attrs.values())
                for v in values
            )
        if maybe:
            self.facts.maybe_resets.append(self._ev(Event, node, ctx))

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

    def loss_call(
        self, is_ce: bool, node: cst.Call, args: list[V], kwargs: dict[str, V], ctx: Ctx, loss: str = ""
    ) -> V:
        inp = args[0] if args else kwargs.get("input", TOP)
        tgt = args[1] if len(args) > 1 else kwargs.get("target", TOP)
        self.facts.loss_calls.append(self._ev(LossCallEvent, node, ctx, is_ce=is_ce, input=inp, loss=loss))
        vals = [*args, *kwargs.values()]
        return V(TENSOR, graph=graph_of(inp, tgt), taints=merge_taints(*vals), origin=node)

    # -- torch API --------------------------------------------------------------------------------
    def call_api(self, qual: str, node: cst.Call, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx) -> V:
        name = api.last(qual)
        x = args[0] if args else TOP
        flag = kwargs.get("requires_grad")
        if (qual in _PARAMETER or flag is not None and flag.const is True) and not ctx.model_method:
            # the weights of a model written by hand: `W = torch.randn(784, 10, requires_grad=True)`
            return V(TENSOR, graph=False, ref=TRAINABLE, origin=node, shape=x.shape if qual in _PARAMETER else None)
        if name in _MODE_FUNCS and ctx.func is not None and ctx.func.cls is not None:
            ctx.func.cls.uses_mode = True
            self.note_dropout(qual, node, ctx)
        if qual in api.SOFTMAX_FUNCS or qual in api.LOG_SOFTMAX_FUNCS:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            kind = ACT_SOFTMAX if qual in api.SOFTMAX_FUNCS else ACT_LOG_SOFTMAX
            return self.activation(kind, node, x, dim, ctx, grad=state.grad)
        if qual in api.SIGMOID_FUNCS:
            return self.activation(ACT_SIGMOID, node, x, None, ctx, grad=state.grad)
        if qual == "apex.amp.initialize":
            # the same models and optimizers, patched for mixed precision: `(models, optimizers)`, or the
            # models alone when no optimizer is given
            opts = args[1] if len(args) > 1 else kwargs.get("optimizers")
            return x if opts is None else V(TUPLE, elems=(x, opts))
        if qual in api.CROSS_ENTROPY_FUNCS:
            return self.loss_call(True, node, args, kwargs, ctx, loss="ce")
        if api.is_functional_loss(qual):
            return self.loss_call(False, node, args, kwargs, ctx, loss=api.loss_kind(name))
        if qual in api.CROSS_ENTROPY_CLASSES:
            return V(LOSS, const="ce", origin=node)
        if qual in api.ACTIVATION_CLASSES:
            return self.activation_layer(qual, node, args, kwargs)
        if api.is_loss_class(qual):
            return V(LOSS, const=name, origin=node)
        if qual in api.NO_GRAD_CTX:
            flag = args[0] if args else kwargs.get("mode")
            if name == "inference_mode" and flag is not None and flag.is_const and not flag.const:
                return TOP  # inference_mode(False) changes nothing
            return V(GRAD_CTX, const="off")
        if qual in api.ENABLE_GRAD_CTX:
            return V(GRAD_CTX, const="on")
        if qual in api.SET_GRAD_ENABLED:
            return V(GRAD_CTX, const=("on" if x.const else "off") if x.is_const else NOCONST)
        if qual in api.WRAPPERS:
            if name == "DistributedDataParallel":
                return (x if x.kind == MODEL else V(MODEL, ident=Ident(next(self.seq)))).with_(wrapper="ddp")
            return x if x.kind == MODEL else V(MODEL, ident=Ident(next(self.seq)))
        if name in api.CLIP_FUNCS and qual.startswith("torch.nn.utils"):
            models = x.ident if x.kind == PARAMS and x.ident and None not in x.ident else None
            limit = args[1] if len(args) > 1 else kwargs.get("max_norm", kwargs.get("clip_value", TOP))
            limit_text = _code(node.args[1].value) if len(node.args) > 1 else ""
            measure = "inf" in limit_text or (
                limit.is_const and isinstance(limit.const, (int, float)) and limit.const >= 1e6
            )
            self.facts.clips.append(self._ev(ClipEvent, node, ctx, models=models, measure_only=measure))
            return V(TENSOR, graph=False, origin=node)
        if qual == "torch.nn.Sequential":
            return self._sequential(node, args)
        if qual in ("torch.nn.ModuleList", "torch.nn.ModuleDict"):
            heads: tuple | None = None
            if x.kind == DICT and x.items is not None:  # nn.ModuleDict({...}) / nn.ModuleDict(dict(...))
                sensitive = _any_sensitive([self._layers_known(v) for _, v in x.items])
                if all(key is not None for key, _ in x.items):
                    heads = x.items  # `self.heads["cls"](h)` runs that very head
            elif x.elems is not None:
                sensitive = _any_sensitive([self._layers_known(v) for v in x.elems])
            elif not args and not kwargs:  # `nn.ModuleList()`, filled by `.append(...)` later
                ident = Ident(next(self.seq))
                self.containers[ident] = False
                return V(MODEL, ident=ident, origin=node)
            else:  # a comprehension / loop-built list of layers
                sensitive = list_sensitive(x) if x.kind == LIST else None
            container = V(MODEL, ident=object(), origin=node, sensitive=sensitive, items=heads)
            for _, head in heads or ():
                if head.kind == MODEL:
                    self._part_of(head.ident, container.ident)  # `model.eval()` switches each head
            return container
        if api.is_module_class(qual):
            model = V(
                MODEL,
                ident=Ident(next(self.seq)),
                origin=node,
                sensitive=_layer_sensitive(qual, kwargs, args),
                shape=self.layer_shape(qual, kwargs),
                ref=api.standalone_kind(qual),
            )
            if api.starts_in_eval(qual):
                state.set_mode(model.ident, EVAL)
            if qual.startswith("torch.nn."):
                self.facts.fresh_layers.add(model.ident)  # randomly initialized, unlike a zoo's model
            return model
        if api.is_scaler_class(qual):
            enabled = kwargs.get("enabled")
            scaler = V(
                SCALER,
                origin=node,
                ident=Ident(next(self.seq)),
                ref="disabled" if enabled is not None and enabled.is_const and not enabled.const else None,
            )
            self.facts.ctors.append(self._ev(CtorEvent, node, ctx, what="scaler", ident=scaler.ident))
            return scaler
        if api.is_optimizer_class(qual):
            params = args[0] if args else kwargs.get("params", TOP)
            opt = V(
                OPTIMIZER,
                ident=Ident(next(self.seq)),
                origin=node,
                alias=params.ident if params.kind == PARAMS else _param_groups(params),
            )
            self._record_optimizer(qual, node, opt, args, kwargs, ctx)
            return opt
        if qual == "functools.partial":
            if x.kind == QUAL and isinstance(x.const, str):  # partial(torch.optim.SGD, momentum=0.9)
                return x.with_(ref=("partial", tuple(args[1:]), dict(kwargs)))
            return x if x.kind in (QUAL, FUNC, LOSS, MODEL) else TOP
        if api.is_scheduler(qual):
            return V(SCHEDULER, origin=node)
        if name == "TensorDataset":  # the rank of each tensor's samples, for the loader's batches
            ranks = tuple(a.shape[0] if a.kind == TENSOR and a.shape is not None and a.shape[1] else None for a in args)
            return V(UNKNOWN, ref=("dataset", ranks) if args and None not in ranks else None)
        if name == "DataLoader":
            size = kwargs.get("batch_size")
            batched = "collate_fn" not in kwargs and not (size is not None and size.is_const and size.const is None)
            label = args[0].label if args else ""
            dataset = args[0].ref if args and isinstance(args[0].ref, tuple) and args[0].ref[0] == "dataset" else None
            loader = V(
                LOADER,
                origin=node,
                label=label,
                shape=(None, True) if batched else None,
                ident=Ident(next(self.seq)),
                ref=dataset if batched else None,
            )
            given = kwargs.get("sampler", kwargs.get("batch_sampler"))
            sampler = self._sampler_of(given) if given is not None else None
            if sampler is not None:
                self.facts.loader_sampler[loader.ident] = sampler
            return loader
        if name == "BatchSampler":  # BatchSampler(DistributedSampler(ds), 64, False): batches of its indices
            inner = args[0] if args else kwargs.get("sampler")
            return inner if inner is not None and self._sampler_of(inner) is not None else TOP
        if name == "DistributedSampler":
            shuffle = kwargs.get("shuffle")
            sampler = V(UNKNOWN, ident=Ident(next(self.seq)), origin=node, label="sampler")
            self.facts.samplers.append(
                self._ev(
                    SamplerEvent,
                    node,
                    ctx,
                    ident=sampler.ident,
                    shuffle=bool(shuffle.const) if shuffle is not None and shuffle.is_const else True,
                    seeded="seed" in kwargs and not kwargs["seed"].is_const,
                )
            )
            return sampler
        if qual in ("copy.deepcopy",):
            if x.kind == MODEL:
                copied = Ident(next(self.seq))
                self.copies.add(copied)
                if x.ident is not None and not isinstance(x.ident, Alt) and self.facts.frozen_at(x.ident, 1 << 62):
                    self.facts.freezes.append((next(self.seq), copied, True))  # a copy of a frozen model (an EMA)
                return x.with_(ident=copied)
            if x.kind == UNKNOWN and x.ref is None:
                return x.with_(alias=None, ref="copy")  # a copy of an object we cannot see (a model, maybe)
            return x.with_(alias=None, graph=False if x.graph else x.graph)
        if x.kind == PARAMS and qual in ("builtins.list", "builtins.tuple", "builtins.iter"):
            return x
        if qual == "builtins.dict" and not args and kwargs:  # dict(wte=nn.Embedding(...), h=...): keys known
            return V(DICT, items=tuple(kwargs.items()), taints=merge_taints(*kwargs.values()), ident=object())
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
        if qual in ("torch.load", "torch.jit.load"):
            return self._checkpoint_load(node, args, state)
        if qual == "torch.save":
            self._note_saved(args, kwargs, state)
        if qual.startswith("torch.") or qual.startswith("numpy.") or qual.startswith("np."):
            # an elementwise function of a batch (`torch.clamp(noisy, 0, 1)`, `np.clip`) is still that batch:
            # it keeps the name that says where it came from (a test loader)
            label = x.label if name in api.ELEMENTWISE and x.kind in (TENSOR, UNKNOWN) else ""
            if name in api.NO_GRAPH_FUNCS or qual.startswith(("numpy.", "np.")):
                return V(
                    TENSOR, graph=False, origin=node, shape=self.factory_shape(name, args, kwargs, ctx), label=label
                )
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
            act = None
            if name in _JOIN_FUNCS and args:
                parts = x.elems if x.elems else (x,)
                if parts and all(p.act is not None and p.act.kind == parts[0].act.kind for p in parts):
                    act = parts[0].act
            return V(
                TENSOR,
                graph=graph_of(*flat) if flat and state.grad != "off" else False,  # no_grad: no graph
                taints=merge_taints(*flat, *vals),  # the containers' own history too (accumulated lists)
                origin=node,
                act=act,
                shape=self._function_shape(name, x, args, kwargs),
                label=label,
            )
        if api.resetish(name):
            self.facts.resets.append(self._ev(ResetEvent, node, ctx))
        elif "grad" in name.lower():
            self.facts.grad_writes.append(self._ev(Event, node, ctx))
        if "set_epoch" in name:
            self.facts.set_epochs.append(self._ev(SetEpochEvent, node, ctx))
        self._opaque_training_step(node, [*args, *kwargs.values()], ctx)
        self._stored_by_call(node, state, ctx, [*args, *kwargs.values()])
        held = Framework.models_in([*args, *kwargs.values()]) if api.is_framework(qual) else ()
        if held:  # `trainer.fit(model)`, `create_supervised_evaluator(model)`: modes are the framework's now
            Framework.run(state, held)
        # a CamelCase name from another module is most likely a class being instantiated
        return V(
            UNKNOWN,
            taints=merge_taints(*args, *kwargs.values()),
            origin=node,
            ref=Framework(held) if held else "ctor" if name[:1].isupper() else None,
        )

    def _record_optimizer(
        self, qual: str, node: cst.Call, opt: V, args: list[V], kwargs: dict[str, V], ctx: Ctx
    ) -> None:
        """An optimizer construction: which models, and whether it keeps state worth losing."""
        momentum = kwargs.get("momentum", args[2] if len(args) > 2 else None)
        stateless = api.last(qual) == "SGD" and (momentum is None or (momentum.is_const and not momentum.const))
        fresh = False
        arg = node.args[0].value if node.args else None
        selective = isinstance(arg, (cst.List, cst.Tuple, cst.Dict))
        subset = isinstance(arg, (cst.ListComp, cst.GeneratorExp)) or (
            isinstance(arg, cst.Call) and api.last(_dotted(arg.func) or "") == "filter"
        )
        subset = subset or bool(args) and args[0].ref == "selected"
        while isinstance(arg, cst.Call):
            arg = arg.func.value if isinstance(arg.func, cst.Attribute) else (arg.args[0].value if arg.args else None)
        base = _dotted(arg) if isinstance(arg, (cst.Name, cst.Attribute)) else None
        if base and self.fresh_stack and self.frame_stack and self.facts.frames[self.frame_stack[-1]].ctx == ctx.id:
            fresh = base.split(".")[0] in self.fresh_stack[-1] or base in self.fresh_stack[-1]
        models = opt.alias if opt.alias is not None and None not in opt.alias else None
        self.facts.ctors.append(
            self._ev(
                CtorEvent,
                node,
                ctx,
                what="optimizer",
                ident=opt.ident,
                models=models,
                fresh_params=fresh,
                stateless=stateless,
                selective=selective,
                subset=subset,
                chooser=tuple(self.cond_stack[ctx.cond_base :]) if ctx.call_node is not None else (),
            )
        )

    def _sequential(self, node: cst.Call, args: list[V]) -> V:
        act = None
        layers = list(args)
        named: list[V] | None = None
        if args:
            last = args[-1]
            if last.kind in (SOFTMAX, MODEL) and last.act is not None:
                act = last.act
            elif last.kind in (LIST, TUPLE) and last.elems is None:
                # `nn.Sequential(*layers)` of a list built in a loop, then `layers.append(nn.Sigmoid())`
                tail = last.tail
                if tail is not None and tail.kind in (SOFTMAX, MODEL) and tail.act is not None:
                    act = tail.act
                    layers = [*args[:-1], TOP, tail]
            elif last.kind == DICT or last.elems:
                elems = last.elems or ()
                layers = [e.elems[1] if e.elems and len(e.elems) == 2 else TOP for e in elems]
                named = layers  # `nn.Sequential(OrderedDict([(name, layer), ...]))`: the layers it names
                if elems and elems[-1].elems and len(elems[-1].elems) == 2:
                    mod = elems[-1].elems[1]
                    if mod.kind == SOFTMAX:
                        act = mod.act
        if act is not None:
            # the last layer's activation, seen from the Sequential's input
            act = act.shifted(self.sequential_shape(layers[:-1]) if len(layers) > 1 else (0, True))
        return V(
            MODEL,
            ident=Ident(next(self.seq)),
            act=act,
            origin=node,
            sensitive=_any_sensitive([self._layers_known(a) for a in (named if named is not None else args)]),
            shape=self.sequential_shape(layers),
        )

    def _function_shape(self, name: str, x: V, args: list[V], kwargs: dict[str, V]) -> tuple | None:
        """Layout of a ``torch.*`` function's result: elementwise ones keep their input's; stacking the
        samples a comprehension built makes a batch of them."""
        if name == "where" and len(args) == 3:
            # `torch.where(noise < p, random_tokens, stream)`: the layout both choices share
            a, b = args[1], args[2]
            same = a.shape is not None and a.shape == b.shape
            return a.shape if same and x.shape in (None, a.shape) else None
        if x.shape is None:
            return None
        if x.kind == LIST:
            # stacking samples (unbatched tensors) along a new dimension 0 makes a batch of them;
            # stacking batches (or chunks of one) does not
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if name != "stack" or x.shape[1] or dim is not None and not (dim.is_const and dim.const == 0):
                return None
            rank = x.shape[0]
            return (rank + 1 if rank is not None else None, True)
        if name in api.ELEMENTWISE:
            return x.shape
        if name == "flatten":
            start = args[1] if len(args) > 1 else kwargs.get("start_dim")
            if start is not None and start.is_const and isinstance(start.const, int) and start.const >= 1:
                return (None, True) if x.shape[1] else None
        return None

    def layers_sensitive(self, v: V) -> bool | None:
        """:func:`list_sensitive` of a list of layers, its project-class elements' layers read too."""
        if v.elems is not None:
            return _any_sensitive([self._layers_known(e) for e in v.elems])
        return list_sensitive(v)

    def added_sensitive(self, x: V, many: bool) -> bool | None:
        """Whether what ``append(x)`` (``many``: ``extend(x)``) adds to a list of layers holds dropout/batch norm."""
        if many and x.kind in (LIST, TUPLE):
            return self.layers_sensitive(x)
        return _any_sensitive((self._layers_known(x),))

    def _layers_known(self, v: V) -> V:
        """``v`` saying whether it holds dropout/batch norm, when it is an instance of a project model class."""
        if v.kind == MODEL and v.sensitive is None and isinstance(v.ref, Instance):
            return v.with_(sensitive=self.sensitivity(v))
        return v

    def _builtin(self, name: str, node, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx) -> V:
        x = args[0] if args else TOP
        if name in ("float", "int", "bool", "str", "len", "round", "abs", "repr", "print", "isinstance", "format"):
            if name == "abs":
                return x
            if name == "isinstance" and x.kind == TENSOR and len(args) == 2 and args[1].const in _TENSOR_CLASSES:
                return V(CONST, const=True, graph=False)  # every tensor is a `Variable` (the pre-0.4 name)
            return V(CONST, graph=False)
        if name in ("enumerate",):
            if x.kind in (LIST, TUPLE) and (x.elems or element_of(x) is not None):
                return V(UNKNOWN, ref=("enumerate", x), label=x.label)  # `for j, model in enumerate(models)`
            return (
                V(
                    UNKNOWN,
                    label=x.label,
                    graph=x.graph,
                    taints=x.taints,
                    alias=x.alias,
                    ref="enumerate",
                    elems=None,
                    shape=x.shape if x.kind == LOADER else None,
                    ident=x.ident if x.kind == LOADER else None,
                )
                if x.kind != PARAMS
                else x
            )
        if name in ("list", "tuple", "iter") and x.kind == PARAMS:
            return x
        if name in ("list", "tuple") and x.kind in (LIST, TUPLE) and len(args) == 1:
            return x.with_(kind=LIST if name == "list" else TUPLE, ident=object())  # a copy, same elements
        if name == "filter" and len(args) > 1 and args[1].kind == PARAMS:
            return args[1]  # filter(lambda p: p.requires_grad, model.parameters())
        if name == "zip" and args and all(a.ref == "batches" for a in args):
            # zip(x.split(16), y.split(16)): each iteration binds one batch of each
            labels = ",".join(a.label for a in args if a.label)
            return V(UNKNOWN, label=labels, taints=merge_taints(*args), ref=("zip", tuple(args)))
        if name in ("zip", "iter", "reversed", "sorted", "list", "tuple", "next"):
            if name == "list" and x.kind in (LIST, TUPLE):
                return x.with_(kind=LIST)
            labels = ",".join(a.label for a in args if a.label)
            return V(UNKNOWN, label=labels, taints=merge_taints(*args))
        if name == "range":
            return V(UNKNOWN, graph=False, label="range")
        if name == "map" and len(args) >= 2:
            return self._map_call(node, args, state, ctx)
        if name in ("sum", "max", "min"):
            return V(TENSOR if x.graph else UNKNOWN, graph=x.graph, taints=x.taints)
        if name == "dict":
            return x if x.kind in (STATE_DICT, DICT) else V(DICT, taints=x.taints, ident=object())
        if name == "getattr":
            # getattr(nn, cfg["criterion"]) with a constant name is just an attribute
            if len(args) >= 2 and x.kind == QUAL and isinstance(x.const, str) and isinstance(args[1].const, str):
                return V(QUAL, const=api.normalize(f"{x.const}.{args[1].const}"))
            if len(args) == 2 and x.kind == QUAL and api.normalize(str(x.const)) == "torch.optim":
                return V(QUAL, const=api.ANY_OPTIMIZER)  # getattr(optim, args.optim): some optimizer class
            if len(args) == 2 and x.kind in (INSTANCE, MODEL) and x.ref is not None and isinstance(args[1].const, str):
                return self.object_attr(x, args[1].const)  # getattr(callback, "on_step_end")
            if len(args) >= 2 and isinstance(x.ref, Candidates):  # getattr(cb, hook) over known callbacks
                return V(UNKNOWN, ref=x.ref.named(args[1].const if isinstance(args[1].const, str) else None))
            return TOP
        return V(UNKNOWN, taints=merge_taints(*args))


_TENSOR_CLASSES = ("torch.Tensor", "torch.autograd.Variable", "torch.autograd.variable.Variable")
_OPTIMIZER_NAME = re.compile(r"(^|[._])(optimizer|optimiser|optim|opt)(_?\d*)$")


def _is_super(node: cst.BaseExpression) -> bool:
    return isinstance(node, cst.Call) and isinstance(node.func, cst.Name) and node.func.value == "super"


def _param_groups(params: V) -> frozenset | None:
    """The models whose parameters a list of parameter groups (``[{"params": m.parameters()}, ...]``)
    holds, when every group's are known (none: the list holds plain tensors only)."""
    if params.kind not in (LIST, TUPLE) or not params.elems:
        return None
    out: frozenset = frozenset()
    for e in params.elems:
        group = e
        if e.items is not None:
            group = next((v for k, v in e.items if k == "params"), TOP)
        if group.kind == TENSOR and not is_param(group):
            continue  # a plain tensor (an input image optimized by gradient ascent): no model's
        models = group.ident if group.kind == PARAMS else _params_collected(group)
        if models is None:
            return None
        out = out | models
    return out


def _params_collected(group: V) -> frozenset | None:
    """The models whose parameters a list filled in a loop over ``named_parameters()`` holds
    (``decay.append(p)``): the models of what was appended, when every item is known."""
    if group.kind != LIST:
        return None
    items = [group.tail] if group.elems is None else list(group.elems)
    out: frozenset = frozenset()
    for item in items:
        models = param_models(item) if item is not None else None
        if not models or None in models:
            return None
        out = out | models
    return out or None
