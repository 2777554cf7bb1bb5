"""Real-code idioms the shared analysis understands, for every rule: whole modules loaded from
checkpoints, classifier heads replaced by a softmax, mode switches written as ``map``/comprehensions,
forwards through custom methods, recurrent state carried across iterations, values ``backward()`` was
called on, items stored under a changing key, mode switches under conditions the code cannot evaluate
and batch-norm recalibration (``update_bn``) that runs the model in train mode on purpose."""

from __future__ import annotations

import re
from typing import Any

import libcst as cst

from sentinel.analysis import torchapi as api
from sentinel.analysis.facts import AccumEvent
from sentinel.analysis.objects import TRAIN, ClassInfo, Ctx, FuncInfo, Ident, Instance, State
from sentinel.analysis.syntax import _dotted, _target_text
from sentinel.analysis.values import (
    CONST,
    DICT,
    FUNC,
    INSTANCE,
    LIST,
    MODEL,
    QUAL,
    SOFTMAX,
    TENSOR,
    TOP,
    TUPLE,
    UNKNOWN,
    Alt,
    V,
    join,
    merge_taints,
)

LOADED = "loaded"  # ref marker of a value read back with torch.load (a checkpoint or a whole module)

# attributes that hold the classification head of zoo models (torchvision, timm, pretrained models)
HEAD_ATTRS = frozenset(
    {"fc", "classifier", "head", "heads", "last_linear", "output", "out", "logits", "final", "final_layer", "top"}
)


#: inference methods a model class usually wraps in ``no_grad`` itself (and ``predict`` in ``eval()``)
_SELF_CONTAINED = frozenset({"generate", "sample", "predict", "predict_proba", "inference", "infer"})


class Elements:
    """What every element of a list built by a comprehension is (``[make_student() for _ in range(3)]``)."""

    __slots__ = ("value",)

    def __init__(self, value: V) -> None:
        self.value = value


class Framework:
    """An object of a training framework holding models (``create_supervised_evaluator(model)``): running
    it (``evaluator.run(loader)``) switches their modes as the framework sees fit."""

    __slots__ = ("models",)

    def __init__(self, models: tuple) -> None:
        self.models = models

    @staticmethod
    def models_in(values: list[V]) -> tuple:
        out: list = []
        for v in values:
            if v.kind == MODEL and v.ident is not None:
                out.extend(v.ident if isinstance(v.ident, Alt) else (v.ident,))
            elif isinstance(v.ref, Framework):
                out.extend(v.ref.models)
        return tuple(out)

    @staticmethod
    def run(state: State, models: tuple) -> None:
        for ident in models:
            state.set_mode(ident, None)  # unknown: never evidence of a missing eval() / train()


class Registry:
    """A class or factory picked from a dict literal by a key the code cannot know
    (``MODELS[args.arch](num_classes=10)``): calling it is calling one of them."""

    __slots__ = ("choices",)

    #: more entries than this (a model zoo's registry) stay unknown: each would be analysed
    LIMIT = 6

    def __init__(self, choices: tuple) -> None:
        self.choices = choices

    @classmethod
    def of(cls, values: list[V]) -> Registry | None:
        callables = 1 < len(values) <= cls.LIMIT and all(
            isinstance(v.ref, ClassInfo) or isinstance(v.ref, FuncInfo) and v.ident is None for v in values
        )
        return cls(tuple(values)) if callables else None


class Candidates:
    """One of several objects of known project classes (an element of ``[Logger(), ZeroGrad()]``), or the
    attribute ``attr`` of one of them (``getattr(cb, "on_batch_start")``; None: an unknown attribute)."""

    __slots__ = ("instances", "attr")

    def __init__(self, instances: tuple, attr: str | None = None) -> None:
        self.instances = instances
        self.attr = attr

    @classmethod
    def of(cls, values: tuple) -> Candidates:
        return cls(tuple(v.ref for v in values if isinstance(v.ref, Instance)))

    def named(self, attr: str | None) -> Candidates:
        return Candidates(self.instances, attr)

    def may_reset(self, method: str | None) -> bool:
        """Could calling ``method`` (None: some method) of one of the objects reset gradients? Read from
        the methods' text: a callback whose ``on_batch_start`` calls ``zero_grad()``."""
        for inst in self.instances:
            funcs = [inst.cls.method(method)] if method else [m for c in inst.cls.mro() for m in c.methods.values()]
            if any(f is not None and _RESETS.search(f.code) for f in funcs):
                return True
        return False


