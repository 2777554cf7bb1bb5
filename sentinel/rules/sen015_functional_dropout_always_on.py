from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sentinel.analysis import torchapi as api
from sentinel.analysis.facts import Facts
from sentinel.rules.base import Rule, Violation

if TYPE_CHECKING:
    from sentinel.fixes import Fix


class FunctionalDropoutAlwaysOn(Rule):
    """## What it does
    Finds `F.dropout` / `F.dropout1d` / `F.dropout2d` / `F.dropout3d` called in an `nn.Module`'s
    `forward` (or a method `forward` calls) without a `training` argument. Functional dropout does not
    know the module's mode: its `training` parameter defaults to `True`, so `model.eval()` does not turn
    it off. `F.alpha_dropout` / `F.feature_alpha_dropout` default to `training=False` instead: without
    the argument they never apply dropout, not even while training; they are reported too.

    ## Why is this bad?
    With `F.dropout(x, 0.5)` the model keeps dropping half its activations at evaluation and inference
    time. Validation metrics are noisy and pessimistic, predictions change from one call to the next,
    model selection and early stopping act on those numbers, and the deployed model is worse than the
    trained one for no visible reason. (`F.alpha_dropout` without the argument silently trains without
    the regularization it was meant to add.)

    Passing `training=True` explicitly (Monte Carlo dropout, kept on at inference on purpose) is not
    reported; neither is any other expression (`training=self.training and self.use_mc`, a parameter),
    nor a call in a method that reads `self.training` itself (`if self.training: x = F.dropout(x, p)`).

    ## Example
    ```python
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(20, 64)
            self.fc2 = nn.Linear(64, 2)

        def forward(self, x):
            h = F.relu(self.fc1(x))
            h = F.dropout(h, p=0.5)  # error: still active after model.eval()
            return self.fc2(h)
    ```

    Use instead:
    ```python
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(20, 64)
            self.fc2 = nn.Linear(64, 2)

        def forward(self, x):
            h = F.relu(self.fc1(x))
            h = F.dropout(h, p=0.5, training=self.training)
            return self.fc2(h)
    ```

    Or use an `nn.Dropout(0.5)` layer, which follows `model.train()` / `model.eval()`.

    ## Known problems
    Only methods of classes that derive from `nn.Module` (directly or through classes of the project)
    are checked; dropout in free functions that a functional model calls is not.

    ## Fix safety
    The fix (`--fix`) passes the module's own flag: `F.dropout(x, 0.1)` becomes
    `F.dropout(x, 0.1, training=self.training)` (with the method's own name for `self`). It is safe:
    training is unchanged, and `model.eval()` now turns the dropout off as it was meant to.

    ## References
    - [`torch.nn.functional.dropout`](https://pytorch.org/docs/stable/generated/torch.nn.functional.dropout.html):
      "training (bool) - apply dropout if is True. Default: True"
    """

    CODE = "SEN015"
    NAME = "functional-dropout-always-on"
    SUMMARY = "Functional dropout in a module's forward without training=self.training"
    # a functional call (`F.dropout(`, `torch.nn.functional.alpha_dropout(`), not a `self.dropout(` layer, or
    # the function imported by name
    TRIGGER = (
        re.compile(
            r"(?<!self)\.(?:feature_)?(?:alpha_)?dropout(?:[123]d)?\(|functional import[^\n]*(?:alpha_)?dropout"
        ),
    )

    VALID = [
        # self.training passed positionally
        """
import torch.nn.functional as F
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)
    def forward(self, x):
        return self.fc(F.dropout(x, 0.2, self.training))
""",
        # Monte Carlo dropout, deliberately on at inference
        """
import torch.nn.functional as F
from torch import nn
class MCNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)
    def forward(self, x):
        return self.fc(F.dropout(x, p=0.1, training=True))
""",
        # a combined condition
        """
import torch.nn.functional as F
from torch import nn
class Net(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p
        self.fc = nn.Linear(8, 2)
    def forward(self, x):
        return self.fc(F.dropout2d(x, self.p, training=self.training and self.p > 0))
""",
        # only reached in training mode
        """
import torch.nn.functional as F
from torch import nn
class Head(nn.Module):
    def __init__(self, rate):
        super().__init__()
        self.rate = rate
        self.fc = nn.Linear(8, 2)
    def forward(self, x):
        if self.training and self.rate > 0:
            x = F.dropout(x, p=self.rate)
        return self.fc(x)
""",
        # a free function, not a module's forward
        """
import torch.nn.functional as F
def augment(x):
    return F.dropout(x, 0.1)
""",
    ]
    INVALID = [
        """
import torch.nn.functional as F
from torch import nn
class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
    def block(self, x):
        return F.dropout2d(F.relu(self.conv(x)), 0.25)  # error
    def forward(self, x):
        return self.block(x).mean((2, 3))
""",
        """
from torch import nn
from torch.nn import functional as F
class SelfNormalizing(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
    def forward(self, x):
        return F.alpha_dropout(F.selu(self.fc(x)), p=0.1)  # error
""",
    ]

    FIX = "safe"

    def fix(self, violation: Violation, module) -> Fix | None:
        import libcst as cst

        from sentinel.fixes import Fix

        call, owner = violation.node, violation.data
        if (
            not isinstance(call, cst.Call)
            or not owner
            or any(a.keyword is not None and a.keyword.value == "training" for a in call.args)
        ):
            return None
        arg = cst.Arg(keyword=cst.Name("training"), value=cst.parse_expression(f"{owner}.training"))
        return Fix([(call, call.with_changes(args=[*call.args, arg]))], description="pass training=self.training")

    def check(self, facts: Facts) -> Iterator[Violation]:
        for ev in facts.dropouts:
            if not ev.in_forward or ev.training != "missing":
                continue
            if ev.function in api.FUNCTIONAL_ALPHA_DROPOUT:
                message = (
                    f"`F.{ev.function}` without `training=` in `{ev.owner}`: it defaults to training=False and "
                    "never applies dropout, not even while training; pass `training=self.training`"
                )
            else:
                message = (
                    f"`F.{ev.function}` without `training=` in `{ev.owner}`: it defaults to training=True, so "
                    "dropout stays on after `model.eval()`; pass `training=self.training` or use an "
                    "`nn.Dropout` layer"
                )
            func = facts.functions.get(ev.ctx)
            params = getattr(getattr(func, "params", None), "params", ())
            owner = params[0].name.value if params else None
            yield Violation(ev.node, ev.stmt, message, data=owner)
