"""Output formats of ``sentinel lint``: one module per format, each one :class:`Reporter` subclass.

Adding a format is adding a module here that defines a ``Reporter`` subclass with a ``NAME`` (the
``--format`` value) and a ``HELP`` line; the CLI's ``--format`` choices come from :func:`reporters`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from sentinel.reporters.base import Report, Reporter, SourceLines, summary

__all__ = ["Report", "Reporter", "SourceLines", "get_reporter", "reporter_names", "reporters", "summary"]

#: the order ``--help`` lists them in; formats not named here follow alphabetically
_ORDER = ("text", "concise", "json", "github", "sarif", "junit")


@lru_cache(maxsize=1)
def reporters() -> dict[str, type[Reporter]]:
    found: dict[str, type[Reporter]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Reporter) and obj.__module__ == module.__name__:
                found[obj.NAME] = obj
    ordered = [n for n in _ORDER if n in found] + sorted(n for n in found if n not in _ORDER)
    return {n: found[n] for n in ordered}


def reporter_names() -> tuple[str, ...]:
    return tuple(reporters())


def get_reporter(name: str) -> Reporter:
    try:
        return reporters()[name]()
    except KeyError:
        raise ValueError(f"unknown output format {name!r}; choose from {', '.join(reporters())}") from None
