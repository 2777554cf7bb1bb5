"""Each rule's documentation examples and VALID/INVALID cases are tests.

The ``## Example`` block of a rule's docstring must be flagged by that rule exactly on the lines marked
``# error``, the ``Use instead:`` block must be clean, and so on for the extra cases on the class.
"""

from __future__ import annotations

import textwrap

import pytest

from sentinel.lint import lint_source
from sentinel.rules import all_rules, rule_by_selector

CASES = []
for _rule in all_rules():
    _invalid, _valid = _rule.examples()
    CASES.append((_rule, "doc-example", _invalid, True))
    CASES.append((_rule, "doc-use-instead", _valid, False))
    CASES += [(_rule, f"INVALID[{i}]", textwrap.dedent(c), True) for i, c in enumerate(_rule.INVALID)]
    CASES += [(_rule, f"VALID[{i}]", textwrap.dedent(c), False) for i, c in enumerate(_rule.VALID)]


@pytest.mark.parametrize(("rule", "case", "source", "invalid"), CASES, ids=[f"{r.CODE}-{c}" for r, c, _, _ in CASES])
def test_rule_examples(rule, case, source, invalid):
    marked = {i for i, line in enumerate(source.splitlines(), 1) if "# error" in line}
    assert bool(marked) == invalid, "invalid examples mark their flagged lines with '# error'"
    found = [(d.code, d.line) for d in lint_source(source, "example.py")]
    assert {line for code, line in found if code == rule.CODE} == marked
    # an example demonstrates one rule: nothing else may fire on it
    assert {code for code, _ in found} <= {rule.CODE}


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.CODE)
def test_rule_metadata(rule):
    doc = rule.doc()
    for section in ("## What it does", "## Why is this bad?", "## Example", "Use instead:"):
        assert section in doc, f"{rule.CODE} docstring lacks {section!r}"
    assert rule.CODE.startswith("SEN") and len(rule.CODE) == 6
    assert rule.NAME == rule.NAME.lower() and " " not in rule.NAME
    assert rule_by_selector(rule.NAME) is rule and rule_by_selector(rule.CODE.lower()) is rule


CONTRACT = {
    "SEN001": "softmax-before-cross-entropy",
    "SEN002": "missing-zero-grad",
    "SEN003": "validation-without-eval-mode",
    "SEN004": "validation-without-no-grad",
    "SEN005": "state-dict-snapshot-without-copy",
    "SEN006": "graph-retaining-loss-accumulation",
    "SEN007": "zero-grad-before-step",
    "SEN008": "training-in-eval-mode",
    "SEN009": "clip-before-unscale",
    "SEN010": "clip-after-step",
    "SEN011": "sigmoid-before-logits-loss",
    "SEN012": "probabilities-into-nll-loss",
    "SEN013": "step-on-evaluation-data",
    "SEN014": "optimizer-recreated-in-loop",
    "SEN015": "functional-dropout-always-on",
    "SEN016": "method-not-called",
    "SEN017": "step-before-backward",
    "SEN018": "distributed-sampler-without-set-epoch",
    "SEN019": "ddp-forward-bypasses-wrapper",
    "SEN020": "softmax-over-batch-dimension",
}


def test_codes_and_names_match_the_design_contract():
    assert {r.CODE: r.NAME for r in all_rules()} == CONTRACT


FIX_CASES = [(r, i, before, after) for r in all_rules() for i, (before, after) in enumerate(r.FIXES)]


@pytest.mark.parametrize(
    ("rule", "i", "before", "after"), FIX_CASES, ids=[f"{r.CODE}-FIXES[{i}]" for r, i, _, _ in FIX_CASES]
)
def test_rule_fix_examples(rule, i, before, after):
    from sentinel.fixes import fix_source

    outcome = fix_source(before, "example.py", all_rules(), unsafe=True)
    assert outcome.source == after
    assert {d.code for d in outcome.fixed} == {rule.CODE}
    assert fix_source(after, "example.py", all_rules(), unsafe=True).source == after


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.CODE)
def test_a_rule_that_fixes_documents_its_fix_safety(rule):
    assert rule.FIX in (None, "safe", "unsafe")
    if rule.FIX is not None:
        assert "## Fix safety" in rule.doc()


UNNAMED = """
import torch
from torch import nn

net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
opt = torch.optim.SGD(net.parameters(), lr=0.1)
data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)]
for epoch in range(2):
    for x, y in data:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    for x, y in data:
        print(net[2](net[1](net[0](x))).argmax(1))
"""


def test_messages_about_a_model_the_code_does_not_name_read_as_english():
    messages = {d.code: d.message for d in lint_source(UNNAMED)}
    assert messages["SEN003"].startswith(
        "evaluation forward pass while the model may still be in training mode (dropout and batch norm "
        "behave as in training); call its `.eval()` before evaluating"
    )
    assert messages["SEN004"].startswith("evaluation forward pass of the model with gradient tracking on: ")
    named = {d.code: d.message for d in lint_source(UNNAMED.replace("net[2](net[1](net[0](x)))", "net(x)"))}
    assert named["SEN003"].startswith("evaluation forward pass while `net` may still be in training mode")
    assert "call `net.eval()` before evaluating" in named["SEN003"]
    assert named["SEN004"].startswith("evaluation forward pass of `net` with gradient tracking on: ")
    assert all("`the model" not in m for m in messages.values())
