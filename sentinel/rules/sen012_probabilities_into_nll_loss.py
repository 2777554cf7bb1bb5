from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Facts
from sentinel.analysis.values import ACT_SIGMOID, ACT_SOFTMAX
from sentinel.rules.base import Rule, Violation


class ProbabilitiesIntoNllLoss(Rule):
    """## What it does
    Finds softmax or sigmoid outputs (probabilities) passed to `nn.NLLLoss` / `F.nll_loss`, which expect
    log-probabilities (the output of `log_softmax`). The activation can be a call (`F.softmax`,
    `torch.softmax`, `x.softmax(dim)`, `torch.sigmoid`), an `nn.Softmax` / `nn.Sigmoid` module, or the
    last step of a model: a class whose `forward` returns one, or an `nn.Sequential` ending in one.

    ## Why is this bad?
    `NLLLoss` only picks `-input[target]`: it does not take a logarithm. Given probabilities in
    (0, 1) it minimizes `-p[target]`, a bounded, nearly linear objective whose gradient does not grow
    for confident mistakes. Training still runs and the loss goes negative, but the model learns much
    more slowly and calibrates badly; the reported loss is not a log-likelihood at all.

    ## Example
    ```python
    import torch
    import torch.nn.functional as F
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for _ in range(10):
        optimizer.zero_grad()
        loss = F.nll_loss(model(x), y)  # error: probabilities, not log-probabilities
        loss.backward()
        optimizer.step()
    ```

    Use instead:
    ```python
    import torch
    import torch.nn.functional as F
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.LogSoftmax(dim=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for _ in range(10):
        optimizer.zero_grad()
        loss = F.nll_loss(model(x), y)
        loss.backward()
        optimizer.step()
    ```

    Or drop the softmax and use `nn.CrossEntropyLoss` on the logits. `torch.log(probs)` into
    `NLLLoss` is not reported (it is correct, if less stable).

    ## Known problems
    A loss object sentinel cannot see constructed is not checked; neither is a model whose `forward`
    returns probabilities only on some paths.

    ## References
    - [`torch.nn.NLLLoss`](https://pytorch.org/docs/stable/generated/torch.nn.NLLLoss.html): "The input
      given through a forward call is expected to contain log-probabilities of each class."
    """

    CODE = "SEN012"
    NAME = "probabilities-into-nll-loss"
    SUMMARY = "Softmax or sigmoid probabilities passed to NLLLoss, which expects log-probabilities"
    TRIGGER = (re.compile(r"(?i)nll_?loss"), re.compile(r"(?i)softmax|sigmoid|expit"))

    VALID = [
        # log_softmax into NLLLoss: correct
        """
import torch
import torch.nn.functional as F
logits = torch.randn(8, 3, requires_grad=True)
loss = F.nll_loss(F.log_softmax(logits, dim=1), torch.randint(0, 3, (8,)))
loss.backward()
""",
        # the log of the probabilities: correct (if less stable)
        """
import torch
from torch import nn
model = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
probs = model(torch.randn(8, 4))
loss = nn.NLLLoss()(torch.log(probs + 1e-8), torch.randint(0, 3, (8,)))
loss.backward()
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
        self.fc = nn.Linear(10, 4)
    def forward(self, x):
        return F.softmax(self.fc(x), dim=-1)
model = Classifier()
criterion = nn.NLLLoss()
loss = criterion(model(torch.randn(3, 10)), torch.tensor([0, 1, 2]))  # error
loss.backward()
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        for call in facts.loss_calls:
            act = call.input.act if call.input is not None else None
            if act is None or act.kind not in (ACT_SOFTMAX, ACT_SIGMOID) or call.loss != "nll":
                continue
            label = "softmax" if act.kind == ACT_SOFTMAX else "sigmoid"
            yield Violation(
                call.node,
                call.stmt,
                f"NLLLoss/F.nll_loss receives {label} probabilities; it expects log-probabilities "
                "(use log_softmax, or CrossEntropyLoss on the logits)",
                related=act.node,
                related_stmt=facts.stmt_of.get(id(act.node)),
                related_label=label,
            )
