"""Facts the interpreter records, and the derived questions rules ask about them.

The interpreter walks a file once (inlining local helper calls so every call site gets its own
context) and appends *events* in execution order: forward passes, ``backward()`` calls, optimizer
steps, gradient resets, loss calls, snapshots and accumulations. Each event remembers the stack of
loop frames it happened in. Rules never walk the tree: they query this object.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import libcst as cst

from sentinel.analysis.regions import RegionsMixin
from sentinel.analysis.values import Alt, V


@dataclass
class Frame:
    """One dynamic execution of a loop (or one unrolled iteration of a loop over literals)."""

    id: int
    node: cst.CSTNode
    parent: int | None
    ctx: int
    start: int
    end: int = 1 << 62
    label: str = ""  # text naming what it iterates (e.g. "val_loader", "phase=val")
    unrolled: bool = False
    cond_depth: int = 0  # conditions already open when the loop started
    over_layers: bool = False  # iterates a model's layers (`for layer in self.blocks`): one forward pass
    #: models each iteration binds anew (`for net in ensemble`, a list of models built by a comprehension)
    each: frozenset = frozenset()


_GRAD_PRESENT = re.compile(r"[\w.\[\]]+\.grad is not None|not [\w.\[\]]+\.grad is None")
#: the condition key of ``if i == 0:`` on a loop's own counter: ``FIRST_ITERATION <frame id>``
FIRST_ITERATION = "first-iteration-of"


@dataclass
class Event:
    seq: int
    node: cst.CSTNode
    stmt: cst.CSTNode
    frames: tuple[int, ...]  # loop frames, outermost first
    ctx: int  # function activation id
    conds: tuple[str, ...] = ()  # keys of the non-constant `if` conditions guarding the event
    stack: tuple[int, ...] = ()  # function activations on the call stack, outermost first
    passes: tuple[int, ...] = ()  # per open loop frame, the id of the pass (iteration) it was in

    @property
    def frame(self) -> int | None:
        return self.frames[-1] if self.frames else None


@dataclass
class ForwardEvent(Event):
    id: int = 0
    model: V | None = None
    modes: frozenset | None = None
    grad: str | None = None
    evalish: bool = False  # names (function, loader, inputs, phase) say validation/test
    dummy_input: bool = False  # called on torch.zeros/ones/randn literals (shape inference, warm-up)
    lightning_eval: bool = False
    sensitive: bool | None = None  # the model has dropout/batch-norm style layers (None: unknown)
    model_expr: str = "the model"  # how the code names the model at this call (`model`, `self.net`)
    from_checkpoint: bool = False  # a whole module loaded with torch.load: its layers are unknown
    deliberate_train: bool = False  # the function itself put the model in train mode (update_bn style)
    via: str | None = None  # "module": through `ddp.module`; "inner": the model a DDP wrapper wraps
    wants_grad: bool = False  # called asking for gradients inside (`make_adv=True`: an attack on the input)


@dataclass
class BackwardEvent(Event):
    taints: frozenset = frozenset()
    grad: str | None = None  # grad mode where it ran ("off": under no_grad), when known
    # run in a model's own method, where forwards are sub-module calls and not recorded: ``taints``
    # names only the forwards its loss got from outside (a target computed by the caller)
    in_model: bool = False


@dataclass
class StepEvent(Event):
    optimizer: str = ""
    ident: Any = None  # the optimizer object, when known
    model: Any = None  # the model whose parameters it optimizes, when known
    grad: str | None = None  # grad mode where it ran ("off": under no_grad), when known
    recv: str = ""  # the optimizer expression as written (`optimizer`, `self.opt`)
    scaled: bool = False  # `scaler.step(optimizer)` with a GradScaler not known to be disabled
    closure_end: int = -1  # events after the step up to this seq ran inside its closure (L-BFGS)


@dataclass
class ResetEvent(Event):
    target: Any = None  # what was reset: an optimizer or model object; None = unknown / everything
    kind: str | None = None  # "optimizer" | "model" | "params" (target: frozenset of models) | None
    recv: str = ""  # the receiver expression as written (`optimizer` in `optimizer.zero_grad()`)


@dataclass
class LossCallEvent(Event):
    is_ce: bool = False
    input: V | None = None
    loss: str = ""  # what the loss expects (torchapi.loss_kind): "ce", "bce_logits", "nll", or its name


@dataclass
class ActivationEvent(Event):
    """A softmax / log_softmax applied over dimension 0 of a model's batched output: ``node`` is the
    call or the ``nn.Softmax``-style layer that does it."""

    act: Any = None


@dataclass
class DropoutCallEvent(Event):
    """A functional dropout call (``F.dropout``...) inside a method of an ``nn.Module`` subclass."""

    function: str = ""
    # "missing" | "true" | "false" | "other" (an expression such as self.training) | "guarded" (missing, but
    # the call only runs where code reading `self.training` lets it)
    training: str = "missing"
    in_forward: bool = False  # in `forward` or a method `forward` calls
    owner: str = ""  # the module class


@dataclass
class ModeEvent(Event):
    """``model.train()`` / ``model.eval()`` / ``model.train(flag)``: ``mode`` is TRAIN, EVAL or None."""

    target: Any = None
    mode: Any = None


@dataclass
class SnapshotEvent(Event):
    target: str = ""
    what: str = ""  # "state_dict" | "model" | "append"
    source: str = ""  # "model" | "optimizer"
    persistent: bool = False  # stored on an attribute / container: outlives the function
    alias: Any = None  # the model / optimizer whose live tensors the snapshot refers to
    value: Any = None  # the snapshot value itself


@dataclass
class AccumEvent(Event):
    id: int = 0
    target: str = ""
    value: V | None = None
    outlives: bool = False
    site: Any = None  # the statement to report (the call into a meter's update(), or the node's own)
    carried: bool = False  # recurrent state fed back into the next iteration (`out, h = rnn(x, h)`)
    fresh_in: tuple = ()  # loops (frame ids) in whose current iteration the container was created


@dataclass
class ClipEvent(Event):
    """``clip_grad_norm_`` / ``clip_grad_value_`` (torch.nn.utils) on some parameters' gradients."""

    models: frozenset | None = None  # the models whose parameters are clipped (None: unknown)
    measure_only: bool = False  # an infinite / huge limit: the call only measures the gradient norm


