from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Facts
from sentinel.rules.base import Anchored, Rule, Violation

#: torch's softmax called (`F.softmax(`, `x.log_softmax(`, `nn.LogSoftmax(`): not a class or function
#: defined with that name, a project's `RadixSoftmax(...)`, nor a softmax layer called as
#: `self.softmax(x)` (its constructor says its dim)
_CALL = r"(?<!class )(?<!def )(?<!self\.)(?<!\w)(?i:(?:log_?)?softmax)\("
#: a character of call arguments outside brackets, or a bracketed part (nested two levels deep)
_NESTED = r"\((?:[^()]|\([^()]*\))*\)|\[[^\[\]]*\]"
_ARG = rf"(?:[^,()\[\]]|{_NESTED})"  # within one argument (no top-level comma)
_POSITIONAL = rf"(?:[^,()=\[\]]|{_NESTED})"  # ... nor a keyword
_ARGS = rf"(?:[^()\[\]]|{_NESTED})"  # anywhere in the argument list
#: a dim that can be the batch: 0, -2, -3, or a name whose value is decided elsewhere
_BATCH_DIM = r"(?:0|-[23]|[A-Za-z_][\w.]*)"
_METHOD = r"(?<!\bF)(?<!functional)(?<!torch)(?<!special)(?<!self)\.(?i:(?:log_?)?softmax)\("


class SoftmaxOverBatchDimension(Rule):
    """## What it does
    Finds a softmax or log_softmax of a batched model output taken over dimension 0, the batch:
    `F.softmax(model(x), dim=0)`, `logits.log_softmax(0)`, `dim=-2` on a 2-D output, an
    `nn.Softmax(dim=0)` / `nn.LogSoftmax(dim=0)` layer that ends a model, or an implicit `dim` that
    PyTorch resolves to 0 (for 1-D and 3-D inputs) where the input's rank is known. The input counts as a
    batch when it comes from a `DataLoader` or is a tensor built with several rows
    (`torch.randn(64, 10)`), and the model keeps the batch in dimension 0 (its layers and `forward` are
    followed).

    ## Why is this bad?
    The probabilities are normalized across the samples of the batch instead of across the classes of
    each sample: every "probability" of a sample depends on which other samples share its batch, the
    class scores of one sample do not sum to one, and `argmax` over classes picks the wrong class. A
    loss on these values trains the model towards a meaningless objective; metrics computed from them
    change with the batch size.

    ## Example
    ```python
    import torch
    import torch.nn.functional as F
    from torch import nn

    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 10), torch.randint(0, 4, (64,))
    for _ in range(5):
        optimizer.zero_grad()
        log_probs = F.log_softmax(model(x), dim=0)  # error: normalizes over the 64 samples
        loss = F.nll_loss(log_probs, y)
        loss.backward()
        optimizer.step()
    ```

    Use instead:
    ```python
    import torch
    import torch.nn.functional as F
    from torch import nn

    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 10), torch.randint(0, 4, (64,))
    for _ in range(5):
        optimizer.zero_grad()
        log_probs = F.log_softmax(model(x), dim=1)
        loss = F.nll_loss(log_probs, y)
        loss.backward()
        optimizer.step()
    ```

    ## Known problems
    Only a softmax of a model's output (or the one that ends a model) is checked, and only where the
    input is known to be a batch: a softmax over dimension 0 of one unbatched sample (a single state in
    reinforcement learning, `model(x)[0]`) is correct and not reported, and an attention softmax inside
    a model is not checked. An implicit `dim` is only resolved where the rank of the input is known.

    ## References
    - [`torch.nn.functional.softmax`](https://pytorch.org/docs/stable/generated/torch.nn.functional.softmax.html):
      "dim (int) - A dimension along which softmax will be computed."
    """

    CODE = "SEN020"
    NAME = "softmax-over-batch-dimension"
    SUMMARY = "Softmax / log_softmax of a batched model output taken over the batch dimension"
    # a softmax call whose dim can be the batch's: no dim at all (but `x.softmax(-1)`), `dim=0` / `dim=-2` /
    # `dim=axis`, a positional one; an attention's `.softmax(dim=-1)` beside a `torch.cat(xs, dim=0)` is not
    TRIGGER = (
        re.compile(r"(?i)softmax"),
        Anchored(
            r"(?i)softmax\(",
            rf"{_CALL}(?!\s*-?\d+\s*\)){_POSITIONAL}*\)"
            + rf"|{_CALL}{_ARGS}*?\bdim\s*=\s*(?:0\b|-[23]\b|[A-Za-z_(])"
            + rf"|{_CALL}{_ARG}*,\s*{_BATCH_DIM}\s*[,)]"
            + rf"|{_METHOD}\s*{_BATCH_DIM}\s*[,)]",
        ),
    )

    VALID = [
        # one sample's logits: dim 0 is the class dimension
        """
import torch
from torch import nn
model = nn.Linear(4, 3)
x = torch.randn(16, 4)
first = torch.softmax(model(x)[0], dim=0)
""",
        # an unbatched state in reinforcement learning
        """
import torch
import torch.nn.functional as F
from torch import nn
class Policy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
    def forward(self, state):
        return F.softmax(self.fc(state), dim=0)
policy = Policy()
probs = policy(torch.from_numpy(env_state).float())
""",
        # implicit dim on a 2-D output resolves to 1
        """
import torch
import torch.nn.functional as F
from torch import nn
model = nn.Linear(4, 3)
probs = F.softmax(model(torch.randn(8, 4)))
""",
    ]
    INVALID = [
        """
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3), nn.Softmax(dim=0))  # error
loader = DataLoader(TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,))), batch_size=16)
for x, y in loader:
    confidence = model(x).max(1).values.mean()
""",
        """
import torch
import torch.nn.functional as F
from torch import nn
model = nn.Conv1d(4, 5, 3)
x = torch.randn(8, 4, 20)
probs = F.softmax(model(x))  # error: implicit dim of a 3-D input is 0
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        for ev in facts.activations:
            act = ev.act
            fn = "log_softmax" if act.kind == "log_softmax" else "softmax"
            node = act.layer if act.layer is not None else act.node  # the layer where `dim` is written
            stmt = facts.stmt_of.get(id(node), ev.stmt)
            yield Violation(
                node,
                stmt,
                f"{fn} over dimension 0 of a batched model output: each sample is normalized across the "
                f"batch instead of across its classes; take the {fn} over the class dimension (dim=1 or "
                "dim=-1)",
            )
