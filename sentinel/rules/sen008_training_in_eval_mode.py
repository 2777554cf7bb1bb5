from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Facts
from sentinel.rules.base import Rule, Violation, model_call, named_model


class TrainingInEvalMode(Rule):
    """## What it does
    Finds training steps (a forward pass that is backpropagated and followed by an optimizer step of
    that model in the same iteration) that run while the model is in eval mode: `model.eval()` called
    for validation inside the epoch loop with no `model.train()` before the next epoch's training, or
    `model.eval()` before the training loop and never undone. Modes are followed through helpers
    (`validate()` switching to eval, `train_one_epoch()` switching back) and Trainer classes. Reported on
    the first forward of the training step.

    ## Why is this bad?
    In eval mode dropout is off and batch norm normalizes with its frozen running statistics instead of
    the batch's, and stops updating them. From the first validation on, the model trains without the
    regularization it was designed with and with stale normalization: it overfits sooner, converges to a
    worse optimum, and the batch-norm statistics no longer match the weights. Nothing fails; the
    training curve just flattens earlier than it should.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters())
    train = [(torch.randn(8, 8), torch.randint(0, 2, (8,))) for _ in range(3)]
    val = [(torch.randn(8, 8), torch.randint(0, 2, (8,))) for _ in range(2)]
    model.train()
    for epoch in range(3):
        for x, y in train:
            optimizer.zero_grad()
            out = model(x)  # error: eval mode from the second epoch on
            nn.functional.cross_entropy(out, y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            acc = sum((model(x).argmax(1) == y).float().mean().item() for x, y in val)
    ```

    Use instead:
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters())
    train = [(torch.randn(8, 8), torch.randint(0, 2, (8,))) for _ in range(3)]
    val = [(torch.randn(8, 8), torch.randint(0, 2, (8,))) for _ in range(2)]
    for epoch in range(3):
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            out = model(x)
            nn.functional.cross_entropy(out, y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            acc = sum((model(x).argmax(1) == y).float().mean().item() for x, y in val)
    ```

    ## Known problems
    A model known to have no dropout or batch norm is not reported (eval mode changes nothing for it),
    nor is one whose mode sentinel cannot follow (switched by code it cannot see). `eval()` on a
    submodule only (`model.backbone.eval()` to freeze batch-norm statistics while fine-tuning) is
    deliberate and not reported, nor is `eval()` of a model some of whose parameters were frozen by
    hand (`p.requires_grad = False`: a linear probe training only its head).

    ## References
    - [`torch.nn.Module.train`](https://pytorch.org/docs/stable/generated/torch.nn.Module.html#torch.nn.Module.train)
    """

    CODE = "SEN008"
    NAME = "training-in-eval-mode"
    SUMMARY = "A training step runs while the model is in eval mode"
    TRIGGER = (re.compile(r"\.eval\(|\.train\("), re.compile(r"backward"))

    VALID = [
        # frozen batch-norm statistics of the backbone while fine-tuning: deliberate
        """
import torch
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        self.head = nn.Linear(8, 2)
    def forward(self, x):
        return self.head(self.backbone(x))
model = Net()
opt = torch.optim.SGD(model.head.parameters(), lr=0.1)
model.train()
model.backbone.eval()
for _ in range(3):
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
""",
        # a model without dropout or batch norm: eval mode changes nothing
        """
import torch
from torch import nn
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
model.eval()
for _ in range(3):
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
""",
        # the validate helper switches back to train mode
        """
import torch
from torch import nn
def validate(model, data):
    model.eval()
    with torch.no_grad():
        score = sum(model(x).sum().item() for x, _ in data)
    model.train()
    return score
model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
model.train()
for epoch in range(3):
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    validate(model, data)
""",
    ]
    INVALID = [
        """
import torch
from torch import nn
model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
model.eval()
with torch.no_grad():
    print("initial", model(torch.randn(8, 4)).argmax(1))
for step in range(5):
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)  # error
    loss.backward()
    opt.step()
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        firsts: dict[tuple, tuple] = {}
        for fw, blame in facts.trained_in_eval_mode():
            key = (fw.frame, fw.model.ident if fw.model is not None else None)
            if key not in firsts or fw.seq < firsts[key][0].seq:
                firsts[key] = (fw, blame)
        for fw, blame in sorted(firsts.values(), key=lambda p: p[0].seq):
            name = named_model(fw.model_expr) or "the model"
            yield Violation(
                fw.node,
                fw.stmt,
                f"training step while {name} is in eval mode (dropout off, batch norm frozen); "
                f"call {model_call(fw.model_expr, 'train')} before training",
                related=blame.node,
                related_stmt=blame.stmt,
                related_label="eval()",
            )
