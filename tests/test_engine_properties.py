"""Property-based tests: the engine never raises on a program that parses, and its locations are sane.

Two generators: hypothesmith's arbitrary valid Python (every syntax the grammar allows), and random
compositions of training-loop building blocks (the paths the interpreter actually reasons about).
"""

from __future__ import annotations

import hypothesmith
import libcst as cst
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.engine import check_source

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _check(source: str) -> None:
    try:
        cst.parse_module(source)
    except Exception:  # hypothesmith occasionally emits code LibCST rejects: not our property
        return
    lines = source.splitlines() or [""]
    for d in check_source(source, "gen.py", prefilter=False):
        assert 1 <= d.line <= d.end_line <= len(lines) + 1
        assert d.column >= 1 and d.end_column >= 1
        assert d.code.startswith("SEN") and d.message


@SETTINGS
@given(hypothesmith.from_node())
def test_never_raises_on_arbitrary_modules(source):
    _check(source)


@SETTINGS
@given(hypothesmith.from_grammar())
def test_never_raises_on_arbitrary_grammar(source):
    _check(source)


HEADER = [
    "import copy",
    "import torch",
    "import torch.nn.functional as F",
    "from torch import nn",
    "model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 2), nn.Softmax(dim=1))",
    "net = model",
    "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)",
    "scaler = torch.amp.GradScaler('cuda', enabled=False)",
    "criterion = nn.CrossEntropyLoss()",
    "loader = [(torch.randn(2, 4), torch.tensor([0, 1]))]",
    "val_loader = loader",
    "total, losses, best = 0, [], None",
]
SIMPLE = [
    "optimizer.zero_grad()",
    "model.zero_grad(set_to_none=True)",
    "out = model(x)",
    "out = net(x)",
    "loss = criterion(out, y)",
    "loss = F.cross_entropy(F.softmax(out, dim=1), y)",
    "loss.backward()",
    "scaler.scale(loss).backward()",
    "optimizer.step()",
    "scaler.step(optimizer)",
    "total += loss",
    "total = total + loss.item()",
    "losses.append(loss)",
    "best = model.state_dict()",
    "best = copy.deepcopy(model.state_dict())",
    "model.train()",
    "model.eval()",
    "model.train(phase == 'train')",
    "torch.set_grad_enabled(False)",
    "result = helper(model, x)",
    "return out",
    "break",
    "continue",
    "x, y = y, x",
    "model = model.to('cpu')",
    "del out",
    "pass",
]
BLOCKS = [
    "for x, y in loader:",
    "for x, y in val_loader:",
    "for phase in ['train', 'val']:",
    "for epoch in range(3):",
    "while total < 10:",
    "with torch.no_grad():",
    "with torch.set_grad_enabled(phase == 'train'):",
    "if phase == 'train':",
    "if total > 1:",
    "try:",
    "def helper(model, x):",
    "@torch.no_grad()\ndef evaluate(model, loader):",
    "class Trainer:\n    def fit(self, model):",
]


@st.composite
def training_programs(draw, depth=0, indent=""):
    lines = []
    for _ in range(draw(st.integers(1, 5))):
        if depth < 3 and draw(st.booleans()):
            header = draw(st.sampled_from(BLOCKS))
            inner = indent + "    " * (header.count("\n") + 1)
            head_lines = header.splitlines()
            lines.append(indent + head_lines[0])
            lines.extend(indent + "    " * i + h.strip() for i, h in enumerate(head_lines[1:], 1))
            lines.extend(draw(training_programs(depth=depth + 1, indent=inner)))
            if header == "try:":
                lines.append(indent + "finally:")
                lines.append(inner + "pass")
        else:
            lines.append(indent + draw(st.sampled_from(SIMPLE)))
    return lines


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(training_programs())
def test_never_raises_on_random_training_code(body):
    source = "\n".join(HEADER + body) + "\n"
    try:
        compile(source, "gen.py", "exec")
    except SyntaxError:
        return  # e.g. `return`/`break` outside a function/loop
    _check(source)
