from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Facts
from sentinel.rules.base import Rule, Violation


class StateDictSnapshotWithoutCopy(Rule):
    """## What it does
    Finds a "best so far" snapshot that is a reference instead of a copy, taken inside a training loop
    and used after it: `best = model.state_dict()` (or an optimizer's), its shallow copies
    (`sd.copy()`, `dict(sd)`, `{k: v for k, v in sd.items()}`, `v.detach()`), a checkpoint dict holding
    one, `history.append(model.state_dict())`, and `best_model = model`.
    `copy.deepcopy(...)`, `{k: v.clone() ...}`, moving tensors to another device and `torch.save(...)`
    right away are copies and are not reported.

    ## Why is this bad?
    `state_dict()` returns the model's live parameter and buffer tensors, not copies. Every later
    `optimizer.step()` updates them in place, so the "best" snapshot silently follows the latest
    weights. Early stopping and model selection then restore or save the last epoch's model while
    reporting the best epoch's metrics.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    best_loss, best_state = float("inf"), None
    for epoch in range(10):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        if loss.item() < best_loss:
            best_loss = loss.item()
            best_state = model.state_dict()  # error: a view of the live weights
    model.load_state_dict(best_state)
    ```

    Use instead:
    ```python
    import copy

    import torch
    from torch import nn

    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    best_loss, best_state = float("inf"), None
    for epoch in range(10):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        if loss.item() < best_loss:
            best_loss = loss.item()
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    ```

    ## References
    - [Saving and loading models](https://pytorch.org/tutorials/beginner/saving_loading_models.html):
      `state_dict()` returns references to the parameters.
    """

    CODE = "SEN005"
    NAME = "state-dict-snapshot-without-copy"
    SUMMARY = "Snapshot of a model's state keeps references to weights that training keeps changing"
    TRIGGER = (re.compile(r"state_dict|best|snapshot"), re.compile(r"backward|\.step\("))

    VALID = [
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
best = None
for epoch in range(3):
    opt.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
model.load_state_dict(best)
""",
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(3):
    opt.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    checkpoint = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}
    torch.save(checkpoint, "last.pt")
final_weights = model.state_dict()
""",
    ]
    INVALID = [
        """
import torch
from torch import nn
class Trainer:
    def __init__(self, model):
        self.model = model
        self.opt = torch.optim.Adam(model.parameters())
        self.best = None
    def fit(self, data, epochs):
        for epoch in range(epochs):
            for x, y in data:
                self.opt.zero_grad()
                nn.functional.mse_loss(self.model(x), y).backward()
                self.opt.step()
            self.best = self.model.state_dict().copy()  # error
Trainer(nn.Linear(2, 1)).fit([(torch.randn(4, 2), torch.randn(4, 1))], 2)
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        for snap in facts.snapshots:
            training = [f for f in snap.frames if facts.trains_after(f, snap.alias, snap.seq)]
            if not training:
                continue
            frame = facts.frames[training[-1]]
            if not (
                snap.persistent
                or facts.read_after(snap.ctx, snap.target, frame.end)
                or (snap.ctx, snap.target) in facts.stored
                or facts.read_in_later_iteration(snap, frame.id)
            ):
                continue
            if snap.what == "model":
                message = (
                    f"`{snap.target}` is an alias of the model, not a copy: training after this line changes "
                    f"it too; use `copy.deepcopy(...)`"
                )
            else:
                message = (
                    f"`{snap.target}` holds references to the live {snap.source} tensors, not a copy: later "
                    "optimizer steps overwrite this snapshot; use `copy.deepcopy(....state_dict())` or clone "
                    "each tensor"
                )
            yield Violation(snap.node, snap.stmt, message)
