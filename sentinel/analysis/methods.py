"""Method calls on known objects: models (``train``/``eval``/``zero_grad``/``state_dict``...),
optimizers and scalers (``step``/``zero_grad``), tensors (``backward``/``detach``/``item``...) and
containers that accumulate values (``append``, meters' ``update``)."""

from __future__ import annotations

from collections.abc import Sequence

import libcst as cst

from sentinel.analysis import torchapi as api
from sentinel.analysis.facts import (
    AccumEvent,
    BackwardEvent,
    Event,
    ModeEvent,
    ResetEvent,
    SetEpochEvent,
    SnapshotEvent,
    StepEvent,
    UnscaleEvent,
)
from sentinel.analysis.idioms import Candidates, Framework
from sentinel.analysis.objects import EVAL, TRAIN, Ctx, FuncInfo, Ident, Instance, State
from sentinel.analysis.syntax import (
    _CONTAINER_API,
    _JOIN_FUNCS,
    _MODULE_ONLY_METHODS,
    _STORE_METHODS,
    _code,
    _dotted,
    _target_text,
    extended_tail,
    list_sensitive,
    list_tail,
    state_dict_call,
    union_sensitive,
)
from sentinel.analysis.values import (
    ACT_LOG_SOFTMAX,
    ACT_SIGMOID,
    ACT_SOFTMAX,
    CLASS,
    CONST,
    DICT,
    FUNC,
    INSTANCE,
    LIST,
    LOADER,
    MODEL,
    NOCONST,
    OPTIMIZER,
    PARAMS,
    QUAL,
    SCALER,
    SCHEDULER,
    STATE_DICT,
    TENSOR,
    TOP,
    TUPLE,
    UNKNOWN,
    Alt,
    V,
    graph_of,
    join,
    merge_taints,
    param_models,
)

_REINIT_METHODS = frozenset(
    {"apply", "load_state_dict", "reset_parameters", "init_weights", "initialize_weights", "_init_weights"}
)


def _writes_grad(meth: str, node) -> bool:
    """``p.grad.copy_(g)``, ``model.set_gradients(g)``: a call that may set gradients by hand."""
    if meth in ("zero_", "requires_grad_", "zero_grad") or api.resetish(meth):
        return False
    receiver = _dotted(node.func.value) if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) else ""
    if receiver and (receiver.endswith(".grad") or ".grad." in receiver) and meth.endswith("_"):
        return True
    return "grad" in meth.lower() and not meth.startswith(("clip_grad", "no_grad", "enable_grad", "set_grad_enabled"))


_CONTAINER_ADDS = frozenset({"append", "extend", "insert", "add_module"})


