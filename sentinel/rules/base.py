"""The rule interface.

A rule is one module under :mod:`sentinel.rules` holding one :class:`Rule` subclass. Its class
docstring *is* its documentation (``sentinel rule CODE`` prints it) and is written in ruff's sections:
``## What it does``, ``## Why is this bad?``, ``## Example``, ``Use instead:``, optionally
``## Known problems`` and ``## References``. The code block after ``## Example`` must trigger the rule
on the lines marked ``# error``; the block after ``Use instead:`` must be clean. ``VALID`` and
``INVALID`` hold more cases in the same form. The test suite runs all of them.

Rules never walk the syntax tree: the shared analysis (:mod:`sentinel.analysis`) has already run once
for the file, and a rule only asks its :class:`~sentinel.analysis.Facts` questions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import libcst as cst

    from sentinel.fixes import Fix

from sentinel.analysis.facts import Facts


@dataclass(frozen=True)
class Violation:
    """What a rule reports: the node to point at, the statement holding it, and the message."""

    node: cst.CSTNode
    stmt: cst.CSTNode
    message: str
    #: another place the message refers to; the engine appends "(... line N)" using ``related_label``
    related: cst.CSTNode | None = None
    related_stmt: cst.CSTNode | None = None
    related_label: str = ""
    #: what the rule's fix needs to know (an event, a region), when it can fix the finding
    data: Any = None


def named_model(expr: str) -> str | None:
    """How a message names the model an event's code calls: ```model```, or None when the code does not
    name it (``net[0](x)``: the analysis calls it "the model"), so the message can be worded without."""
    return None if expr == "the model" else f"`{expr}`"


def written_target(name: str, node: Any) -> str:
    """How a message names a target the analysis keys without its subscript (``meters[]``): as the code
    writes it at ``node`` (``meters[name]``, an assignment's or augmented assignment's target), when short."""
    import libcst as cst

    target = node.target if isinstance(node, cst.AugAssign) else node
    if name.endswith("[]") and isinstance(target, cst.Subscript):
        text = cst.Module([]).code_for_node(target)
        if len(text) <= 40 and "\n" not in text:
            return text
    return name


def model_call(expr: str, method: str) -> str:
    """The call a message tells the user to make: ```model.eval()```, or "its ``.eval()``" when the code
    does not name the model (see :func:`named_model`)."""
    return f"`{expr}.{method}()`" if named_model(expr) else f"its `.{method}()`"


class Anchored:
    """A trigger pattern tried only where a cheap literal ``anchor`` occurs (as ``re.Pattern.search``).

    A precise pattern that must look behind a word (``softmax(`` not preceded by ``class Radix``) cannot
    be scanned for quickly: the regex engine tries its look-behinds at every character of the text.
    The anchor is found by a fast scan; the pattern is then tried at most ``before`` characters ahead
    of it and up to ``after`` characters past it, and must begin no later than the anchor."""

    def __init__(self, anchor: str, pattern: str, before: int = 8, after: int = 600) -> None:
        self.anchor = re.compile(anchor)
        self.pattern = re.compile(pattern)
        self.before, self.after = before, after

    def search(self, text: str) -> re.Match[str] | None:
        for a in self.anchor.finditer(text):
            m = self.pattern.search(text, max(0, a.start() - self.before), a.end() + self.after)
            if m is not None and m.start() <= a.start():
                return m
        return None


class Rule:
    """Base class of every lint rule."""

    CODE: ClassVar[str]
    NAME: ClassVar[str]
    SUMMARY: ClassVar[str]
    #: The rule can only fire on a source in which every one of these patterns occurs: files that
    #: trigger no enabled rule are never parsed.
    TRIGGER: ClassVar[tuple[re.Pattern[str] | Anchored, ...]]
    #: False when nothing inside a model's own methods can make the rule fire (a forward there is part
    #: of the model's forward, never an evaluation): a file that only such rules trigger on is analysed
    #: without its ``nn.Module`` methods as entry points of their own (a model zoo's thousands of them)
    MODEL_METHODS: ClassVar[bool] = True
    VALID: ClassVar[list[str]] = []
    INVALID: ClassVar[list[str]] = []
    #: "safe" or "unsafe" when :meth:`fix` can rewrite what the rule finds (see :mod:`sentinel.fixes`)
    FIX: ClassVar[str | None] = None
    #: examples of fixes: ``(invalid source, fixed source)`` pairs, tested like ``VALID``/``INVALID``
    FIXES: ClassVar[list[tuple[str, str]]] = []

    @classmethod
    def triggered(cls, source: str) -> bool:
        return all(p.search(source) for p in cls.TRIGGER)

    def check(self, facts: Facts) -> Iterable[Violation]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fix(self, violation: Violation, module: cst.Module) -> Fix | None:
        """The rewrite that removes ``violation`` (rules with ``FIX`` set), or None when not certain."""
        return None

    @classmethod
    def url(cls) -> str:
        """The rule's page in the repository's ``docs/rules/`` (generated from this docstring)."""
        from sentinel.ruledocs import doc_url

        return doc_url(cls.NAME)

    @classmethod
    def doc(cls) -> str:
        import inspect

        return inspect.cleandoc(cls.__doc__ or "")

    @classmethod
    def examples(cls) -> tuple[str, str]:
        """The ``## Example`` (invalid) and ``Use instead:`` (valid) code blocks of the docstring."""
        blocks = re.findall(r"```python\n(.*?)```", cls.doc(), re.S)
        if len(blocks) < 2:
            raise ValueError(f"{cls.CODE}: docstring needs an Example and a Use instead block")
        return blocks[0], blocks[1]