def generated(element: V | None) -> Any:
    """The ``ref`` of a generator's value: what iterating it binds, when it yields models or data."""
    return list_of_models(element) if element is not None else None


def any_instances(values: tuple) -> bool:
    """Are these all objects of project classes (at least one)?"""
    return bool(values) and all(v.kind in (INSTANCE, MODEL) and isinstance(v.ref, Instance) for v in values)


_RESETS = re.compile(r"zero_grad|\.grad\s*=\s*None|\.grad\.zero_\(|set_to_none")


class BoundModelMethod:
    """``model.train`` / ``model.eval`` referenced without a call (``set_mode = model.train``): calling
    it later is calling the method on the model, not running a submodule."""

    __slots__ = ("model", "name")

    def __init__(self, model: V, name: str) -> None:
        self.model = model
        self.name = name


MODULE_METHODS = frozenset(
    {
        "train",
        "eval",
        "forward",
        "parameters",
        "named_parameters",
        "modules",
        "named_modules",
        "children",
        "named_children",
        "state_dict",
        "load_state_dict",
        "zero_grad",
        "to",
        "cuda",
        "cpu",
        "apply",
        "requires_grad_",
        "half",
        "float",
        "double",
    }
)


def bound_model_method(model: V, attr: str) -> V | None:
    if attr not in MODULE_METHODS:
        return None
    return V(FUNC, ref=BoundModelMethod(model, attr))


def element_of(it: V) -> V | None:
    """The value iterating over a list of models built by a comprehension (or concatenation) binds."""
    return it.ref.value if isinstance(it.ref, Elements) else None


def list_of_models(elt: V) -> Any:
    """The ``ref`` a comprehension's list gets: its element, when that is a model, or a batch of data
    (``[(torch.randn(16, 8), torch.randint(0, 3, (16,))) for _ in range(10)]``: tensors without a graph
    whose layout is known)."""
    if elt.kind == MODEL or elt.kind == INSTANCE and isinstance(elt.ref, Instance):
        return Elements(elt)  # models, or objects of a project class (`[Logger() for _ in range(3)]`)
    parts = elt.elems if elt.kind == TUPLE and elt.elems else (elt,)
    if all(p.kind in (TENSOR, CONST) and p.graph is False for p in parts) and any(
        p.kind == TENSOR and p.shape is not None and p.shape[1] for p in parts
    ):
        return Elements(elt)
    return None


def concat_lists(left: V, right: V) -> V | None:
    """``teachers + students``: a list whose elements are either side's."""
    parts = []
    for side in (left, right):
        if side.elems is not None:
            parts.extend(side.elems)
        elif isinstance(side.ref, Elements):
            parts.append(side.ref.value)
        else:
            return None
    if left.elems is not None and right.elems is not None:
        return V(LIST, elems=left.elems + right.elems, taints=merge_taints(left, right), ident=object())
    out: V | None = None
    for p in parts:
        out = p if out is None else join(out, p)
    if out is None or out.kind != MODEL:
        return None
    return V(LIST, ref=Elements(out), taints=merge_taints(left, right), ident=object())


