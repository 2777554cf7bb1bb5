"""``sentinel lint``: file discovery, configuration, parallel checking and reporting.

Public API (also used by the pytest plugin)::

    settings = load_settings(Path("."))
    result = lint_file(Path("train.py"), settings)
    result.diagnostics      # list[Diagnostic]
    result.error            # one-line reason when the file could not be read or parsed
    print(render_results([result], fmt="concise"))
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sentinel.config import ConfigError, Settings, load_settings, resolve_selection
from sentinel.engine import Diagnostic, SourceError, check_source, decode
from sentinel.rules import Rule, all_rules

__all__ = [
    "Diagnostic",
    "FileResult",
    "LintOptions",
    "Settings",
    "lint_file",
    "lint_paths",
    "lint_source",
    "load_settings",
    "render_results",
    "run_lint_command",
]


@dataclass
class FileResult:
    path: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    error: str | None = None  # "path:line:col: reason" when the file could not be linted

    @property
    def ok(self) -> bool:
        return not self.diagnostics and self.error is None


@dataclass
class LintOptions:
    paths: list[Path]
    fmt: str = "text"
    select: list[str] | None = None
    ignore: list[str] | None = None
    extend_select: list[str] | None = None
    force_exclude: bool = False
    use_config: bool = True
    statistics: bool = False
    jobs: int = 0
    color: str = "auto"


def _rule_pairs() -> list[tuple[str, str]]:
    return [(r.CODE, r.NAME) for r in all_rules()]


def enabled_rules(
    settings: Settings,
    path: Path | None = None,
    *,
    select: list[str] | None = None,
    ignore: list[str] | None = None,
    extend_select: list[str] | None = None,
) -> list[type[Rule]]:
    """Rules enabled for ``path``: CLI selection over the config's, minus per-file ignores."""
    codes = resolve_selection(
        _rule_pairs(),
        select if select is not None else settings.select,
        [*settings.ignore, *(ignore or [])],
        [*settings.extend_select, *(extend_select or [])],
    )
    if path is not None:
        per_file = settings.ignored_for(path)
        if per_file:
            codes -= resolve_selection(_rule_pairs(), per_file, [])
    return [r for r in all_rules() if r.CODE in codes]


def lint_source(source: str, path: str = "<string>", rules: Iterable[type[Rule]] | None = None) -> list[Diagnostic]:
    """Lint a string. Raises :class:`sentinel.engine.SourceError` if it is not valid Python."""
    return check_source(source, path, rules)


def _lint_path(path: str, codes: tuple[str, ...]) -> FileResult:
    rules = [r for r in all_rules() if r.CODE in codes]
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        return FileResult(path, error=f"{path}: is a directory")
    except FileNotFoundError:
        return FileResult(path, error=f"{path}: no such file")
    except OSError as exc:
        return FileResult(path, error=f"{path}: cannot read: {exc.strerror or exc}")
    try:
        source = decode(data)
        diags = check_source(source, path, rules)
    except SourceError as exc:
        where = path + (f":{exc.line}" if exc.line else "") + (f":{exc.column}" if exc.line and exc.column else "")
        return FileResult(path, error=f"{where}: {exc.reason}")
    except RecursionError:
        return FileResult(path, error=f"{path}: too deeply nested to analyse")
    except Exception as exc:  # a bug in sentinel must not cost the user the other files
        if os.environ.get("SENTINEL_DEBUG"):
            raise
        return FileResult(
            path, error=f"{path}: internal error in sentinel ({type(exc).__name__}: {exc}); please report it"
        )
    return FileResult(path, diagnostics=diags)


def lint_file(path: Path, settings: Settings | None = None) -> FileResult:
    """Lint one file with ``settings`` (default: the nearest ``[tool.sentinel]``)."""
    settings = settings if settings is not None else load_settings(path)
    rules = enabled_rules(settings, path)
    return _lint_path(str(path), tuple(r.CODE for r in rules))


def discover(
    paths: Iterable[Path], settings: Settings, *, force_exclude: bool = False
) -> Iterator[tuple[Path, str | None]]:
    """Yield ``(file, error)``: Python files under ``paths``, pruning excluded directories.

    A path given explicitly is always linted (and an excluded directory given explicitly is walked),
    unless ``force_exclude`` is set, as in ruff; this is what pre-commit hooks need.
    """
    for root in paths:
        if not root.exists():
            yield root, f"{root}: no such file or directory"
            continue
        if force_exclude and settings.is_excluded(root):
            continue
        if root.is_file():
            yield root, None
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not settings.is_excluded(here / d, below=root))
            for name in sorted(filenames):
                if name.endswith((".py", ".pyi")):
                    file = here / name
                    if not settings.is_excluded(file, below=root):
                        yield file, None


def lint_paths(
    paths: Iterable[Path],
    settings: Settings | None = None,
    *,
    select: list[str] | None = None,
    ignore: list[str] | None = None,
    extend_select: list[str] | None = None,
    force_exclude: bool = False,
    jobs: int = 0,
) -> list[FileResult]:
    """Lint files and directories; results are in path order."""
    paths = list(paths)
    settings = settings if settings is not None else load_settings(paths[0] if paths else Path("."))
    work: list[tuple[str, tuple[str, ...]]] = []
    results: dict[str, FileResult] = {}
    order: list[str] = []
    for file, error in discover(paths, settings, force_exclude=force_exclude):
        key = str(file)
        if key in results or key in dict(work):
            continue
        order.append(key)
        if error is not None:
            results[key] = FileResult(key, error=error)
            continue
        rules = enabled_rules(settings, file, select=select, ignore=ignore, extend_select=extend_select)
        work.append((key, tuple(r.CODE for r in rules)))
    n_jobs = jobs or os.cpu_count() or 1
    if n_jobs > 1 and len(work) >= 8:
        results.update(_parallel(work, n_jobs))
    else:
        for key, codes in work:
            results[key] = _lint_path(key, codes)
    return [results[k] for k in order]


