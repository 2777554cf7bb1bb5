"""The shared analysis layer: one abstract interpretation per file, queried by every rule.

``analyze`` (which needs LibCST) is imported on first use, so that asking rules for their triggers,
or answering a file no rule can trigger on, never loads LibCST.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sentinel.analysis.facts import Facts

if TYPE_CHECKING:
    from sentinel.analysis.interpreter import analyze

__all__ = ["Facts", "analyze"]


def __getattr__(name: str) -> Any:
    if name == "analyze":
        from sentinel.analysis.interpreter import analyze

        return analyze
    raise AttributeError(name)
