from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Facts
from sentinel.analysis.values import ACT_SIGMOID
from sentinel.rules.base import Rule, Violation


class SigmoidBeforeLogitsLoss(Rule):
    """## What it does
    Finds sigmoid outputs passed to a loss that expects raw logits: `nn.BCEWithLogitsLoss` /
    `F.binary_cross_entropy_with_logits` (which apply the sigmoid themselves) or `nn.CrossEntropyLoss` /
    `F.cross_entropy`. The sigmoid can be a call (`torch.sigmoid`, `F.sigmoid`, `x.sigmoid()`), an
    `nn.Sigmoid` module, or the last step of a model: a class whose `forward` returns a sigmoid, or an
    `nn.Sequential` ending in `nn.Sigmoid`. Values are followed through variables, attributes, helper
    functions and methods.

    ## Why is this bad?
    The sigmoid is applied twice: the loss sees `sigmoid(sigmoid(z))`, which always lies between 0.5 and
    0.73. The predictions the loss scores can never approach 0, the gradients are squashed by two
    sigmoid derivatives, and the model learns very slowly or stalls at a poor accuracy while the loop
    runs normally. With `CrossEntropyLoss`, squashing the logits into (0, 1) makes every class nearly
    equally likely, with the same effect.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid())
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters())
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32, 1)).float()
    for _ in range(10):
        optimizer.zero_grad()
        loss = criterion(model(x), y)  # error: the model already ends in Sigmoid
        loss.backward()
        optimizer.step()
    ```

    Use instead:
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters())
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32, 1)).float()
    for _ in range(10):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    probs = torch.sigmoid(model(x))  # probabilities for reporting are fine
    ```

    Or keep the sigmoid and use `nn.BCELoss` (less numerically stable).

    ## Known problems
    A loss object sentinel cannot see constructed (a criterion passed in from another program) is not
    checked; neither is a model whose `forward` returns the sigmoid only on some paths.

    ## References
    - [`torch.nn.BCEWithLogitsLoss`](https://pytorch.org/docs/stable/generated/torch.nn.BCEWithLogitsLoss.html):
      "This loss combines a Sigmoid layer and the BCELoss in one single class."
    """

    CODE = "SEN011"
    NAME = "sigmoid-before-logits-loss"
    SUMMARY = "Sigmoid outputs passed to a loss that applies the sigmoid (or softmax) itself"
    TRIGGER = (re.compile(r"(?i)sigmoid|expit"), re.compile(r"(?i)with_?logits|cross_?entropy"))

    VALID = [
        # sigmoid then BCELoss is the non-logits pairing: correct
        """
import torch
from torch import nn
model = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())
loss = nn.BCELoss()(model(torch.randn(8, 4)), torch.ones(8, 1))
loss.backward()
""",
        # a forward that applies the sigmoid only in eval mode
        """
import torch
import torch.nn.functional as F
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)
    def forward(self, x):
        z = self.fc(x)
        return z if self.training else torch.sigmoid(z)
model = Net()
loss = F.binary_cross_entropy_with_logits(model(torch.randn(2, 4)), torch.ones(2, 1))
""",
        # sigmoid gating inside the model, logits out
        """
import torch
from torch import nn
class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(4, 4)
        self.out = nn.Linear(4, 1)
    def forward(self, x):
        return self.out(x * torch.sigmoid(self.gate(x)))
model = Gated()
loss = nn.BCEWithLogitsLoss()(model(torch.randn(8, 4)), torch.ones(8, 1))
""",
    ]
    INVALID = [
        """
import torch
import torch.nn.functional as F
def loss_fn(logits, target):
    probs = logits.sigmoid()
    return F.binary_cross_entropy_with_logits(probs, target)  # error
""",
        """
import torch
from torch import nn
class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.act = nn.Sigmoid()
    def forward(self, x):
        return self.act(self.fc(x))
model = Tagger()
criterion = nn.CrossEntropyLoss()
loss = criterion(model(torch.randn(4, 6)), torch.tensor([0, 1, 2, 0]))  # error
loss.backward()
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        for call in facts.loss_calls:
            act = call.input.act if call.input is not None else None
            if act is None or act.kind != ACT_SIGMOID or call.loss not in ("bce_logits", "ce"):
                continue
            if call.loss == "bce_logits":
                message = (
                    "BCEWithLogitsLoss/binary_cross_entropy_with_logits receives sigmoid outputs: it applies "
                    "the sigmoid itself, so the sigmoid is applied twice; pass the raw logits"
                )
            else:
                message = (
                    "cross-entropy loss receives sigmoid outputs; CrossEntropyLoss/F.cross_entropy expect raw logits"
                )
            yield Violation(
                call.node,
                call.stmt,
                message,
                related=act.node,
                related_stmt=facts.stmt_of.get(id(act.node)),
                related_label="sigmoid",
            )
