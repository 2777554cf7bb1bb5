"""The loop monitor's findings: what a finished (or running) :class:`~sentinel.probes.watch.Watch`
saw, turned into SEN102-SEN109 :class:`~sentinel.findings.Finding`\\ s with the DESIGN contract's
``details`` and a message a user can act on.

Names are those of ``named_parameters()`` / ``named_modules()`` of the watched model itself (inside
``DistributedDataParallel`` / ``torch.compile`` wrappers, no prefix). With several models each name
is prefixed by the model's class name (``Discriminator.fc.weight``). Parameters that an optimizer
holds but no watched model owns (a module never called) are named after the variable of the
script's ``__main__`` that holds their module, else after the module's class.
"""

from __future__ import annotations

import gc
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sentinel.findings import Finding
from sentinel.probes._watch_replay import unwrap
from sentinel.probes.report import finding
from sentinel.probes.state import vanishing

if TYPE_CHECKING:
    from sentinel.probes.watch import Watch

__all__ = ["build_findings"]


def build_findings(w: Watch) -> list[Finding]:
    pnames, mnames = _names(w)
    out: list[Finding] = []
    out.extend(_not_updated(w))
    out.extend(_mismatch(w))
    out.extend(_nonfinite(w, pnames, mnames))
    if w._accumulate_step is not None:
        s = w._accumulate_step
        out.append(
            Finding(
                "SEN106",
                f"gradients were not reset between optimizer steps: at step {s} .grad still held "
                f"step {s - 1}'s gradients and backward() added to them; call optimizer.zero_grad() "
                "once per step",
                {"step": s},
            )
        )
    if w._eval_hits:
        names = _eval_module_names(w, mnames)
        out.append(
            Finding(
                "SEN107",
                "a forward pass ran under no_grad/inference_mode with dropout/batch-norm in training "
                f"mode ({', '.join(names)}); call model.eval() before evaluating and model.train() after",
                {"modules": names},
            )
        )
    if w._retained >= 2:
        n = w._retained
        out.append(
            Finding(
                "SEN108",
                f"the autograd graphs of {n} earlier steps were still alive at step {w._retained_at}: "
                "a loss or output is kept with its graph (e.g. losses.append(loss), total += loss); "
                "keep loss.item() or loss.detach() instead",
                {"steps": n},
            )
        )
    if w._out_of_sync is not None:
        out.append(_out_of_sync(w, pnames))
    out.sort(key=lambda f: f.code)
    return out


# ------------------------------------------------------------------------------------- names


def _labels(models: list[nn.Module]) -> list[str]:
    if len(models) <= 1:
        return [""] * len(models)
    counts = Counter(type(m).__name__ for m in models)
    seen: Counter[str] = Counter()
    labels = []
    for m in models:
        base = type(m).__name__
        seen[base] += 1
        labels.append(base if counts[base] == 1 else f"{base}{seen[base]}")
    return labels


def _join(label: str, name: str) -> str:
    if not label:
        return name
    return f"{label}.{name}" if name else label


def _named_models(w: Watch) -> list[tuple[nn.Module, str]]:
    models = [unwrap(m) for m in w._models]
    return list(zip(models, _labels(models), strict=True))


def _names(w: Watch) -> tuple[dict[int, str], dict[int, str]]:
    """Parameter and module names as in ``named_parameters()`` / ``named_modules()`` of the models."""
    pnames: dict[int, str] = {}
    mnames: dict[int, str] = {}
    for model, label in _named_models(w):
        for name, mod in model.named_modules():
            mnames.setdefault(id(mod), _join(label, name))
        for name, p in model.named_parameters():
            pnames.setdefault(id(p), _join(label, name))
    return pnames, mnames


