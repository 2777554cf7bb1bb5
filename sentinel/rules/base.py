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


def model_call(expr: str, method: str) -> str:
    """The call a message tells the user to make: ```model.eval()```, or "its ``.eval()``" when the code
    does not name the model (see :func:`named_model`)."""
    return f"`{expr}.{method}()`" if named_model(expr) else f"its `.{method}()`"


class Rule:
    """Base class of every lint rule."""

    CODE: ClassVar[str]
    NAME: ClassVar[str]
    SUMMARY: ClassVar[str]
    #: The rule can only fire on a source in which every one of these patterns occurs: files that
    #: trigger no enabled rule are never parsed.
    TRIGGER: ClassVar[tuple[re.Pattern[str], ...]]
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
