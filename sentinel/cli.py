"""The ``sentinel`` command line: ``lint``, ``rule`` and ``probe``.

Exit status everywhere: 0 nothing found, 1 findings, 2 usage, input or I/O error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from sentinel import __version__

FORMATS_LINT = ("text", "json", "concise", "github")


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
    type=click.Choice(FORMATS_LINT),
    default="text",
    show_default=True,
    help="text: findings with source lines; concise: one line each; json: one array; github: annotations.",
)
@click.option("--select", help="Comma-separated codes, prefixes or names to enable (replaces the config's).")
@click.option("--ignore", help="Comma-separated codes, prefixes or names to disable.")
@click.option("--extend-select", help="Codes to enable in addition to the selected ones.")
@click.option("--exit-zero", is_flag=True, help="Exit 0 even when there are findings (still 2 on errors).")
@click.option("--force-exclude", is_flag=True, help="Apply exclude settings to paths given explicitly too.")
@click.option("--no-config", is_flag=True, help="Ignore [tool.sentinel] in pyproject.toml.")
@click.option("--statistics", is_flag=True, help="Print a count per rule instead of the findings.")
@click.option("-j", "--jobs", type=click.IntRange(min=0), default=0, help="Processes to use (0: all cores).")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True)
def lint(
    paths: tuple[Path, ...],
    fmt: str,
    select: str | None,
    ignore: str | None,
    extend_select: str | None,
    exit_zero: bool,
    force_exclude: bool,
    no_config: bool,
    statistics: bool,
    jobs: int,
    color: str,
) -> None:
    """Statically check training code in PATHS (files or directories; default: current directory)."""
    from sentinel.lint import LintOptions, run_lint_command

    options = LintOptions(
        paths=list(paths) or [Path(".")],
        fmt=fmt,
        select=_codes(select),
        ignore=_codes(ignore),
        extend_select=_codes(extend_select),
        force_exclude=force_exclude,
        use_config=not no_config,
        statistics=statistics,
        jobs=jobs,
        color=color,
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


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("target")
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimizer steps to run (probe/monitor).")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where to run the model and batch.",
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
            f"sentinel probe: {exc}; install the runtime half with: pip install 'torch-sentinel[probe]'",
            err=True,
        )
        sys.exit(2)
    sys.exit(run_probe_command(target, steps=steps, device=device, fmt=fmt, color=color, script_args=list(script_args)))
