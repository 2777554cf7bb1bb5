from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Facts, ForwardEvent
from sentinel.rules.base import Rule, Violation, model_call, named_model


def first_per_region(events: list[ForwardEvent], facts: Facts) -> list[ForwardEvent]:
    """The first forward of each evaluation region (loop iteration or function body, per model). In an
    evaluation function, that is its first forward of the model in the same grad and train/eval mode,
    even one that does not count as evaluation on its own (`memory = model.encoder(src)` before the
    decoding loop of a `greedy_decode()`)."""
    firsts: dict[tuple, ForwardEvent] = {}
    for ev in events:
        key = facts.region_key(ev)
        if key not in firsts or ev.seq < firsts[key].seq:
            firsts[key] = ev
    for key, ev in firsts.items():
        if key[0] != "function":
            continue
        for other in facts.forwards:
            if other.seq >= ev.seq:
                break
            if (
                other.ctx == ev.ctx
                and other.grad == ev.grad
                and other.modes == ev.modes
                and facts.region_key(other) == key
                and not facts.connected_to_backward(frozenset({other.id}))
            ):
                firsts[key] = other
                break
    return sorted(firsts.values(), key=lambda e: e.seq)


class ValidationWithoutEvalMode(Rule):
    """## What it does
    Finds evaluation code (forward passes that feed no `backward()`: a validation or test loop, an
    `evaluate()` helper, a final test pass) that runs while the model may still be in training mode:
    no `model.eval()` or `model.train(False)` on the way to it. The model's mode is followed through
    the whole program, including helpers that switch it (`train_one_epoch` calling `model.train()`),
    phase loops (`model.train(phase == "train")`) and Trainer classes. Lightning's
    `validation_step`/`test_step` are skipped: Lightning switches modes itself.

    ## Why is this bad?
    In training mode, dropout keeps zeroing activations at random and batch norm normalizes with the
    statistics of the current batch and keeps updating its running averages *with validation
    data*. Validation metrics come out noisy and pessimistic, model selection and early stopping act on
    them, and the batch-norm statistics of the saved model are polluted. `torch.no_grad()` does not
    change any of this: it only turns off gradient tracking.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters())
    train = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(3)]
    val = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(2)]
    for epoch in range(2):
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        with torch.no_grad():
            correct = 0
            for x, y in val:
                correct += (model(x).argmax(1) == y).sum().item()  # error: dropout still active
    ```

    Use instead:
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters())
    train = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(3)]
    val = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(2)]
    for epoch in range(2):
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = 0
            for x, y in val:
                correct += (model(x).argmax(1) == y).sum().item()
    ```

    ## Known problems
    Training mode chosen on purpose is not reported: an explicit `model.train()` after training, with
    nothing trained since and outside any loop that trains (Monte Carlo dropout, sampling predictions
    under `no_grad`), and a model handed to a training framework (ignite, Lightning, Hugging Face,
    fastai), which sets its modes itself. Instance norm does not count as a mode-dependent layer: in
    training mode it normalizes each sample by its own statistics, exactly as it was trained (with
    `track_running_stats=True`, `eval()` would switch it to running averages, which image-to-image
    models such as StarGAN avoid on purpose).

    ## References
    - [`torch.nn.Module.eval`](https://pytorch.org/docs/stable/generated/torch.nn.Module.html#torch.nn.Module.eval)
    """

    CODE = "SEN003"
    NAME = "validation-without-eval-mode"
    SUMMARY = "Evaluation runs while the model may still be in training mode"
    # evaluation code worth reporting sits next to training, a grad-mode switch, a mode switch or a
    # checkpoint load; model-definition files have none of these and are not parsed
    MODEL_METHODS = False  # forwards in a model's own methods are part of its forward
    TRIGGER = (
        re.compile(
            r"backward|no_grad|inference_mode|\.eval\(|\.train\(|set_grad_enabled|load_state_dict|torch\.load\("
        ),
    )

    VALID = [
        # the evaluate helper switches the mode itself; the caller switches back
        """
import torch
from torch import nn
def evaluate(model, loader):
    model.eval()
    with torch.no_grad():
        return sum(model(x).argmax(1).eq(y).sum().item() for x, y in loader)
model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), nn.Linear(4, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
data = [(torch.randn(2, 4), torch.tensor([0, 1]))]
for epoch in range(2):
    model.train()
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    acc = evaluate(model, data)
""",
        # a DQN target network evaluated under no_grad inside the training step is not evaluation
        """
import torch
from torch import nn
policy, target = nn.Linear(4, 2), nn.Linear(4, 2)
opt = torch.optim.Adam(policy.parameters())
for step in range(10):
    s, s2 = torch.randn(8, 4), torch.randn(8, 4)
    with torch.no_grad():
        next_q = target(s2).max(1).values
    q = policy(s).max(1).values
    loss = nn.functional.smooth_l1_loss(q, 0.99 * next_q)
    opt.zero_grad()
    loss.backward()
    opt.step()
""",
        # phase loop switching with train(phase == "train")
        """
import torch
from torch import nn
model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
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
def train_one_epoch(model, loader, opt):
    model.train()
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
@torch.no_grad()
def validate(model, loader):
    return [model(x).argmax(1) for x, _ in loader]  # error
model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Linear(4, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
data = [(torch.randn(2, 4), torch.tensor([0, 1]))]
for epoch in range(3):
    train_one_epoch(model, data, opt)
    preds = validate(model, data)
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        candidates = [
            ev
            for ev in facts.evaluation_forwards()
            if ev.modes is not None
            and "train" in ev.modes
            and ev.sensitive is not False
            and not (ev.sensitive is None and ev.from_checkpoint)  # a loaded module's layers are unknown
            and not facts.switched_to_train_for(ev)  # `net.train()` on purpose: Monte Carlo dropout
        ]
        for ev in first_per_region(candidates, facts):
            name = named_model(ev.model_expr) or "the model"
            yield Violation(
                ev.node,
                ev.stmt,
                f"evaluation forward pass while {name} may still be in training mode (dropout and batch norm "
                f"behave as in training); call {model_call(ev.model_expr, 'eval')} before evaluating",
            )
