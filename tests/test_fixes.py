"""Every fix on the whole corpus: the fixed program compiles, has fewer of the fixed findings and no
new one, is left unchanged by a second fix, and still runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sentinel.fixes import fix_source
from sentinel.rules import all_rules
from tests.lint_corpus import CORPUS, corpus_files, expectations

FIXING = {r.CODE for r in all_rules() if r.FIX is not None}
# rules whose fix applies to every finding in the linted file (SEN001's only where the probabilities
# serve nothing but the loss; SEN004's not where the same code also trains, as in a phase loop)
ALWAYS_FIXED = {"SEN005", "SEN006", "SEN015", "SEN016"}
FILES = [p for p in corpus_files() if {c for c, _ in expectations(p.read_text(encoding="utf-8"))} & FIXING]
RUNNER = Path(__file__).with_name("test_fixtures_run.py")


@pytest.fixture(scope="module")
def fixed_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fixed")


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
def test_fix_removes_the_finding_and_is_stable(path: Path, fixed_dir: Path) -> None:
    source = path.read_text(encoding="utf-8")
    outcome = fix_source(source, str(path), all_rules(), unsafe=True)
    expected = Counter(c for c, _ in expectations(source))
    fixed = Counter(d.code for d in outcome.fixed)
    compile(outcome.source, str(path), "exec")
    remaining = Counter(d.code for d in outcome.remaining)
    for code in expected:
        # a fix may remove a consequence too (SEN016's `model.eval` -> `model.eval()` ends a SEN003)
        assert remaining[code] <= expected[code] - fixed[code], code
        if code in ALWAYS_FIXED:
            assert remaining[code] == 0, f"{code} left unfixed"
    assert set(remaining) <= set(expected), "a fix must not introduce another finding"
    if not fixed:
        assert outcome.source == source
        return
    again = fix_source(outcome.source, str(path), all_rules(), unsafe=True)
    assert again.source == outcome.source, "a second --fix must change nothing"
    target = fixed_dir / f"{path.parent.name}__{path.name}"
    target.write_text(outcome.source, encoding="utf-8")


def test_every_fixed_program_still_runs(fixed_dir: Path) -> None:
    programs = sorted(str(p) for p in fixed_dir.glob("*.py"))
    if not programs:
        pytest.skip("run with the per-file fix tests")
    result = fixed_dir / "runs.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(RUNNER), str(result), *programs], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = [json.loads(line) for line in result.read_text(encoding="utf-8").splitlines()]
    outcomes = {e["path"]: e for e in events if "path" in e}  # the runner logs a start and an outcome per file
    assert sorted(outcomes) == programs
    failed = {Path(p).name: o["error"].splitlines()[-1] for p, o in outcomes.items() if not o["ok"]}
    assert not failed, failed


TOP_K = """import heapq
import torch
from torch import nn

model = nn.Linear(2, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
top_k = []
for epoch in range(3):
    opt.zero_grad()
    model(torch.randn(4, 2)).sum().backward()
    opt.step()
    heapq.heappush(top_k, (-epoch, epoch, model.state_dict()))
print(top_k[0][2])
"""


def test_a_state_dict_pushed_into_a_kept_heap_is_found_and_copied_in_place() -> None:
    """``heapq.heappush(top_k, (..., model.state_dict()))`` keeps live tensors: SEN005 on that call,
    and the fix deep-copies the ``state_dict()`` inside the tuple (never the tuple or the call)."""
    outcome = fix_source(TOP_K, "top_k.py", all_rules(), unsafe=True)
    assert "    heapq.heappush(top_k, (-epoch, epoch, copy.deepcopy(model.state_dict())))\n" in outcome.source
    assert "import copy\n" in outcome.source


RETURNED_FEATURES = """
import torch
from torch import nn

net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))


def features(x):
    kept = []
    for layer in net:
        x = layer(x)
        kept.append(x)
    return kept


def evaluate(batches):
    outs = []
    for x in batches:
        outs.append(features(x)[-1])
    return outs


target = features(torch.randn(2, 4))
opt = torch.optim.Adam(net.parameters())
for step in range(3):
    opt.zero_grad()
    loss = sum((a - b.detach()).pow(2).mean() for a, b in zip(features(torch.randn(2, 4)), target))
    loss.backward()
    opt.step()
history = []
for step in range(3):
    out = net(torch.randn(2, 4))
    loss = out.pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    history.append(loss)
"""


def test_detaching_what_a_function_returns_is_not_a_safe_fix() -> None:
    """SEN006's `.detach()` is safe where the accumulator stays put (a history list), not where the
    function returns the container: a caller may backpropagate through what it holds."""
    import libcst as cst

    from sentinel.rules import Violation
    from sentinel.rules.sen006_graph_retaining_loss_accumulation import GraphRetainingLossAccumulation

    module = cst.parse_module(RETURNED_FEATURES)

    def append_of(target: str) -> Violation:
        for node in _walk(module):
            if (
                isinstance(node, cst.SimpleStatementLine)
                and isinstance(node.body[0], cst.Expr)
                and module.code_for_node(node).strip().startswith(f"{target}.append(")
            ):
                return Violation(node.body[0].value, node, "", data={"target": target})
        raise AssertionError(target)

    rule = GraphRetainingLossAccumulation()
    kept = rule.fix(append_of("kept"), module)
    history = rule.fix(append_of("history"), module)
    assert kept is not None and kept.unsafe
    assert history is not None and not history.unsafe
    # end to end: the history's detach is a safe fix
    assert "    history.append(loss.detach())\n" in fix_source(RETURNED_FEATURES, "features.py", all_rules()).source


def _walk(node):
    yield node
    for child in node.children:
        yield from _walk(child)
