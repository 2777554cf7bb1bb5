"""The shared analysis layer: one abstract interpretation per file, queried by every rule."""

from sentinel.analysis.facts import Facts
from sentinel.analysis.interpreter import analyze

__all__ = ["Facts", "analyze"]
