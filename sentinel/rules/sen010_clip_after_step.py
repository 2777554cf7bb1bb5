"""SEN010 clip-after-step: gradient clipping that runs after the step it was meant to limit."""

from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import ClipEvent, Facts, StepEvent
from sentinel.rules.base import Rule, Violation


def _after_step(facts: Facts, clip: ClipEvent) -> StepEvent | None:
    """The step ``clip`` follows in its iteration with no backward() in between, when no later step
    of the iteration could use the clipped gradients."""
    for step in facts.steps:
        if step.seq >= clip.seq or facts.in_closure(step, clip) or len(clip.frames) != len(step.frames):
            continue
        if not facts.same_iteration(step, clip) or facts.exclusive(step, clip):
            continue
        if facts.clip_touches(clip, step) is False:
            continue
        if not facts.conds_within(step, step) <= facts.conds_within(step, clip):
            continue  # the clip also runs in iterations that do not step (gradient accumulation)
        if any(step.seq < b.seq < clip.seq and facts.same_iteration(step, b) for b in facts.near(step, "backwards")):
            continue
        later = any(
            s.seq > clip.seq and facts.same_iteration(step, s) and facts.clip_touches(clip, s) is not False
            for s in facts.near(step, "steps")
        )
        if not later:
            return step
    return None


def _before_backward(facts: Facts, clip: ClipEvent) -> StepEvent | None:
    """A step later in ``clip``'s iteration that applies gradients computed after the clip: the clip
    sits before the iteration's backward() (it clipped the previous, already applied gradients)."""
    n = len(clip.frames)
    if n == 0:
        return None
    for step in facts.steps:
        if step.seq <= clip.seq or len(step.frames) != n or not facts.same_iteration(step, clip):
            continue
        if facts.exclusive(step, clip) or not facts.clip_touches(clip, step):
            continue
        if any(b.seq < clip.seq and facts.same_iteration(step, b) for b in facts.near(step, "backwards")):
            return None
        if any(clip.seq < b.seq < step.seq and facts.same_iteration(step, b) for b in facts.near(step, "backwards")):
            return step
    return None


class ClipAfterStep(Rule):
    """## What it does
    Finds `torch.nn.utils.clip_grad_norm_` / `clip_grad_value_` called after `optimizer.step()` (and
    before the next `backward()`), or at the top of an iteration before its `backward()`: either way
    the step that follows the gradients' computation applies them unclipped.

    ## Why is this bad?
    Clipping exists to limit the update a step makes. Clipped after the step, the update already used
    the raw gradients and the clipped ones are thrown away by the next reset. Training runs with no
    clipping at all: loss spikes and divergence on exploding gradients (RNNs, transformers, RL) come
    back, while the code looks protected.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.LSTM(8, 16)
    optimizer = torch.optim.Adam(model.parameters())
    for x in [torch.randn(5, 2, 8) for _ in range(4)]:
        optimizer.zero_grad()
        out, _ = model(x)
        out.pow(2).mean().backward()
        optimizer.step()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # error: too late
    ```

    Use instead:
    ```python
    import torch
    from torch import nn

    model = nn.LSTM(8, 16)
    optimizer = torch.optim.Adam(model.parameters())
    for x in [torch.randn(5, 2, 8) for _ in range(4)]:
        optimizer.zero_grad()
        out, _ = model(x)
        out.pow(2).mean().backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    ```

    ## Known problems
    A call with an infinite or huge limit only measures the gradient norm (for logging) and is not
    reported. A clip that also runs in iterations that do not step (gradient accumulation with the clip outside
    the step's condition), or whose parameters might belong to an optimizer that steps later in the
    iteration, is not reported.

    ## References
    - [`torch.nn.utils.clip_grad_norm_`](https://pytorch.org/docs/stable/generated/torch.nn.utils.clip_grad_norm_.html)
    """

    CODE = "SEN010"
    NAME = "clip-after-step"
    SUMMARY = "Gradient clipping after optimizer.step(): the step used unclipped gradients"
    TRIGGER = (re.compile(r"clip_grad_"), re.compile(r"\.step\("))

    VALID = [
        # GAN: D steps, then G's gradients are clipped before G steps
        """
import torch
from torch import nn
G = nn.Linear(4, 4)
D = nn.Linear(4, 1)
opt_g = torch.optim.Adam(G.parameters())
opt_d = torch.optim.Adam(D.parameters())
for _ in range(3):
    opt_d.zero_grad()
    opt_g.zero_grad()
    D(G(torch.randn(2, 4)).detach()).mean().backward()
    opt_d.step()
    (-D(G(torch.randn(2, 4))).mean()).backward()
    torch.nn.utils.clip_grad_norm_(G.parameters(), 1.0)
    opt_g.step()
""",
        # measuring the gradient norm after the step, for logging
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for i in range(8):
    opt.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    norm = nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
""",
        # accumulation: clip inside the step's condition, before the step
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for i in range(8):
    (model(torch.randn(2, 4)).sum() / 4).backward()
    if (i + 1) % 4 == 0:
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
""",
    ]
    INVALID = [
        # the clip at the top of the iteration clips the previous (already applied) gradients
        """
import torch
from torch import nn
class Trainer:
    def __init__(self, model):
        self.model = model
        self.opt = torch.optim.AdamW(model.parameters())
    def fit(self, loader):
        for x, y in loader:
            nn.utils.clip_grad_value_(self.model.parameters(), 0.5)  # error
            self.opt.zero_grad()
            nn.functional.mse_loss(self.model(x), y).backward()
            self.opt.step()
Trainer(nn.Linear(4, 1)).fit([(torch.randn(2, 4), torch.randn(2, 1))])
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        seen: set[int] = set()
        for clip in facts.clips:
            if id(clip.node) in seen or clip.measure_only:
                continue
            step = _after_step(facts, clip)
            if step is not None:
                message = (
                    "gradients are clipped after the optimizer step: the step already applied the "
                    "unclipped gradients and the clipped ones are reset; clip between backward() and step()"
                )
            else:
                step = _before_backward(facts, clip)
                if step is None:
                    continue
                message = (
                    "gradients are clipped before this iteration's backward(): the step applies the "
                    "gradients computed after the clip, unclipped; clip between backward() and step()"
                )
            seen.add(id(clip.node))
            yield Violation(
                clip.node, clip.stmt, message, related=step.node, related_stmt=step.stmt, related_label="step"
            )