@dataclass
class UnscaleEvent(Event):
    """``scaler.unscale_(optimizer)``."""

    ident: Any = None  # the optimizer, when known
    recv: str = ""  # the optimizer expression as written


@dataclass
class CtorEvent(Event):
    """An optimizer or ``GradScaler`` constructed."""

    what: str = ""  # "optimizer" | "scaler"
    ident: Any = None  # the object created
    models: frozenset | None = None  # optimizer: the models whose parameters it optimizes
    fresh_params: bool = False  # the parameters come from a name (re)bound in the current loop iteration
    stateless: bool = False  # plain SGD without momentum: recreating it loses nothing
    selective: bool = False  # parameter groups (a list / dict literal)
    subset: bool = False  # `filter(...)` or a comprehension: the parameters that train, chosen each time
    chooser: tuple = ()  # conditions opened inside the factory that builds it (`if name == "sgd":`)


@dataclass
class SamplerEvent(Event):
    """A ``DistributedSampler`` constructed."""

    ident: Any = None
    shuffle: bool | None = True  # False: a fixed order, set_epoch changes nothing
    seeded: bool = False  # built with a `seed=` that is not a constant (a new seed per epoch)


@dataclass
class LoaderIterEvent(Event):
    """A loop over a DataLoader whose sampler is a DistributedSampler (frames: the loops around it)."""

    sampler: Any = None
    loop: Any = None  # the `for` statement iterating the loader
    frame_id: int | None = None  # the loop frame of that `for` (None: unrolled over a literal list)


@dataclass
class SetEpochEvent(Event):
    """``sampler.set_epoch(...)`` (or ``loader.sampler.set_epoch``, ``loader.set_epoch``)."""

    sampler: Any = None  # the sampler it sets, None: unknown
    fixed: bool = False  # the epoch argument is a constant


@dataclass
class BareMethodEvent(Event):
    """A method named as an expression statement without a call (``model.eval``)."""

    method: str = ""
    receiver: str = ""  # "model" | "optimizer" | "loss" | "scheduler" | "scaler"
    text: str = ""  # the statement's text


