"""Which code is evaluation and which trains, read from the recorded events (a part of :class:`Facts`):
evaluation forward passes and their regions (SEN003/SEN004), optimizer steps that run on evaluation
data (SEN013), forwards that train while the model is in eval mode (SEN008), and the name heuristics
they share (``validate()``, ``val_loader``, test-time adaptation, a policy acting)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sentinel.analysis import torchapi as api
from sentinel.analysis.values import MODEL, Alt

#: the condition key of ``if i == len(batches) - 1:`` on a loop's own target: ``LAST_ITERATION <frame id>``
LAST_ITERATION = "last-iteration-of"

if TYPE_CHECKING:
    from sentinel.analysis.facts import Event, ForwardEvent, ModeEvent


class RegionsMixin:
    """Evaluation regions and training-in-eval-mode; mixed into :class:`~sentinel.analysis.facts.Facts`."""

    # -- evaluation regions ----------------------------------------------------------------------
    def evaluation_forwards(self) -> list[ForwardEvent]:
        """Forward passes that are evaluation code: not part of any backward, not a shape probe.

        Inside an iteration that also trains (DQN targets, GAN samples, teacher outputs) a forward
        only counts as evaluation when names say so (``X_val``, ``test_loader``, ``evaluate()``).
        """
        if "ef" in self._cache:
            return self._cache["ef"]
        first_training = min((e.seq for e in (*self.backwards, *self.steps)), default=1 << 62)
        out = []
        for ev in self.forwards:
            if ev.lightning_eval or ev.dummy_input and ev.seq < first_training:
                continue  # a smoke test / shape probe on random inputs before anything trained
            if self._parameter_free(ev) or self._frozen_whole(ev):
                continue  # plain tensors, or every parameter frozen (an EMA copy): it records no graph
            if ev.seq < first_training and self._never_trained(ev):
                continue  # a shape check (one batch, then `break`) of a model nothing trains or loads into
            if ev.wants_grad or any(api.gradish(self.ctx_names.get(c, "")) for c in ev.stack):
                continue  # saliency, attacks, `..._with_grad`: the graph is what the code is after
            if ev.deliberate_train and ev.ctx not in self.training_activations:
                continue  # recomputing batch-norm statistics (update_bn): train mode on purpose
            if self.connected_to_backward(frozenset({ev.id})):
                continue
            if ev.id in self.escaped_taints and not (ev.evalish or ev.grad == "off" or ev.modes == frozenset({"eval"})):
                continue
            if self.iteration_trains(ev) and not (ev.evalish or ev.modes == frozenset({"eval"})):
                continue
            if not ev.evalish and self._acting(ev):
                continue  # a policy choosing actions inside the loop that trains it: data collection
            if ev.frame is None and not (ev.evalish or ev.grad == "off" or self._switched_to_eval(ev)):
                continue  # a lone forward with nothing saying "evaluation" (a demo print, a sanity check)
            out.append(ev)
        self._cache["ef"] = out
        return out

    def _switched_to_eval(self, ev: ForwardEvent) -> bool:
        """Is the model in eval mode because the code said so (``model.eval()`` before the forward), not
        because it came that way (``from_pretrained`` returns eval mode)?"""
        if ev.modes != frozenset({"eval"}):
            return False
        last = self._last_switch(ev)
        return last is not None and last.mode == frozenset({"eval"})

    def _last_switch(self, fw: ForwardEvent) -> ModeEvent | None:
        """The last ``train()``/``eval()`` of ``fw``'s model (or a model holding it) before ``fw``, in the
        same analysis (entry point)."""
        model = fw.model.ident if fw.model is not None else None
        last = None
        for ev in self.mode_switches:
            if ev.seq > fw.seq:
                break
            if ev.stack[:1] == fw.stack[:1] and self._related(ev.target, model, below=True):
                last = ev
        return last

    def _parameter_free(self, ev: ForwardEvent) -> bool:
        """Is the model an ``nn.Module`` subclass of the project that holds nothing autograd tracks (its
        weights plain tensors, updated by its own ``backward()``/``optimize()`` methods; a metric holding
        only an activation)? Its forwards record no graph, so they are no evaluation ``no_grad`` would
        help. Read once per class."""
        return self._holds_no_parameters(ev.model.ref if ev.model is not None else None, 0)

    def _holds_no_parameters(self, inst: Any, depth: int) -> bool:
        from sentinel.analysis.objects import Instance

        if not isinstance(inst, Instance) or not inst.cls.is_module or depth > 4:
            return False
        for v in inst.attrs.values():
            if v.kind == MODEL and v.ref != "stateless" and not self._holds_no_parameters(v.ref, depth + 1):
                return False  # it holds a layer with parameters (an `nn.Identity()` activation holds none)
        cls = inst.cls
        memo = self._cache.setdefault("parameter_free", {})
        found = memo.get(id(cls))
        if found is None:
            found = memo[id(cls)] = all(q.startswith("torch.nn.") for q in cls._qual_bases()) and not any(
                _LEARNABLE.search(_STATELESS_LAYER.sub("", m.code)) for c in cls.mro() for m in c.methods.values()
            )
        return found

    def _frozen_whole(self, ev: ForwardEvent) -> bool:
        """Did ``ev`` run a model all of whose parameters were frozen at the time (see :meth:`frozen_at`)?"""
        model = ev.model.ident if ev.model is not None else None
        return model is not None and not isinstance(model, Alt) and self.frozen_at(model, ev.seq)

    def frozen_at(self, model: Any, seq: int) -> bool:
        """Before event ``seq``, were all of ``model``'s parameters set ``requires_grad=False`` (its own, or
        a model it is part of), with no part of it thawed again since (fine-tuning a head, or the training
        loop turning gradients back on after a validation that froze them)?"""
        frozen = False
        for at, target, freeze in self.freezes:
            if at > seq:
                break
            if freeze and self._within(model, frozenset({target})):
                frozen = True
            elif not freeze and (self._within(target, frozenset({model})) or self._within(model, frozenset({target}))):
                frozen = False
        return frozen

    def _never_trained(self, ev: ForwardEvent) -> bool:
        """Is the model ``ev`` runs one built in this program (a project class, a ``torch.nn`` layer), never
        stepped by an optimizer and never given weights (``load_state_dict``, ``torch.load``)?"""
        model = ev.model.ident if ev.model is not None else None
        if model is None or isinstance(model, Alt) or ev.from_checkpoint:
            return False
        if self._switched_to_eval(ev):
            return False  # `model.eval()` first: evaluated on purpose, its weights came some way we cannot see
        if model in self.fresh_layers:
            if ev.evalish:
                return False  # a bare layer run on a test loader's batch
        elif getattr(model, "cls", None) is None:
            return False  # a project class or a torch.nn layer built here: zoo models come pretrained
        for s in self.steps:
            if s.model is None or any(m is None or self._within(model, frozenset({m})) for m in s.model):
                return False
        return not any(r.target is model or self._within(model, frozenset({r.target})) for r in self.reinits)

    def _acting(self, ev: ForwardEvent) -> bool:
        """Is ``ev`` a policy's action selection (``agent.act(state)``, ``select_action``) in a loop that
        trains? Reinforcement learning collects its data this way; it is not an evaluation."""
        attr = getattr(getattr(ev.node, "func", None), "attr", None)  # `agent.act(state)`
        called = getattr(attr, "value", "") if attr is not None else ""
        if not _ACTING.match(called) and not any(_ACTING.match(self.ctx_names.get(c, "")) for c in ev.stack):
            return False
        return any(self.backward_by_frame.get(f) for f in ev.frames)

    def region_key(self, ev: ForwardEvent) -> tuple:
        """One evaluation region: a function that trains nothing (``evaluate()``, ``forecast()``),
        or else the innermost loop (a validation loop inside the training function)."""
        model = ev.model.ident if ev.model is not None else None
        try:
            model = self.root_of.get(model, model)  # `model.encoder(x)` and `model.decoder(h)`: one model
        except TypeError:
            pass
        if ev.ctx != 0 and ev.ctx not in self.training_activations:
            return ("function", ev.ctx, model)
        return (ev.frame, ev.ctx, model)

    # -- training on evaluation data ----------------------------------------------------------------
    def site_in(self, ev: Event, ctx_id: int) -> tuple:
        """Where ``ev`` shows in the code of activation ``ctx_id``: its own node when it ran there, else
        the call in that code that led to it (a shared helper's statement is right for other callers)."""
        stack = list(ev.stack)
        if ctx_id in stack:
            i = stack.index(ctx_id)
            if i + 1 < len(stack) and stack[i + 1] in self.call_sites:
                return self.call_sites[stack[i + 1]]
        return ev.node, ev.stmt

    def site_lacking_no_grad(self, ev: ForwardEvent) -> tuple:
        """Where an evaluation forward's missing ``no_grad`` belongs. Usually the forward itself; but when
        that very forward also runs correctly for other callers (a loss helper training shares, an
        average another caller computes under ``no_grad``), the innermost call on its way that no
        correct path makes. Not when the helpers from there on choose the grad mode themselves
        (``_run_epoch(loader, train=False)`` picking a context): the fix is inside them, at the forward."""
        import libcst as cst

        fine = self._cache.get("grad_fine")
        if fine is None:  # forwards (and the calls that led to them) that run correctly somewhere
            fine = self._cache["grad_fine"] = set()
            for fw in self.forwards:
                if fw.grad == "off" or self.connected_to_backward(frozenset({fw.id})):
                    fine.add(id(fw.node))
                    fine.update(id(self.call_sites[c][0]) for c in fw.stack if c in self.call_sites)
        if id(ev.node) not in fine:
            return ev.node, ev.stmt
        for i in range(len(ev.stack) - 1, -1, -1):
            site = self.call_sites.get(ev.stack[i])
            if site is None or id(site[0]) in fine:
                continue
            called = [self.functions.get(c) for c in ev.stack[i:]]
            if any(f is None or _GRAD_MODE.search(cst.Module([]).code_for_node(f)) for f in called):
                break
            return site
        return ev.node, ev.stmt

    def evaluation_region_of(self, ev: Event) -> tuple | None:
        """The evaluation region a ``backward()`` / optimizer step runs in, or None.

        Evaluation is what the code says it is: the loop that runs it iterates validation/test data
        (``val_loader``, ``loaders["val"]``, ``X_test``), or, failing a loop that says either way, the
        function running it is an evaluation function (``validate()``, ``evaluate()``, ``test()``), or the
        step runs under ``no_grad`` in a loop whose forward passes feed no ``backward()``. Training data
        (``train_loader``) and deliberate adaptation (test-time adaptation, fine-tuning, pseudo-labels,
        meta-learning) are never evaluation.
        """
        texts = [self.frames[f].label for f in ev.frames] + [self.ctx_names.get(c, "") for c in ev.stack]
        if any(_ADAPTISH.search(t) for t in texts if t):
            return None
        for fid in reversed(ev.frames):
            label = self.frames[fid].label
            if not label:
                continue
            if _trainish(label):
                return None
            if api.evalish(label):
                return ("loop", fid)
        for cid in reversed(ev.stack):
            name = self.ctx_names.get(cid, "")
            if _trainish(name):
                return None
            if _evaluation_function(name):
                return ("function", cid)
        from sentinel.analysis.facts import StepEvent  # facts imports this module

        f = ev.frame
        if isinstance(ev, StepEvent) and ev.grad == "off" and f is not None and not self.backward_by_frame.get(f):
            fwds = [fw for fw in self.forwards if f in fw.frames and fw.grad == "off"]
            if fwds and not any(self.connected_to_backward(frozenset({fw.id})) for fw in fwds):
                return ("loop", f)
        return None

    # -- training while in eval mode ----------------------------------------------------------------
    def _related(self, a: Any, b: Any, *, below: bool) -> bool:
        """Is module ``a`` the module ``b``, one of its ancestors, or (``below``) one of its submodules?"""
        if a is None or b is None:
            return False
        if a == b:
            return True
        for x, y in ((b, a), (a, b)) if below else ((b, a),):
            cur, n = self.parent_of.get(x), 0
            while cur is not None and n < 16:
                if cur == y:
                    return True
                cur, n = self.parent_of.get(cur), n + 1
        return False

    def trained_in_eval_mode(self) -> list[tuple[ForwardEvent, ModeEvent]]:
        """Training forwards (backpropagated, their model stepped in the same iteration) that run while the
        model (with dropout/batch norm, or unknown layers) is in eval mode, with the ``eval()`` to blame.

        Definitely in eval mode (``eval()`` before the loop, never undone), or possibly, when the
        ``eval()`` ran in an earlier iteration of a loop around the step (validation inside the epoch
        loop) with no ``train()`` of the model, an ancestor or a submodule since. Modes sentinel does not
        know, models without dropout/batch norm, ``eval()`` of a submodule only (frozen batch-norm
        statistics) and steps on evaluation data (SEN013) are left out.
        """
        out = []
        for fw in self.forwards:
            # an unknown mode (validation under a condition the code cannot evaluate) still counts when
            # the eval() ran in an earlier iteration and nothing switched back (see _eval_blame)
            if fw.modes is not None and "eval" not in fw.modes or fw.sensitive is False or fw.grad == "off":
                continue
            if fw.model is None or fw.model.ident is None or fw.frame is None:
                continue
            if not self.connected_to_backward(frozenset({fw.id})):
                continue
            if not self._steps_in_iteration(fw):
                continue
            if any(self._within(f, frozenset({fw.model.ident})) for f in self.frozen):
                continue  # parameters frozen by hand: eval() keeps a frozen backbone's statistics (a linear probe)
            blame = self._eval_blame(fw)
            if blame is not None:
                out.append((fw, blame))
        return out

    def _same_pass(self, a: Event, b: Event, fid: int) -> bool:
        return fid in a.frames and fid in b.frames and a.passes[a.frames.index(fid)] == b.passes[b.frames.index(fid)]

    def _steps_in_iteration(self, fw: ForwardEvent) -> bool:
        """Does an optimizer step of ``fw``'s model follow it in the same loop iteration (not on
        evaluation data)?"""
        f = fw.frame
        model = fw.model.ident if fw.model is not None else None
        others = {
            o.model.ident
            for o in self.forwards
            if o.model is not None
            and o.grad != "off"
            and o.model.ident is not None
            and self._same_pass(o, fw, f)  # type: ignore[arg-type]
            and self.connected_to_backward(frozenset({o.id}))
        }
        for st in self.step_by_frame.get(f, ()):  # type: ignore[arg-type]
            if st.seq < fw.seq or not self._same_pass(st, fw, f):  # type: ignore[arg-type]
                continue
            if self.evaluation_region_of(st) is not None:
                continue
            if st.model is None:
                # an optimizer built here from something else (an input image, a list of tensors) does
                # not train the model; one sentinel cannot see (a parameter) may, if nothing else ran
                if (st.ident is None or isinstance(st.ident, tuple)) and len(others) <= 1:
                    return True
                continue
            if any(self._related(m, model, below=False) or self._related(model, m, below=False) for m in st.model):
                return True
            root = self.root_of.get(model, model)
            if any(self.root_of.get(m, m) == root for m in st.model):
                return True
        return False

    def switched_to_train_for(self, fw: ForwardEvent) -> bool:
        """Did the code put the model in training mode on purpose for this forward: the last mode switch
        before it is an explicit ``train()`` and nothing trained in between (Monte Carlo dropout:
        ``net.train()`` then sampled predictions under ``no_grad``; recomputing batch-norm statistics)?"""
        last = self._last_switch(fw)
        if last is None or last.mode is None or "train" not in last.mode or "eval" in last.mode:
            return False
        training = (*self.backwards, *self.steps)
        if any(last.seq < e.seq < fw.seq for e in training):
            return False
        # a train() inside a loop that trains restores the mode for its next pass (the epoch loop's
        # `model.train()` after validation), whatever runs after the loop; within that loop's
        # iteration it is on purpose (a rollout collected in train mode before the update)
        return not any(f in e.frames and f not in fw.frames for f in last.frames for e in training)

    def _eval_blame(self, fw: ForwardEvent) -> ModeEvent | None:
        model = fw.model.ident if fw.model is not None else None
        last_eval = None
        for ev in self.mode_switches:
            if ev.seq > fw.seq:
                break
            if ev.stack[:1] != fw.stack[:1]:
                continue  # another entry point's analysis
            if ev.mode is not None and "eval" in ev.mode and "train" not in ev.mode:
                if self._related(ev.target, model, below=False):
                    last_eval = ev
            elif last_eval is not None and self._related(ev.target, model, below=True):
                last_eval = None  # train() (or an unknown mode) since: switched back
        if last_eval is None:
            return None
        if fw.modes == frozenset({"eval"}):
            return last_eval
        # possibly eval: only when the eval() ran in an earlier iteration of a loop around the step, not
        # in that loop's last one (`if i == len(batches) - 1: model.eval(); validate()`)
        for fid in fw.frames:
            if fid in last_eval.frames and not self._same_pass(fw, last_eval, fid):
                if f"{LAST_ITERATION} {fid}" not in last_eval.conds:
                    return last_eval
        return None


_ADAPTISH = re.compile(
    r"adapt|(^|_)tta(_|$)|(^|_)tent(_|$)|fine_?tun|finetun|transduct|pseudo|calibrat|maml|meta_?|(^|_)support|"
    r"unlabel|distill|self_?train",
    re.IGNORECASE,
)
#: code that chooses the grad mode itself
_GRAD_MODE = re.compile(r"no_grad|enable_grad|set_grad_enabled|inference_mode")
_ACTING = re.compile(r"^_*(act|(select|choose|get|sample|pick|take)_actions?|explore|epsilon_greedy|policy_action)$")
_TRAINISH = re.compile(r"train|(^|_)fit(_|$)|learn|optimi[sz]", re.IGNORECASE)
_EVAL_FUNCTION = re.compile(
    r"^_*(run_|do_|perform_)?(val|valid|validate|validation|eval|evaluate|evaluation|test|testing|predict|"
    r"infer|inference|translate|generate|greedy_decode|beam_search)"
    r"(_(one_)?(epoch|loop|step|model|net|batch|set|data|loader|accuracy|acc|loss|metrics))?$",
    re.IGNORECASE,
)
_TEST_CASE = re.compile(r"^test_(?!(one_)?(epoch|loop|step)$)")


#: building a torch.nn layer that holds no parameters (``nn.Identity()``, ``nn.Sigmoid()``)
_STATELESS_LAYER = re.compile(
    r"\b(?:torch\.)?nn\.(?:" + "|".join(sorted({*api.STATELESS_LAYERS, "Softmax", "LogSoftmax", "Softmax2d"})) + r")\("
)
# what gives a module class something autograd tracks: parameters, tensors that require grad, layers
_LEARNABLE = re.compile(r"Parameter|requires_grad|nn\.|torch\.nn|Linear|Conv|Embedding|LSTM|GRU|RNN")


def _trainish(text: str) -> bool:
    return bool(_TRAINISH.search(text))


def _evaluation_function(name: str) -> bool:
    """``validate``, ``evaluate_model``, ``test``, ``test_epoch``; not a pytest case (``test_model``), not
    something that merely mentions a test (``lr_range_test``)."""
    return bool(_EVAL_FUNCTION.match(name)) and not _TEST_CASE.match(name)
