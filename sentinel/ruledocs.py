"""Rule documentation: ``sentinel rule``, and the ``docs/rules/`` pages generated from it.

The static rules' docstrings (:mod:`sentinel.rules`) and the runtime findings' entries
(:mod:`sentinel.runtime_docs`) are the single source. ``docs/rules/<name>.md`` (one page per code) and
``docs/rules/README.md`` (the index) are generated from them; a test regenerates them in memory and
fails when the files in the repository differ. Regenerate with::

    python -m sentinel.ruledocs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DOCS_BASE_URL = "https://github.com/torch-sentinel/torch-sentinel/blob/main/docs/rules/"
DOCS_DIR = Path("docs") / "rules"

__all__ = ["DOCS_BASE_URL", "all_documented", "doc_url", "generate_docs", "show_rules", "write_docs"]


def doc_url(name: str) -> str:
    """The URL of a rule's generated page (``docs/rules/<name>.md`` on the main branch)."""
    return f"{DOCS_BASE_URL}{name}.md"


def all_documented() -> list:
    """Every documented code: the static rules, then the runtime findings, each sorted by code."""
    from sentinel.rules import all_rules
    from sentinel.runtime_docs import RUNTIME_RULES

    return [*all_rules(), *(RUNTIME_RULES[c] for c in sorted(RUNTIME_RULES))]


def _kind(rule) -> str:
    return "static" if isinstance(rule, type) else "runtime"


def _find(selector: str):
    from sentinel.rules import rule_by_selector
    from sentinel.runtime_docs import runtime_rule

    return rule_by_selector(selector) or runtime_rule(selector)


def rule_info(rule) -> dict:
    return {
        "code": rule.CODE,
        "name": rule.NAME,
        "kind": _kind(rule),
        "summary": rule.SUMMARY,
        "url": rule.url(),
        "explanation": rule.doc(),
    }


def _origin(rule) -> str:
    if _kind(rule) == "static":
        return "Found by `sentinel lint` (static analysis, no torch needed)."
    return "Found at runtime by `sentinel probe`, `sentinel.watch` and the pytest plugin's probes."


def render_page(rule) -> str:
    """The Markdown page of one rule."""
    return f"# {rule.NAME} ({rule.CODE})\n\n{_origin(rule)}\n\n{rule.doc().strip()}\n"


def render_index(rules: list) -> str:
    lines = [
        "# Rules",
        "",
        "Generated from the rule docstrings (`sentinel/rules/`) and `sentinel/runtime_docs.py` by",
        "`python -m sentinel.ruledocs`; do not edit by hand. `sentinel rule CODE` prints the same text.",
        "",
    ]
    for kind, title in (("static", "Static rules (`sentinel lint`)"), ("runtime", "Runtime findings")):
        lines += [f"## {title}", "", "| code | name | finds |", "|---|---|---|"]
        for r in rules:
            if _kind(r) == kind:
                summary = r.SUMMARY.replace("|", "\\|")
                lines.append(f"| {r.CODE} | [{r.NAME}]({r.NAME}.md) | {summary} |")
        lines.append("")
    return "\n".join(lines)


def generate_docs() -> dict[str, str]:
    """``{repository-relative path: content}`` of every generated page."""
    rules = all_documented()
    out = {(DOCS_DIR / f"{r.NAME}.md").as_posix(): render_page(r) for r in rules}
    out[(DOCS_DIR / "README.md").as_posix()] = render_index(rules)
    return out


def write_docs(root: Path) -> list[Path]:
    """Write the generated pages under ``root`` and delete stale ones; returns the files changed."""
    pages = generate_docs()
    changed: list[Path] = []
    target = root / DOCS_DIR
    target.mkdir(parents=True, exist_ok=True)
    for rel, text in pages.items():
        path = root / rel
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    for stale in target.glob("*.md"):
        if stale.relative_to(root).as_posix() not in pages:
            stale.unlink()
            changed.append(stale)
    return changed


def show_rules(selector: str | None, *, show_all: bool = False, fmt: str = "text", color: str = "auto") -> int:
    """``sentinel rule``: one rule's documentation, or a table of every code (static and runtime)."""
    from sentinel.console import make_console

    console = make_console(color)
    if show_all:
        rules = all_documented()
        if fmt == "json":
            print(json.dumps([rule_info(r) for r in rules], indent=2))
            return 0
        from rich.table import Table

        table = Table(title="sentinel rules", show_lines=False)
        table.add_column("Code", style="bold red", no_wrap=True)
        table.add_column("Name", no_wrap=True)
        table.add_column("Kind", no_wrap=True)
        table.add_column("Finds")
        for r in rules:
            table.add_row(r.CODE, r.NAME, _kind(r), r.SUMMARY)
        console.print(table)
        return 0
    assert selector is not None
    rule = _find(selector)
    if rule is None:
        make_console(color, stderr=True).print(f"sentinel: unknown rule {selector!r} (try `sentinel rule --all`)")
        return 2
    if fmt == "json":
        print(json.dumps(rule_info(rule), indent=2))
        return 0
    text = f"# {rule.NAME} ({rule.CODE})\n\n{rule.doc()}"
    if console.is_terminal:
        from rich.markdown import Markdown

        console.print(Markdown(text))
    else:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sentinel.ruledocs [ROOT] [--check]``: regenerate (or check) ``docs/rules/``."""
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    root = Path(args[0]) if args else Path(__file__).resolve().parent.parent
    if check:
        stale = [rel for rel, text in generate_docs().items() if _read(root / rel) != text]
        for rel in stale:
            print(f"out of date: {rel}")
        return 1 if stale else 0
    for path in write_docs(root):
        print(f"wrote {path}")
    return 0


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
