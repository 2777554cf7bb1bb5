"""``sentinel lint``: linting files, notebooks and standard input, in parallel, and reporting.

Public API (also used by the pytest plugin)::

    settings = load_settings(Path("."))
    result = lint_file(Path("train.py"), settings)
    result.diagnostics      # list[Diagnostic]
    result.error            # one-line reason when the file could not be read or parsed, else None
    print(render_results([result], fmt="concise"))

Which files are read is :mod:`sentinel.discovery`'s business; how a run is printed belongs to the
reporters in :mod:`sentinel.reporters`.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sentinel.config import ConfigError, Settings, load_settings, resolve_selection
from sentinel.diagnostics import Diagnostic, InputError, SourceError
from sentinel.discovery import IgnoreFiles, discover
from sentinel.engine import GC_THRESHOLDS, check_source, decode, fewer_collections
from sentinel.rules import Rule, all_rules

__all__ = [
    "Diagnostic",
    "FileResult",
    "InputError",
    "LintOptions",
    "Settings",
    "build_report",
    "discover",
    "enabled_rules",
    "lint_file",
    "lint_paths",
    "lint_source",
    "lint_text",
    "load_settings",
    "render_results",
    "run_lint_command",
]


@dataclass
class FileResult:
    """What linting one path gave: findings, or the reason it could not be checked."""

    path: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    failure: InputError | None = None
    notes: list[str] = field(default_factory=list)  # warnings about the analysis (a budget cut)

    @property
    def error(self) -> str | None:
        """``path[:cell N][:line[:col]]: reason`` when the path could not be checked."""
        return str(self.failure) if self.failure is not None else None

    @property
    def ok(self) -> bool:
        return not self.diagnostics and self.failure is None


@dataclass
class LintOptions:
    paths: list[Path]
    fmt: str = "text"
    select: list[str] | None = None
    ignore: list[str] | None = None
    extend_select: list[str] | None = None
    extend_exclude: list[str] | None = None
    force_exclude: bool = False
    use_config: bool = True
    respect_gitignore: bool | None = None  # None: the configuration's (default true)
    statistics: bool = False
    jobs: int = 0
    color: str = "auto"
    quiet: bool = False
    output_file: Path | None = None
    stdin_filename: str | None = None
    show_files: bool = False
    show_settings: bool = False
    fix: bool = False
    diff: bool = False
    unsafe_fixes: bool = False
    cache: bool = False
    cache_dir: Path | None = None


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


def is_notebook(path: str) -> bool:
    return path.lower().endswith(".ipynb")


def lint_text(data: bytes, path: str, codes: tuple[str, ...], cache: bool = False) -> FileResult:
    """Lint the bytes of a Python file or notebook shown as ``path`` with the rules ``codes``
    (with ``cache``, through the project's ``.sentinel_cache/``)."""
    rules = [r for r in all_rules() if r.CODE in codes]
    if is_notebook(path):
        return _lint_notebook(data, path, rules, cache)
    notes: list[str] = []
    try:
        source = decode(data)
        diags = check_source(source, path, rules, cache=cache, notes=notes)
    except SourceError as exc:
        return FileResult(path, failure=InputError(path, exc.reason, exc.line, exc.column if exc.line else None))
    except RecursionError:
        return FileResult(path, failure=InputError(path, "too deeply nested to analyse"))
    except Exception as exc:  # a bug in sentinel must not cost the user the other files
        return _internal_error(path, exc)
    return FileResult(path, diagnostics=diags, notes=notes)


def _internal_error(path: str, exc: Exception) -> FileResult:
    if os.environ.get("SENTINEL_DEBUG"):
        raise exc
    reason = f"internal error in sentinel ({type(exc).__name__}: {exc}); please report it"
    return FileResult(path, failure=InputError(path, reason))


def _lint_notebook(data: bytes, path: str, rules: list[type[Rule]], cache: bool = False) -> FileResult:
    from sentinel.notebook import NotebookError, load_notebook

    try:
        notebook = load_notebook(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        return FileResult(path, failure=InputError(path, "not a valid notebook: not UTF-8 text"))
    except NotebookError as exc:
        return FileResult(path, failure=InputError(path, f"not a valid notebook: {exc}"))
    # A cell that does not compile is reported, and the cells before it are linted as they run (later
    # cells may need its definitions: they are not checked).
    broken = notebook.broken_cells()
    failure = None
    source = notebook.source
    if broken:
        cell, line, column, reason = broken[0]
        more = len(broken) - 1
        reason += "; later cells not analysed" + (f" ({more} more do not compile)" if more else "")
        failure = InputError(path, reason, line, column, cell)
        source = notebook.before_cell(cell)
    notes: list[str] = []
    try:
        diags = check_source(source, path, rules, cache=cache, notes=notes)
    except SourceError as exc:
        if failure is not None:
            return FileResult(path, failure=failure)
        if exc.line:
            cell, line = notebook.locate(exc.line)
            column = notebook.column(cell, line, exc.column) if exc.column else exc.column
            return FileResult(path, failure=InputError(path, exc.reason, line, column, cell))
        return FileResult(path, failure=InputError(path, exc.reason))
    except RecursionError:
        return FileResult(path, failure=InputError(path, "too deeply nested to analyse"))
    except Exception as exc:
        return _internal_error(path, exc)
    mapped = []
    for d in diags:
        if os.path.normpath(d.path) != os.path.normpath(path):
            mapped.append(d)  # located in a project file the notebook imports
            continue
        cell, line = notebook.locate(d.line)
        end_cell, end_line = notebook.locate(d.end_line)
        column = notebook.column(cell, line, d.column)  # columns of the original (undedented) text
        end_column = notebook.column(cell, end_line, d.end_column)
        if end_cell != cell:  # never across cells: stop at the end of the first one's line
            end_line = line
            end_column = len(notebook.cell_line(cell, line) or "") + 1
        message = notebook.relocate_message(d.message, cell)
        mapped.append(Diagnostic(d.path, line, column, end_line, end_column, d.code, d.name, message, cell=cell))
    return FileResult(path, diagnostics=mapped, failure=failure, notes=notes)


def _lint_path(path: str, codes: tuple[str, ...], cache: bool = False) -> FileResult:
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        return FileResult(path, failure=InputError(path, "is a directory"))
    except FileNotFoundError:
        return FileResult(path, failure=InputError(path, "no such file"))
    except OSError as exc:
        return FileResult(path, failure=InputError(path, f"cannot read: {exc.strerror or exc}"))
    return lint_text(data, path, codes, cache)


def lint_file(path: Path, settings: Settings | None = None) -> FileResult:
    """Lint one file (Python or notebook) with ``settings`` (default: the nearest configuration)."""
    settings = settings if settings is not None else load_settings(path)
    rules = enabled_rules(settings, path)
    return _lint_path(str(path), tuple(r.CODE for r in rules))


def lint_paths(
    paths: Iterable[Path],
    settings: Settings | None = None,
    *,
    select: list[str] | None = None,
    ignore: list[str] | None = None,
    extend_select: list[str] | None = None,
    force_exclude: bool = False,
    respect_gitignore: bool | None = None,
    jobs: int = 0,
    cache: bool = False,
    cache_dir: Path | None = None,
) -> list[FileResult]:
    """Lint files and directories; results are in discovery order (sorted paths).

    Every file is analysed with the project files it imports; a file that is both linted and
    imported is parsed once. A finding located in an imported file is kept only where that file's own
    settings (excludes, per-file-ignores) allow it. With ``cache``, findings are reused from each
    project's ``.sentinel_cache/`` (or ``cache_dir``) while nothing they depend on changed."""
    paths = list(paths)
    settings = settings if settings is not None else load_settings(paths[0] if paths else Path("."))
    gitignore = settings.respect_gitignore if respect_gitignore is None else respect_gitignore
    work: list[tuple[str, tuple[str, ...]]] = []
    results: dict[str, FileResult] = {}
    order: list[str] = []
    queued: set[str] = set()
    for file, error in discover(paths, settings, force_exclude=force_exclude, respect_gitignore=gitignore):
        key = str(file)
        if key in queued:
            continue
        queued.add(key)
        order.append(key)
        if error is not None:
            reason = error[len(key) + 2 :] if error.startswith(key + ": ") else error
            results[key] = FileResult(key, failure=InputError(key, reason))
            continue
        rules = enabled_rules(settings, file, select=select, ignore=ignore, extend_select=extend_select)
        work.append((key, tuple(r.CODE for r in rules), cache))
    _expect_projects([Path(w[0]) for w in work], cache, cache_dir)
    n_jobs = jobs or os.cpu_count() or 1
    with fewer_collections():  # the project's parses live for the whole run (see sentinel.engine)
        if n_jobs > 1 and len(work) >= 8:
            results.update(_parallel(work, n_jobs))
        else:
            for key, codes, use_cache in work:
                results[key] = _lint_path(key, codes, use_cache)
    linted = {os.path.normpath(k) for k in order}
    return [_keep_allowed(results[k], settings, select, ignore, extend_select, linted) for k in order]


def _expect_projects(files: list[Path], cache: bool, cache_dir: Path | None) -> None:
    """Tell each project which of its files this run lints (they are parsed once, whole)."""
    from sentinel.engine import project_for

    by_project: dict[int, tuple[object, list[Path]]] = {}
    for f in files:
        project = project_for(f, cache=cache, cache_dir=cache_dir)
        by_project.setdefault(id(project), (project, []))[1].append(f)
    for project, members in by_project.values():
        project.expect(members)  # type: ignore[attr-defined]


def _keep_allowed(
    result: FileResult, settings: Settings, select, ignore, extend_select, linted: set[str] = frozenset()
) -> FileResult:
    """Drop findings located in another file (an imported helper) that its own settings exclude.

    A file this run lints (named on the command line, or found in a directory it names) is never
    excluded here: what the run lints, it reports, wherever the finding was discovered from."""
    if not result.diagnostics:
        return result
    own = os.path.normpath(result.path)
    kept = []
    allowed: dict[str, set[str]] = {}
    for d in result.diagnostics:
        where = os.path.normpath(d.path)
        if where != own:
            if where not in allowed:
                p = Path(d.path)
                excluded = where not in linted and settings.is_excluded(p)
                rules = enabled_rules(settings, p, select=select, ignore=ignore, extend_select=extend_select)
                allowed[where] = set() if excluded else {r.CODE for r in rules}
            if d.code not in allowed[where]:
                continue
        kept.append(d)
    return FileResult(result.path, kept, result.failure, result.notes)


def _lint_star(item: tuple[str, tuple[str, ...], bool]) -> FileResult:
    return _lint_path(*item)


def _parallel(work: list[tuple[str, tuple[str, ...], bool]], jobs: int) -> dict[str, FileResult]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    # big files first so one straggler does not finish last
    ordered = sorted(work, key=lambda w: -_size(w[0]))
    chunk = max(1, len(ordered) // (jobs * 8))
    workers = min(jobs, len(work))
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=gc.set_threshold, initargs=GC_THRESHOLDS) as pool:
        return {r.path: r for r in pool.map(_lint_star, ordered, chunksize=chunk)}


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# -- reporting ---------------------------------------------------------------------------------------
def project_root(settings: Settings) -> Path:
    """Where repository-relative paths start: the git root above the working directory, else the
    configuration's directory."""
    cwd = Path.cwd()
    git = IgnoreFiles().git_root(cwd)
    return git if git is not None else settings.root


def build_report(
    results: list[FileResult],
    *,
    rules: list[type[Rule]] | None = None,
    root: Path | None = None,
    color: str = "never",
    quiet: bool = False,
    stdin: tuple[str, bytes] | None = None,
):
    """A :class:`sentinel.reporters.Report` of ``results``: findings deduplicated and sorted."""
    from sentinel.reporters import Report, SourceLines
    from sentinel.reporters.base import dedupe

    sources = SourceLines()
    if stdin is not None:
        name, data = stdin
        if is_notebook(name):
            from sentinel.notebook import NotebookError, load_notebook

            try:
                sources.add_notebook(name, load_notebook(data.decode("utf-8-sig", "replace")))
            except NotebookError:
                pass
        else:
            sources.add_text(name, data.decode("utf-8", "replace"))
    errors = sorted((r.failure for r in results if r.failure is not None), key=lambda e: e.sort_key)
    return Report(
        diagnostics=dedupe(d for r in results for d in r.diagnostics),
        errors=errors,
        files_checked=sum(1 for r in results if r.failure is None),
        rules=list(all_rules()) if rules is None else rules,
        root=root if root is not None else Path.cwd(),
        sources=sources,
        color=color,
        quiet=quiet,
    )


def render_results(results: list[FileResult], fmt: str = "text", color: str = "never") -> str:
    """Render findings the way ``sentinel lint --format FMT`` prints them (text: without the summary)."""
    from sentinel.reporters import get_reporter

    report = build_report(results, color="always" if color == "always" else "never", quiet=True)
    return get_reporter(fmt).render(report)


def _statistics(diagnostics: list[Diagnostic], fmt: str) -> str:
    counts = Counter(d.code for d in diagnostics)
    names = {r.CODE: r.NAME for r in all_rules()}
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if fmt == "json":
        return json.dumps([{"code": c, "name": names.get(c, c), "count": k} for c, k in ranked], indent=2)
    return "\n".join(f"{count}\t{code}\t{names.get(code, code)}" for code, count in ranked)


def resolve_color(color: str) -> str:
    """``always`` or ``never``: ``auto`` means colour on a terminal without ``NO_COLOR``."""
    from sentinel.console import make_console

    if color != "auto":
        return color
    console = make_console("auto")
    return "always" if console.is_terminal and not console.no_color else "never"


def _read_stdin() -> bytes:
    stream = getattr(sys.stdin, "buffer", None)
    return stream.read() if stream is not None else sys.stdin.read().encode("utf-8")


def _show_settings(settings: Settings, options: LintOptions, path: Path) -> str:
    rules = enabled_rules(
        settings, path, select=options.select, ignore=options.ignore, extend_select=options.extend_select
    )
    gitignore = settings.respect_gitignore if options.respect_gitignore is None else options.respect_gitignore
    lines = [
        f"Settings for: {path}",
        f"config: {settings.config_path if settings.config_path else '(none: defaults)'}",
        f"root: {settings.root}",
        f"respect-gitignore: {str(gitignore).lower()}",
        f"force-exclude: {str(options.force_exclude).lower()}",
        "enabled rules:",
        *(f"  {r.CODE} {r.NAME}" for r in rules),
        "exclude:",
        *(f"  {p}" for p in settings.exclude),
        "per-file-ignores:",
        *(f"  {glob} = {', '.join(codes)}" for glob, codes in settings.per_file_ignores.items()),
    ]
    return "\n".join(lines)


_UNFIXABLE = (
    "{} fix(es) not applied: the fixed code did not verify (in a notebook, every edit must stay "
    "inside one code cell that still runs on its own)."
)


def run_lint_command(options: LintOptions) -> int:
    """Implementation of ``sentinel lint``; returns the exit status.

    Findings go to stdout (or ``--output-file``); the text format's summary too. Errors, warnings and
    the reasons a path could not be checked go to stderr, and the machine formats carry those paths
    as well. Exit status: 0 clean, 1 findings, 2 a configuration/usage error or a path not checked.
    """
    from rich.text import Text

    from sentinel.console import make_console
    from sentinel.reporters import get_reporter

    err = make_console(options.color, stderr=True)

    def warn(message: str, style: str = "bold yellow") -> None:
        err.print(Text("warning: ", style=style) + Text(message))

    stdin_name = options.stdin_filename
    use_stdin = stdin_name is not None or any(str(p) == "-" for p in options.paths)
    if use_stdin and any(str(p) != "-" for p in options.paths if str(p) != "."):
        if stdin_name is None:
            err.print(Text("sentinel: cannot mix stdin ('-') with other paths", style="bold red"))
            return 2
        for p in options.paths:
            if str(p) not in ("-", "."):
                warn(f"Ignoring file {p} in favor of standard input.")
    display = stdin_name or "-"
    try:
        start = Path(stdin_name) if stdin_name else (options.paths[0] if options.paths else Path("."))
        settings = load_settings(start, use_config=options.use_config)
        if options.extend_exclude:
            settings.exclude += options.extend_exclude
        run_rules = enabled_rules(
            settings, select=options.select, ignore=options.ignore, extend_select=options.extend_select
        )
        if options.show_settings:
            print(_show_settings(settings, options, start))
            return 0
        stdin_data: tuple[str, bytes] | None = None
        if options.show_files:
            return _show_files(options, settings, use_stdin, display, err)
        if use_stdin:
            data = _read_stdin()
            stdin_data = (display, data)
            if options.force_exclude and stdin_name and settings.is_excluded(Path(stdin_name)):
                results: list[FileResult] = []
            else:
                codes = enabled_rules(
                    settings,
                    Path(display),
                    select=options.select,
                    ignore=options.ignore,
                    extend_select=options.extend_select,
                )
                if options.fix:
                    return _fix_stdin(data, display, codes, options.unsafe_fixes)
                results = [lint_text(data, display, tuple(r.CODE for r in codes), options.cache)]
        else:
            if options.fix or options.diff:
                run = _fix_paths(options, settings)
                if options.diff:
                    if run.diffs:
                        sys.stdout.write("".join(run.diffs))
                    if run.unsafe_hidden and not options.unsafe_fixes and not options.quiet:
                        warn(f"{run.unsafe_hidden} hidden fix(es) can be shown with --unsafe-fixes.")
                    if run.unfixable and not options.quiet:
                        warn(_UNFIXABLE.format(run.unfixable))
                    return 1 if run.diffs else 0
                if not options.quiet and run.fixed:
                    warn(f"Fixed {run.fixed} problem(s) in {run.files_changed} file(s).", style="bold green")
                if not options.quiet and run.unsafe_hidden and not options.unsafe_fixes:
                    warn(f"{run.unsafe_hidden} hidden fix(es) can be enabled with --unsafe-fixes.")
                if not options.quiet and run.unfixable:
                    warn(_UNFIXABLE.format(run.unfixable))
            results = lint_paths(
                options.paths,
                settings,
                select=options.select,
                ignore=options.ignore,
                extend_select=options.extend_select,
                force_exclude=options.force_exclude,
                respect_gitignore=options.respect_gitignore,
                jobs=options.jobs,
                cache=options.cache and not options.fix,
                cache_dir=options.cache_dir,
            )
    except ConfigError as exc:
        err.print(Text(f"sentinel: configuration error: {exc}", style="bold red"))
        return 2
    to_file = options.output_file is not None
    color = "never" if to_file else resolve_color(options.color)
    report = build_report(
        results,
        rules=run_rules,
        root=project_root(settings),
        color=color,
        quiet=options.quiet,
        stdin=stdin_data,
    )
    for e in report.errors:
        err.print(Text("error: ", style="bold red") + Text(str(e)))
    if not options.quiet:
        for r in results:
            for note in r.notes:
                warn(f"{r.path}: {note}")
    nothing = not results
    if nothing and not use_stdin and not options.quiet:
        warn("No Python files or notebooks found under the given path(s).")
    if options.statistics:
        text = _statistics(report.diagnostics, options.fmt)
    elif nothing and options.fmt == "text":
        text = ""
    else:
        text = get_reporter(options.fmt).render(report)
        if options.fmt == "json" and not text:
            text = "[]"
    if to_file:
        assert options.output_file is not None
        options.output_file.parent.mkdir(parents=True, exist_ok=True)
        options.output_file.write_text(text + "\n" if text else "", encoding="utf-8")
    elif text:
        sys.stdout.write(text + "\n")
    if report.errors:
        return 2
    return 1 if report.diagnostics else 0


def _show_files(options: LintOptions, settings: Settings, use_stdin: bool, display: str, err) -> int:
    from rich.text import Text

    if use_stdin:
        print(display)
        return 0
    status = 0
    gitignore = settings.respect_gitignore if options.respect_gitignore is None else options.respect_gitignore
    files = discover(options.paths, settings, force_exclude=options.force_exclude, respect_gitignore=gitignore)
    for file, error in files:
        if error is not None:
            err.print(Text("error: ", style="bold red") + Text(error))
            status = 2
        else:
            print(file)
    return status


def _fix_paths(options: LintOptions, settings: Settings):
    """``--fix`` / ``--diff`` over the paths: every fix is verified before it is written (or shown)."""
    from sentinel.fixes import fix_files

    gitignore = settings.respect_gitignore if options.respect_gitignore is None else options.respect_gitignore
    files = []
    for file, error in discover(
        options.paths, settings, force_exclude=options.force_exclude, respect_gitignore=gitignore
    ):
        if error is None:
            rules = enabled_rules(
                settings, file, select=options.select, ignore=options.ignore, extend_select=options.extend_select
            )
            files.append((file, rules))
    return fix_files(files, unsafe=options.unsafe_fixes, write=not options.diff)


def _fix_stdin(data: bytes, name: str, rules: list[type[Rule]], unsafe: bool) -> int:
    """``--fix`` on standard input: the fixed source goes to stdout (for editors), nothing is written."""
    from sentinel.fixes import fix_source

    if is_notebook(name):
        return _fix_stdin_notebook(data, name, rules, unsafe)
    try:
        source = decode(data)
        outcome = fix_source(source, name, rules, unsafe=unsafe)
    except SourceError:
        sys.stdout.write(data.decode("utf-8", "replace"))
        return 2
    sys.stdout.write(outcome.source)
    return 1 if outcome.remaining else 0


def _fix_stdin_notebook(data: bytes, name: str, rules: list[type[Rule]], unsafe: bool) -> int:
    """A notebook on standard input: its fixed JSON on stdout (the input as it was when it cannot be
    read), and the exit status of linting that."""
    from sentinel.notebook import NotebookError
    from sentinel.notebook_fix import fix_notebook

    try:
        text = data.decode("utf-8-sig")
        new_text, _ = fix_notebook(text, name, rules, unsafe=unsafe)
    except (UnicodeDecodeError, NotebookError, ValueError, RecursionError):
        sys.stdout.write(data.decode("utf-8", "replace"))
        return 2
    sys.stdout.write(new_text)
    result = lint_text(new_text.encode("utf-8"), name, tuple(r.CODE for r in rules))
    return 2 if result.failure is not None else 1 if result.diagnostics else 0
