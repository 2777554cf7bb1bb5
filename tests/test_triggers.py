"""Rule triggers: the cheap text test that decides whether a file is parsed at all.

A trigger may let through code on which its rule finds nothing (the analysis decides), but it must
never miss code the rule can fire on (``tests/test_corpus.py`` checks that on the whole corpus).
These tests pin what the precise triggers keep out: a model zoo's attention softmax must not make
every model file pay for a parse.
"""

from __future__ import annotations

import pytest

from sentinel.rules.base import Anchored
from sentinel.rules.sen020_softmax_over_batch_dimension import SoftmaxOverBatchDimension


def sen020(text: str) -> bool:
    return SoftmaxOverBatchDimension.triggered(text)


@pytest.mark.parametrize(
    "code",
    [
        "F.softmax(x, dim=0)",
        "F.softmax(x)",  # implicit dim: PyTorch picks 0 for 1-D and 3-D inputs
        "x.softmax(0)",
        "F.softmax(x, 0)",
        "F.softmax(x, dim=self.dim)",  # decided elsewhere: the analysis reads it
        "x.log_softmax(axis)",
        "torch.log_softmax(model(x), dim=-2)",
        "nn.Softmax()",
        "nn.LogSoftmax(dim=0)",
        "F.softmax(self.fc(x).view(-1, 3), dim=0)",
        "torch.nn.functional.softmax(input=logits, dim=0)",
    ],
)
def test_sen020_triggers_on_a_softmax_that_can_take_the_batch_dimension(code):
    assert sen020(code)


@pytest.mark.parametrize(
    "code",
    [
        "attn = attn.softmax(dim=-1)\nx = torch.cat([cls, x], dim=0)",  # a transformer block
        "F.softmax(x, dim=-1)",
        "x.softmax(-1)",
        "out.softmax(1)",
        "F.softmax(x, -1)",
        "nn.Softmax(dim=1)",
        "F.log_softmax(model(x), 1)",
        "F.softmax(self.fc(x).view(-1, 3), dim=1)",
        "class GumbelSoftmax(nn.Module):\n    pass",  # a class with that name is defined, not called
        "self.rsoftmax = RadixSoftmax(radix, groups)",  # a project's own module
        "y = self.softmax(attn)",  # a layer: its constructor says the dim
    ],
)
def test_sen020_does_not_trigger_on_a_softmax_over_classes_or_features(code):
    assert not sen020(code)


def test_an_anchored_pattern_matches_only_where_its_anchor_is():
    pattern = Anchored(r"b", r"(?<!x)ab")
    assert pattern.search("zzab") is not None
    assert pattern.search("xab") is None  # the look-behind still sees the text before the window
    assert pattern.search("ab" + " " * 10 + "xab") is not None
    assert pattern.search("a" + " " * 10 + "b") is None
