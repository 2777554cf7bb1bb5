"""Every program of the lint corpus (fixtures/lint/**.py) must run to completion.

The corpus is meant to be realistic training code, so each file has to be a working program:
a fixture that crashes would make its lint expectations meaningless.

Importing torch costs seconds, so the files are not run one interpreter each. Instead this module
starts a couple of worker interpreters (this same file run as a script); each imports torch once and
executes its share of the fixtures with ``runpy.run_path(path, run_name="__main__")``, recording the
outcome and wall time per file in a JSON file. One parametrized test per fixture then reports that
file's result, so a failure names the file and shows its traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "fixtures" / "lint"
FIXTURES = sorted(CORPUS.rglob("*.py"))
WORKERS = 2
# A fixture is meant to take well under ~1.5 s; this only catches a runaway loop or a hang,
# with a wide margin for slow or busy CI machines.
PER_FILE_LIMIT_S = 20.0
TOTAL_TIMEOUT_S = 600


def _worker(result_path: str, paths: list[str]) -> None:
    """Run each fixture in this interpreter; write {path: {ok, seconds, error}} as JSON."""
    import contextlib
    import io
    import runpy
    import time
    import traceback
    import warnings

    import torch

    torch.set_num_threads(1)
    # The first optimizer built in a process pays a one-off import cost of a few seconds; pay it
    # here so that it is not charged to whichever fixture happens to run first.
    torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    results = {}
    for path in paths:
        workdir = tempfile.mkdtemp(prefix="sentinel-fixture-")
        start = time.perf_counter()
        cpu_start = time.process_time()
        sink = io.StringIO()
        saved_argv = sys.argv
        try:
            os.chdir(workdir)
            sys.argv = [path]  # as `python fixture.py`: scripts with argparse see no arguments
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    runpy.run_path(path, run_name="__main__")
        except BaseException:  # SystemExit included: a fixture must not exit.
            outcome = {"ok": False, "error": traceback.format_exc(), "output": sink.getvalue()[-2000:]}
        else:
            outcome = {"ok": True, "error": None, "output": ""}
        finally:
            sys.argv = saved_argv
            os.chdir(REPO)
            # Global autograd state must not leak from one fixture into the next.
            torch.set_grad_enabled(True)
            torch.set_default_dtype(torch.float32)
        outcome["seconds"] = time.perf_counter() - start
        outcome["cpu_seconds"] = time.process_time() - cpu_start
        results[path] = outcome
    with open(result_path, "w", encoding="utf-8") as fh:
        json.dump(results, fh)


@pytest.fixture(scope="module")
def run_results(tmp_path_factory) -> dict:
    out_dir = tmp_path_factory.mktemp("fixture-runs")
    paths = [str(p) for p in FIXTURES]
    chunks = [paths[i::WORKERS] for i in range(WORKERS)]
    procs = []
    for i, chunk in enumerate(chunks):
        if not chunk:
            continue
        result_file = out_dir / f"worker{i}.json"
        env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.Popen(
            [sys.executable, __file__, str(result_file), *chunk],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append((proc, result_file))
    results: dict = {}
    for proc, result_file in procs:
        try:
            output, _ = proc.communicate(timeout=TOTAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other, _ in procs:
                other.kill()
                other.communicate()
            pytest.fail(f"fixture workers did not finish within {TOTAL_TIMEOUT_S} s (a fixture hangs?)")
        if proc.returncode != 0 or not result_file.exists():
            pytest.fail(f"fixture worker crashed (exit {proc.returncode}):\n{output[-4000:]}")
        results.update(json.loads(result_file.read_text(encoding="utf-8")))
    return results


EXPECT_RE = re.compile(r"#\s*expect:\s*(SEN\d{3}(?:\s*,\s*SEN\d{3})*)\s*$")
RULES = [f"SEN{i:03d}" for i in range(1, 21)]
MIN_BUGGY_PER_RULE, MIN_TRICKY_PER_RULE, MIN_CLEAN = 8, 4, 10
# Catalog II (SEN007-SEN020) corpus was written with at least 6 buggy programs per rule.
MIN_BUGGY_CATALOG_II = 6


def _expectations(path: Path) -> list[tuple[str, int]]:
    found = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = EXPECT_RE.search(line)
        if match:
            found += [(code.strip(), lineno) for code in match.group(1).split(",")]
        elif "expect:" in line:
            raise AssertionError(f"{path.name}:{lineno}: malformed expectation comment: {line.strip()}")
    return found


def test_corpus_layout_and_expectations():
    """Counts per rule, naming, docstrings, and `# expect:` comments where (and only where) bugs are."""
    for sub in ("buggy", "tricky", "clean"):
        files = sorted((CORPUS / sub).glob("*.py"))
        assert files, f"no fixtures in fixtures/lint/{sub}"
        for path in files:
            first = path.read_text(encoding="utf-8").splitlines()[0]
            assert first.startswith('"""') and first.endswith('"""') and len(first) > 6, (
                f"{sub}/{path.name}: first line must be a one-line module docstring"
            )
            expected = _expectations(path)
            if sub == "buggy":
                rule = path.name[:6].upper()
                assert rule in RULES, f"buggy/{path.name}: name must start with senNNN_ of a known rule"
                assert rule in {code for code, _ in expected}, f"buggy/{path.name}: no `# expect: {rule}`"
            else:
                assert not expected, f"{sub}/{path.name} must not carry `# expect:` comments"
    for rule in RULES:
        prefix = rule.lower() + "_"
        n_buggy = len(list((CORPUS / "buggy").glob(prefix + "*.py")))
        n_tricky = len(list((CORPUS / "tricky").glob(prefix + "*.py")))
        minimum = MIN_BUGGY_PER_RULE if rule <= "SEN006" else MIN_BUGGY_CATALOG_II
        assert n_buggy >= minimum, f"only {n_buggy} buggy fixtures for {rule}"
        assert n_tricky >= MIN_TRICKY_PER_RULE, f"only {n_tricky} tricky fixtures for {rule}"
    assert len(list((CORPUS / "clean").glob("*.py"))) >= MIN_CLEAN


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_fixture_runs(path: Path, run_results: dict) -> None:
    outcome = run_results[str(path)]
    assert outcome["ok"], (
        f"{path.relative_to(REPO)} failed:\n{outcome['error']}\n--- output ---\n{outcome['output']}"
    )
    assert outcome["seconds"] < PER_FILE_LIMIT_S, (
        f"{path.relative_to(REPO)} took {outcome['seconds']:.1f} s (limit {PER_FILE_LIMIT_S} s)"
    )


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
