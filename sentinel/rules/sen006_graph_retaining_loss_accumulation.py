from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sentinel.analysis.facts import Facts
from sentinel.analysis.values import TENSOR
from sentinel.rules.base import Rule, Violation, written_target

if TYPE_CHECKING:
    from sentinel.fixes import Fix


def _carried_argument(node):
    """In ``out, h = model(x, h)``, the argument ``h`` the assignment feeds back (a ``cst.Name``)."""
    import libcst as cst

    if not isinstance(node, cst.Assign) or not isinstance(node.value, cst.Call):
        return None
    assigned: set[str] = set()
    for t in node.targets:
        tt = t.target
        elts = tt.elements if isinstance(tt, (cst.Tuple, cst.List)) else [cst.Element(tt)]
        assigned.update(e.value.value for e in elts if isinstance(e.value, cst.Name))
    for a in node.value.args:
        if isinstance(a.value, cst.Name) and a.value.value in assigned:
            return a.value
    return None


def _within_one_step(facts: Facts, acc, sources: frozenset) -> bool:
    """Is the container made anew in each iteration of a loop that steps the optimizer, filled in an
    inner loop that does not step (micro-batches, a logging helper's loop over loss terms), with
    values whose graphs are backpropagated? Then it holds at most one step's graphs, which backward()
    frees, and nothing grows across iterations."""
    if not acc.fresh_in or not acc.frames or facts.step_by_frame.get(acc.frames[-1]):
        return False
    if not any(facts.step_by_frame.get(f) for f in acc.fresh_in if f != acc.frames[-1]):
        return False
    return bool(sources) and all(facts.connected_to_backward(frozenset({s})) for s in sources)