class MethodsMixin:
    """Models method calls on known objects; part of :class:`~sentinel.analysis.interpreter.Interpreter`."""

    # -- methods ----------------------------------------------------------------------------------
    def call_method(
        self, recv: V, meth: str, node: cst.Call, args: list[V], kwargs: dict[str, V], state: State, ctx: Ctx
    ) -> V:
        if meth in _REINIT_METHODS and recv.kind == MODEL and recv.ident is not None:
            self.facts.reinits.append(self._ev(ResetEvent, node, ctx, target=recv.ident, kind="model"))
        elif meth in _REINIT_METHODS and param_models(recv):
            for owner in param_models(recv):  # `for layer in model.children(): layer.reset_parameters()`
                self.facts.reinits.append(self._ev(ResetEvent, node, ctx, target=owner, kind="model"))
        if recv.kind == MODEL and recv.ident in self.containers and meth in _CONTAINER_ADDS:
            # `self.convs.append(StyledConv(...))`: what the container holds decides its layers
            found = self.added_sensitive(args[-1] if args else TOP, many=meth == "extend")
            self.containers[recv.ident] = union_sensitive(self.containers[recv.ident], found)
            return TOP
        if _writes_grad(meth, node):
            self.facts.grad_writes.append(self._ev(Event, node, ctx))
        if meth == "requires_grad_" or "freeze" in meth.lower():
            self.facts.grad_flags.append(self._ev(Event, node, ctx))  # which parameters train changes
        if meth == "requires_grad_":
            flag = args[0] if args else kwargs.get("requires_grad")
            self._flag_requires_grad(recv, flag, method=True)
            if isinstance(node.func, cst.Attribute):
                self._mark_trainable(node.func.value, recv, flag, state, ctx)
        # a method defined in this file wins over everything else
        if recv.kind in (INSTANCE, MODEL) and isinstance(recv.ref, Instance):
            m = recv.ref.cls.method(meth)
            if m is not None and m.kind != "property":
                module = recv.kind == MODEL and recv.ref.cls.is_module
                if module and meth in ("train", "eval"):
                    # an override (`def train(self, mode=True): super().train(mode); self.bn.eval()`)
                    # still switches the model itself first
                    self._model_method(recv, meth, node, args, kwargs, state, ctx)
                if meth == "forward" and module:
                    return self.forward(recv, node, args, kwargs, state, ctx)
                before = len(self.facts.backwards) + len(self.facts.steps)
                calls_before, tracked_before = self.module_calls, self.tracked_module_calls
                runs = getattr(self, "_forward_runs", 0)
                result = self.inline(m, node, args, kwargs, state, ctx, self_value=recv)
                if (
                    module
                    and self.module_calls > calls_before  # it ran layers (not `estimate_mfu()`)
                    and not ctx.model_method
                    and not meth.startswith("_")
                    and (not api.non_forward_method(meth) or recv.wrapper in ("module", "inner"))
                    and (result.kind in (TENSOR, TUPLE, DICT) or getattr(self, "_forward_runs", 0) != runs)
                    and len(self.facts.backwards) + len(self.facts.steps) == before
                ):
                    # `model.predict(x)`, `agent.act(s)`: the model runs its layers, like a forward
                    # (under the method's own @torch.no_grad() if it has one)
                    grad = m.grad
                    if grad is None and self.tracked_module_calls == tracked_before:
                        grad = "off"  # every layer it ran ran under its own `with torch.no_grad():`
                    fid = self._forward_event(recv, node, args, state, ctx, grad=grad)
                    if m.evaluates and self.facts.forwards[-1].id == fid:
                        self.facts.forwards[-1].modes = EVAL  # its decorator switched it for the call
                    result = _tainted(result, fid)
                elif module and result.kind == TENSOR and not result.taints and not ctx.model_method:
                    # `loss = module.training_step(batch)`: a tensor the model computed; if it is
                    # backpropagated, every place that kept it kept its graph
                    result = result.with_(taints=frozenset({next(self.ids)}))
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
            self._backward(node, target if target.taints else recv, ctx, grad=state.grad)
            return TOP
        if "backward" in meth and (args or kwargs):
            self._backward(node, x, ctx, grad=state.grad)
            return TOP
        if meth == "zero_grad":
            kind = "optimizer" if recv.kind == OPTIMIZER else ("model" if recv.kind in (MODEL, INSTANCE) else None)
            self.facts.resets.append(
                self._ev(
                    ResetEvent, node, ctx, target=recv.ident if kind else None, kind=kind, recv=receiver_name or ""
                )
            )
            return TOP
        if meth == "step":
            if recv.kind == OPTIMIZER or (
                recv.kind not in (SCHEDULER, SCALER, MODEL, LOADER) and rname and api.optimizerish(rname)
            ):
                ev = self._ev(
                    StepEvent,
                    node,
                    ctx,
                    optimizer=rname or "",
                    ident=recv.ident,
                    model=recv.alias,
                    recv=receiver_name or "",
                    grad=state.grad,
                )
                self.facts.steps.append(ev)
                self._closure(args, kwargs, node, state, ctx)
                ev.closure_end = next(self.seq)
            elif recv.kind == SCALER or (rname and api.scalerish(rname)):
                ev = self._ev(
                    StepEvent,
                    node,
                    ctx,
                    optimizer=x.label or "scaler",
                    ident=x.ident if x.kind == OPTIMIZER else None,
                    model=x.alias,
                    recv=(_dotted(node.args[0].value) or "") if node.args else "",
                    scaled=(recv.ident or True) if recv.ref != "disabled" else None,
                    grad=state.grad,
                )
                self.facts.steps.append(ev)
                self._closure(args[1:], kwargs, node, state, ctx)
                ev.closure_end = next(self.seq)
            return TOP
        if recv.kind == SCALER or (recv.kind == UNKNOWN and rname and api.scalerish(rname)):
            if meth == "scale":
                return x
            if meth == "unscale_":
                opt_text = (_dotted(node.args[0].value) or "") if node.args else ""
                self.facts.unscales.append(
                    self._ev(UnscaleEvent, node, ctx, ident=x.ident if x.kind == OPTIMIZER else None, recv=opt_text)
                )
            return TOP
        if meth == "set_epoch":
            fixed = bool(args) and args[0].is_const  # `set_epoch(0)`: the same epoch every time
            self.facts.set_epochs.append(
                self._ev(SetEpochEvent, node, ctx, sampler=self._sampler_of(recv), fixed=fixed)
            )
            return TOP
        if recv.ref == "loaded":
            recv = self._loaded_method(recv, meth, node, state)
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
            # a dict built here (`parts = {"ce": ce(out, y), ...}`): its values are known, whichever comes
            stored = None
            if recv.kind == DICT and recv.items:
                for _, v in recv.items:
                    stored = v if stored is None else join(stored, v)
            if meth == "items":
                return V(TUPLE, ref="items", alias=recv.alias, tail=stored)
            if meth == "values":
                return V(LIST, elems=None, alias=recv.alias, taints=recv.taints, tail=stored)  # what was stored in it
            return V(UNKNOWN)
        if recv.kind in (LIST, UNKNOWN, TUPLE) and meth in ("append", "extend", "insert", "add"):
            return self._append(recv, meth, node, args, state, ctx)
        if recv.kind == LIST and meth in ("pop", "remove", "clear", "reverse", "sort"):
            return self._shrink(recv, meth, node, args, state)
        if recv.kind == PARAMS:
            return TOP
        if recv.kind == UNKNOWN and meth in ("next", "__next__") and not args:
            return V(UNKNOWN, label=recv.label, taints=recv.taints)  # `dataiter.next()`: like next(dataiter)
        if recv.kind == UNKNOWN:
            self.note_maybe_reset(node, recv, meth, [*args, *kwargs.values()], ctx)
            if isinstance(recv.ref, Candidates):
                return TOP
            if isinstance(recv.ref, Framework):  # `evaluator.run(val_loader)`: it switches their modes
                Framework.run(state, recv.ref.models)
                return TOP
        if recv.kind in (TENSOR, UNKNOWN):
            out = self._tensor_method(recv, meth, node, args, kwargs, ctx)
            if meth == "detach_" and isinstance(node.func, cst.Attribute):
                # `hidden.detach_()`: the tensor itself leaves its graph (recurrent state cut in place)
                path = _dotted(node.func.value)
                if path is not None and (path in state.env or "." not in path):
                    state.env[path] = out
            return out
        self._opaque_training_step(node, [*args, *kwargs.values()], ctx)
        return TOP

    def _self_cat(self, target, value, state: State, ctx: Ctx) -> cst.BaseExpression | None:
        """For ``t = torch.cat((t, x))`` return ``x``: growing a tensor across iterations."""
        text = _dotted(target)
        if text is None or type(value) is not cst.Call or not value.args:
            return None
        if _dotted(value.func) is None or api.last(_dotted(value.func) or "") not in _JOIN_FUNCS:
            return None  # only a plain name can be `torch.cat`: never evaluate a callee twice (`Net().to(d)`)
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
        ident = Ident(next(self.seq)) if value.ref in ("ctor", "copy") else ("guess", path or name)
        if value.ref == "copy":
            self.copies.add(ident)  # `copy.deepcopy(module).eval()`: a model, and a copy
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

    def _stored_by_call(self, node: cst.Call, state: State, ctx: Ctx, values: Sequence[V] = ()) -> None:
        """An unknown call given a long-lived container and a snapshot stores the snapshot in it; a
        ``state_dict()`` handed over directly (``heapq.heappush(top_k, (-loss, model.state_dict()))``)
        is itself a snapshot kept there."""
        if not self.frame_stack or len(node.args) < 2:
            return
        containers = [_dotted(a.value) for a in node.args if _dotted(a.value)]
        kept = [c for c in containers if c and self._outlives(c) and ("." in c or c in state.env)]
        if not kept:
            return
        self._note_stored(node.args, state, ctx)
        if ctx.model_method or not any(state_dict_call(a.value) for a in node.args):
            return
        for v in values:
            x = _live_state_dict(v)
            if x is not None:
                self._kept_snapshot(node, ctx, kept[0], x)
                return

    def _kept_snapshot(self, node, ctx: Ctx, target: str, x: V) -> None:
        """A live state dict (or dict aliasing one) put into container ``target`` by call ``node``."""
        source = "optimizer" if x.const == "optimizer" else "model"
        self.facts.snapshots.append(
            self._ev(
                SnapshotEvent, node, ctx, target=target, what="append", persistent=True, source=source, alias=x.alias
            )
        )

    def _closure(self, args: list[V], kwargs: dict[str, V], node, state: State, ctx: Ctx) -> None:
        for v in [*args, *kwargs.values()]:
            if v.kind == FUNC and isinstance(v.ref, FuncInfo):
                # what the optimizer calls to compute its loss trains, whatever it is named (`eval`)
                self.inline(v.ref, node, [], {}, state, ctx, name="closure")

    def _backward(self, node, value: V, ctx: Ctx, grad: str | None = None) -> None:
        self.facts.backwards.append(
            self._ev(BackwardEvent, node, ctx, taints=value.taints, grad=grad, in_model=ctx.model_method)
        )
        self.facts.proven_graph_taints.update(value.taints)
        self.facts.backward_values[id(value)] = value

    def _shrink(self, recv: V, meth: str, node, args: list[V], state: State) -> V:
        """``layers.pop()`` and other in-place edits of a list: what is known of its elements changes."""
        last = not args and meth == "pop"
        out = list_tail(recv) if last else None
        if meth == "clear":
            new = recv.with_(elems=(), tail=None, sensitive=False)
        else:
            elems = recv.elems[:-1] if last and recv.elems else None
            sensitive = list_sensitive(recv.with_(elems=elems)) if elems is not None else (recv.sensitive and None)
            new = recv.with_(
                elems=elems if meth != "reverse" or recv.elems is None else recv.elems[::-1],
                tail=None,
                sensitive=sensitive,
            )
        path = _dotted(node.func.value) if isinstance(node.func, cst.Attribute) else None
        if path is not None and (path in state.env or "." not in path):
            state.env[path] = new
        return out if out is not None else TOP

    def _append(self, recv: V, meth: str, node, args: list[V], state: State, ctx: Ctx, path: str | None = None) -> V:
        receiver = node.func.value if isinstance(node.func, cst.Attribute) else None
        if path is None and isinstance(receiver, cst.IfExp):
            branches = [_dotted(receiver.body), _dotted(receiver.orelse)]
            if all(branches) and branches[0] != branches[1]:
                # `(no_decay if is_bias else decay).append(p)`: either list may receive the item
                for name, branch in zip(branches, (receiver.body, receiver.orelse)):
                    old = self.eval(branch, state, ctx, record=False)
                    self._append(old, meth, node, args, state, ctx, path=name)
                    state.env[name] = join(old, state.env.get(name, old))
                return TOP
        x = args[-1] if args else TOP
        if path is None:
            path = _dotted(receiver) if receiver is not None else None
        if x.kind in (TUPLE, LIST) and node.args and state_dict_call(node.args[-1].value) is not None:
            # `top_k.append((-loss, epoch, model.state_dict()))`: the live state dict, kept in a record
            x = _live_state_dict(x) or x
        if x.kind in (STATE_DICT, DICT) and x.alias is not None and self.frame_stack and not ctx.model_method:
            self._kept_snapshot(node, ctx, path or "<list>", x)
        acc_id = next(self.ids)
        items = x.elems if (meth == "extend" and x.elems is not None) else (x,)
        for item in items:
            if (
                self.frame_stack
                and not ctx.model_method
                and item.kind in (TENSOR, UNKNOWN)
                and (item.taints or id(item) in self.facts.backward_values or item.graph is None)
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
                        fresh_in=self.fresh_in(container) if container and "." not in container else (),
                    )
                )
        first = recv.elems == () or (recv.act is not None and x.act is not None and recv.act.kind == x.act.kind)
        new = recv.with_(
            taints=recv.taints | x.taints | {acc_id},
            graph=True if x.graph else recv.graph,
            act=x.act if (first and x.act is not None) else None,
            elems=recv.elems + (x,) if recv.elems is not None and meth == "append" else None,
            tail=x if meth == "append" else extended_tail(recv, x) if meth == "extend" else None,
            sensitive=union_sensitive(
                self.layers_sensitive(recv) if recv.kind in (LIST, TUPLE) else recv.sensitive,
                self.added_sensitive(x, many=meth == "extend"),
            ),
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
        if meth == "module" and recv.wrapper == "ddp":
            # `ddp_model.module(x)`: the wrapped model run directly, past the wrapper
            return self.forward(recv.with_(wrapper="module"), node, args, kwargs, state, ctx)
        if meth in ("train", "eval"):
            if meth == "eval":
                mode: frozenset | None = EVAL
            else:
                flag = args[0] if args else kwargs.get("mode", V(CONST, const=True))
                mode = (TRAIN if flag.const else EVAL) if flag.is_const else None
            if isinstance(recv.ident, Alt):
                for member in recv.ident:
                    state.set_mode(member, mode)
                    self._note_train_switch(member, mode, ctx)
            elif recv.ident is not None:
                state.set_mode(recv.ident, mode)
                self._note_train_switch(recv.ident, mode, ctx)
            self.facts.mode_switches.append(self._ev(ModeEvent, node, ctx, target=recv.ident, mode=mode))
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
            return V(PARAMS, ident=frozenset({recv.ident}) if recv.ident is not None else None, label=meth)
        if meth == "state_dict":
            return V(STATE_DICT, alias=recv.ident if recv.ident is not None else object(), ident=object())
        if meth in ("load_state_dict", "register_forward_hook", "register_buffer", "add_module"):
            return TOP
        if meth in api.FORWARD_METHODS and not ctx.model_method:
            given = [*args, *kwargs.values()]
            if given and all(v.is_const for v in given):
                return TOP  # `url.encode("utf-8")` on a name that looked like a model: no model runs on literals
            return self._method_forward(recv, meth, node, args, kwargs, state, ctx)
        if meth in ("generate", "predict", "sample", "encode", "decode", "embed"):
            return V(TENSOR, graph=None, taints=merge_taints(*args))
        return TOP

    def _tensor_method(self, recv: V, meth: str, node, args: list[V], kwargs: dict[str, V], ctx: Ctx) -> V:
        if meth in api.TENSOR_SCALAR_METHODS:
            return V(CONST, graph=False)
        if meth in ("detach", "detach_"):
            return recv.with_(graph=False)
        if meth == "clone" or meth in api.TENSOR_MOVE_METHODS:
            return self._note_graph_source(recv.with_(alias=None), recv)
        if meth in api.TENSOR_IDENTITY_METHODS:
            if recv.shape is not None:
                return recv.with_(shape=self.tensor_method_shape(recv, meth, args, kwargs, node))
            return recv
        if meth in ("softmax", "log_softmax"):
            dim = args[0] if args else kwargs.get("dim")
            return self.activation(ACT_SOFTMAX if meth == "softmax" else ACT_LOG_SOFTMAX, node, recv, dim, ctx)
        if meth == "sigmoid":
            return self.activation(ACT_SIGMOID, node, recv, None, ctx)
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
        chunks = meth in ("split", "chunk", "tensor_split") and "dim" not in kwargs and len(args) <= 1
        if chunks and recv.kind == TENSOR:
            # `data.split(32)`: chunks of rows, each a batch along dim 0 with the tensor's rank
            rank = recv.shape[0] if recv.shape is not None else None
            return V(LIST, graph=recv.graph, taints=recv.taints, ref="batches", shape=(rank, True))
        if meth in ("get", "pop", "keys", "split", "format", "join", "startswith", "endswith", "replace", "lower"):
            return V(UNKNOWN)
        vals = [recv, *args, *kwargs.values()]
        if recv.kind == UNKNOWN:
            self._opaque_training_step(node, vals[1:], ctx)
        kind = TENSOR if recv.kind == TENSOR else UNKNOWN
        shape = self.tensor_method_shape(recv, meth, args, kwargs, node) if recv.shape is not None else None
        graph = False if recv.kind == UNKNOWN and api.metricish(meth) else graph_of(*vals)
        return V(kind, graph=graph, taints=merge_taints(*vals), alias=None, shape=shape)

    def _sampler_of(self, value: V):
        """The DistributedSampler ``value`` is (or a loader's sampler), None when unknown."""
        samplers = self._samplers()
        if value.ident is not None and value.ident in samplers:
            return value.ident
        if value.kind == LOADER and value.ident is not None:
            return self.facts.loader_sampler.get(value.ident)
        return None

    def _samplers(self) -> set:
        return {s.ident for s in self.facts.samplers}


def _live_state_dict(v: V) -> V | None:
    """A state dict aliasing live tensors: ``v`` itself or an element of the tuple/list ``v``."""
    for x in (v.elems or ()) if v.kind in (TUPLE, LIST) else (v,):
        if x.kind == STATE_DICT and x.alias is not None:
            return x
    return None


def _tainted(value: V, fid: int) -> V:
    """``value`` (a custom method's result) and the tensors it holds carry forward ``fid``: unpacked
    (`pred, aux = model.forward_boosting(x)`), each part still came from that forward."""

    def part(v: V) -> V:
        return v.with_(taints=v.taints | {fid}) if v.kind in (TENSOR, UNKNOWN) else v

    taints = value.taints | {fid}
    if value.elems is not None:
        return value.with_(taints=taints, elems=tuple(part(e) for e in value.elems))
    if value.items is not None:
        return value.with_(taints=taints, items=tuple((k, part(v)) for k, v in value.items))
    return value.with_(taints=taints)
