from __future__ import annotations

from collections.abc import Iterator

from sentinel.analysis.facts import Facts
from sentinel.rules.base import Rule, Violation
from sentinel.rules.sen003_validation_without_eval_mode import (
    ValidationWithoutEvalMode,
    first_per_region,
)


class ValidationWithoutNoGrad(Rule):
    """## What it does
    Finds evaluation code (forward passes that feed no `backward()`) that runs with gradient tracking
    on: not under `torch.no_grad()`, `torch.inference_mode()`, `torch.set_grad_enabled(False)`, or a
    function decorated with `@torch.no_grad()` / `@torch.inference_mode()`. Phase loops using
    `torch.set_grad_enabled(phase == "train")` are understood. Only code whose grad mode is known is
    reported: a helper that no call in the file reaches may be called under `no_grad`.

    ## Why is this bad?
    With autograd on, every forward pass records its graph and keeps the activations alive for a
    `backward()` that never comes. Validation then uses several times the memory it needs (often the
    cause of an out-of-memory error that only happens during evaluation) and runs slower. Any metric
    accumulated from those tensors keeps the graphs alive even longer.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Linear(8, 2)
    model.eval()
    test_loader = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(3)]
    correct = 0
    for x, y in test_loader:
        logits = model(x)  # error: graph recorded for nothing
        correct += (logits.argmax(1) == y).sum().item()
    ```

    Use instead:
    ```python
    import torch
    from torch import nn

    model = nn.Linear(8, 2)
    model.eval()
    test_loader = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(3)]
    correct = 0
    with torch.inference_mode():
        for x, y in test_loader:
            logits = model(x)
            correct += (logits.argmax(1) == y).sum().item()
    ```

    ## References
    - [`torch.no_grad`](https://pytorch.org/docs/stable/generated/torch.no_grad.html),
      [`torch.inference_mode`](https://pytorch.org/docs/stable/generated/torch.inference_mode.html)
    """

    CODE = "SEN004"
    NAME = "validation-without-no-grad"
    SUMMARY = "Evaluation runs with gradient tracking enabled"
    TRIGGER = ValidationWithoutEvalMode.TRIGGER  # the same evaluation code, the same cheap test

    VALID = [
        """
import torch
from torch import nn
model = nn.Linear(4, 2)
@torch.no_grad()
def evaluate(loader):
    model.eval()
    return [model(x) for x in loader]
outputs = evaluate([torch.randn(2, 4)])
""",
        """
import torch
from torch import nn
model = nn.Linear(4, 2)
model.eval()
torch.set_grad_enabled(False)
predictions = model(torch.randn(3, 4)).argmax(1)
""",
    ]
    INVALID = [
        """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
def evaluate(model, val_loader):
    model.eval()
    total = 0.0
    for x, y in val_loader:
        out = model(x)  # error
        total += nn.functional.cross_entropy(out, y).item()
    return total
model = nn.Linear(4, 2)
data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
print(evaluate(model, data))
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        candidates = [ev for ev in facts.evaluation_forwards() if ev.grad == "on"]
        for ev in first_per_region(candidates, facts):
            yield Violation(
                ev.node,
                ev.stmt,
                f"evaluation forward pass of `{ev.model_expr}` with gradient tracking on: the graph "
                "and activations are kept for a backward() that never comes; wrap evaluation in "
                "`torch.no_grad()` or `torch.inference_mode()`",
            )
