"""Lint speed against LibCST's bare parse, measured side by side in one run.

    python benchmarks/lint_speed.py [PATH ...] [--repeat N] [--jobs N]

PATHs are directories of real training code (e.g. checkouts of pytorch/examples and other
repositories full of training scripts); without one, the bundled fixtures are used. Prints, for the
same files:

* bare ``libcst.parse_module`` time (the floor any LibCST linter pays),
* ``sentinel`` single-process time with its text pre-filter (files that cannot trigger a rule are
  never parsed) and the ratio to the bare parse,
* ``sentinel`` with the pre-filter off (every file parsed, analysed and checked by every rule): the
  cost of all rules and the analysis together, as a ratio to the bare parse (target <= 1.5x),
* the same restricted to the files the pre-filter lets through,
* the wall time of ``lint_paths`` with ``--jobs`` processes,
* the worst files: each triggered file's lint time against its own bare parse (target <= 3x) and
  against the bare parse of all the code its lint reads (the file and the definitions it follows into
  other project files, which a cold one-file lint parses too), and
  how many files ran out of analysis budget (their cut-short work is dropped, never guessed).

Files are linted with their projects (a file's imports of its own repository are followed), as
``sentinel lint`` does: put each repository in its own directory with a root marker (``.git``,
``pyproject.toml``...), e.g. a git checkout.

Times are the best of ``--repeat`` runs (default 3), so a busy machine perturbs them less.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import libcst as cst

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sentinel import engine  # noqa: E402
from sentinel.engine import check_source  # noqa: E402
from sentinel.lint import _expect_projects as expect_projects  # noqa: E402
from sentinel.lint import lint_paths, load_settings  # noqa: E402
from sentinel.rules import all_rules  # noqa: E402


def collect(paths: list[Path]) -> list[tuple[Path, str]]:
    out = []
    for root in paths:
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for f in files:
            try:
                text = f.read_text(encoding="utf-8")
                cst.parse_module(text)
            except Exception:
                continue  # not parseable: not a fair parse-time comparison
            out.append((f, text))
    return out


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", type=Path, default=[ROOT / "fixtures"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--compare-first",
        type=int,
        default=0,
        help="also lint with only the first N rules (e.g. 6: the catalog before SEN007) and print both ratios",
    )
    args = ap.parse_args()
    files = collect(args.paths)
    if not files:
        sys.exit("no parseable Python files found")
    lines = sum(t.count("\n") + 1 for _, t in files)
    rules = list(all_rules())
    engine._PROJECTS.clear()
    # the files the engine analyses: a rule triggers on their code or on the project code they import
    triggered = [(f, t) for f, t in files if engine._would_trigger(rules, engine.project_for(f), f)]

    def parse_all(subset=files):
        for _, t in subset:
            cst.parse_module(t)

    def lint_all(prefilter=True, subset=files, rules=rules):
        engine._PROJECTS.clear()  # each run reads and parses the projects afresh, as a new process would
        expect_projects([f for f, _ in subset], False, None)  # as `sentinel lint DIR` does: parse each file once
        with engine.fewer_collections():  # as `sentinel lint` does for its whole run
            for f, t in subset:
                check_source(t, str(f), rules, prefilter=prefilter)

    t_parse = best(parse_all, args.repeat)
    t_lint = best(lint_all, args.repeat)
    t_full = best(lambda: lint_all(prefilter=False), args.repeat)
    t_parse_trig = best(lambda: parse_all(triggered), args.repeat)
    t_lint_trig = best(lambda: lint_all(subset=triggered), args.repeat)
    settings = load_settings(args.paths[0], use_config=False)
    engine._PROJECTS.clear()  # the worker processes start cold, as a new `sentinel lint` does
    t_jobs = best(lambda: lint_paths(args.paths, settings, jobs=args.jobs), 1)

    n = len(files)
    trig_lines = sum(t.count("\n") + 1 for _, t in triggered)
    print(
        f"corpus: {n} files, {lines} lines ({len(triggered)} files, {trig_lines} lines, can trigger a rule:"
        f" parsing just those is {t_parse_trig / t_parse:.2f}x the bare parse of all)"
    )
    print(f"bare libcst.parse_module      {t_parse:8.3f} s  {n / t_parse:8.1f} files/s  {lines / t_parse:9.0f} lines/s")
    print(
        f"sentinel lint (1 process)     {t_lint:8.3f} s  {n / t_lint:8.1f} files/s  ratio {t_lint / t_parse:.2f}x parse"
    )
    print(
        f"  every file analysed         {t_full:8.3f} s  {n / t_full:8.1f} files/s  ratio {t_full / t_parse:.2f}x parse"
    )
    print(
        f"  triggered files only        {t_lint_trig:8.3f} s  vs their parse {t_parse_trig:.3f} s  "
        f"ratio {t_lint_trig / t_parse_trig:.2f}x"
    )
    print(f"sentinel lint --jobs {args.jobs:<3}      {t_jobs:8.3f} s  {n / t_jobs:8.1f} files/s  (wall, incl. startup)")
    if args.compare_first:
        first = rules[: args.compare_first]
        t_first = best(lambda: lint_all(rules=first), args.repeat)
        print(
            f"with the first {len(first)} rules only  {t_first:8.3f} s  ratio {t_first / t_parse:.2f}x parse;"
            f"  all {len(rules)} rules {t_lint / t_parse:.2f}x parse"
        )
    worst_files(triggered, rules, args.repeat)


def worst_files(files: list[tuple[Path, str]], rules, repeat: int, top: int = 5) -> None:
    from sentinel.analysis.interpreter import Interpreter
    from sentinel.engine import project_for

    rows = []
    exhausted = 0
    for f, t in files:
        t_parse = best(lambda t=t: cst.parse_module(t), repeat)

        def cold(f=f, t=t):
            engine._PROJECTS.clear()  # one `sentinel lint FILE`: its project and imports read afresh
            check_source(t, str(f), rules)

        t_lint = best(cold, repeat)
        engine._PROJECTS.clear()
        interp = Interpreter(cst.parse_module(t), t, path=f, project=project_for(f))
        interp.run()
        exhausted += interp.exhausted
        # the definitions of other project files this lint read (and parsed) besides the file itself
        snippets = [text for _, _, parts in interp.imported_sources() for _, text, *_ in parts]
        t_read = t_parse + (best(lambda s=snippets: [cst.parse_module(x) for x in s], repeat) if snippets else 0.0)
        rows.append((t_lint / t_parse, t_lint, t.count("\n") + 1, interp.exhausted, f, t_lint / t_read, len(snippets)))
    rows.sort(key=lambda r: -r[0])
    print(f"analysis budget exhausted in {exhausted} of {len(files)} triggered files")
    print(
        "worst files (one file linted alone, cold: lint / own bare parse; and lint / bare parse of all the"
        " code it reads: the file and the imported definitions it follows):"
    )

    def show(row) -> None:
        ratio, secs, n_lines, ex, f, read_ratio, n_defs = row
        print(
            f"  {ratio:6.2f}x  {read_ratio:5.2f}x with {n_defs:3d} imported definitions  {secs:6.3f} s"
            f"  {n_lines:5d} lines  {'budget exhausted  ' if ex else ''}{f}"
        )

    for row in rows[:top]:
        show(row)
    print("largest files:")
    for row in sorted(rows, key=lambda r: -r[2])[:top]:
        show(row)


if __name__ == "__main__":
    main()