class GraphRetainingLossAccumulation(Rule):
    """## What it does
    Finds a tensor that carries an autograd graph (a loss, a model output, anything computed from
    them with gradients on) accumulated into something that outlives the loop iteration:
    `total += loss`, `total = total + loss`, `losses.append(loss)`, `outputs.append(out.cpu())`,
    `self.history.append(loss)`, `history[step] = loss`, `preds = torch.cat((preds, out))`. A value
    `backward()` was called on carries a graph wherever it was stored, whatever computed it. Recurrent
    state fed back into the next iteration without a detach (`out, h = rnn(x, h)` across chunks that
    are each backpropagated) is reported on the line that carries it. Accumulating on purpose to call
    `backward()` on the sum later (micro-batches, backpropagation through time after the loop) is
    recognized and not reported; so is anything under `no_grad`, `.item()`, `.detach()` and `.data`.
    So is a sum made anew for each optimizer step and filled by its micro-batch loop with losses that
    are each backpropagated (`total = None` ... `loss.backward(); total += loss` ... `step()`): it
    holds one step's graphs, whose buffers backward() already freed, and does not grow.
    Evaluation code that runs with gradients on is reported here too when its sum keeps the graphs.

    ## Why is this bad?
    Each such tensor keeps its whole computation graph (and the activations saved for backward)
    alive for as long as the accumulator lives. Memory grows with every iteration until the epoch ends
    or the process runs out of memory, and every later operation on the accumulator extends the graph
    further. Logging and metrics need numbers, not graphs.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Linear(10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    total_loss = 0.0
    for step in range(100):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(torch.randn(8, 10)), torch.randn(8, 1))
        loss.backward()
        optimizer.step()
        total_loss += loss  # error: keeps 100 graphs alive
    print(total_loss / 100)
    ```

    Use instead:
    ```python
    import torch
    from torch import nn

    model = nn.Linear(10, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    total_loss = 0.0
    for step in range(100):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(torch.randn(8, 10)), torch.randn(8, 1))
        loss.backward()
        optimizer.step()
        total_loss += loss.item()
    print(total_loss / 100)
    ```

    ## Fix safety
    The fix (`--fix`) appends `.detach()` to the accumulated value: `total_loss += loss.detach()`,
    `losses.append(loss.detach())`. It is safe: the accumulator keeps its type (a tensor, on the same
    device) and its values, only without the graph, which nothing backpropagates through (a sum that
    is backpropagated is not reported). Where a Python number is what you want, `.item()` is the
    idiomatic choice, but it changes the type (and synchronizes with the GPU), so the fix does not
    make it for you. Recurrent state carried into the next step (`out, h = model(x, h)`) is fixed only
    with `--unsafe-fixes`: detaching `h` where it enters the next step is truncated backpropagation
    through time, which changes the gradients (as intended, but it is a change in training). So is a
    value accumulated into a container the function returns (`features.append(x); return features`): a
    caller may backpropagate through what it holds.

    ## References
    - [PyTorch FAQ: "My model reports cuda runtime error(2): out of memory"](https://pytorch.org/docs/stable/notes/faq.html)
      ("Don't accumulate history across your training loop.")
    """

    CODE = "SEN006"
    NAME = "graph-retaining-loss-accumulation"
    SUMMARY = "Graph-carrying tensor accumulated across iterations"
    TRIGGER = (
        re.compile(r"backward"),
        # accumulations, stores under a key, and carried state (which only runs with retain_graph)
        re.compile(r"\+|\.append\(|\.extend\(|\.update\(|\b(cat|stack|concat)\(|\]\s*=[^=]|retain_graph"),
    )
    FIX = "safe"
    FIXES = [
        (
            "import torch\n"
            "model = torch.nn.Linear(3, 1)\n"
            "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
            "history = []\n"
            "for x in [torch.randn(4, 3) for _ in range(3)]:\n"
            "    opt.zero_grad()\n"
            "    loss = model(x).pow(2).mean()\n"
            "    loss.backward()\n"
            "    opt.step()\n"
            "    history.append(loss)\n",
            "import torch\n"
            "model = torch.nn.Linear(3, 1)\n"
            "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
            "history = []\n"
            "for x in [torch.randn(4, 3) for _ in range(3)]:\n"
            "    opt.zero_grad()\n"
            "    loss = model(x).pow(2).mean()\n"
            "    loss.backward()\n"
            "    opt.step()\n"
            "    history.append(loss.detach())\n",
        ),
    ]

    VALID = [
        # micro-batches summed on purpose, one backward on the sum
        """
import torch
from torch import nn
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    opt.zero_grad()
    total = 0
    for chunk in torch.randn(4, 2, 4):
        total = total + model(chunk).pow(2).mean()
    total.backward()
    opt.step()
""",
        """
import torch
from torch import nn
model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
preds, losses = [], []
for step in range(3):
    x, y = torch.randn(2, 4), torch.tensor([0, 1])
    opt.zero_grad()
    out = model(x)
    loss = nn.functional.cross_entropy(out, y)
    loss.backward()
    opt.step()
    losses.append(loss.detach())
    preds.append(out.argmax(1))
""",
    ]
    INVALID = [
        """
import torch
from torch import nn
def train_epoch(model, loader, opt):
    outputs = []
    for x, y in loader:
        opt.zero_grad()
        out = model(x)
        loss = nn.functional.mse_loss(out, y)
        loss.backward()
        opt.step()
        outputs.append(out.cpu())  # error: .cpu() keeps the graph
    return torch.cat(outputs)
""",
    ]

    def fix(self, violation: Violation, module) -> Fix | None:
        import libcst as cst

        from sentinel.fixes import Fix, accumulated_expression, torch_name, wrap_attribute_call

        expr = accumulated_expression(violation.node)
        if expr is None and isinstance(violation.node, cst.Subscript) and isinstance(violation.stmt, cst.Assign):
            expr = violation.stmt.value  # `history[step] = loss`
        if expr is not None:
            target = (violation.data or {}).get("target", "")
            escapes = _returned_by_its_function(module, violation.stmt, target.split(".")[0].split("[")[0])
            return Fix(
                [(expr, wrap_attribute_call(expr, "detach"))], description="accumulate `.detach()`", unsafe=escapes
            )
        carried = _carried_argument(violation.node)
        if carried is None:
            return None
        # recurrent state fed back without a detach: detach it where it enters the next step
        # (truncated backpropagation through time); None, a tensor or an (h, c) tuple
        torch, imports = torch_name(module)
        name = carried.value
        detached = cst.parse_expression(
            f"({name} if {name} is None else {name}.detach() if {torch}.is_tensor({name}) "
            f"else tuple(s.detach() for s in {name}))"
        )
        # truncated backpropagation through time changes the gradients: only with --unsafe-fixes
        return Fix([(carried, detached)], imports=imports, description="detach the carried state", unsafe=True)

    def check(self, facts: Facts) -> Iterator[Violation]:
        forward_ids = {ev.id for ev in facts.forwards}
        # what a loss was derived from; a forward run under no_grad contributed no graph to it (a GAIL
        # discriminator's rewards, stored in a rollout buffer and later part of the returns)
        # Neither is an accumulation the loss was computed from (a return buffer read into the loss): being
        # an input of a loss says nothing of carrying a graph
        proven = (
            facts.proven_graph_taints
            - {ev.id for ev in facts.forwards if ev.grad == "off"}
            - {acc.id for acc in facts.accums}
        )
        # evaluation forwards known to run with grad on (SEN004): what they accumulate keeps its graph
        evaluating_with_grad = {ev.id for ev in facts.evaluation_forwards() if ev.grad == "on"}
        for acc in facts.accums:
            if not acc.outlives or acc.value is None:
                continue
            value = acc.value
            if value.graph is False:
                continue  # computed under no_grad, or detached, on every path
            # derived (by tensor operations sentinel can see) from something that was backpropagated;
            # a value that went through code sentinel cannot see (RPC futures, unknown helpers) is no proof
            # `.backward()` was called on this very value: it certainly carried a graph
            backpropagated = (value.kind == TENSOR and bool(value.taints & proven)) or facts.was_backpropagated(value)
            if not (value.graph is True or backpropagated):
                continue
            if acc.frames and facts.frames[acc.frames[-1]].over_layers:
                continue  # one forward pass's activations, collected layer by layer (feature taps)
            if acc.carried:
                if facts.backpropagated_after_loop(acc):
                    continue  # backpropagation through time over the whole loop, once after it
            elif facts.connected_to_backward(frozenset({acc.id})):
                continue  # the sum is backpropagated later: accumulation on purpose
            sources = value.taints & forward_ids
            if (
                sources
                and not backpropagated
                and not any(facts.connected_to_backward(frozenset({s})) for s in sources)
                and not (value.graph is True and sources & evaluating_with_grad)
            ):
                continue  # evaluation code whose grad mode is not known to be on
            if acc.id in facts.escaped_taints and not backpropagated:
                continue  # returned to a caller we cannot see, which may backpropagate it
            if _within_one_step(facts, acc, sources):
                continue  # a list made anew for each optimizer step, of graphs that step backpropagates
            shown = written_target(acc.target, acc.node)
            yield Violation(
                acc.node,
                acc.site or acc.stmt,
                f"`{shown}` accumulates a tensor that carries its autograd graph: every iteration's "
                "graph stays alive; accumulate `.item()` or `.detach()` instead",
                data={"target": acc.target},
            )


def _returned_by_its_function(module, stmt, name: str) -> bool:
    """Does the function holding ``stmt`` return ``name`` (``features.append(x) ... return features``)?
    A caller may then backpropagate through what it holds, so detaching it is not a safe fix."""
    import libcst as cst

    if not name or module is None:
        return False

    def holds(node: cst.CSTNode) -> bool:
        return node is stmt or any(holds(child) for child in node.children)

    def returns_name(node: cst.CSTNode) -> bool:
        if isinstance(node, cst.Return) and node.value is not None:
            return any(isinstance(n, cst.Name) and n.value == name for n in _walk(node.value))
        if isinstance(node, (cst.FunctionDef, cst.Lambda)):
            return False  # a nested function's returns are its own
        return any(returns_name(child) for child in node.children)

    holders = [n for n in _walk(module) if isinstance(n, cst.FunctionDef) and holds(n.body)]
    if not holders:
        return False
    innermost = holders[-1]  # pre-order: a nested function comes after the one holding it
    return any(returns_name(child) for child in innermost.body.children)


def _walk(node):
    yield node
    for child in node.children:
        yield from _walk(child)
