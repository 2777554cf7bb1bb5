from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sentinel.analysis.facts import Facts
from sentinel.rules.base import Rule, Violation, written_target

if TYPE_CHECKING:
    from sentinel.fixes import Fix


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

    ## Fix safety
    The fix (`--fix`) wraps the snapshot in `copy.deepcopy(...)` and adds `import copy` when the file
    lacks it: `best_state = copy.deepcopy(model.state_dict())`, `best_model = copy.deepcopy(model)`.
    It is safe: the snapshot then holds the values of that moment, which is what the code reads it
    for. It costs one copy of the weights (on the device they are on) per snapshot.

    ## References
    - [Saving and loading models](https://pytorch.org/tutorials/beginner/saving_loading_models.html):
      `state_dict()` returns references to the parameters.
    """

    CODE = "SEN005"
    NAME = "state-dict-snapshot-without-copy"
    SUMMARY = "Snapshot of a model's state keeps references to weights that training keeps changing"
    TRIGGER = (re.compile(r"state_dict|best|snapshot"), re.compile(r"backward|\.step\("))
    FIX = "safe"
    FIXES = [
        (
            "import torch\n"
            "model = torch.nn.Linear(3, 1)\n"
            "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
            "best, best_loss = None, float('inf')\n"
            "for x in [torch.randn(4, 3) for _ in range(3)]:\n"
            "    opt.zero_grad()\n"
            "    loss = model(x).pow(2).mean()\n"
            "    loss.backward()\n"
            "    opt.step()\n"
            "    if loss.item() < best_loss:\n"
            "        best_loss, best = loss.item(), model.state_dict()\n"
            "model.load_state_dict(best)\n",
            "import torch\n"
            "import copy\n"
            "\n"
            "model = torch.nn.Linear(3, 1)\n"
            "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
            "best, best_loss = None, float('inf')\n"
            "for x in [torch.randn(4, 3) for _ in range(3)]:\n"
            "    opt.zero_grad()\n"
            "    loss = model(x).pow(2).mean()\n"
            "    loss.backward()\n"
            "    opt.step()\n"
            "    if loss.item() < best_loss:\n"
            "        best_loss, best = loss.item(), copy.deepcopy(model.state_dict())\n"
            "model.load_state_dict(best)\n",
        ),
    ]

    def fix(self, violation: Violation, module) -> Fix | None:
        import libcst as cst

        from sentinel.fixes import Fix, call_of, module_binds

        value = _snapshot_value(violation)
        if value is None:
            return None
        copy_name = module_binds(module, "copy")
        return (
            Fix(
                [(value, call_of(f"{copy_name or 'copy'}.deepcopy", value.with_changes(lpar=[], rpar=[])))],
                imports=[] if copy_name else ["copy"],
                description="snapshot a `copy.deepcopy`",
            )
            if not isinstance(value, cst.Call) or not _is_deepcopy(value)
            else None
        )

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
            shown = written_target(snap.target, snap.node)
            if snap.what == "model":
                message = (
                    f"`{shown}` is an alias of the model, not a copy: training after this line changes "
                    f"it too; use `copy.deepcopy(...)`"
                )
            else:
                message = (
                    f"`{shown}` holds references to the live {snap.source} tensors, not a copy: later "
                    "optimizer steps overwrite this snapshot; use `copy.deepcopy(....state_dict())` or clone "
                    "each tensor"
                )
            yield Violation(snap.node, snap.stmt, message)


def _snapshot_value(violation: Violation):
    """The expression holding the snapshot: the value assigned to the flagged target (a tuple target
    takes its element), or the argument of the flagged ``append``."""
    import libcst as cst

    from sentinel.analysis.syntax import state_dict_call

    node, stmt = violation.node, violation.stmt
    if isinstance(node, cst.Call):
        args = [a for a in node.args if a.keyword is None and not a.star]
        for a in args:  # `heappush(top_k, (-loss, model.state_dict()))`: the state_dict() call itself
            call = state_dict_call(a.value)
            if call is not None:
                return call
        method = node.func.attr.value if isinstance(node.func, cst.Attribute) else ""
        if method in ("append", "insert") and args and not isinstance(args[-1].value, (cst.Tuple, cst.List)):
            return args[-1].value
        return None
    if isinstance(stmt, (cst.Assign, cst.AnnAssign)) and stmt.value is not None:
        value = stmt.value
        targets = [t.target for t in stmt.targets] if isinstance(stmt, cst.Assign) else [stmt.target]
        for target in targets:
            if target is node:
                return value
            if isinstance(target, cst.Tuple) and isinstance(value, cst.Tuple):
                for t, v in zip(target.elements, value.elements):
                    if t.value is node and not isinstance(v, cst.StarredElement):
                        return v.value
    return None


def _is_deepcopy(call) -> bool:
    import libcst as cst

    func = call.func
    name = func.attr.value if isinstance(func, cst.Attribute) else getattr(func, "value", "")
    return name == "deepcopy"
