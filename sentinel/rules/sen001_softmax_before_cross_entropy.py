from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sentinel.analysis.facts import Facts
from sentinel.rules.base import Rule, Violation

if TYPE_CHECKING:
    from sentinel.fixes import Fix


class SoftmaxBeforeCrossEntropy(Rule):
    """## What it does
    Finds probabilities (the output of a softmax) passed to `nn.CrossEntropyLoss` or
    `F.cross_entropy`. The softmax can be a call (`F.softmax`, `torch.softmax`, `x.softmax(dim)`),
    an `nn.Softmax` module, or the last step of a model: a class whose `forward` returns a softmax, or
    an `nn.Sequential` ending in `nn.Softmax`. Values are followed through variables, attributes,
    helper functions and methods defined in the same file.

    ## Why is this bad?
    `CrossEntropyLoss` expects raw, unnormalized logits: it applies `log_softmax` itself. Given
    probabilities it computes `log_softmax(softmax(z))`, whose gradients are squashed towards zero as
    soon as one class dominates. The loop runs and the loss goes down a little, but the model trains
    much more slowly and often plateaus at a worse accuracy.

    Feeding `log_softmax` output is not reported: `log_softmax` is idempotent, so the loss is the same.

    ## Example
    ```python
    import torch
    import torch.nn.functional as F
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for _ in range(10):
        optimizer.zero_grad()
        loss = criterion(model(x), y)  # error: the model ends in Softmax
        loss.backward()
        optimizer.step()
    ```

    Use instead:
    ```python
    import torch
    import torch.nn.functional as F
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for _ in range(10):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    probs = F.softmax(model(x), dim=1)  # probabilities for reporting are fine
    ```

    ## Fix safety
    The fix is unsafe (`--fix --unsafe-fixes`) and only offered where the probabilities serve nothing
    but the loss: a softmax written inside the loss call (`criterion(F.softmax(out, 1), y)` becomes
    `criterion(out, y)`), or a variable holding the softmax that nothing else reads (its assignment
    is removed and the loss receives the logits). It changes the loss values and the gradients, which
    is the point; a model whose `forward` ends in softmax is left for you to change, since other code
    may rely on its probabilities.

    ## References
    - [`torch.nn.CrossEntropyLoss`](https://pytorch.org/docs/stable/generated/torch.nn.CrossEntropyLoss.html):
      "The input is expected to contain the unnormalized logits for each class."
    """

    CODE = "SEN001"
    NAME = "softmax-before-cross-entropy"
    SUMMARY = "Softmax probabilities passed to a cross-entropy loss that expects logits"
    TRIGGER = (re.compile(r"(?i)softmax"), re.compile(r"(?i)cross_?entropy"))
    FIX = "unsafe"

    def fix(self, violation: Violation, module) -> Fix | None:
        import libcst as cst

        from sentinel.fixes import Fix, softmax_input, statement_line

        loss, probs = violation.node, violation.related
        if not isinstance(loss, cst.Call) or not isinstance(probs, cst.Call):
            return None
        logits = softmax_input(probs)
        if logits is None:
            return None
        args = [a.value for a in loss.args]
        if any(a is probs for a in args):  # the softmax written inside the loss call
            return Fix([(probs, logits)], description="pass the logits")
        # `probs = softmax(logits)` read by nothing but this loss call
        stmt = violation.related_stmt
        if not (isinstance(stmt, cst.Assign) and stmt.value is probs and len(stmt.targets) == 1):
            return None
        target = stmt.targets[0].target
        if not isinstance(target, cst.Name):
            return None
        name = target.value
        uses = [a for a in args if isinstance(a, cst.Name) and a.value == name]
        if len(uses) != 1 or len(re.findall(rf"(?<![\w.]){re.escape(name)}\b", module.code)) != 2:
            return None
        line = statement_line(module, stmt)
        if line is None or len(line.body) != 1:
            return None
        return Fix([(uses[0], logits), (line, None)], description="drop the softmax, pass the logits")

    VALID = [
        # log_softmax into CrossEntropyLoss computes the same loss: not reported
        """
import torch.nn.functional as F
def loss_of(logits, y):
    return F.cross_entropy(F.log_softmax(logits, dim=1), y)
""",
        # softmax for metrics only
        """
import torch
from torch import nn
model = nn.Linear(4, 3)
criterion = nn.CrossEntropyLoss()
x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
logits = model(x)
probs = torch.softmax(logits, dim=1)
confidence = probs.max(dim=1).values.mean().item()
loss = criterion(logits, y)
loss.backward()
""",
        # a forward that returns probabilities only outside training
        """
import torch
import torch.nn.functional as F
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
    def forward(self, x):
        logits = self.fc(x)
        if self.training:
            return logits
        return F.softmax(logits, dim=1)
model = Net()
loss = F.cross_entropy(model(torch.randn(2, 4)), torch.tensor([0, 1]))
""",
    ]
    INVALID = [
        """
import torch
import torch.nn.functional as F
from torch import nn
class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(10, 4)
        self.softmax = nn.Softmax(dim=1)
    def forward(self, x):
        return self.softmax(self.body(x))
class Trainer:
    def __init__(self, model):
        self.model = model
        self.loss_fn = nn.CrossEntropyLoss()
    def step(self, x, y):
        out = self.model(x)
        return self.loss_fn(out, y)  # error
Trainer(Classifier()).step(torch.randn(3, 10), torch.tensor([0, 1, 2]))
""",
        """
import torch
import torch.nn.functional as F
def compute_loss(logits, target):
    probs = logits.softmax(dim=-1)
    return F.cross_entropy(probs, target)  # error
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        for call in facts.loss_calls:
            if not call.is_ce or call.input is None or call.input.probs is None:
                continue
            yield Violation(
                call.node,
                call.stmt,
                "cross-entropy loss receives softmax probabilities; CrossEntropyLoss/F.cross_entropy "
                "apply log_softmax themselves and expect raw logits",
                related=call.input.probs,
                related_stmt=facts.stmt_of.get(id(call.input.probs)),
                related_label="softmax",
            )
