"""Expression evaluation: names (with closures and module globals), attributes, constants and
operators, comparisons, subscripts, comprehensions and iteration over containers and loaders."""

from __future__ import annotations

from typing import Any

import libcst as cst

from sentinel.analysis import torchapi as api
from sentinel.analysis.facts import BareMethodEvent, LoaderIterEvent
from sentinel.analysis.idioms import (
    Candidates,
    Registry,
    any_instances,
    bound_model_method,
    concat_lists,
    element_of,
    list_of_models,
)
from sentinel.analysis.imports import lookup_star
from sentinel.analysis.objects import ClassInfo, Ctx, Ident, Instance, State
from sentinel.analysis.syntax import (
    _BINOPS,
    _BUILTINS,
    _CMPOPS,
    _CONVENTIONAL,
    _any_sensitive,
    _dotted,
    _string_value,
    _target_text,
)
from sentinel.analysis.values import (
    CLASS,
    CONST,
    DICT,
    FUNC,
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
    STATE_DICT,
    TENSOR,
    TOP,
    TRAINABLE,
    TUPLE,
    UNKNOWN,
    V,
    graph_of,
    is_param,
    join,
    merge_taints,
)

_BARE_METHODS = frozenset({"eval", "train", "zero_grad", "step", "backward", "update"})


