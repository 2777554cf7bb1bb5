"""One-file latency of ``sentinel lint FILE`` (the pre-commit case), cold and with a warm cache, next to
the cost of merely starting Python and importing LibCST; and a whole-directory warm/cold ratio.

    python benchmarks/lint_latency.py FILE [DIR] [--repeat N]

FILE is a real training script inside its project (its imports of the project are followed); "edited"
is the same file with one more line, sent on stdin, after a run that filled the cache; DIR,
when given, is linted whole cold (no cache) and warm (second run on a filled cache). Every figure is
the wall time of a fresh ``python -m sentinel`` process, best of ``--repeat`` runs, measured side by
side in this one run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(cmd: list[str], repeat: int, before=None, stdin: str | None = None) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        t = time.perf_counter()
        subprocess.run(
            cmd, input=stdin, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, check=False
        )
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("dir", type=Path, nargs="?")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    cache_dir = Path(tempfile.mkdtemp(prefix="sentinel-bench-cache-"))

    def clear() -> None:
        shutil.rmtree(cache_dir, ignore_errors=True)

    lint = [py, "-m", "sentinel", "lint", "--exit-zero", "--no-config", "--cache-dir", str(cache_dir)]
    t_python = wall([py, "-c", "pass"], args.repeat)
    t_libcst = wall([py, "-c", "import libcst"], args.repeat)
    t_cold = wall([*lint, "--no-cache", str(args.file)], args.repeat)
    clear()
    wall([*lint, str(args.file)], 1)
    t_warm = wall([*lint, str(args.file)], args.repeat)
    # the pre-commit case after an edit: this file's text changed (sent on stdin, so the checkout is not
    # touched), its imports did not: their indexes come from the cache, the file is analysed afresh
    edited = args.file.read_text(encoding="utf-8") + "\n# edited\n"
    t_edit = wall([*lint, "--stdin-filename", str(args.file), "-"], args.repeat, stdin=edited)
    print(f"python -c pass                 {t_python * 1000:7.0f} ms")
    print(f"python -c 'import libcst'      {t_libcst * 1000:7.0f} ms")
    print(f"sentinel lint FILE (no cache)  {t_cold * 1000:7.0f} ms")
    print(f"sentinel lint FILE (warm)      {t_warm * 1000:7.0f} ms   ({t_warm / t_cold:.2f}x cold)")
    print(f"sentinel lint FILE (edited)    {t_edit * 1000:7.0f} ms   ({t_edit / t_cold:.2f}x cold; imports cached)")
    if args.dir is not None:
        d_cold = wall([*lint, "--no-cache", str(args.dir)], 1)
        clear()
        wall([*lint, str(args.dir)], 1)
        d_warm = wall([*lint, str(args.dir)], max(1, args.repeat // 2))
        print(f"sentinel lint DIR (no cache)   {d_cold:7.2f} s")
        print(f"sentinel lint DIR (warm)       {d_warm:7.2f} s   ({d_warm / d_cold:.3f}x cold)")
    clear()


if __name__ == "__main__":
    main()
