"""``sentinel rule``: a rule's documentation (its docstring) or a table of every rule."""

from __future__ import annotations

import json

from rich.markdown import Markdown
from rich.table import Table

from sentinel.console import make_console
from sentinel.rules import all_rules, rule_by_selector


def rule_info(rule) -> dict:
    return {
        "code": rule.CODE,
        "name": rule.NAME,
        "summary": rule.SUMMARY,
        "url": rule.url(),
        "explanation": rule.doc(),
    }


def show_rules(selector: str | None, *, show_all: bool = False, fmt: str = "text", color: str = "auto") -> int:
    console = make_console(color)
    if show_all:
        rules = list(all_rules())
        if fmt == "json":
            print(json.dumps([rule_info(r) for r in rules], indent=2))
            return 0
        table = Table(title="sentinel rules", show_lines=False)
        table.add_column("Code", style="bold red", no_wrap=True)
        table.add_column("Name", no_wrap=True)
        table.add_column("Finds")
        for r in rules:
            table.add_row(r.CODE, r.NAME, r.SUMMARY)
        for code, name in _probe_rules():
            table.add_row(code, name, "runtime finding of `sentinel probe` / `sentinel.watch`")
        console.print(table)
        return 0
    assert selector is not None
    rule = rule_by_selector(selector)
    if rule is None:
        from sentinel.findings import PROBE_RULES

        for code, name in PROBE_RULES.items():
            if selector.upper() == code or selector.lower() == name:
                if fmt == "json":
                    print(json.dumps({"code": code, "name": name, "summary": "runtime finding"}, indent=2))
                else:
                    console.print(f"# {name} ({code})\n\nA runtime finding of `sentinel probe` and `sentinel.watch`.")
                return 0
        make_console(color, stderr=True).print(f"sentinel: unknown rule {selector!r} (try `sentinel rule --all`)")
        return 2
    if fmt == "json":
        print(json.dumps(rule_info(rule), indent=2))
        return 0
    if console.is_terminal:
        console.print(Markdown(f"# {rule.NAME} ({rule.CODE})\n\n{rule.doc()}"))
    else:
        print(f"# {rule.NAME} ({rule.CODE})\n\n{rule.doc()}")
    return 0


def _probe_rules() -> list[tuple[str, str]]:
    from sentinel.findings import PROBE_RULES

    return list(PROBE_RULES.items())
