from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Event, Facts, StepEvent
from sentinel.rules.base import Rule, Violation


class StepOnEvaluationData(Rule):
    """## What it does
    Finds `optimizer.step()` or `loss.backward()` inside evaluation code: a loop over validation or test
    data (`val_loader`, `loaders["val"]`, `X_test`), an evaluation function (`validate()`,
    `evaluate()`, `test()`), or a loop under `torch.no_grad()` whose forward passes feed no
    `backward()` (a metrics loop). One finding per evaluation region: the step, or the `backward()` when
    the region has no step, reported in the evaluation code itself (a step inside a helper that training
    shares is reported at the helper's call in `validate()`, where the fix goes).

    ## Why is this bad?
    The model trains on the data meant to measure it. A `step()` in the validation loop applies the
    last gradients again (or gradients of validation batches), a `backward()` leaks validation
    gradients into the next training step. The validation score then rises because the model has seen
    the answers: model selection, early stopping and the reported accuracy are all optimistic, and the
    model does worse on truly new data than the numbers say.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters())
    criterion = nn.CrossEntropyLoss()
    train_loader = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(3)]
    val_loader = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(2)]
    for epoch in range(2):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        model.eval()
        val_loss = 0.0
        for x, y in val_loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # error: trains on the validation set
            val_loss += loss.item()
    ```

    Use instead:
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters())
    criterion = nn.CrossEntropyLoss()
    train_loader = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(3)]
    val_loader = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(2)]
    for epoch in range(2):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        model.eval()
        val_loss = 0.0
        with torch.no_grad():
            for x, y in val_loader:
                val_loss += criterion(model(x), y).item()
    ```

    ## Known problems
    Evaluation is recognized by names (of loaders, datasets, loop variables and functions) and by
    `no_grad`. Deliberate training on held-out data is not reported when its names say so: test-time
    adaptation (`adapt`, `tta`, `tent`), fine-tuning, pseudo-labelling, self-training, meta-learning
    support sets. Code that trains on validation data under neutral names is not found.

    ## References
    - [PyTorch tutorial: training with PyTorch](https://pytorch.org/tutorials/beginner/introyt/trainingyt.html)
      (the validation loop runs without `backward()`/`step()`)
    """

    CODE = "SEN013"
    NAME = "step-on-evaluation-data"
    SUMMARY = "backward() or optimizer.step() inside evaluation code (training on held-out data)"
    TRIGGER = (re.compile(r"\.step\(|backward"),)

    VALID = [
        # test-time adaptation on the test loader is deliberate
        """
import torch
from torch import nn
model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
test_loader = [torch.randn(8, 4) for _ in range(3)]
def adapt_on_batch(x):
    logits = model(x)
    entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
    opt.zero_grad()
    entropy.backward()
    opt.step()
    return logits.argmax(1)
for x in test_loader:
    preds = adapt_on_batch(x)
""",
        # a pytest case that trains
        """
import torch
from torch import nn
def test_loss_goes_down():
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
""",
        # a phase loop that only steps in the training phase
        """
import torch
from torch import nn
model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loaders = {
    "train": [(torch.randn(4, 4), torch.tensor([0, 1, 0, 1]))],
    "val": [(torch.randn(4, 4), torch.tensor([1, 0, 1, 0]))],
}
for epoch in range(2):
    for phase in ["train", "val"]:
        model.train(phase == "train")
        for x, y in loaders[phase]:
            opt.zero_grad()
            with torch.set_grad_enabled(phase == "train"):
                loss = nn.functional.cross_entropy(model(x), y)
                if phase == "train":
                    loss.backward()
                    opt.step()
""",
    ]
    INVALID = [
        """
import torch
from torch import nn
def evaluate(model, loader, criterion, optimizer):
    model.eval()
    total = 0.0
    for x, y in loader:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()  # error
        total += loss.item()
    return total
model = nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
data = [(torch.randn(4, 4), torch.tensor([0, 1, 0, 1]))]
print(evaluate(model, data, nn.CrossEntropyLoss(), optimizer))
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        regions: dict[tuple, list[Event]] = {}
        # a backward() with no step trains only through an optimizer that may apply it later
        optimizes = any(c.what == "optimizer" and c.models != frozenset() for c in facts.ctors)
        for ev in (*facts.steps, *facts.backwards):
            if not isinstance(ev, StepEvent) and not optimizes:
                continue  # gradients for attribution (relevance propagation), never applied
            key = facts.evaluation_region_of(ev)
            if key is not None:
                regions.setdefault(key, []).append(ev)
        for key, events in regions.items():
            steps = [e for e in events if isinstance(e, StepEvent)]
            if steps and all(s.model == frozenset() for s in steps):
                continue  # it updates plain tensors (an input image optimized to excite a class)
            where = "the validation/test loop" if key[0] == "loop" else "an evaluation function"
            owner = key[1] if key[0] == "function" else facts.frames[key[1]].ctx
            for ev in sorted(steps or events, key=lambda e: e.seq):
                what = "optimizer step" if isinstance(ev, StepEvent) else "backward()"
                node, stmt = facts.site_in(ev, owner)  # in the evaluation code, not inside a shared helper
                yield Violation(
                    node,
                    stmt,
                    f"{what} in {where}: the model is trained on evaluation data, so validation "
                    "metrics, model selection and early stopping become optimistic",
                )
