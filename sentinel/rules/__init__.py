"""Rule registry: every module in this package that defines a :class:`Rule` subclass is a rule.

Adding a rule is adding a module (plus fixtures); nothing here is edited by hand.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from sentinel.rules.base import Rule, Violation

__all__ = ["Rule", "Violation", "all_rules", "rule_by_selector"]


@lru_cache(maxsize=1)
def all_rules() -> tuple[type[Rule], ...]:
    found: list[type[Rule]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Rule)
                and obj is not Rule
                and obj.__module__ == module.__name__
            ):
                found.append(obj)
    found.sort(key=lambda r: r.CODE)
    codes = [r.CODE for r in found]
    if len(set(codes)) != len(codes):  # pragma: no cover - guarded by the test suite too
        raise RuntimeError(f"duplicate rule codes: {codes}")
    return tuple(found)


def rule_by_selector(selector: str) -> type[Rule] | None:
    sel = selector.strip()
    for rule in all_rules():
        if rule.CODE == sel.upper() or rule.NAME == sel.lower():
            return rule
    return None