class ExpressionsMixin:
    """Evaluates expressions to abstract values; part of :class:`~sentinel.analysis.interpreter.Interpreter`."""

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
        if type(expr) is cst.Attribute and expr.attr.value in _BARE_METHODS:
            self._bare_method(expr, state, ctx)
        self.eval(expr, state, ctx)

    def _bare_method(self, expr: cst.Attribute, state: State, ctx: Ctx) -> None:
        """``model.eval`` written as a statement: the method is named, never called."""
        meth = expr.attr.value
        recv = self.eval(expr.value, state, ctx, record=False)
        if isinstance(recv.ref, Instance) and recv.ref.cls.method(meth) is not None:
            if recv.ref.cls.method(meth).kind == "property":
                return
        name = api.last(_dotted(expr.value) or "")
        kind = recv.kind
        receiver = ""
        if meth in ("eval", "train", "zero_grad") and kind == MODEL:
            receiver = "model"
        elif meth in ("zero_grad", "step") and (kind == OPTIMIZER or kind == UNKNOWN and api.optimizerish(name)):
            receiver = "optimizer"
        elif meth == "step" and (kind == SCHEDULER or kind == UNKNOWN and api.schedulerish(name)):
            receiver = "scheduler"
        elif meth == "update" and (kind == SCALER or kind == UNKNOWN and api.scalerish(name)):
            receiver = "scaler"
        elif meth == "backward" and (
            kind == TENSOR and (recv.taints or recv.graph) or kind in (TENSOR, UNKNOWN) and "loss" in name.lower()
        ):
            receiver = "loss"
        if receiver == "loss":
            # the code means to backpropagate here: other rules see the training step it intends
            self._backward(expr, recv, ctx)
        if receiver:
            text = f"{_dotted(expr.value) or 'obj'}.{meth}"
            self.facts.bare_methods.append(
                self._ev(BareMethodEvent, expr, ctx, method=meth, receiver=receiver, text=text)
            )

    def eval(self, node: cst.BaseExpression | None, state: State, ctx: Ctx, record: bool = True) -> V:
        if node is None:
            return TOP
        self.steps += 1
        if self.steps > self.budget:
            self._tick()
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
            if left.kind == LIST and right.kind == LIST and isinstance(node.operator, cst.Add):
                joined = concat_lists(left, right)  # `teachers + students`
                if joined is not None:
                    return joined
            if left.kind == PARAMS and right.kind == PARAMS:
                both = left.ident | right.ident if left.ident is not None and right.ident is not None else None
                return V(PARAMS, ident=both)
            kind = TENSOR if TENSOR in (left.kind, right.kind) else UNKNOWN
            # data stays the data it came from (`test_images + noise` is still test data)
            label = next((v.label for v in (left, right) if v.label and v.graph is not True and v.kind != CONST), "")
            return V(
                kind,
                graph=_binop_graph(left, right),
                taints=merge_taints(left, right),
                shape=_binop_shape(left, right),
                label=label,
            )
        if t is cst.UnaryOperation:
            v = self.eval(node.expression, state, ctx)
            if isinstance(node.operator, cst.Not):
                return V(CONST, const=not v.const) if v.is_const else V(CONST)
            if v.is_const:
                try:
                    return V(CONST, const=-v.const if isinstance(node.operator, cst.Minus) else v.const)
                except Exception:
                    return V(CONST)
            return v.with_(act=None)
        if t is cst.BooleanOperation:
            left = self.eval(node.left, state, ctx)
            if left.kind in (LIST, TUPLE) and left.elems:  # a non-empty list is true: `callbacks or []`
                return left if isinstance(node.operator, cst.Or) else self.eval(node.right, state, ctx)
            if left.is_const:
                if isinstance(node.operator, cst.And):
                    return self.eval(node.right, state, ctx) if left.const else left
                return left if left.const else self.eval(node.right, state, ctx)
            right = self.eval(node.right, state, ctx)
            if right.is_const and isinstance(node.operator, cst.And) and not right.const:
                return right
            if isinstance(node.operator, cst.Or) and left.kind in (LIST, TUPLE) and right.elems == ():
                return left  # `callbacks or []`: the same elements, if any
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
                # a list of layers: does it hold dropout/batch norm? (project classes' layers read too)
                sensitive=_any_sensitive([self._layers_known(e) for e in elems]),
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
            ctx.yielded.append(value)
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
        gs = self._global_state
        g = gs.env if gs is not None else None
        if g is not None and name in g:
            return g[name]
        if gs is not None and (gs.loader is not None or gs.stars):
            if gs.loader is not None:
                gs.loader(name)
                if name in g:
                    return g[name]
            found = lookup_star(self, gs, name)
            if found is not None:
                return found
        if name in ("True", "False", "None"):
            return V(CONST, const={"True": True, "False": False, "None": None}[name])
        return None

    def eval_name(self, node: cst.Name, state: State, ctx: Ctx, record: bool = True) -> V:
        name = node.value
        if record:
            self.facts.last_read[(ctx.id, name)] = next(self.seq)
        v = self._lookup(name, state, ctx)
        if v is not None:
            if v.ref is TRAINABLE and self.leaf_reads:
                self.leaf_reads[-1] += 1  # the function running reads a hand-made model's weights
            if v.alias is not None and record and self.frame_stack and v.kind in (STATE_DICT, DICT, MODEL):
                # a snapshot read back (e.g. a rollback `model.load_state_dict(best)` in a later epoch)
                self.facts.snapshot_reads.append((v, tuple(self.frame_stack), tuple(self.pass_stack)))
            return v
        if name in _BUILTINS:
            return V(QUAL, const=f"builtins.{name}")
        if name in _CONVENTIONAL:  # `from utils import *` brought torch/nn/F in
            return V(QUAL, const=_CONVENTIONAL[name])
        return TOP

    def object_attr(self, base: V, attr: str) -> V:
        """Attribute ``attr`` of an object or class of the project (``base.ref`` an Instance or ClassInfo)."""
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
            if isinstance(inst, Instance) and cls._static_instance is not None and cls._static_instance.ref is not inst:
                st = cls._static_instance.ref.attrs.get(attr)
                if st is not None:
                    return st
        return self._guess(attr)

    def eval_attribute(self, node: cst.Attribute, state: State, ctx: Ctx, record: bool = True) -> V:
        path = _dotted(node)
        if path is not None and path in state.env:
            return state.env[path]
        base = self.eval(node.value, state, ctx, record)
        attr = node.attr.value
        if attr == "module" and base.kind == MODEL and base.wrapper == "ddp":
            return base.with_(wrapper="module")  # what a DistributedDataParallel wrapper runs
        if attr == "sampler" and base.kind == LOADER:
            sampler = self.facts.loader_sampler.get(base.ident) if base.ident is not None else None
            return V(UNKNOWN, ident=sampler, label="sampler")
        if base.kind == QUAL and isinstance(base.const, str):
            return V(QUAL, const=api.normalize(f"{base.const}.{attr}"))
        if base.kind == MODULE:
            found = self.unit_attr(base.ref, attr) if base.ref is not None else None
            return found if found is not None else TOP
        if base.kind in (INSTANCE, MODEL, CLASS) and base.ref is not None:
            return self.object_attr(base, attr)
        if base.kind == MODEL:
            if attr == "module":
                return base
            if attr in ("weight", "bias"):
                return V(TENSOR, graph=False)
            if attr == "training":
                return V(CONST)
            if attr.startswith("_"):
                return TOP
            if api.non_module_attribute(attr):  # `model.config`, `model.device`: data, not a submodule
                return V(UNKNOWN, label=attr)
            method = bound_model_method(base, attr)  # `set_mode = model.train`: a method, not a submodule
            if method is not None:
                return method
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
            if attr == "requires_grad" and (base.graph or (base.graph is False and base.taints)):
                return V(CONST, const=bool(base.graph))  # a forward's output: tracked unless under no_grad
            if attr in ("shape", "dtype", "device", "requires_grad", "is_cuda", "ndim"):
                return V(CONST)
            if attr in ("T", "mT", "real"):
                return base.with_(shape=None) if base.shape is not None and attr != "real" else base
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
            if (
                result is True
                and isinstance(comp.operator, (cst.Is, cst.IsNot))
                and right.is_const
                and right.const is None
                and left.kind == TENSOR
                and left.graph is True
            ):
                # a tensor computed with its graph is not None: `if hidden is not None: hidden.detach_()`
                result = isinstance(comp.operator, cst.IsNot)
            elif result is True and left.is_const and (right.is_const or right.elems is not None):
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
        # an unknown outcome remembers its expression: a helper's `if flag:` on a parameter bound to it
        # is then the caller's condition (gradient accumulation paced in the caller, stepped in a helper)
        return V(CONST, const=result) if result is not NOCONST else V(CONST, graph=False, origin=node)

    def eval_subscript(self, node: cst.Subscript, state: State, ctx: Ctx) -> V:
        base = self.eval(node.value, state, ctx)
        index: V = TOP
        if len(node.slice) == 1 and isinstance(node.slice[0].slice, cst.Index):
            index = self.eval(node.slice[0].slice.value, state, ctx)
        else:
            for s in node.slice:
                if isinstance(s.slice, cst.Index):
                    self.eval(s.slice.value, state, ctx)
        if base.items is not None:
            items = base.items
            if not items and type(node.value) is cst.Name:
                # `MODELS = {}` filled by a decorator (`@register_model("cnn") class SmallCNN`)
                items = tuple(self.registered_values(node.value.value, index.const if index.is_const else NOCONST))
            if index.is_const:
                for key, value in items:
                    if key == index.const:
                        return value
            if items and not (index.is_const and all(key is not None for key, _ in items)):
                values = [value for _, value in items]
                if len(values) == 1 and not base.items:
                    return values[0]
                registry = Registry.of(values)
                if registry is not None:  # `MODELS[args.arch]`: one of the registered classes
                    return V(UNKNOWN, ref=registry, taints=base.taints)
        if base.elems is not None and index.is_const and isinstance(index.const, int):
            try:
                return base.elems[index.const]
            except IndexError:
                return TOP
        if base.ref == "loaded" and base.kind == UNKNOWN:  # `torch.load(path)["decoder"]`
            return base.with_(origin=node)
        label = base.label
        if index.is_const and isinstance(index.const, str):
            label = f"{label}[{index.const}]" if label else index.const
        if base.kind == TENSOR:
            return base.with_(label=label, shape=self.subscript_shape(base, node, index))
        if base.kind == MODEL:
            return base
        if base.kind in (DICT, LIST, TUPLE, STATE_DICT):
            return V(
                UNKNOWN, graph=base.graph if base.graph else None, taints=base.taints, label=label, alias=base.alias
            )
        if base.kind == LOADER:
            return V(LOADER, label=label, shape=base.shape)
        # an item of a value computed without a graph (under no_grad) has none either
        graph = False if base.graph is False and base.kind == UNKNOWN else None
        return V(UNKNOWN, graph=graph, taints=base.taints, label=label, shape=self.subscript_shape(base, node, index))

    def eval_comprehension(self, node, state: State, ctx: Ctx) -> V:
        s = state.copy()
        comp = node.for_in
        first: V | None = None
        passes: list = []  # passes over distributed loaders, kept if the comprehension trains
        trained = len(self.facts.backwards) + len(self.facts.steps)
        while comp is not None:
            it = self.eval(comp.iter, s, ctx)
            first = it if first is None else first
            if it.ident is not None and it.ident in self.facts.loader_sampler and self.frame_stack:
                # `[self.train_step(x, y) for x, y in loader]`: one pass over a distributed loader
                sampler = self.facts.loader_sampler[it.ident]
                ev = self._ev(LoaderIterEvent, node, ctx, sampler=sampler, loop=node)
                ev.frame_id = self.frame_stack[-1]
                passes.append(ev)
            self.assign(comp.target, self.iter_element(it, comp.iter, s, ctx), s, ctx, None, loop_target=True)
            for cond in comp.ifs:
                self.eval(cond.test, s, ctx)
            comp = comp.inner_for_in
        if isinstance(node, cst.DictComp):
            self.eval(node.key, s, ctx)
            elt = self.eval(node.value, s, ctx)
            return V(DICT, taints=elt.taints, graph=elt.graph, alias=elt.alias, ident=object())
        elt = self.eval(node.elt, s, ctx)
        if passes and len(self.facts.backwards) + len(self.facts.steps) > trained:
            self.facts.loader_iters.extend(passes)
        state.modes = s.modes  # `[m.eval() for m in nets]` switches every element
        if first is not None and first.kind == PARAMS and is_param(elt):
            # `[p for p in model.parameters() if p.requires_grad]`: a chosen subset of those parameters
            return V(PARAMS, ident=first.ident, label="selected", ref="selected")
        # samples of data (`[stream[s : s + n] for s in starts]`): the layout of each, for torch.stack
        sample = elt.shape if elt.kind == TENSOR and elt.graph is False and not elt.taints else None
        return V(
            LIST,
            taints=elt.taints,
            graph=elt.graph,
            alias=elt.alias,
            ident=object(),
            shape=sample,
            ref=list_of_models(elt),
            # `nn.Sequential(*[block() for _ in range(n)])`: the layers of every element are the same
            sensitive=self.sensitivity(elt) if elt.kind == MODEL else None,
        )

    def iter_element(self, it: V, node, state: State, ctx: Ctx) -> V:
        """The value one iteration over ``it`` binds."""
        if it.kind == PARAMS:
            param = V(TENSOR, graph=False, label="param", ref=(PARAMS, it.ident))
            return V(TUPLE, elems=(V(CONST), param)) if it.label == "named_parameters" else param
        if it.kind == STATE_DICT:
            return V(UNKNOWN)
        element = element_of(it)
        if element is not None:
            if element.kind == MODEL:
                return element
            # a batch of data: named after the list, like a loader's batches (`for x, y in val_batches`),
            # and no longer a dummy input made by a factory call
            if element.kind == TUPLE:
                parts = tuple(e.with_(label=it.label, origin=None) for e in element.elems)
                return element.with_(elems=parts, label=it.label, origin=None)
            return element.with_(label=it.label, origin=None)
        if it.ref == "batches":  # a chunk of a tensor's rows: a tensor, batched along dim 0
            return V(TENSOR, graph=it.graph, taints=it.taints, shape=it.shape)
        if isinstance(it.ref, tuple) and it.ref[0] == "enumerate":
            return V(TUPLE, elems=(V(CONST), self.iter_element(it.ref[1], node, state, ctx)))
        if isinstance(it.ref, tuple) and it.ref[0] == "zip":
            return V(TUPLE, elems=tuple(self.iter_element(a, node, state, ctx) for a in it.ref[1]))
        if it.elems is not None:
            out = None
            for e in it.elems:
                out = join(out, e) if out is not None else e
            if out is not None and not isinstance(out.ref, Instance) and any_instances(it.elems):
                # `for cb in [Logger(), ZeroGrad()]`: one of these objects, whose classes are known
                return V(UNKNOWN, ref=Candidates.of(it.elems), label=it.label)
            return out if out is not None else TOP
        if it.kind == QUAL:
            return TOP
        if it.kind == LOADER and isinstance(it.ref, tuple) and it.ref[0] == "dataset":
            # a batch of a TensorDataset's tensors: each keeps its rank, dimension 0 the batch
            parts = tuple(V(UNKNOWN, graph=False, label=it.label, shape=(r, True)) for r in it.ref[1])
            return V(TUPLE, elems=parts, graph=False, label=it.label) if len(parts) > 1 else parts[0]
        if it.kind == TUPLE and it.ref == "items":
            value = it.tail if it.tail is not None else V(TENSOR, graph=False, alias=it.alias)
            return V(TUPLE, elems=(V(CONST), value), alias=it.alias)
        # batches from a loader: tensors without a graph, labelled by the loader
        return V(
            UNKNOWN,
            graph=False if it.graph is False else None,
            label=it.label,
            taints=it.taints if it.graph is not False else frozenset(),
            shape=it.shape if it.kind == LOADER or it.ref in ("enumerate", "batches") else None,
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
            # `loaders["valid"]`: the key says what the data is, as an evaluated subscript's label does
            key = _string_value(node.slice[0].slice.value) if isinstance(node.slice[0].slice, cst.Index) else None
            base = _dotted(node.value)
            if base and isinstance(key, str):
                return f"{base}[{key}]"
            return _target_text(node)
        return ""


def _binop_graph(left: V, right: V) -> bool | None:
    """:func:`graph_of` for ``a op b``. A detached tensor scaled by a value of unknown origin that no
    forward fed (``loss.detach() / args.accum_steps``) is still detached: that value is a number."""
    graph = graph_of(left, right)
    if graph is None:
        for a, b in ((left, right), (right, left)):
            if a.kind == TENSOR and a.graph is False and b.kind == UNKNOWN and b.graph is None and not b.taints:
                return False
    return graph


def _binop_shape(left: V, right: V) -> tuple | None:
    """Arithmetic with a scalar, or between two values of one layout, keeps the layout."""
    if left.kind == CONST:
        return right.shape
    if right.kind == CONST:
        return left.shape
    return left.shape if left.shape == right.shape else None
