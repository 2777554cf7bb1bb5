"""SEN007 zero-grad-before-step: gradients reset between ``backward()`` and the step that needs them."""

from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Facts
from sentinel.rules.base import Rule, Violation


class ZeroGradBeforeStep(Rule):
    """## What it does
    Finds a gradient reset (`optimizer.zero_grad()`, `model.zero_grad()`, `p.grad = None` for every
    parameter) that runs after `backward()` and before the `optimizer.step()` that should apply those
    gradients, in the same iteration. Resets are matched to the optimizer they clear: in a GAN,
    resetting the discriminator's gradients between the generator's `backward()` and the generator's
    step is fine.

    ## Why is this bad?
    `backward()` writes the gradients into `.grad`; the reset wipes them, and the step then applies
    zeros (or, with `set_to_none=True`, skips every parameter). Nothing crashes and the loss is
    printed, but the parameters never move: the model does not learn at all (only weight decay acts).

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Linear(10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = [(torch.randn(8, 10), torch.randn(8, 1)) for _ in range(4)]
    for epoch in range(3):
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.zero_grad()  # error: wipes the gradients the step needs
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
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
    ```

    ## Known problems
    A reset whose optimizer or model sentinel cannot identify (a helper it cannot see, a loop over
    `optimizer.param_groups`), one that clears only part of the parameters (a frozen backbone), or one
    under a condition the step does not share is not reported, nor is a reset followed by gradients
    written by hand before the step (`p.grad = g`, a `set_grads(...)` helper).

    ## References
    - [`torch.optim.Optimizer.zero_grad`](https://pytorch.org/docs/stable/generated/torch.optim.Optimizer.zero_grad.html)
    """

    CODE = "SEN007"
    NAME = "zero-grad-before-step"
    SUMMARY = "Gradients reset after backward() and before the optimizer step that needs them"
    TRIGGER = (re.compile(r"backward"), re.compile(r"\.step\("), re.compile(r"zero_grad|\.grad\s*="))

    VALID = [
        # GAN: D's reset between G's backward and G's step touches only D
        """
import torch
from torch import nn
G = nn.Linear(4, 4)
D = nn.Linear(4, 1)
opt_g = torch.optim.Adam(G.parameters())
opt_d = torch.optim.Adam(D.parameters())
for _ in range(3):
    opt_g.zero_grad()
    g_loss = -D(G(torch.randn(2, 4))).mean()
    g_loss.backward()
    opt_d.zero_grad()
    opt_g.step()
    d_loss = D(G(torch.randn(2, 4)).detach()).mean()
    d_loss.backward()
    opt_d.step()
""",
        # L-BFGS: the closure resets, then backpropagates, inside the step
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.LBFGS(model.parameters())
x, y = torch.randn(8, 4), torch.randn(8, 1)
for _ in range(3):
    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)
""",
        # only the frozen part's gradients are dropped
        """
import torch
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)
    def forward(self, x):
        return self.head(self.body(x))
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(3):
    opt.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    for p in model.body.parameters():
        p.grad = None
    opt.step()
""",
        # gradient surgery: reset, then the combined gradients are written by hand
        """
import torch
from torch import nn
model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    out = model(torch.randn(2, 4))
    out[:, 0].sum().backward(retain_graph=True)
    g1 = [p.grad.clone() for p in model.parameters()]
    opt.zero_grad()
    out[:, 1].sum().backward()
    g2 = [p.grad.clone() for p in model.parameters()]
    opt.zero_grad()
    for p, a, b in zip(model.parameters(), g1, g2):
        p.grad = (a + b) / 2
    opt.step()
""",
    ]
    INVALID = [
        # accumulation: the reset shares the step's condition but still precedes it
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.Adam(model.parameters())
for i in range(16):
    loss = model(torch.randn(2, 4)).pow(2).mean() / 4
    loss.backward()
    if (i + 1) % 4 == 0:
        opt.zero_grad(set_to_none=True)  # error
        opt.step()
""",
        # a helper resets every parameter's gradient; AMP step
        """
import torch
from torch import nn
def clear(model):
    for p in model.parameters():
        p.grad = None  # error
class Trainer:
    def __init__(self, model):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters())
        self.scaler = torch.amp.GradScaler("cuda", enabled=torch.cuda.is_available())
    def train_epoch(self, loader):
        for x, y in loader:
            loss = nn.functional.mse_loss(self.model(x), y)
            self.scaler.scale(loss).backward()
            clear(self.model)
            self.scaler.step(self.optimizer)
            self.scaler.update()
Trainer(nn.Linear(4, 1)).train_epoch([(torch.randn(2, 4), torch.randn(2, 1))])
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        seen: set[int] = set()
        for step in facts.steps:
            for r in facts.resets_before(step):
                if id(r.node) in seen or facts.in_closure(step, r):
                    continue
                backed = any(
                    facts.feeds_step(b, step, r.seq) and not facts.exclusive(b, r)
                    for b in facts.near(step, "backwards")
                )
                if not backed or facts.backward_between(step, r.seq, step.seq):
                    continue
                if facts.grad_written_between(step, r.seq, step.seq):
                    continue  # gradients set by hand after the reset (PCGrad-style surgery)
                seen.add(id(r.node))
                name = step.recv or step.optimizer or "the optimizer"
                yield Violation(
                    r.node,
                    r.stmt,
                    f"gradients are reset after backward() and before `{name}` steps: the step applies "
                    "nothing and the model does not learn; reset before backward() or after the step",
                    related=step.node,
                    related_stmt=step.stmt,
                    related_label="step",
                )
