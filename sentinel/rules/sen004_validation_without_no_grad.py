from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sentinel.analysis.facts import Facts, ForwardEvent
from sentinel.rules.base import Rule, Violation, named_model
from sentinel.rules.sen003_validation_without_eval_mode import (
    ValidationWithoutEvalMode,
    first_per_region,
)

if TYPE_CHECKING:
    from sentinel.fixes import Fix


class ValidationWithoutNoGrad(Rule):
    """## What it does
    Finds evaluation code (forward passes that feed no `backward()`) that runs with gradient tracking
    on: not under `torch.no_grad()`, `torch.inference_mode()`, `torch.set_grad_enabled(False)`, or a
    function decorated with `@torch.no_grad()` / `@torch.inference_mode()`. Phase loops using
    `torch.set_grad_enabled(phase == "train")` are understood. Only code whose grad mode is known is
    reported: a helper that no call in the file reaches may be called under `no_grad`. When the forward
    runs in a helper that its other callers use correctly (a loss helper training shares, an average
    another caller computes under `no_grad`), the finding points at the call that lacks `no_grad`.
    One evaluation region (an evaluation function, or a loop) is reported once, at its first forward,
    whichever models it runs (a model and a loss module with parameters, a GAN's two generators): one
    `no_grad` fixes all of them. A model of a class sentinel cannot see (reloaded whole with
    `torch.load`, built by a library) run through its own inference method (`predict`, `inference`,
    `generate`, `sample`) is not reported: such methods usually manage the grad mode (and `predict` the
    train/eval mode) themselves.
    A model written by hand, a function computing on tensors that require grad
    (`W = torch.randn(784, 10, requires_grad=True)`, `nn.Parameter`, `W.requires_grad_()`; `def net(X):
    return X @ W + b`), is a model like any `nn.Module`: calling it on data is a forward pass.

    ## Why is this bad?
    With autograd on, every forward pass records its graph and keeps the activations alive for a
    `backward()` that never comes. Validation then uses several times the memory it needs (often the
    cause of an out-of-memory error that only happens during evaluation) and runs slower. Any metric
    accumulated from those tensors keeps the graphs alive even longer.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Linear(8, 2)
    model.eval()
    test_loader = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(3)]
    correct = 0
    for x, y in test_loader:
        logits = model(x)  # error: graph recorded for nothing
        correct += (logits.argmax(1) == y).sum().item()
    ```

    Use instead:
    ```python
    import torch
    from torch import nn

    model = nn.Linear(8, 2)
    model.eval()
    test_loader = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(3)]
    correct = 0
    with torch.inference_mode():
        for x, y in test_loader:
            logits = model(x)
            correct += (logits.argmax(1) == y).sum().item()
    ```

    ## Fix safety
    The fix is unsafe (`--fix --unsafe-fixes`): an evaluation function is decorated with
    `@torch.no_grad()`, an evaluation loop inside a training function is wrapped in
    `with torch.no_grad():`, and a lone evaluation statement inside a loop that also trains is
    wrapped on its own. Code that also trains in another iteration (a train/val phase loop sharing one
    forward) gets no fix: write `with torch.set_grad_enabled(phase == "train"):` there. It changes
    behaviour if anything later backpropagates through the outputs of
    that code (sentinel saw nothing do so), and a decorated function no longer builds graphs for any
    caller.

    ## Known problems
    Inside a loop that also trains, a forward counts as evaluation only when names say so
    (`X_val`, `test_loader`, `evaluate()`); a policy choosing its next action there
    (`agent.act(state)`, `select_action`) collects data and is not reported. A lone forward outside
    any loop with nothing saying "evaluation" (a plot of `model(sample)` after training, a demo print)
    is not reported either. Pre-0.4 `Variable(x, volatile=True)` is reported: current PyTorch ignores
    `volatile`.

    ## References
    - [`torch.no_grad`](https://pytorch.org/docs/stable/generated/torch.no_grad.html),
      [`torch.inference_mode`](https://pytorch.org/docs/stable/generated/torch.inference_mode.html)
    """

    CODE = "SEN004"
    NAME = "validation-without-no-grad"
    SUMMARY = "Evaluation runs with gradient tracking enabled"
    MODEL_METHODS = False  # forwards in a model's own methods are part of its forward
    TRIGGER = ValidationWithoutEvalMode.TRIGGER  # the same evaluation code, the same cheap test
    FIX = "unsafe"

    def fix(self, violation: Violation, module) -> Fix | None:
        import libcst as cst

        from sentinel.fixes import Fix, no_grad_decorated, no_grad_region, statement_line, torch_name

        if violation.data is None:
            return None
        kind, node = violation.data
        torch, imports = torch_name(module)
        if kind == "function" and isinstance(node, cst.FunctionDef):
            return Fix([(node, no_grad_decorated(node, torch))], imports, "decorate with @torch.no_grad()")
        if kind == "loop" and isinstance(node, (cst.For, cst.While)):
            return Fix([(node, no_grad_region(node, torch))], imports, "wrap in `with torch.no_grad():`")
        line = statement_line(module, violation.stmt) if kind == "statement" else None
        if line is not None and len(line.body) == 1:
            return Fix([(line, no_grad_region(line, torch))], imports, "wrap in `with torch.no_grad():`")
        return None

    VALID = [
        """
import torch
from torch import nn
model = nn.Linear(4, 2)
@torch.no_grad()
def evaluate(loader):
    model.eval()
    return [model(x) for x in loader]
outputs = evaluate([torch.randn(2, 4)])
""",
        """
import torch
from torch import nn
model = nn.Linear(4, 2)
model.eval()
torch.set_grad_enabled(False)
predictions = model(torch.randn(3, 4)).argmax(1)
""",
    ]
    INVALID = [
        """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
def evaluate(model, val_loader):
    model.eval()
    total = 0.0
    for x, y in val_loader:
        out = model(x)  # error
        total += nn.functional.cross_entropy(out, y).item()
    return total
model = nn.Linear(4, 2)
data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
print(evaluate(model, data))
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        candidates = [ev for ev in facts.evaluation_forwards() if ev.grad == "on"]
        regions: set[tuple] = set()
        for ev in first_per_region(candidates, facts):
            region = facts.region_key(ev)[:2]
            if region[0] is not None:  # a loop or an evaluation function, not a script's straight-line code
                if region in regions:
                    continue  # one `no_grad` covers the region, whichever models run in it (model, loss module)
                regions.add(region)
            node, stmt = facts.site_lacking_no_grad(ev)
            yield Violation(
                node,
                stmt,
                f"evaluation forward pass of {named_model(ev.model_expr) or 'the model'} with gradient "
                "tracking on: the graph and activations are kept for a backward() that never comes; "
                "wrap evaluation in `torch.no_grad()` or `torch.inference_mode()`",
                data=_region(ev, facts),
            )


def _region(ev: ForwardEvent, facts: Facts) -> tuple[str, object]:
    """What to put under ``no_grad`` to fix ``ev``: its evaluation function, its evaluation loop, or
    (inside a loop that also trains) the statement alone; ``("none", None)`` when the same code also
    trains in another activation or iteration (a phase loop), where no syntactic fix is right."""
    if any(f.node is ev.node and facts.connected_to_backward(frozenset({f.id})) for f in facts.forwards):
        return "none", None
    if facts.region_key(ev)[0] == "function":
        func = facts.functions.get(ev.ctx)
        if func is not None and not any(
            c in facts.training_activations for c, node in facts.functions.items() if node is func
        ):
            return "function", func
        return "none", None
    if ev.frame is not None and facts.frames[ev.frame].ctx == ev.ctx:
        loop = facts.frames[ev.frame].node
        if not any(facts.frame_trains(fid) for fid, frame in facts.frames.items() if frame.node is loop):
            return "loop", loop
    return "statement", None
