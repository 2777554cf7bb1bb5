"""SEN019 ddp-forward-bypasses-wrapper: a training forward that skips the DistributedDataParallel wrapper."""

from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Facts
from sentinel.rules.base import Rule, Violation, named_model


class DdpForwardBypassesWrapper(Rule):
    """## What it does
    Finds a training forward pass (one whose output reaches `backward()`, with gradients enabled) run
    through `ddp_model.module(...)` or through the original model after it was wrapped as
    `ddp_model = DistributedDataParallel(model)`, instead of through `ddp_model(...)`.

    ## Why is this bad?
    DDP synchronises gradients with hooks that its own `forward` arms. A forward through the inner
    module computes local gradients only: every rank steps with its own gradients, the replicas drift
    apart, and the "distributed" run is several unrelated runs whose checkpoint (rank 0) saw a fraction
    of the data. No error is raised.

    ## Example
    ```python
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    def train(rank, loader):
        model = nn.Linear(10, 1).to(rank)
        ddp_model = DDP(model, device_ids=[rank])
        optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.01)
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)  # error: not through ddp_model
            loss.backward()
            optimizer.step()
    ```

    Use instead:
    ```python
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    def train(rank, loader):
        model = nn.Linear(10, 1).to(rank)
        ddp_model = DDP(model, device_ids=[rank])
        optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.01)
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(ddp_model(x), y)
            loss.backward()
            optimizer.step()
    ```

    ## Known problems
    Evaluation through `ddp_model.module` (under `no_grad`, nothing backpropagated) is fine and not
    reported. A wrapper applied on one branch only (`if distributed: model = DDP(model)`) leaves the
    name ambiguous and nothing is reported; neither are sub-modules reached through `.module.encoder`.

    ## References
    - [DistributedDataParallel notes](https://pytorch.org/docs/stable/notes/ddp.html)
    """

    CODE = "SEN019"
    NAME = "ddp-forward-bypasses-wrapper"
    SUMMARY = "Training forward through ddp.module or the unwrapped model skips gradient sync"
    TRIGGER = (re.compile(r"DistributedDataParallel"), re.compile(r"backward"))

    VALID = [
        # the common idiom: the name is rebound to the wrapper
        """
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
model = nn.Linear(4, 1)
model = DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(3):
    opt.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
""",
        # evaluation through .module under no_grad
        """
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
net = nn.Linear(4, 1)
ddp = DDP(net)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
for epoch in range(3):
    opt.zero_grad()
    ddp(torch.randn(2, 4)).sum().backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        print(ddp.module(torch.randn(2, 4)).mean().item())
""",
    ]
    INVALID = [
        """
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
class Trainer:
    def __init__(self, model):
        self.model = DDP(model)
        self.opt = torch.optim.Adam(self.model.parameters())
    def step(self, x, y):
        self.opt.zero_grad()
        out = self.model.module(x)  # error
        nn.functional.mse_loss(out, y).backward()
        self.opt.step()
trainer = Trainer(nn.Linear(4, 1))
for _ in range(3):
    trainer.step(torch.randn(2, 4), torch.randn(2, 1))
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        seen: set[int] = set()
        for ev in facts.forwards:
            if ev.via is None or ev.grad == "off" or id(ev.node) in seen:
                continue
            if not facts.connected_to_backward(frozenset({ev.id})):
                continue
            seen.add(id(ev.node))
            name = named_model(ev.model_expr)
            how = (
                f"{name or 'this call'} runs the model inside the DistributedDataParallel wrapper directly"
                if ev.via == "module"
                else f"{name} is the model a DistributedDataParallel wrapper wraps"
                if name
                else "this call runs the model a DistributedDataParallel wrapper wraps"
            )
            yield Violation(
                ev.node,
                ev.stmt,
                f"{how}: this training forward skips DDP's gradient synchronisation, so ranks step with "
                "their own gradients and drift apart; call the wrapper instead",
            )
