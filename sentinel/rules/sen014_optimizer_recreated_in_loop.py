"""SEN014 optimizer-recreated-in-loop: an optimizer (or GradScaler) rebuilt every iteration of the
loop that trains with it, while the model it trains outlives that loop."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from sentinel.analysis.facts import CtorEvent, Facts, Frame, StepEvent
from sentinel.analysis.values import Alt
from sentinel.rules.base import Rule, Violation


def _outlives(facts: Facts, model: Any, loop: Frame, ctor: CtorEvent) -> bool:
    """Was ``model`` created before ``loop`` began (so the same model trains in every iteration)?"""
    if model in loop.each:
        return False  # `for net in ensemble`: each iteration trains another member
    created = getattr(model, "created", None)
    if isinstance(created, int):
        return created < loop.start
    if isinstance(model, tuple) and model[:1] == ("guess",):
        # a parameter or a value sentinel cannot see: only when the loop itself never rebinds it
        return ctor.ctx == loop.ctx and not ctor.fresh_params
    return False


def _reinitialised(facts: Facts, ctor: CtorEvent, models: frozenset) -> bool:
    """Is a model re-initialised in place earlier in the iteration (``apply(init)``, ``load_state_dict``)?"""
    for r in facts.near(ctor, "reinits"):
        if r.seq < ctor.seq and facts.same_iteration(ctor, r):
            if facts._within(r.target, models) or any(facts._within(m, frozenset({r.target})) for m in models):
                return True
    return False


def _trains_models(facts: Facts, step: StepEvent) -> frozenset | None:
    models = step.model
    return frozenset(models) if models and None not in models else None


class OptimizerRecreatedInLoop(Rule):
    """## What it does
    Finds an optimizer (or a `GradScaler`) constructed inside the loop that trains with it (the epoch
    loop or the batch loop) while the model it optimizes was built before that loop, so the same model
    keeps training with a fresh optimizer every iteration. A new model per fold or trial built together
    with its optimizer is fine, and so is plain SGD without momentum, which keeps no state.

    ## Why is this bad?
    Momentum buffers and Adam's moment estimates (and a GradScaler's loss scale) restart from zero on
    every iteration: Adam's bias correction then makes each first step a full-size, sign-like update,
    momentum never builds up, and a fresh scaler starts at 65536 and skips steps to find its scale
    again. Training is noisier and converges more slowly (or plateaus) with no error anywhere.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Linear(10, 1)
    loader = [(torch.randn(8, 10), torch.randn(8, 1)) for _ in range(4)]
    for epoch in range(3):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # error: state reset each epoch
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    ```

    Use instead:
    ```python
    import torch
    from torch import nn

    model = nn.Linear(10, 1)
    loader = [(torch.randn(8, 10), torch.randn(8, 1)) for _ in range(4)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(3):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    ```

    An optimizer built by a factory that returns it (`optimizer = build_optimizer(model, cfg)`) is
    reported on that call in the loop; a factory's own choice of optimizer (`if name == "sgd":`) is not
    a condition on the loop.

    ## Known problems
    Loops over a literal list (a learning-rate sweep, training stages) are not reported, nor is an
    optimizer rebuilt only under a condition in the loop (`if epoch == unfreeze_at:`), nor one over
    parameter groups or over a chosen subset (`filter(...)`, `[p for p in ... if p.requires_grad]`)
    when the loop changes which parameters train (`requires_grad`, `freeze`/`unfreeze`): that is how
    progressive unfreezing legitimately rebuilds its optimizer. Parameters sentinel cannot resolve are
    not reported. A model re-initialised in place before the optimizer (`model.apply(init)`,
    `model.load_state_dict(...)`) counts as a new model.

    ## References
    - [`torch.optim`: constructing an optimizer](https://pytorch.org/docs/stable/optim.html#how-to-use-an-optimizer)
    """

    CODE = "SEN014"
    NAME = "optimizer-recreated-in-loop"
    SUMMARY = "Optimizer or GradScaler rebuilt inside the loop that trains the same model"
    TRIGGER = (re.compile(r"\.step\("), re.compile(r"for |while "))

    VALID = [
        # cross-validation: a new model and its optimizer per fold
        """
import torch
from torch import nn
for fold in range(3):
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters())
    for epoch in range(2):
        opt.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
""",
        # plain SGD keeps no state
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
for epoch in range(3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1 * 0.9 ** epoch)
    opt.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
""",
        # rebuilt once, when the backbone is unfrozen
        """
import torch
from torch import nn
model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
opt = torch.optim.Adam(model[1].parameters())
for epoch in range(6):
    if epoch == 3:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    opt.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
""",
        # progressive unfreezing: which parameters train changes, the optimizer follows
        """
import torch
from torch import nn
model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
for p in model[0].parameters():
    p.requires_grad = False
for epoch in range(4):
    if epoch == 2:
        for p in model[0].parameters():
            p.requires_grad = True
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    opt.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
""",
        # trials built by a helper: model and optimizer together
        """
import torch
from torch import nn
def build(width):
    model = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 1))
    return model, torch.optim.AdamW(model.parameters())
for width in range(8, 64, 8):
    model, opt = build(width)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
""",
    ]
    INVALID = [
        """
import torch
from torch import nn
def train(model, loader, epochs):
    for epoch in range(epochs):
        for x, y in loader:
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # error
            scaler = torch.amp.GradScaler(enabled=torch.cuda.is_available())  # error
            opt.zero_grad()
            scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
            scaler.step(opt)
            scaler.update()
""",
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.Adam(model.parameters())
for epoch in range(3):
    scaler = torch.cuda.amp.GradScaler()  # error
    for _ in range(4):
        opt.zero_grad()
        scaler.scale(model(torch.randn(2, 4)).sum()).backward()
        scaler.step(opt)
        scaler.update()
""",
        # a factory that chooses the optimizer, over the parameters that train
        """
import torch
from torch import nn
def build_optimizer(model, name):
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9)
    return torch.optim.AdamW(params, lr=1e-3)
def run(name):
    model = nn.Linear(4, 1)
    for epoch in range(3):
        opt = build_optimizer(model, name)  # error
        opt.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        seen: set[int] = set()
        for ctor in facts.ctors:
            if not ctor.frames or id(ctor.node) in seen or ctor.stateless:
                continue
            loop = facts.frames[ctor.frames[-1]]
            if loop.unrolled or facts.conds_within(ctor, ctor) - set(ctor.chooser):
                # a sweep over literals, or rebuilt only when a condition holds (a new stage); a factory's
                # own `if name == "sgd":` only chooses which optimizer to build
                continue
            if (ctor.subset or ctor.selective) and any(loop.id in f.frames for f in facts.grad_flags):
                continue  # progressive unfreezing: the parameters that train change in this loop
            steps = [s for s in facts.near(ctor, "steps") if s.seq > ctor.seq and facts.same_iteration(ctor, s)]
            if ctor.what == "optimizer":
                steps = [
                    s for s in steps if s.ident is ctor.ident or isinstance(s.ident, Alt) and ctor.ident in s.ident
                ]
                models = ctor.models
                if not steps or not models:
                    continue
                outlives = all(_outlives(facts, m, loop, ctor) for m in models)
                what = "optimizer"
                lost = "its momentum / adaptive moments restart"
            else:
                steps = [s for s in steps if s.scaled is ctor.ident]
                if not steps:
                    continue
                step = steps[0]
                models = _trains_models(facts, step)
                opt_created = getattr(step.ident, "created", None)
                outlives = isinstance(opt_created, int) and opt_created < loop.start
                if not outlives and models:
                    outlives = all(_outlives(facts, m, loop, ctor) for m in models)
                what = "GradScaler"
                lost = "its loss scale restarts from the initial value"
            if not outlives or (models and _reinitialised(facts, ctor, models)):
                continue
            # a factory called in the loop (`build_optimizer(model, cfg)`) returns what it builds, and the
            # call in the loop is the mistake; a function that builds and trains is reported at the build
            factory = ctor.ctx != loop.ctx and all(ctor.ctx not in s.stack for s in steps)
            node, stmt = facts.site_in(ctor, loop.ctx) if factory else (ctor.node, ctor.stmt)
            if id(node) in seen:
                continue
            seen.update({id(ctor.node), id(node)})
            yield Violation(
                node,
                stmt,
                f"a new {what} is built in every iteration of the loop that trains the same model: {lost} "
                f"each time; build it once before the loop",
                related=loop.node,
                related_stmt=loop.node,
                related_label="loop",
            )