@dataclass
class Facts(RegionsMixin):
    frames: dict[int, Frame] = field(default_factory=dict)
    forwards: list[ForwardEvent] = field(default_factory=list)
    backwards: list[BackwardEvent] = field(default_factory=list)
    steps: list[StepEvent] = field(default_factory=list)
    resets: list[ResetEvent] = field(default_factory=list)
    loss_calls: list[LossCallEvent] = field(default_factory=list)
    snapshots: list[SnapshotEvent] = field(default_factory=list)
    accums: list[AccumEvent] = field(default_factory=list)
    activations: list[ActivationEvent] = field(default_factory=list)
    dropouts: list[DropoutCallEvent] = field(default_factory=list)
    mode_switches: list[ModeEvent] = field(default_factory=list)
    ctx_names: dict[int, str] = field(default_factory=dict)  # function activation id -> function name
    frozen: set = field(default_factory=set)  # models some of whose parameters were set requires_grad=False
    #: in program order, ``(seq, model, True)`` when every parameter of a model was frozen (no condition
    #: picked which), ``(seq, model, False)`` when some were thawed again: see ``frozen_at``
    freezes: list = field(default_factory=list)
    fresh_layers: set = field(default_factory=set)  # torch.nn layers built here (random weights)
    call_sites: dict[int, tuple] = field(default_factory=dict)  # activation id -> (call node, its statement)
    # (ctx id, name) -> last seq at which the name was read
    last_read: dict[tuple[int, str], int] = field(default_factory=dict)
    escaped_taints: set = field(default_factory=set)
    stmt_of: dict[int, cst.CSTNode] = field(default_factory=dict)  # statement of nodes messages cite
    # (ctx id, name) of snapshots stored into a container that outlives the loop iteration
    stored: set = field(default_factory=set)
    # (value, frames, passes) of every read of a snapshot-like value inside a loop
    snapshot_reads: list = field(default_factory=list)
    # submodule identity -> identity of the model it is an attribute of
    parent_of: dict = field(default_factory=dict)
    #: further owners of a submodule another model adopted (``self.features = backbone.features``)
    other_parents: dict = field(default_factory=dict)
    # submodule identity -> identity of the outermost model it belongs to
    root_of: dict = field(default_factory=dict)
    proven_graph_taints: set = field(default_factory=set)
    # function activation id -> the FunctionDef it runs (None: a module body)
    functions: dict[int, Any] = field(default_factory=dict)
    # id(value) -> value: the exact values `.backward()` was called on (they certainly carry a graph)
    backward_values: dict = field(default_factory=dict)
    # id(derived value) -> the value it shares its graph with (`loss.cpu()`, `loss.view(-1)`)
    graph_source: dict = field(default_factory=dict)
    clips: list[ClipEvent] = field(default_factory=list)
    unscales: list[UnscaleEvent] = field(default_factory=list)
    ctors: list[CtorEvent] = field(default_factory=list)
    samplers: list[SamplerEvent] = field(default_factory=list)
    loader_iters: list[LoaderIterEvent] = field(default_factory=list)
    set_epochs: list[SetEpochEvent] = field(default_factory=list)
    bare_methods: list[BareMethodEvent] = field(default_factory=list)
    # `model.apply(init)`, `model.load_state_dict(...)`: a model re-initialised in place (kind "model")
    reinits: list[ResetEvent] = field(default_factory=list)
    loader_sampler: dict = field(default_factory=dict)  # loader identity -> its DistributedSampler
    # gradients written by hand (`p.grad = g`, `p.grad.copy_(g)`, `set_grads(model, g)`)
    grad_writes: list[Event] = field(default_factory=list)
    # calls sentinel cannot see into that get the optimizer or an object holding it (a callback given the
    # trainer: `cb.on_batch_start(self)`): they may reset gradients, so a missing reset is not proven
    maybe_resets: list[Event] = field(default_factory=list)
    # `p.requires_grad = ...`, `requires_grad_()`, `freeze(...)`: which parameters train changes
    grad_flags: list[Event] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)

    # -- budget ------------------------------------------------------------------------------------
    _EVENT_LISTS = (
        "freezes",
        "forwards",
        "backwards",
        "steps",
        "resets",
        "loss_calls",
        "snapshots",
        "accums",
        "snapshot_reads",
        "activations",
        "dropouts",
        "mode_switches",
        "clips",
        "unscales",
        "ctors",
        "samplers",
        "loader_iters",
        "set_epochs",
        "bare_methods",
        "reinits",
        "grad_writes",
        "maybe_resets",
        "grad_flags",
    )
    _EVENT_SETS = ("escaped_taints", "stored", "proven_graph_taints")

    def checkpoint(self) -> tuple:
        """A mark to :meth:`rollback` to: what was recorded up to now."""
        lists = tuple(len(getattr(self, n)) for n in self._EVENT_LISTS)
        sets = tuple(set(getattr(self, n)) for n in self._EVENT_SETS)
        return lists, sets

    def rollback(self, mark: tuple) -> None:
        """Forget everything recorded after ``mark`` (work the analysis budget cut short)."""
        lists, sets = mark
        for name, n in zip(self._EVENT_LISTS, lists):
            del getattr(self, name)[n:]
        for name, kept in zip(self._EVENT_SETS, sets):
            current = getattr(self, name)
            current.intersection_update(kept)
        self._cache.clear()

    # -- loop structure --------------------------------------------------------------------------
    def _per_frame(self, events: list) -> dict[int, list]:
        out: dict[int, list] = defaultdict(list)
        for ev in events:
            for fid in ev.frames:
                out[fid].append(ev)
        return out

    @property
    def backward_by_frame(self) -> dict[int, list[BackwardEvent]]:
        if "bw" not in self._cache:
            self._cache["bw"] = self._per_frame(self.backwards)
        return self._cache["bw"]

    @property
    def step_by_frame(self) -> dict[int, list[StepEvent]]:
        if "st" not in self._cache:
            self._cache["st"] = self._per_frame(self.steps)
        return self._cache["st"]

    @property
    def reset_by_frame(self) -> dict[int, list[ResetEvent]]:
        if "rs" not in self._cache:
            self._cache["rs"] = self._per_frame(self.resets)
        return self._cache["rs"]

    def step_is_reset(self, fid: int, step: StepEvent) -> bool:
        """Inside loop ``fid``, does some reset clear the gradients ``step`` applies, whenever it steps?

        A reset counts when every condition guarding it also guards the step (gradient accumulation
        pairs them under one condition); a reset under an unrelated condition (a logging branch) does
        not. Resets of a model cover an optimizer only if they cover every model it optimizes.
        """
        depth = self.frames[fid].cond_depth
        step_conds = set(step.conds[depth:])
        if "mr" not in self._cache:
            self._cache["mr"] = self._per_frame(self.maybe_resets)
        if self._cache["mr"].get(fid):
            return True  # something in this loop may reset them: unknown never fires
        models: set = set()
        for r in self.reset_by_frame.get(fid, ()):
            if not {c for c in r.conds[depth:] if not self._always_for_reset(c, fid)} <= step_conds:
                continue
            if r.target is None or step.ident is None:
                return True
            if r.kind == "optimizer" and r.target == step.ident:
                return True
            if r.kind == "optimizer":
                # another optimizer's reset clears the models it optimizes (a GAN's two optimizers
                # between them reset a third one over both models)
                models.update(m for target in self._optimized().get(id(r.target), ()) for m in _either(target))
            elif r.kind == "model":
                models.update(_either(r.target))
            elif r.kind == "params":
                models.update(m for target in r.target for m in _either(target))
        if not models:
            return False
        # `model.zero_grad()` on a model or on any model it is part of clears its gradients
        return step.model is None or self._covered(step.model, frozenset(models))

    def _optimized(self) -> dict[int, frozenset]:
        """Optimizer (by ``id`` of its object) -> the models it optimizes, for optimizers built once with
        parameters of known models only."""
        if "optimized" not in self._cache:
            found: dict[int, frozenset | None] = {}
            for c in self.ctors:
                if c.what != "optimizer" or c.ident is None:
                    continue
                known = c.models is not None and None not in c.models and not c.subset
                key = id(c.ident)
                found[key] = c.models if known and key not in found else None
            self._cache["optimized"] = {k: v for k, v in found.items() if v}
        return self._cache["optimized"]

    def _covered(self, stepped, models: frozenset) -> bool:
        """Is every model in ``stepped`` within ``models``? A model chosen by a branch (``Alt``) may be
        any of its members: one inside is enough (what is uncertain never fires)."""
        return all(m is not None and any(self._within(one, models) for one in _either(m)) for m in stepped)

    def _always_for_reset(self, cond: str, fid: int) -> bool:
        """Does a reset under ``cond`` still clear, once in every iteration of loop ``fid``, whatever a
        step there applies? ``p.grad is not None`` (nothing to clear otherwise), and "the first iteration
        of a loop inside ``fid``" (``if i == 0:`` over the micro-batches of each step)."""
        if _GRAD_PRESENT.fullmatch(cond):
            return True
        if not cond.startswith(FIRST_ITERATION):
            return False
        inner = self.frames.get(int(cond.rsplit(" ", 1)[1]))
        parent = inner.parent if inner is not None else None
        while parent is not None:
            if parent == fid:
                return True
            parent = self.frames[parent].parent
        return False

    def frame_trains(self, fid: int) -> bool:
        """Does this loop run backward() and an optimizer step (anywhere inside, helpers included)?"""
        return bool(self.backward_by_frame.get(fid)) and bool(self.step_by_frame.get(fid))

    def trains_after(self, fid: int, alias: Any, seq: int) -> bool:
        """Does loop ``fid`` step ``alias`` (a model or optimizer) again after ``seq``?

        In a later iteration counts too when the object existed before the loop began; an object
        the loop creates afresh each iteration (a model built by a helper per run) is not trained
        again once its iteration is over.
        """
        created = getattr(alias, "created", -1)
        existed = created < self.frames[fid].start
        root = self.root_of.get(alias, alias)
        for step in self.step_by_frame.get(fid, ()):
            if not (step.seq > seq or existed):
                continue
            if step.model is None and created > getattr(step.ident, "created", created):
                continue  # an optimizer over unknown parameters: not those of a model made after it (a copy)
            if alias is None or step.model is None or step.ident == alias:
                return True
            if any(self.root_of.get(m, m) == root for m in step.model):
                return True
        return False

    def read_in_later_iteration(self, snap: SnapshotEvent, fid: int) -> bool:
        """Is the snapshot read back in a later iteration of loop ``fid`` (a rollback to "best")?"""
        token = snap.value.ident if snap.value is not None and snap.what != "model" else None
        if token is None or fid not in snap.frames:
            return False
        pass_id = snap.passes[snap.frames.index(fid)]
        for value, frames, passes in self.snapshot_reads:
            if value.ident is token and fid in frames and passes[frames.index(fid)] != pass_id:
                return True
        return False

    def frame_trains_directly(self, fid: int) -> bool:
        """Does the loop's own iteration (not a loop nested in it) run backward()/step()?"""
        key = ("direct", fid)
        if key not in self._cache:
            self._cache[key] = any(e.frames[-1] == fid for e in (*self.backwards, *self.steps) if e.frames)
        return self._cache[key]

    def ancestors(self, fid: int) -> Iterator[int]:
        cur: int | None = self.frames[fid].parent
        while cur is not None:
            yield cur
            cur = self.frames[cur].parent

    def training_loops(self) -> list[int]:
        """Innermost loop frames that both backpropagate and step: one per-iteration training loop each."""
        if "tl" in self._cache:
            return self._cache["tl"]
        candidates = [fid for fid in self.frames if self.frame_trains(fid)]
        has_inner = set()
        for fid in candidates:
            has_inner.update(self.ancestors(fid))
        out = [fid for fid in candidates if fid not in has_inner]
        self._cache["tl"] = out
        return out

    @property
    def training_activations(self) -> set[int]:
        """Function activations that run backward() or step(), themselves or through a callee."""
        if "ta" not in self._cache:
            self._cache["ta"] = {c for e in (*self.backwards, *self.steps) for c in e.stack}
        return self._cache["ta"]

    def iteration_trains(self, ev: Event) -> bool:
        """Is ``ev`` part of a loop iteration that also runs backward()/step()?

        A helper called from the loop body that trains nothing itself (``validate()``, a sampling
        routine) is a scope of its own: what happens inside it is not part of the training step.
        """
        f = ev.frame
        if f is None or not self.frame_trains_directly(f):
            return False
        loop_ctx = self.frames[f].ctx
        if loop_ctx in ev.stack:
            below = ev.stack[ev.stack.index(loop_ctx) + 1 :]
            if below and below[0] not in self.training_activations:
                return False
        return True

    def connected_to_backward(self, taints: frozenset) -> bool:
        if not taints:
            return False
        for bw in self.backwards:
            if bw.taints & taints:
                return True
        return False

    def was_backpropagated(self, value: V) -> bool:
        """Was ``backward()`` called on this very value (or one sharing its graph)? Then it carries a graph."""
        seen = 0
        cur: V | None = value
        while cur is not None and seen < 16:
            if id(cur) in self.backward_values:
                return True
            cur = self.graph_source.get(id(cur))
            seen += 1
        return False

    def backpropagated_after_loop(self, acc: AccumEvent) -> bool:
        """Is the accumulator backpropagated after the loop that accumulates it (once, on purpose)?"""
        for bw in self.backwards:
            if acc.id in bw.taints and (acc.frame is None or acc.frame not in bw.frames):
                return True
        return False

    def read_after(self, ctx: int, name: str, seq: int) -> bool:
        return self.last_read.get((ctx, name), -1) > seq

    # -- order within one training iteration (resets, steps, clipping) -----------------------------
    def near(self, anchor: Event, name: str) -> list:
        """The events of list ``name`` that can share ``anchor``'s iteration: those inside its
        innermost loop (every event when it runs outside any loop)."""
        events = getattr(self, name)
        if not anchor.frames:
            return events
        key = ("near", name)
        if key not in self._cache:
            self._cache[key] = self._per_frame(events)
        return self._cache[key].get(anchor.frames[-1], [])

    def same_iteration(self, anchor: Event, ev: Event) -> bool:
        """Did ``ev`` run in the same iteration of every loop around ``anchor``?

        ``ev`` may sit deeper, in a loop nested inside that iteration (an accumulation loop, a loop
        over parameters). Outside any loop, "the same iteration" is the same top-level activation.
        """
        n = len(anchor.frames)
        if ev.frames[:n] != anchor.frames or ev.passes[:n] != anchor.passes:
            return False
        if n == 0:
            return bool(ev.stack) and bool(anchor.stack) and ev.stack[0] == anchor.stack[0]
        return True

    def conds_within(self, anchor: Event, ev: Event) -> frozenset:
        """The conditions guarding ``ev`` inside ``anchor``'s iteration, leaving out those opened inside
        a loop nested deeper (``if p.grad is not None`` in a loop over parameters)."""
        n = len(anchor.frames)
        lo = self.frames[anchor.frames[-1]].cond_depth if n else 0
        hi = self.frames[ev.frames[n]].cond_depth if len(ev.frames) > n else len(ev.conds)
        return frozenset(ev.conds[lo:hi])

    @staticmethod
    def exclusive(a: Event, b: Event) -> bool:
        """Do ``a`` and ``b`` sit in opposite branches of one condition (never both run)?"""
        ca, cb = set(a.conds), set(b.conds)
        return any(("not " + k) in cb for k in ca) or any(("not " + k) in ca for k in cb)

    def in_closure(self, step: StepEvent, ev: Event) -> bool:
        """Did ``ev`` run inside the closure ``step`` called (``optimizer.step(closure)``)?"""
        return step.seq < ev.seq <= step.closure_end

    def only_resets_below(self, anchor: Event, ev: Event) -> bool:
        """Is ``ev`` at ``anchor``'s loop depth, or in a nested loop that neither backpropagates nor
        steps (a loop over parameters or optimizers that resets gradients)?"""
        n = len(anchor.frames)
        if len(ev.frames) == n:
            return True
        inner = ev.frames[n]
        return not self.backward_by_frame.get(inner) and not self.step_by_frame.get(inner)

    def _within(self, model: Any, models: frozenset) -> bool:
        node, seen = model, 0
        while node is not None and seen < 32:
            if node in models:
                return True
            if node in self.other_parents:  # shared by several models: any owner's chain
                return self._within_any(model, models)
            node = self.parent_of.get(node)
            seen += 1
        return self.root_of.get(model) in models

    def _within_any(self, model: Any, models: frozenset) -> bool:
        todo, seen = [model], set()
        while todo and len(seen) < 64:
            node = todo.pop()
            if node in models:
                return True
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            todo.append(self.parent_of.get(node))
            todo.extend(self.other_parents.get(node, ()))
        return self.root_of.get(model) in models

    def reset_covers(self, r: ResetEvent, step: StepEvent) -> bool:
        """Does reset ``r`` provably clear every gradient ``step`` applies? Unknown: no."""
        if r.kind == "optimizer" and step.ident is not None and r.target == step.ident:
            return True
        if r.kind in ("model", "params") and r.target is not None and step.model:
            # a model chosen by a branch (`model = torch.load(...) if resume else Net()`) may be either:
            # resetting it may cover the step, and what is unknown never fires
            targets = r.target if r.kind == "params" else frozenset({r.target})
            return self._covered(step.model, frozenset(m for target in targets for m in _either(target)))
        if r.kind in (None, "optimizer") and r.recv and r.recv == step.recv and r.ctx == step.ctx:
            return True  # `opt.zero_grad()` and `opt.step()` on the same name in one activation
        return False

    def backward_may_reach(self, b: BackwardEvent, step: StepEvent) -> bool:
        """Can ``b`` write gradients ``step`` applies? No only when every forward its loss came from is
        known and runs models ``step`` does not optimize (a GAN's discriminator loss on detached fakes,
        for the generator's optimizer). A loss computed in a model's own method is never known whole."""
        if not step.model or None in step.model or b.in_model:
            return True
        if "fwd" not in self._cache:
            self._cache["fwd"] = {ev.id: ev for ev in self.forwards}
        forwards = self._cache["fwd"]
        models = [forwards[t].model for t in b.taints if t in forwards]
        if not models or any(m is None or m.ident is None or isinstance(m.ident, Alt) for m in models):
            return True
        for m in models:
            if any(self._within(m.ident, frozenset({s})) or self._within(s, frozenset({m.ident})) for s in step.model):
                return True
        return False

    def resets_before(self, step: StepEvent) -> Iterator[ResetEvent]:
        """Resets that run, whenever ``step`` runs, earlier in its iteration and clear every gradient it applies."""
        step_conds = self.conds_within(step, step)
        for r in self.near(step, "resets"):
            if r.seq >= step.seq or not self.same_iteration(step, r) or not self.only_resets_below(step, r):
                continue
            if self.exclusive(r, step) or not self.conds_within(step, r) <= step_conds:
                continue
            if self.reset_covers(r, step):
                yield r

    def backward_between(self, step: StepEvent, lo: int, hi: int) -> bool:
        """Does a backward() of ``step``'s iteration that may feed its gradients run between ``lo`` and ``hi``?"""
        return any(
            lo < b.seq < hi and self.same_iteration(step, b) and self.backward_may_reach(b, step)
            for b in self.near(step, "backwards")
        )

    def feeds_step(self, b: BackwardEvent, step: StepEvent, until: int) -> bool:
        """Is ``b``, before seq ``until`` in ``step``'s iteration, a backward() for ``step``? Not when another
        optimizer steps in between: that backward was the other one's (a GAN's discriminator update
        before the generator's)."""
        if not (b.seq < until and self.same_iteration(step, b) and self.backward_may_reach(b, step)):
            return False
        return not any(
            b.seq < s.seq < until and s.ident is not step.ident and self.same_iteration(step, s)
            for s in self.near(step, "steps")
        )

    def clip_touches(self, clip: ClipEvent, step: StepEvent) -> bool | None:
        """Does the clipping call touch the parameters ``step`` updates? None: cannot tell."""
        if clip.models is None or not step.model:
            return None
        return any(
            any(self._within(m, clip.models) or self._within(c, frozenset({m})) for c in clip.models)
            for m in step.model
            if m is not None
        )

    def grad_written_between(self, anchor: Event, lo: int, hi: int) -> bool:
        """Are gradients set by hand in ``anchor``'s iteration between seq ``lo`` and ``hi``?"""
        return any(lo < w.seq < hi and self.same_iteration(anchor, w) for w in self.near(anchor, "grad_writes"))


def _either(model: Any) -> tuple:
    """The objects a model identity may be: the members of an ``Alt`` (chosen by a branch), else itself."""
    return tuple(model) if isinstance(model, Alt) else (model,)
