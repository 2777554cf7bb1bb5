"""SEN016 method-not-called: ``model.eval`` and friends written as a statement without ``()``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sentinel.analysis.facts import Facts
from sentinel.rules.base import Rule, Violation

if TYPE_CHECKING:
    from sentinel.fixes import Fix

_EFFECT = {
    "eval": "the model stays in training mode (dropout on, batch-norm statistics updated)",
    "train": "the model stays in evaluation mode",
    "zero_grad": "gradients are never reset and pile up across steps",
    "step": "nothing is updated",
    "backward": "no gradients are computed",
    "update": "the loss scale never adapts",
}


class MethodNotCalled(Rule):
    """## What it does
    Finds `model.eval`, `model.train`, `optimizer.zero_grad`, `optimizer.step`, `loss.backward`,
    `scheduler.step` or `scaler.update` written as a statement without parentheses, where the
    receiver is known to be a model, optimizer, loss tensor, scheduler or GradScaler (or is named
    unmistakably so). Assigning the bound method (`callback = model.eval`) is not reported.

    ## Why is this bad?
    Naming a method only looks it up; nothing runs. `model.eval` leaves dropout and batch norm in
    training mode, so validation metrics are noisy and lower than they should be; `optimizer.step`
    or `loss.backward` means the model never learns; `scheduler.step` keeps the learning rate
    constant; `optimizer.zero_grad` lets gradients accumulate. Python raises no error.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Linear(10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for epoch in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 10)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step  # error: the learning rate never decays
    ```

    Use instead:
    ```python
    import torch
    from torch import nn

    model = nn.Linear(10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for epoch in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 10)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
    ```

    ## Known problems
    Only these seven methods are checked, and only on receivers sentinel can identify; a property
    of the same name on a class of the project is not reported.

    ## Fix safety
    The fix (`--fix`) adds the missing `()`: `model.eval` becomes `model.eval()`. It is safe in the
    sense that it does what the line was written to do; the program then behaves as intended (the
    model really switches mode, the optimizer really steps), which changes its results.

    ## References
    - [`torch.nn.Module.eval`](https://pytorch.org/docs/stable/generated/torch.nn.Module.html#torch.nn.Module.eval)
    """

    CODE = "SEN016"
    NAME = "method-not-called"
    SUMMARY = "A method such as model.eval or optimizer.step named without () does nothing"
    TRIGGER = (re.compile(r"\.(?:eval|train|zero_grad|step|backward|update)[ \t]*(?:#.*)?$", re.M),)
    FIX = "safe"

    def fix(self, violation: Violation, module) -> Fix | None:
        import libcst as cst

        from sentinel.fixes import Fix

        attr = violation.node.value if isinstance(violation.node, cst.Expr) else violation.node
        if not isinstance(attr, cst.Attribute):
            return None
        return Fix([(attr, cst.Call(func=attr))], description="call it")

    VALID = [
        # a bound method stored for later is not a bug
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
set_eval = model.eval
set_eval()
""",
        # `update` of a dictionary, `train` of something that is not a model
        """
import torch
class Config:
    train = True
cfg = Config()
cfg.train
stats = {}
stats.update
""",
    ]
    INVALID = [
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
scaler = torch.amp.GradScaler()
for _ in range(3):
    optimizer.zero_grad()
    loss = model(torch.randn(2, 4)).sum()
    loss.backward  # error
    optimizer.step  # error
    scheduler.step  # error
    scaler.update  # error
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        seen: set[int] = set()
        for ev in facts.bare_methods:
            if id(ev.node) in seen:
                continue
            seen.add(id(ev.node))
            yield Violation(
                ev.node,
                ev.stmt,
                f"`{ev.text}` names the method without calling it: {_EFFECT[ev.method]}; write `{ev.text}()`",
            )