class IdiomsMixin:
    """Real-code idioms; part of :class:`~sentinel.analysis.interpreter.Interpreter`."""

    # -- whole modules loaded from checkpoints ----------------------------------------------------
    def _checkpoint_load(self, node: cst.Call, args: list[V] | None = None, state: State | None = None) -> V:
        """``torch.load(path)``: tensors, a checkpoint dict, or a whole pickled module; which one the
        code's later use tells (``.eval()``, a forward, ``.to(device)`` as a statement). When this
        program saved whole modules to that very path, it gets copies of them back, each in the mode
        it was saved in."""
        saved = getattr(self, "_saved", None)
        if saved and args and state is not None:
            entry = saved.get(_path_key(args[0]))
            if entry is not None:
                return self._reload(entry[1], node, state)
        return V(UNKNOWN, graph=False, ref=LOADED, origin=node)

    def _note_saved(self, args: list[V], kwargs: dict[str, V], state: State) -> None:
        """``torch.save(obj, path)`` of whole modules (or a dict of them): remember them with their mode."""
        obj = args[0] if args else kwargs.get("obj")
        path = args[1] if len(args) > 1 else kwargs.get("f")
        if obj is None or path is None or _path_key(path) is None:
            return
        if obj.kind == MODEL:
            content: Any = (obj, state.mode_of(obj.ident), self.sensitivity(obj))
        elif obj.items is not None and any(v.kind == MODEL for _, v in obj.items):
            content = {k: (v, state.mode_of(v.ident), self.sensitivity(v)) for k, v in obj.items if v.kind == MODEL}
        else:
            return
        if not hasattr(self, "_saved"):
            self._saved: dict = {}
        self._saved[_path_key(path)] = (path, content)

    def _reload(self, content: Any, node: cst.Call, state: State) -> V:
        def copy(entry: tuple) -> V:
            model, mode, sensitive = entry
            ident = Ident(next(self.seq))
            state.modes[ident] = mode
            return V(MODEL, ident=ident, ref=LOADED, sensitive=sensitive, act=model.act, origin=node)

        if isinstance(content, tuple):
            return copy(content)
        items = tuple((k, copy(e)) for k, e in content.items())
        return V(UNKNOWN, graph=False, ref=LOADED, origin=node, items=items)

    def _loaded_model(self, value: V, expr: cst.BaseExpression, state: State) -> V:
        """A loaded value used as a module: a model whose layers (and saved mode) are unknown."""
        ident = Ident(next(self.seq))
        model = V(MODEL, ident=ident, ref=LOADED, label=value.label, origin=value.origin)
        state.modes[ident] = None  # `training` was pickled with it: unknown until switched
        path = _dotted(expr)
        if path is not None and (path in state.env or "." not in path):
            state.env[path] = model
        return model

    def _loaded_method(self, recv: V, meth: str, node: cst.Call, state: State) -> V:
        """``.eval()``/``.train()``, or ``.to()``/``.cuda()`` whose result is dropped, make it a model."""
        if recv.kind != UNKNOWN or recv.ref != LOADED or not isinstance(node.func, cst.Attribute):
            return recv
        statement = isinstance(self.stmt, cst.Expr) and self.stmt.value is node
        if meth in ("eval", "train", "parameters", "named_parameters", "modules", "children") or (
            statement and meth in ("to", "cuda", "cpu", "float", "half")
        ):
            return self._loaded_model(recv, node.func.value, state)
        return recv

    # -- classifier heads replaced by a softmax ---------------------------------------------------
    def _head_probs_of(self, model: V) -> Any:
        """The activation (:class:`Act`) a replaced classifier head of ``model`` ends in, if any."""
        heads = getattr(self, "_heads", None)
        if not heads or model.ident is None:
            return None
        try:
            return heads.get(model.ident)
        except TypeError:
            return None

    def _replace_head(self, owner: V, attr: str, value: V, last_item: bool | None) -> None:
        """``model.fc = nn.Sequential(..., nn.Softmax(1))`` / ``model.classifier[-1] = nn.Softmax(1)``.

        ``last_item`` is None for an attribute assignment, True/False for an item assignment (is it the
        container's last element?)."""
        if owner.kind != MODEL or owner.ident is None or last_item is False:
            return
        inst = owner.ref if isinstance(owner.ref, Instance) else None
        if inst is not None:
            if not inst.cls.is_module or not _forward_returns_call_of(inst.cls, attr):
                return
        elif attr not in HEAD_ATTRS:
            return
        if not hasattr(self, "_heads"):
            self._heads: dict = {}
        act = value.act if value.kind in (SOFTMAX, MODEL) else None  # the activation the new head ends in
        try:
            if act is not None:
                self._heads[owner.ident] = act
            elif value.kind == MODEL or last_item is None:
                self._heads.pop(owner.ident, None)
        except TypeError:
            pass

    def _assign_item_head(self, target: cst.Subscript, value: V, state: State, ctx: Ctx) -> None:
        """``model.classifier[-1] = ...``: replace the last layer of a head container."""
        if not isinstance(target.value, cst.Attribute) or len(target.slice) != 1:
            return
        index = target.slice[0].slice
        if not isinstance(index, cst.Index):
            return
        iv = self.eval(index.value, state, ctx, record=False)
        if not (iv.is_const and isinstance(iv.const, int)):
            return
        owner = self.eval(target.value.value, state, ctx, record=False)
        if owner.kind == MODEL:
            self._replace_head(owner, target.value.attr.value, value, iv.const == -1)

    # -- map(lambda m: m.eval(), nets) ------------------------------------------------------------
    def _map_call(self, node: cst.Call, args: list[V], state: State, ctx: Ctx) -> V:
        fn, it = args[0], args[1]
        if fn.kind not in (FUNC, QUAL) or it.elems is None and it.kind not in (LIST, TUPLE, MODEL):
            return V(UNKNOWN, taints=merge_taints(*args))
        elem = self.iter_element(it, None, state, ctx)
        if fn.kind == QUAL:
            return V(UNKNOWN, taints=merge_taints(*args))
        out = self.call_value(fn, node, [elem], {}, state, ctx)
        return V(LIST, taints=out.taints, graph=out.graph, ident=object())

    # -- forwards through custom methods ----------------------------------------------------------
    def _method_forward(self, recv: V, meth: str, node: cst.Call, args, kwargs, state: State, ctx: Ctx) -> V:
        """``model.generate(x)``/``model.encode(x)`` on a model whose class sentinel cannot see."""
        if meth in _SELF_CONTAINED:
            # usually decorated with @torch.no_grad() in the library: the grad mode is unknown
            if meth not in ("generate", "sample") and recv.ident is not None and not isinstance(recv.ident, Alt):
                # a model's own `predict()` often switches it to eval itself: its mode is unknown from here
                state.set_mode(recv.ident, None)
            saved, state.grad = state.grad, None
            try:
                out = self.forward(recv, node, args, kwargs, state, ctx)
            finally:
                state.grad = saved
            return out
        return self.forward(recv, node, args, kwargs, state, ctx)

    # -- deliberate train mode (update_bn) --------------------------------------------------------
    def _note_train_switch(self, ident: Any, mode: Any, ctx: Ctx) -> None:
        if not hasattr(self, "_train_switches"):
            self._train_switches: dict = {}
        try:
            if mode == TRAIN and ctx.func is not None:
                self._train_switches[ident] = ctx.id
            else:
                self._train_switches.pop(ident, None)
        except TypeError:
            pass

    def _deliberate_train(self, model: V, modes: Any, grad: Any, ctx: Ctx) -> bool:
        """The function switched the model to train mode itself and runs it without grad."""
        if grad != "off" or modes != TRAIN or ctx.func is None:
            return False
        switches = getattr(self, "_train_switches", None)
        if not switches or model.ident is None:
            return False
        members = model.ident if isinstance(model.ident, Alt) else (model.ident,)
        return all(self._switched_here(m, switches, ctx) for m in members)

    def _switched_here(self, ident: Any, switches: dict, ctx: Ctx) -> bool:
        node, seen = ident, 0
        while node is not None and seen < 16:
            try:
                if switches.get(node) == ctx.id:
                    return True
            except TypeError:
                return False
            node = self.facts.parent_of.get(node)
            seen += 1
        return False

    # -- mode switches under conditions the code cannot evaluate ----------------------------------
    @staticmethod
    def _unknown_branch_modes(state: State, a: State, b: State) -> None:
        """After ``if cond: model.train() else: model.eval()`` with ``cond`` unknown, the mode is unknown."""
        if a.returned or b.returned or a.jumped or b.jumped:
            return
        for k in set(a.modes) | set(b.modes):
            ma, mb = a.mode_of(k), b.mode_of(k)
            if ma is not None and mb is not None and ma != mb:
                state.modes[k] = None

    # -- values backward() was called on ----------------------------------------------------------
    def _note_graph_source(self, derived: V, source: V) -> V:
        if derived is not source:
            self.facts.graph_source[id(derived)] = (derived, source)
        return derived

    # -- recurrent state carried across iterations ------------------------------------------------
    def _carried_names(self, node: cst.Assign, state: State, ctx: Ctx) -> list[str]:
        """Names that ``out, h = model(x, h)`` feeds back from the previous iteration (not detached in
        this one)."""
        if not self.frame_stack or type(node.value) is not cst.Call:
            return []
        func = node.value.func
        if isinstance(func, cst.Subscript) or (
            isinstance(func, cst.Name) and func.value in self._loop_targets(self.frame_stack[-1])
        ):
            return []  # `x = net[i](x)`, `for layer in layers: x = layer(x)`: a chain of layers, not a state
        targets: list[str] = []
        for t in node.targets:
            tt = t.target
            if isinstance(tt, cst.Name):
                targets.append(tt.value)
            elif isinstance(tt, (cst.Tuple, cst.List)):
                targets.extend(e.value.value for e in tt.elements if isinstance(e.value, cst.Name))
        if not targets:
            return []
        passed: set[str] = set()
        for a in node.value.args:
            v = a.value
            if isinstance(v, cst.Name):
                passed.add(v.value)
            elif isinstance(v, (cst.Tuple, cst.List)):
                passed.update(e.value.value for e in v.elements if isinstance(e.value, cst.Name))
        # `h_in = h_out; out, h_out = model(x, h_in)`: an alias of a target passed is the target passed
        env = state.env
        passed.update(
            t
            for t in targets
            if env.get(t) is not None
            and env[t] is not TOP
            and env[t].kind not in (CONST, QUAL)  # a value of its own, never a shared constant
            and any(env.get(p) is env[t] for p in passed)
        )
        fresh = self.fresh_stack[-1] if self.fresh_stack else set()
        out = [n for n in targets if n in passed and n not in fresh]
        return [n for n in out if not self._helper_detaches(node.value, n, state, ctx)] if out else out

    def _loop_targets(self, frame: int) -> set[str]:
        loop = self.facts.frames[frame].node
        target = getattr(loop, "target", None)
        if target is None:
            return set()
        return {n.value for n in _names_in(target)}

    def _helper_detaches(self, call: cst.Call, name: str, state: State, ctx: Ctx) -> bool:
        """Does the project function ``call`` runs rebind the parameter ``name`` is passed to with a
        detached copy before using it (``h = tuple(t.data for t in h)``, ``h = repackage_hidden(h)``)?"""
        if not isinstance(call.func, (cst.Name, cst.Attribute)):
            return False
        fv = self.eval(call.func, state, ctx, record=False)
        if fv.kind != FUNC or not isinstance(fv.ref, FuncInfo):
            return False
        fn = fv.ref.node
        params = [p.name.value for p in (*fn.params.posonly_params, *fn.params.params)]
        if fv.ref.cls is not None and fv.ref.kind not in ("staticmethod",) and params:
            params = params[1:]
        target = None
        for i, a in enumerate(call.args):
            if isinstance(a.value, cst.Name) and a.value.value == name:
                target = a.keyword.value if a.keyword is not None else (params[i] if i < len(params) else None)
        if target is None:
            return False
        pattern = rf"(^|\n)\s*{re.escape(target)}\s*=[^\n]*(\.data\b|detach|repackage)"
        return re.search(pattern, fv.ref.code) is not None

    def _record_carried(self, node: cst.Assign, names: list[str], before: dict, state: State, ctx: Ctx) -> None:
        """Mark the new state; whether it really reaches the next iteration is decided at the end of the
        iteration (:meth:`_flush_carried`): a later ``h = h.detach()`` / ``repackage_hidden(h)`` cuts it."""
        if ctx.model_method or not self.frame_stack:
            return
        if not hasattr(self, "_carry"):
            self._carry: dict = {}
            self._carry_ids: dict = {}
            self._carry_done: set = set()
        frame = self.frame_stack[-1]
        for name in names:
            new = state.env.get(name)
            old = before.get(name)
            if new is None or old is None or old.kind == MODEL or new.kind not in (TENSOR, UNKNOWN):
                continue
            if new.graph is not True:
                continue
            key = (frame, id(node), name)
            acc_id = self._carry_ids.setdefault(key, next(self.ids))  # one id for every pass over the body
            candidate = self._carry_candidates.pop(key, None) if hasattr(self, "_carry_candidates") else None
            if (
                candidate is not None
                and acc_id in old.taints
                and old.graph is not False  # not cut in place on the way (`hidden.detach_()`)
                and acc_id not in self._carry_done
            ):
                # the previous iteration's state arrives here still holding its graph: confirmed
                self._carry_done.add(acc_id)
                self.facts.accums.append(candidate)
            where, stmt = self._accumulation_site(node, ctx)
            ev = self._ev(
                AccumEvent, where, ctx, id=acc_id, target=name, value=new, outlives=True, site=stmt, carried=True
            )
            self._carry.setdefault(frame, []).append((key, name, ev))
            state.env[name] = new.with_(taints=new.taints | {acc_id})

    def _flush_carried(self, state: State, last: bool = False) -> None:
        """End of one pass over a loop body: the states that still hold their graph go on to the next
        iteration. The next pass confirms it (nothing detached them before the call); after the last
        pass of a body whose state was already stable, the pass itself is the proof."""
        carry = getattr(self, "_carry", None)
        if not carry or not self.frame_stack:
            return
        if not hasattr(self, "_carry_candidates"):
            self._carry_candidates: dict = {}
        for key, name, ev in carry.pop(self.frame_stack[-1], ()):
            v = state.env.get(name)
            if v is None or ev.id not in v.taints or v.graph is not True or ev.id in self._carry_done:
                continue
            if last:
                self._carry_done.add(ev.id)
                self.facts.accums.append(ev)
            else:
                self._carry_candidates[key] = ev

    # -- items stored under a changing key --------------------------------------------------------
    def _store_item(self, target: cst.Subscript, value: V, state: State, ctx: Ctx) -> None:
        """``history[step] = loss``: one more graph kept per iteration (a constant key only overwrites).
        The container holds what was stored: reading it back (``sum(outputs.values())``) derives from it."""
        acc_id = next(self.ids)
        if value.taints:
            self._container_holds(target.value, value, acc_id, state, ctx)
        if not self.frame_stack or ctx.model_method or value.kind not in (TENSOR, UNKNOWN) or value.graph is False:
            return
        if len(target.slice) != 1 or not isinstance(target.slice[0].slice, cst.Index):
            return
        index = target.slice[0].slice.value
        if isinstance(index, (cst.SimpleString, cst.Integer, cst.ConcatenatedString)):
            return
        iv = self.eval(index, state, ctx, record=False)
        if iv.is_const:
            return
        text = _target_text(target)
        if text.startswith("<") or not self._outlives(text):
            return
        where, stmt = self._accumulation_site(target, ctx)
        self.facts.accums.append(
            self._ev(AccumEvent, where, ctx, id=acc_id, target=text, value=value, outlives=True, site=stmt)
        )

    def _container_holds(self, expr: cst.BaseExpression, value: V, acc_id: int, state: State, ctx: Ctx) -> None:
        path = _dotted(expr)
        if path is None:
            return
        cur = state.env.get(path)
        owner = None
        if cur is None and isinstance(expr, cst.Attribute):
            owner = self.eval(expr.value, state, ctx, record=False)
            if isinstance(owner.ref, Instance):
                cur = owner.ref.attrs.get(expr.attr.value)
        if cur is None or cur.kind not in (DICT, LIST, UNKNOWN, TENSOR):
            return
        # a value stored without a graph (computed under no_grad) is no evidence of one later
        mark = frozenset() if value.graph is False else frozenset({acc_id})
        new = cur.with_(taints=cur.taints | value.taints | mark, graph=True if value.graph else cur.graph)
        if path in state.env:
            state.env[path] = new
        elif owner is not None and isinstance(owner.ref, Instance):
            owner.ref.attrs[expr.attr.value] = new


