"""SEN009 clip-before-unscale: gradient clipping on gradients a GradScaler still scales."""

from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Facts, StepEvent, UnscaleEvent
from sentinel.rules.base import Rule, Violation


def _unscales(u: UnscaleEvent, step: StepEvent) -> bool:
    """Does ``scaler.unscale_(...)`` act on the optimizer ``step`` applies (unknown: assume it does)?"""
    if _known(u.ident) and _known(step.ident):
        return u.ident == step.ident
    return True


def _known(ident: object) -> bool:
    """An optimizer the code built (not one typed by a parameter's name)."""
    return ident is not None and not isinstance(ident, tuple)


class ClipBeforeUnscale(Rule):
    """## What it does
    With a `GradScaler`, finds `torch.nn.utils.clip_grad_norm_` / `clip_grad_value_` called on
    gradients that are still scaled: after `scaler.scale(loss).backward()` and before
    `scaler.step(optimizer)`, with no `scaler.unscale_(optimizer)` earlier in the iteration.

    ## Why is this bad?
    The scaler multiplies the loss, hence every gradient, by a large factor (65536 at the start). A
    clipping threshold of 1.0 applied to those scaled gradients clips almost every step to a tiny
    fraction of the real gradient (or, for `clip_grad_value_`, to nonsense), so training with mixed
    precision converges much more slowly than the same run in fp32, or not at all, without any error.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Linear(10, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=torch.cuda.is_available())
    loader = [(torch.randn(8, 10), torch.randn(8, 1)) for _ in range(4)]
    for x, y in loader:
        optimizer.zero_grad()
        with torch.autocast("cuda", enabled=torch.cuda.is_available()):
            loss = nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # error: clips scaled gradients
        scaler.step(optimizer)
        scaler.update()
    ```

    Use instead:
    ```python
    import torch
    from torch import nn

    model = nn.Linear(10, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=torch.cuda.is_available())
    loader = [(torch.randn(8, 10), torch.randn(8, 1)) for _ in range(4)]
    for x, y in loader:
        optimizer.zero_grad()
        with torch.autocast("cuda", enabled=torch.cuda.is_available()):
            loss = nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    ```

    ## Known problems
    A scaler built with `enabled=False` scales nothing and is not reported. Clipping done by a library
    (`accelerator.clip_grad_norm_`, DeepSpeed, Lightning's `gradient_clip_val`) unscales by itself and
    is not a `torch.nn.utils` call, so it is never flagged.

    ## References
    - [Automatic mixed precision: working with unscaled gradients](https://pytorch.org/docs/stable/notes/amp_examples.html#gradient-clipping)
    """

    CODE = "SEN009"
    NAME = "clip-before-unscale"
    SUMMARY = "Gradient clipping on GradScaler-scaled gradients (no scaler.unscale_ before it)"
    TRIGGER = (re.compile(r"clip_grad_"), re.compile(r"GradScaler|scaler"))

    VALID = [
        # the scaler is disabled: nothing is scaled
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.cuda.amp.GradScaler(enabled=False)
for _ in range(3):
    opt.zero_grad()
    scaler.scale(model(torch.randn(2, 4)).sum()).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
""",
        # accumulation: unscale and clip inside the step's condition
        """
import torch
from torch import nn
from torch.nn.utils import clip_grad_value_
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler()
for i in range(8):
    scaler.scale(model(torch.randn(2, 4)).sum() / 4).backward()
    if (i + 1) % 4 == 0:
        scaler.unscale_(opt)
        clip_grad_value_(model.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
""",
    ]
    INVALID = [
        # two optimizers: the generator's gradients are unscaled, the discriminator's are not
        """
import torch
from torch import nn
G = nn.Linear(4, 4)
D = nn.Linear(4, 1)
opt_g = torch.optim.Adam(G.parameters())
opt_d = torch.optim.Adam(D.parameters())
scaler = torch.amp.GradScaler()
for _ in range(3):
    opt_g.zero_grad()
    scaler.scale(-D(G(torch.randn(2, 4))).mean()).backward()
    scaler.unscale_(opt_g)
    nn.utils.clip_grad_norm_(G.parameters(), 1.0)
    scaler.step(opt_g)
    opt_d.zero_grad()
    scaler.scale(D(G(torch.randn(2, 4)).detach()).mean()).backward()
    nn.utils.clip_grad_norm_(D.parameters(), 1.0)  # error
    scaler.step(opt_d)
    scaler.update()
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        seen: set[int] = set()
        for clip in facts.clips:
            if id(clip.node) in seen or clip.measure_only:
                continue
            for step in facts.steps:
                if not step.scaled or step.seq < clip.seq or not facts.same_iteration(step, clip):
                    continue
                if facts.exclusive(step, clip) or facts.clip_touches(clip, step) is False:
                    continue
                backed = any(b.seq < clip.seq and facts.same_iteration(step, b) for b in facts.near(step, "backwards"))
                unscaled = any(
                    u.seq < clip.seq and facts.same_iteration(step, u) and _unscales(u, step)
                    for u in facts.near(step, "unscales")
                )
                if not backed or unscaled:
                    continue
                stepped = any(
                    s.seq < clip.seq and facts.same_iteration(step, s) and facts.clip_touches(clip, s) is not False
                    for s in facts.near(step, "steps")
                )
                if stepped:
                    continue  # an earlier step in the iteration (clip-after-step territory)
                seen.add(id(clip.node))
                name = step.recv or "optimizer"
                yield Violation(
                    clip.node,
                    clip.stmt,
                    "gradients are clipped while the GradScaler still scales them: the threshold applies to "
                    f"gradients multiplied by the loss scale; call `scaler.unscale_({name})` before clipping",
                    related=step.node,
                    related_stmt=step.stmt,
                    related_label="scaler step",
                )
                break
