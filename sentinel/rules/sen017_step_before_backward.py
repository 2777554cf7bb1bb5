"""SEN017 step-before-backward: the iteration resets, steps, and only then backpropagates."""

from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Facts
from sentinel.rules.base import Rule, Violation


class StepBeforeBackward(Rule):
    """## What it does
    Finds an iteration that resets the gradients (`optimizer.zero_grad()`, `model.zero_grad()`,
    `p.grad = None`), then calls `optimizer.step()`, and only after that runs this iteration's
    `backward()`: the order is reset, step, backward instead of reset, backward, step. The reset may
    also close the previous iteration (`step()`, `backward()`, `zero_grad()` in that order). (A
    backward() before the reset is the other mistake, SEN007.)

    ## Why is this bad?
    The step runs on gradients that were just cleared, so it applies zeros (or, with
    `set_to_none=True`, skips every parameter); the gradients `backward()` computes afterwards are
    wiped by the next iteration's reset before any step sees them. The loss is printed every
    iteration, but the model never learns.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Linear(10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = [(torch.randn(8, 10), torch.randn(8, 1)) for _ in range(4)]
    for epoch in range(3):
        for x, y in loader:
            optimizer.zero_grad()
            optimizer.step()  # error: steps on gradients that were just cleared
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
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
    Only reported when the reset provably clears the stepped optimizer's parameters and the
    backward() follows in the same iteration at the same loop level; an `optimizer.step(closure)` whose
    closure backpropagates is correct and never reported.

    ## References
    - [`torch.optim.Optimizer.step`](https://pytorch.org/docs/stable/generated/torch.optim.Optimizer.step.html)
    """

    CODE = "SEN017"
    NAME = "step-before-backward"
    SUMMARY = "Optimizer steps on freshly reset gradients, before the iteration's backward()"
    TRIGGER = (re.compile(r"backward"), re.compile(r"\.step\("), re.compile(r"zero_grad|\.grad\s*="))

    VALID = [
        # step of the previous iteration's gradients at the top: not a reset-then-step
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for i in range(5):
    loss = model(torch.randn(2, 4)).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
""",
        # a warm-up step before the training loop (silences the scheduler warning)
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
opt.zero_grad()
opt.step()
for i in range(5):
    opt.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
""",
        # GAN: G's step before D's backward, D's reset in between touches only D
        """
import torch
from torch import nn
G = nn.Linear(4, 4)
D = nn.Linear(4, 1)
opt_g = torch.optim.Adam(G.parameters())
opt_d = torch.optim.Adam(D.parameters())
for _ in range(3):
    opt_g.zero_grad()
    (-D(G(torch.randn(2, 4))).mean()).backward()
    opt_d.zero_grad()
    opt_g.step()
    D(G(torch.randn(2, 4)).detach()).mean().backward()
    opt_d.step()
""",
    ]
    INVALID = [
        # the reset at the end of each iteration clears the gradients before the next step
        """
import torch
from torch import nn
model = nn.GRU(4, 8)
opt = torch.optim.RMSprop(model.parameters())
for seq in [torch.randn(5, 2, 4) for _ in range(3)]:
    opt.step()  # error
    out, _ = model(seq)
    out.pow(2).mean().backward()
    opt.zero_grad()
""",
        """
import torch
from torch import nn
def train_step(model, optimizer, scaler, x, y):
    optimizer.zero_grad(set_to_none=True)
    scaler.step(optimizer)  # error
    scaler.update()
    loss = nn.functional.mse_loss(model(x), y)
    scaler.scale(loss).backward()
    return loss.item()
model = nn.Linear(4, 1)
optimizer = torch.optim.Adam(model.parameters())
scaler = torch.amp.GradScaler("cuda", enabled=torch.cuda.is_available())
for epoch in range(2):
    train_step(model, optimizer, scaler, torch.randn(2, 4), torch.randn(2, 1))
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        seen: set[int] = set()
        for step in facts.steps:
            if id(step.node) in seen:
                continue
            n = len(step.frames)
            after = [
                b
                for b in facts.near(step, "backwards")
                if b.seq > step.seq
                and not facts.in_closure(step, b)
                and len(b.frames) == n
                and facts.same_iteration(step, b)
                and not facts.exclusive(b, step)
                and facts.backward_may_reach(b, step)
            ]
            earlier = any(facts.feeds_step(b, step, step.seq) for b in facts.near(step, "backwards"))
            if not after or earlier:
                continue  # a backward() for this step earlier in the iteration: the reset wipes it (SEN007)
            # a reset, then the step, with no backward() between them: whatever ran before the reset
            # (another network's loss in a GAN) is wiped, and this iteration's backward comes too late
            resets = [
                r
                for r in facts.resets_before(step)
                if not facts.backward_between(step, r.seq, step.seq)
                and not facts.grad_written_between(step, r.seq, step.seq)
            ]
            if not facts.backward_between(step, -1, step.seq) and not facts.grad_written_between(step, -1, step.seq):
                resets += self._reset_at_end(facts, step, after)
            if not resets:
                continue
            seen.add(id(step.node))
            name = step.recv or step.optimizer or "the optimizer"
            yield Violation(
                step.node,
                step.stmt,
                f"`{name}` steps right after the gradients were reset and before this iteration's "
                "backward(): every step applies zero gradients and the model never learns; "
                "call backward() before the step",
                related=after[0].node,
                related_stmt=after[0].stmt,
                related_label="backward",
            )

    @staticmethod
    def _reset_at_end(facts: Facts, step, after: list) -> list:
        """``step(); loss.backward(); zero_grad()`` in a loop: the reset at the end of one iteration
        clears the gradients before the step at the start of the next."""
        if not step.frames or facts.frames[step.frames[-1]].unrolled:
            return []
        step_conds = facts.conds_within(step, step)
        out = []
        for r in facts.near(step, "resets"):
            if r.seq <= after[0].seq or not facts.same_iteration(step, r) or not facts.only_resets_below(step, r):
                continue
            if facts.exclusive(r, step) or not facts.conds_within(step, r) <= step_conds:
                continue
            if not facts.reset_covers(r, step) or facts.backward_between(step, r.seq, 1 << 62):
                continue
            if facts.grad_written_between(step, r.seq, 1 << 62):
                continue
            out.append(r)
        return out