def _name_in(root: nn.Module, module: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is module:
            return name
    return type(module).__name__


def _label_of(w: Watch, root: nn.Module | None) -> str:
    if root is None:
        return ""
    root = unwrap(root)
    for model, label in _named_models(w):
        if model is root:
            return label
    return ""


def _orphan_names(params: list[torch.Tensor]) -> dict[int, str]:
    """Names for parameters no watched model owns: ``<variable>.<name>`` after the ``__main__``
    variable holding their module, else ``<ClassName>.<name>``."""
    want = {id(p) for p in params}
    out: dict[int, str] = {}
    main = sys.modules.get("__main__")
    for var, obj in list(vars(main).items()) if main is not None else []:
        if isinstance(obj, nn.Module) and not var.startswith("_"):
            for name, p in unwrap(obj).named_parameters():
                if id(p) in want and id(p) not in out:
                    out[id(p)] = f"{var}.{name}"
    if len(out) < len(want):
        owners = [o for o in gc.get_objects() if issubclass(type(o), nn.Module)]
        owners.sort(key=lambda m: -sum(1 for _ in m.parameters()))  # outermost first
        for mod in owners:
            for name, p in mod.named_parameters():
                if id(p) in want and id(p) not in out:
                    out[id(p)] = f"{type(mod).__name__}.{name}"
            if len(out) == len(want):
                break
    return out


# -------------------------------------------------------------------------------------- SEN102


def _vanishing(st: Any, p: torch.Tensor) -> bool:
    g = st.last_values.get(id(p))
    if g is None:
        return False
    return vanishing(g, p)  # the bias before a batch norm: not moving is expected, not a bug


def _not_updated(w: Watch) -> list[Finding]:
    states = [st for st in w._states.values() if st.steps > 0]
    if not states:
        return []
    owner = {id(p): st for st in states for p in st.params}
    named: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    for model, label in _named_models(w):
        for name, p in model.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                named.append((_join(label, name), p))
    orphans = [p for st in states for p in st.params if id(p) not in seen]
    if orphans:
        # held by an optimizer, owned by no watched model: a module that is never called (reported
        # under its name) or no live module at all (one replaced after the optimizer was built: the
        # replacement's "not-in-optimizer" says it all; without any watched model, by position)
        found = _orphan_names(orphans) if w._models else {}
        index = {
            id(p): (gi, pi)
            for st in states
            for gi, g in enumerate(st.optimizer.param_groups)
            for pi, p in enumerate(g["params"])
        }
        for p in orphans:
            if id(p) in seen or (w._models and id(p) not in found):
                continue
            seen.add(id(p))
            gi, pi = index.get(id(p), (0, 0))
            named.append((found.get(id(p), f"param_groups[{gi}]['params'][{pi}]"), p))
    for name, p in _untrained_roots(w, seen):
        seen.add(id(p))
        named.append((name, p))
    bad: list[dict[str, str]] = []
    for name, p in named:
        if not p.requires_grad:
            continue  # frozen on purpose
        st = owner.get(id(p))
        if st is None:
            reason = "not-in-optimizer"
        elif id(p) in st.no_grad:
            reason = "no-grad"
        elif id(p) in st.zero_grad:
            reason = "zero-grad"
        elif w._unchanged.get(id(p)) and not _vanishing(st, p):
            reason = "unchanged"
        else:
            continue
        bad.append({"name": name, "reason": reason})
    if not bad:
        return []
    shown = ", ".join(f"{b['name']} ({b['reason']})" for b in bad[:6])
    more = f" and {len(bad) - 6} more" if len(bad) > 6 else ""
    steps = max(st.steps for st in states)
    return [
        Finding(
            "SEN102",
            f"{len(bad)} trainable parameter{'s' if len(bad) != 1 else ''} never updated in {steps} "
            f"step{'s' if steps != 1 else ''}: {shown}{more}",
            {"parameters": bad},
        )
    ]


def _untrained_roots(w: Watch, seen: set[int]) -> list[tuple[str, torch.Tensor]]:
    """Parameters of a model that ran in training forward passes and got gradients, in training mode,
    although no optimizer holds any of its parameters: a GAN's discriminator whose optimizer was
    given the generator's parameters, a separate head or loss module left out of the optimizer.

    A model in eval mode (a fixed loss network, a teacher) is left alone, and so is one whose
    parameters some optimizer holds that has not stepped yet (a WGAN generator between critic steps).
    """
    held = {id(p) for st in w._states.values() for p in st.params}
    candidates: list[nn.Module] = []
    for root in list(w._train_roots.values()):
        inner = unwrap(root)
        if any(inner is unwrap(m) for m in w._models) or not inner.training:
            continue
        params = [p for p in inner.parameters() if p.requires_grad]
        if not params or any(id(p) in held or id(p) in seen for p in params):
            continue
        if any(p.grad is not None for p in params):
            candidates.append(inner)
    if not candidates:
        return []
    in_some_optimizer = {
        id(p)
        for o in gc.get_objects()
        if issubclass(type(o), torch.optim.Optimizer)
        for g in o.param_groups
        for p in g["params"]
    }
    out: list[tuple[str, torch.Tensor]] = []
    for inner in candidates:
        params = [p for p in inner.parameters() if p.requires_grad]
        if any(id(p) in in_some_optimizer for p in params):
            continue
        names = _orphan_names(params)
        out.extend(
            (names.get(id(p), f"{type(inner).__name__}.{n}"), p) for n, p in inner.named_parameters() if p.requires_grad
        )
    return out


# ------------------------------------------------------------------------------- SEN103/SEN104


def _mismatch(w: Watch) -> list[Finding]:
    out = []
    for code, key, what in (("SEN103", "device", "devices"), ("SEN104", "dtype", "dtypes")):
        entries = w._mismatch[code]
        if not entries:
            continue
        tensors = [t for _, odd in entries for t in odd]
        shown = ", ".join(f"{t['name']} ({t[key]}, expected {t['expected']})" for t in tensors[:6])
        more = f" and {len(tensors) - 6} more" if len(tensors) > 6 else ""
        roots = ", ".join(dict.fromkeys(type(unwrap(m)).__name__ for m, _ in entries))
        out.append(Finding(code, f"{what} differ at the first call of {roots}: {shown}{more}", {"tensors": tensors}))
    return out


# -------------------------------------------------------------------------------------- SEN105

_WHERE = {
    "input": "in the batch fed to the model",
    "forward": "in the forward pass",
    "loss": "in the loss (the gradient flowing into the model's output)",
    "backward": "in the backward pass",
    "update": "in the parameters after the optimizer update",
}


def _nonfinite(w: Watch, pnames: dict[int, str], mnames: dict[int, str]) -> list[Finding]:
    if w._nonfinite is None or w._nonfinite_raw is None:
        return []
    root, module, param = w._nonfinite_raw
    info = w._nonfinite
    label = _label_of(w, root)
    mod_name: str | None = None
    if info.get("module_name") is not None:  # from the replay: relative to the root
        mod_name = _join(label, info["module_name"])
    elif module is not None:
        mod_name = mnames.get(id(module))
        if mod_name is None and root is not None:
            mod_name = _name_in(unwrap(root), module)
    param_name: str | None = None
    if info.get("param_name") is not None:
        param_name = _join(label, info["param_name"])
    elif param is not None:
        param_name = pnames.get(id(param))
        if mod_name is None and param_name is not None:
            mod_name = param_name.rpartition(".")[0]
    stage, step = info["stage"], info["step"]
    parts = [f"first non-finite value at step {step}, {_WHERE[stage]}"]
    if mod_name is not None:
        parts.append(f"module {mod_name!r}" if mod_name else f"the model's own forward ({type(unwrap(root)).__name__})")
    if param_name is not None:
        parts.append(f"parameter {param_name!r}")
    if info.get("tensor"):
        parts.append(f"tensor {info['tensor']}")
    details: dict[str, Any] = {"stage": stage, "module": mod_name, "parameter": param_name, "step": step}
    if info.get("tensor"):
        details["tensor"] = info["tensor"]
    for key, value in info.get("extra", {}).items():
        details.setdefault(key, value)
    return [Finding("SEN105", ", ".join(parts), details)]


def _eval_module_names(w: Watch, mnames: dict[int, str]) -> list[str]:
    names = []
    for root, module in w._eval_hits.values():
        name = mnames.get(id(module))
        if name is None:
            name = _name_in(unwrap(root), module)
        names.append(name if name else type(module).__name__)
    return list(dict.fromkeys(names))


# -------------------------------------------------------------------------------------- SEN109


def _out_of_sync(w: Watch, pnames: dict[int, str]) -> Finding:
    info = w._out_of_sync
    assert info is not None
    params = [{"name": pnames.get(id(p), name), "ranks": ranks} for p, name, ranks in info["parameters"]]
    step = info["step"]
    ranks = sorted({r for item in params for r in item["ranks"]})
    shown = ", ".join(item["name"] for item in params[:4])
    more = f" and {len(params) - 4} more" if len(params) > 4 else ""
    return finding(
        "SEN109",
        f"after optimizer step {step} {len(params)} parameter{'s' if len(params) != 1 else ''} differ"
        f" across ranks ({shown}{more}; rank{'s' if len(ranks) != 1 else ''} {', '.join(map(str, ranks))}"
        " against rank 0): gradients are not all-reduced (a forward through ddp_model.module, a model"
        " never wrapped in DistributedDataParallel, no_sync() never left) or the ranks started from"
        " different weights",
        {"parameters": params, "step": step},
    )