def _forward_returns_call_of(cls: Any, attr: str) -> bool:
    """Does the class's ``forward`` return ``self.<attr>(...)`` on every path (the layer is its head)?"""
    fwd = cls.method("forward")
    if fwd is None:
        return False
    returns: list[cst.Return] = []

    class _Returns(cst.CSTVisitor):
        def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
            return node is fwd.node

        def visit_Lambda(self, node: cst.Lambda) -> bool:
            return False

        def visit_Return(self, node: cst.Return) -> None:
            returns.append(node)

    fwd.node.visit(_Returns())
    if not returns:
        return False
    for r in returns:
        v = r.value
        if not (
            isinstance(v, cst.Call)
            and isinstance(v.func, cst.Attribute)
            and isinstance(v.func.value, cst.Name)
            and v.func.value.value == "self"
            and v.func.attr.value == attr
        ):
            return False
    return True


def _path_key(path: V) -> Any:
    """The same file: one constant path string, or one path value the code computed once."""
    if path.is_const:
        return ("const", path.const) if isinstance(path.const, str) else None
    if path.kind in (UNKNOWN, CONST) and path.origin is not None:
        return ("node", id(path.origin))
    return None


def forward_method(name: str) -> bool:
    """Methods of a model (whose class sentinel cannot see) that run it on data."""
    return name in api.FORWARD_METHODS


def _names_in(target: cst.BaseExpression) -> list[cst.Name]:
    if isinstance(target, cst.Name):
        return [target]
    if isinstance(target, (cst.Tuple, cst.List)):
        return [n for e in target.elements for n in _names_in(e.value)]
    return []
