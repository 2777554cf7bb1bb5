from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Facts
from sentinel.rules.base import Rule, Violation


class MissingZeroGrad(Rule):
    """## What it does
    Finds a loop that runs `backward()` and an optimizer step (`optimizer.step()`,
    `scaler.step(optimizer)`) every iteration but never resets the gradients inside the loop:
    no `optimizer.zero_grad()`, `model.zero_grad()`, `p.grad = None` or `p.grad.zero_()`, neither in
    the loop body nor in a helper it calls. Deliberate gradient accumulation, where the step and the
    reset share a condition, is fine. `scheduler.step()` is not an optimizer step.

    ## Why is this bad?
    `backward()` *adds* into `.grad`. Without a reset, every step applies the sum of all gradients
    computed so far, so the effective learning rate grows with the iteration count and the update
    direction is dominated by stale batches. Nothing crashes: the loss prints, but training is slow,
    unstable, or diverges.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Linear(10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = [(torch.randn(8, 10), torch.randn(8, 1)) for _ in range(4)]
    optimizer.zero_grad()
    for epoch in range(3):
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()  # error: gradients pile up across batches
            optimizer.step()
    ```

    Use instead:
    ```python
    import torch
    from torch import nn

    model = nn.Linear(10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = [(torch.randn(8, 10), torch.randn(8, 1)) for _ in range(4)]
    for epoch in range(3):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
    ```

    ## References
    - [`torch.optim.Optimizer.zero_grad`](https://pytorch.org/docs/stable/generated/torch.optim.Optimizer.zero_grad.html)
    """

    CODE = "SEN002"
    NAME = "missing-zero-grad"
    SUMMARY = "Loop steps the optimizer without resetting gradients each iteration"
    TRIGGER = (re.compile(r"backward"), re.compile(r"\.step\("))

    VALID = [
        # gradient accumulation: step and reset share the condition
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.Adam(model.parameters())
accum = 4
for i in range(16):
    loss = model(torch.randn(2, 4)).pow(2).mean() / accum
    loss.backward()
    if (i + 1) % accum == 0:
        opt.step()
        opt.zero_grad()
""",
        # the reset lives in a helper called every iteration
        """
import torch
from torch import nn
def clear(model):
    for p in model.parameters():
        p.grad = None
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(5):
    clear(model)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
""",
        # L-BFGS: the closure zeroes the gradients
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.LBFGS(model.parameters())
x, y = torch.randn(8, 4), torch.randn(8, 1)
for _ in range(5):
    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)
""",
    ]
    INVALID = [
        """
import torch
from torch import nn
class Trainer:
    def __init__(self, model):
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters())
        self.scaler = torch.amp.GradScaler("cuda", enabled=False)
    def train_epoch(self, loader):
        for x, y in loader:
            with torch.autocast("cpu", enabled=False):
                loss = nn.functional.cross_entropy(self.model(x), y)
            self.scaler.scale(loss).backward()  # error
            self.scaler.step(self.optimizer)
            self.scaler.update()
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        for fid in facts.training_loops():
            uncovered = [s for s in facts.step_by_frame[fid] if not facts.step_is_reset(fid, s)]
            if not uncovered:
                continue
            step = min(uncovered, key=lambda e: e.seq)
            backwards = sorted(facts.backward_by_frame[fid], key=lambda e: e.seq)
            before = [b for b in backwards if b.seq < step.seq]
            culprit = before[-1] if before else backwards[0]
            name = step.optimizer or "the optimizer"
            if facts.reset_by_frame.get(fid):
                message = (
                    f"gradients accumulate across iterations: `{name}` steps with gradients that no reset in "
                    "this loop clears (the resets here cover other parameters or run only under another "
                    f"condition); call `{name}.zero_grad()` each iteration"
                )
            else:
                message = (
                    "gradients accumulate across iterations: this loop calls backward() and steps the "
                    "optimizer but never resets gradients inside the loop (call optimizer.zero_grad() "
                    "each iteration)"
                )
            yield Violation(culprit.node, culprit.stmt, message)