def _lint_star(item: tuple[str, tuple[str, ...]]) -> FileResult:
    return _lint_path(*item)


def _parallel(work: list[tuple[str, tuple[str, ...]]], jobs: int) -> dict[str, FileResult]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    # big files first so one straggler does not finish last
    ordered = sorted(work, key=lambda w: -_size(w[0]))
    chunk = max(1, len(ordered) // (jobs * 8))
    with ProcessPoolExecutor(max_workers=min(jobs, len(work)), mp_context=ctx) as pool:
        return {r.path: r for r in pool.map(_lint_star, ordered, chunksize=chunk)}


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# -- output ------------------------------------------------------------------------------------------
def _escape_gh(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def render_results(results: list[FileResult], fmt: str = "text", color: str = "never") -> str:
    """Render findings the way ``sentinel lint --format FMT`` prints them (without the summary)."""
    diags = [d for r in results for d in r.diagnostics]
    if fmt == "json":
        return json.dumps([d.to_dict() for d in diags], indent=2)
    if fmt == "concise":
        return "\n".join(d.format_concise() for d in diags)
    if fmt == "github":
        lines = []
        for d in diags:
            props = f"title={_escape_gh(f'sentinel ({d.code})', True)},file={_escape_gh(d.path, True)},line={d.line}"
            if d.end_line == d.line:
                props += f",col={d.column},endColumn={d.end_column}"
            props += f",endLine={d.end_line}"
            lines.append(f"::error {props}::{_escape_gh(d.format_concise())}")
        return "\n".join(lines)
    import io

    from sentinel.console import make_console

    buf = io.StringIO()
    console = make_console(color, file=buf)
    if color == "auto":
        console = make_console("never", file=buf)
    _print_text(console, results)
    return buf.getvalue().rstrip("\n")


def _print_text(console, results: list[FileResult]) -> None:
    from rich.text import Text

    cache: dict[str, list[str]] = {}
    for r in results:
        for d in r.diagnostics:
            head = Text()
            head.append(f"{d.path}:{d.line}:{d.column}", style="bold")
            head.append(" ")
            head.append(d.code, style="bold red")
            head.append(f" {d.message}")
            console.print(head)
            if d.path not in cache:
                try:
                    cache[d.path] = Path(d.path).read_text(encoding="utf-8", errors="replace").splitlines()
                except OSError:
                    cache[d.path] = []
            src = cache[d.path]
            if 0 < d.line <= len(src):
                text = src[d.line - 1].rstrip()
                gutter = f"{d.line:>4} | "
                console.print(Text(gutter, style="blue") + Text(text))
                width = (d.end_column - d.column) if d.end_line == d.line else max(1, len(text) - d.column + 1)
                console.print(Text(" " * (len(gutter) + d.column - 1)) + Text("^" * max(1, width), style="bold red"))
            console.print(Text(f"     = help: sentinel rule {d.code}", style="dim"))
            console.print()


def _summary(results: list[FileResult]) -> str:
    n = sum(len(r.diagnostics) for r in results)
    errors = sum(1 for r in results if r.error)
    checked = len(results) - errors
    files = f"{checked} file{'s' if checked != 1 else ''}"
    if n:
        text = f"Found {n} problem{'s' if n != 1 else ''} in {sum(1 for r in results if r.diagnostics)} of {files}."
    elif errors:
        text = f"No problems found in {files}."
    else:
        text = f"All checks passed! ({files})"
    if errors:
        text += f" {errors} path{'s' if errors != 1 else ''} could not be checked."
    return text


def run_lint_command(options: LintOptions) -> int:
    """Implementation of ``sentinel lint``; returns the exit status."""
    from rich.text import Text

    from sentinel.console import make_console

    err = make_console(options.color, stderr=True)
    try:
        settings = load_settings(options.paths[0] if options.paths else Path("."), use_config=options.use_config)
        results = lint_paths(
            options.paths,
            settings,
            select=options.select,
            ignore=options.ignore,
            extend_select=options.extend_select,
            force_exclude=options.force_exclude,
            jobs=options.jobs,
        )
    except ConfigError as exc:
        err.print(Text(f"sentinel: configuration error: {exc}", style="bold red"))
        return 2
    for r in results:
        if r.error:
            err.print(Text("error: ", style="bold red") + Text(r.error))
    n = sum(len(r.diagnostics) for r in results)
    if options.statistics:
        counts = Counter(d.code for r in results for d in r.diagnostics)
        names = {r.CODE: r.NAME for r in all_rules()}
        if options.fmt == "json":
            print(json.dumps([{"code": c, "name": names[c], "count": k} for c, k in counts.most_common()], indent=2))
        else:
            for code, count in counts.most_common():
                print(f"{count}\t{code}\t{names[code]}")
    elif options.fmt == "text":
        out = make_console(options.color)
        _print_text(out, results)
        style = "bold red" if n else "bold green"
        out.print(Text(_summary(results), style=style))
    else:
        text = render_results(results, options.fmt)
        if text:
            sys.stdout.write(text + "\n")
        elif options.fmt == "json":
            sys.stdout.write("[]\n")
    if any(r.error for r in results):
        return 2
    return 1 if n else 0
