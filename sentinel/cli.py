"""The ``sentinel`` command line: ``lint``, ``rule`` and ``probe``.

Exit status everywhere: 0 nothing found, 1 findings, 2 usage, input or I/O error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from sentinel import __version__


def _lint_formats() -> tuple[str, ...]:
    from sentinel.reporters import reporter_names

    return reporter_names()


def _format_help() -> str:
    from sentinel.reporters import reporters

    return "; ".join(f"{name}: {cls.HELP}" for name, cls in reporters().items()) + "."


class _Group(click.Group):
    """Usage errors exit 2 (click's default); anything unexpected exits 2 with one line, never 1."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except BrokenPipeError:  # `sentinel lint | head`: the reader went away, that is not an error
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115
            ctx.exit(0)
        except KeyboardInterrupt:
            click.echo("sentinel: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # an internal error must not look like "findings" (exit 1)
            click.echo(f"sentinel: internal error: {type(exc).__name__}: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", package_name="torch-sentinel", prog_name="sentinel")
def main() -> None:
    """Find the bugs that make PyTorch training silently wrong."""


def _codes(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [c.strip() for c in value.replace(" ", ",").split(",") if c.strip()]


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(_lint_formats()),
    default="text",
    show_default=True,
    help=_format_help(),
)
@click.option(
    "-o",
    "--output-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the findings to FILE instead of stdout (errors and warnings still go to stderr).",
)
@click.option("--select", help="Comma-separated codes, prefixes or names to enable (replaces the config's).")
@click.option("--ignore", help="Comma-separated codes, prefixes or names to disable.")
@click.option("--extend-select", help="Codes to enable in addition to the selected ones.")
@click.option("--extend-exclude", help="Comma-separated patterns to exclude in addition to the config's.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when there are findings (still 2 on errors).")
@click.option(
    "--force-exclude",
    is_flag=True,
    help="Apply excludes and ignore files to paths given explicitly too (what pre-commit hooks need).",
)
@click.option(
    "--no-respect-gitignore",
    is_flag=True,
    help="Also lint files that .gitignore, .ignore or .git/info/exclude ignore.",
)
@click.option("--no-config", is_flag=True, help="Ignore sentinel.toml and [tool.sentinel] in pyproject.toml.")
@click.option(
    "--stdin-filename",
    help="Lint standard input as if it were this file (config, per-file-ignores, output); implies `-`.",
)
@click.option("--statistics", is_flag=True, help="Print a count per rule instead of the findings.")
@click.option("--show-files", is_flag=True, help="List the files that would be linted, then exit.")
@click.option("--show-settings", is_flag=True, help="Print the settings that apply to the first PATH, then exit.")
@click.option("-q", "--quiet", is_flag=True, help="Print the findings only: no summary, no warnings.")
@click.option("--fix", is_flag=True, help="Apply the safe fixes in place (each verified before it is written).")
@click.option("--diff", is_flag=True, help="Print the fixes as a unified diff and write nothing (exit 1 if any).")
@click.option("--unsafe-fixes", is_flag=True, help="Also apply (or show) the fixes that may change behaviour.")
@click.option("--no-cache", is_flag=True, help="Do not read or write .sentinel_cache/.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to keep the cache (default: .sentinel_cache/ at each project root).",
)
@click.option("-j", "--jobs", type=click.IntRange(min=0), default=0, help="Processes to use (0: all cores).")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True)
def lint(
    paths: tuple[Path, ...],
    fmt: str,
    output_file: Path | None,
    select: str | None,
    ignore: str | None,
    extend_select: str | None,
    extend_exclude: str | None,
    exit_zero: bool,
    force_exclude: bool,
    no_respect_gitignore: bool,
    no_config: bool,
    stdin_filename: str | None,
    statistics: bool,
    show_files: bool,
    show_settings: bool,
    quiet: bool,
    fix: bool,
    diff: bool,
    unsafe_fixes: bool,
    no_cache: bool,
    cache_dir: Path | None,
    jobs: int,
    color: str,
) -> None:
    """Statically check training code in PATHS: Python files, notebooks (.ipynb) and directories
    (default: the current directory); `-` reads standard input."""
    from sentinel.lint import LintOptions, run_lint_command

    options = LintOptions(
        paths=list(paths) or [Path(".")],
        fmt=fmt,
        select=_codes(select),
        ignore=_codes(ignore),
        extend_select=_codes(extend_select),
        extend_exclude=_codes(extend_exclude),
        force_exclude=force_exclude,
        use_config=not no_config,
        respect_gitignore=False if no_respect_gitignore else None,
        statistics=statistics,
        jobs=jobs,
        color=color,
        quiet=quiet,
        output_file=output_file,
        stdin_filename=stdin_filename,
        show_files=show_files,
        show_settings=show_settings,
        fix=fix,
        diff=diff,
        unsafe_fixes=unsafe_fixes,
        cache=not no_cache and os.environ.get("SENTINEL_NO_CACHE", "") in ("", "0"),
        cache_dir=cache_dir,
    )
    status = run_lint_command(options)
    if exit_zero and status == 1:
        status = 0
    sys.exit(status)


@main.command()
@click.argument("rule", required=False)
@click.option("--all", "show_all", is_flag=True, help="List every rule.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True)
def rule(rule: str | None, show_all: bool, fmt: str, color: str) -> None:
    """Show the documentation of RULE (a code such as SEN002 or a name such as missing-zero-grad)."""
    from sentinel.ruledocs import show_rules

    if not rule and not show_all:
        raise click.UsageError("give a rule code or name, or --all")
    sys.exit(show_rules(rule, show_all=show_all, fmt=fmt, color=color))


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def clean(paths: tuple[Path, ...]) -> None:
    """Delete the lint cache (.sentinel_cache/) of the projects holding PATHS (default: here)."""
    import shutil

    from sentinel.analysis.project import find_root
    from sentinel.cache import CACHE_DIR

    removed = 0
    for path in paths or (Path("."),):
        target = find_root(path) / CACHE_DIR
        if target.is_dir():
            shutil.rmtree(target)
            click.echo(f"Removed {target}", err=True)
            removed += 1
    if not removed:
        click.echo("No cache to remove.", err=True)


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("target")
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimizer steps to run (probe/monitor).")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where to run the model and batch: auto, cpu, cuda or cuda:N.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True)
def probe(target: str, script_args: tuple[str, ...], steps: int | None, device: str, fmt: str, color: str) -> None:
    """Run the model or training script TARGET and prove that it trains.

    TARGET is path/to/file.py:factory or package.module:factory (a function returning a mapping with
    model, loss_fn, batch and optionally optimizer), or path/to/train.py to run a training script under
    the loop monitor; arguments after `--` are passed to the script.
    """
    try:
        from sentinel.probes.cli import run_probe_command
    except ImportError as exc:  # torch is the `probe` extra
        click.echo(
            f"sentinel probe: {exc}; the runtime half needs torch in this environment: pip install torch "
            "(CPU-only: pip install torch --index-url https://download.pytorch.org/whl/cpu)",
            err=True,
        )
        sys.exit(2)
    sys.exit(run_probe_command(target, steps=steps, device=device, fmt=fmt, color=color, script_args=list(script_args)))
