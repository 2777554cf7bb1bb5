"""Every program of the lint corpus must run to completion.

The corpus is meant to be realistic training code, so each program has to work: a fixture that
crashes would make its lint expectations meaningless. A program is one of

- a single-file fixture (``fixtures/lint/**.py`` outside ``projects/``), run as ``python file.py``;
- a project (``fixtures/lint/projects/<name>/``, its root holds ``pyproject.toml``): its entry point
  ``train.py`` / ``main.py`` at the root runs as ``python train.py`` from the root (the root first on
  ``sys.path``); a ``src/`` layout without a root entry runs as ``python -m <pkg>.train`` from ``src``.
  The project's own modules are purged from ``sys.modules`` afterwards (names like ``models`` and
  ``utils`` repeat across projects);
- a notebook (``fixtures/lint/notebooks/*.ipynb``): its code cells run in order in one namespace, as
  Jupyter would, with IPython line magics (``%...``) and shell lines (``!...``) replaced by ``pass``,
  Python cell magics (``%%time``, ``%%capture``, ...) run as their body, other cell magics skipped.

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
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "fixtures" / "lint"
PROJECTS_DIR = CORPUS / "projects"
NOTEBOOKS_DIR = CORPUS / "notebooks"
FIXTURES = sorted(p for p in CORPUS.rglob("*.py") if PROJECTS_DIR not in p.parents)
PROJECTS = sorted(p.parent for p in PROJECTS_DIR.glob("*/pyproject.toml"))
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
PROGRAMS = FIXTURES + PROJECTS + NOTEBOOKS
# Cell magics whose body is Python that runs (once, for our purposes); any other cell magic
# (%%bash, %%writefile, %%html, ...) is not Python and its cell is skipped.
PYTHON_CELL_MAGICS = {"time", "timeit", "capture", "prun", "debug"}
WORKERS = 2
# A worker that spends this long on one file is stuck (see run_results).
HANG_S = 120.0
# A fixture is meant to take well under ~1.5 s; this only catches a runaway loop or a hang,
# with a wide margin for slow or busy CI machines.
PER_FILE_LIMIT_S = 20.0
# The workers' overall limit grows with the corpus (each file also has its own limit above): only a
# worker that stops making progress altogether is reported, never a busy machine on a large corpus.
TOTAL_TIMEOUT_S = 600 + 6 * (len(PROGRAMS) // WORKERS + 1)


def project_entry(root: Path) -> tuple[Path, str | None]:
    """How a project runs: (working directory, module name) or (entry script, None)."""
    for name in ("train.py", "main.py"):
        if (root / name).is_file():
            return root / name, None
    for name in ("train", "main", "__main__"):
        found = sorted((root / "src").glob(f"*/{name}.py"))
        if found:
            pkg = found[0].parent.name
            return root / "src", pkg if name == "__main__" else f"{pkg}.{name}"
    raise FileNotFoundError(f"{root}: no train.py/main.py at the root and no src/<pkg>/train.py")


def notebook_cells(path: Path) -> list[str]:
    """The code cells of a notebook as Python sources, magics and shell lines masked, line numbers kept."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    sources = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = cell["source"]
        lines = ("".join(src) if isinstance(src, list) else src).split("\n")
        if lines and lines[0].startswith("%%"):
            magic = lines[0][2:].split()[0] if lines[0][2:].strip() else ""
            if magic not in PYTHON_CELL_MAGICS:
                continue
            lines[0] = ""
        masked = []
        for line in lines:
            stripped = line.lstrip()
            if stripped.startswith(("%", "!")):
                masked.append(line[: len(line) - len(stripped)] + "pass")
            else:
                masked.append(line)
        sources.append("\n".join(masked))
    return sources


def _run_project(root: Path) -> None:
    import runpy

    target, module = project_entry(root)
    saved_path = list(sys.path)
    try:
        if module is None:
            os.chdir(root)
            sys.path.insert(0, str(root))
            runpy.run_path(str(target), run_name="__main__")
        else:
            os.chdir(target)
            sys.path.insert(0, str(target))
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.path[:] = saved_path
        for name, mod in list(sys.modules.items()):
            where = getattr(mod, "__file__", None) or next(iter(getattr(mod, "__path__", None) or []), None)
            if where and Path(where).resolve().is_relative_to(root.resolve()):
                del sys.modules[name]


def _run_notebook(path: Path) -> None:
    namespace: dict = {"__name__": "__main__"}
    for index, source in enumerate(notebook_cells(path), 1):
        exec(compile(source, f"{path}:code-cell-{index}", "exec"), namespace)


def _worker(result_path: str, paths: list[str]) -> None:
    """Run each fixture in this interpreter; write {path: {ok, seconds, error}} as JSON."""
    import contextlib
    import io
    import runpy
    import shutil
    import time
    import traceback
    import warnings

    import torch

    torch.set_num_threads(1)
    # The first optimizer built in a process pays a one-off import cost of a few seconds; pay it
    # here so that it is not charged to whichever fixture happens to run first.
    torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    log = open(result_path, "a", encoding="utf-8")  # noqa: SIM115 - one line per event, flushed
    for path in paths:
        log.write(json.dumps({"start": path}) + "\n")
        log.flush()
        workdir = tempfile.mkdtemp(prefix="sentinel-fixture-")
        start = time.perf_counter()
        cpu_start = time.process_time()
        sink = io.StringIO()
        saved_argv = sys.argv
        saved_env = dict(os.environ)
        # Whatever the fixture writes, in its working directory or through `tempfile` (checkpoints,
        # rendezvous stores), goes under workdir and is removed with it: a test run leaves no litter.
        tempfile.tempdir = workdir
        os.environ["TMPDIR"] = workdir  # and processes it spawns
        try:
            os.chdir(workdir)
            sys.argv = [path]  # as `python fixture.py`: scripts with argparse see no arguments
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    target = Path(path)
                    if target.is_dir():
                        _run_project(target)
                    elif target.suffix == ".ipynb":
                        _run_notebook(target)
                    else:
                        runpy.run_path(path, run_name="__main__")
        except BaseException:  # SystemExit included: a fixture must not exit.
            outcome = {"ok": False, "error": traceback.format_exc(), "output": sink.getvalue()[-2000:]}
        else:
            outcome = {"ok": True, "error": None, "output": ""}
        finally:
            sys.argv = saved_argv
            os.chdir(REPO)
            # A fixture's environment (MASTER_PORT, ...) and a process group it left initialized must
            # not leak into the next one: a stale port makes the next rendezvous wait for a peer.
            os.environ.clear()
            os.environ.update(saved_env)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            # only then its files: a process group's store lives in them until it is destroyed
            tempfile.tempdir = None
            shutil.rmtree(workdir, ignore_errors=True)
            # Global autograd state must not leak from one fixture into the next.
            torch.set_grad_enabled(True)
            torch.set_default_dtype(torch.float32)
        outcome["seconds"] = time.perf_counter() - start
        outcome["cpu_seconds"] = time.process_time() - cpu_start
        log.write(json.dumps({"path": path, **outcome}) + "\n")
        log.flush()
    log.close()


def _start_worker(log: Path, paths: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(
        [sys.executable, __file__, str(log), *paths],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_log(log: Path) -> tuple[dict, str | None]:
    """The outcomes a worker logged, and the file it started last without an outcome (None: none)."""
    outcomes: dict = {}
    running = None
    if log.exists():
        text = log.read_text(encoding="utf-8")
        # a line the worker is still writing (a long `output`) has no newline yet: read it next time
        for line in text[: text.rfind("\n") + 1].splitlines():
            event = json.loads(line)
            if "start" in event:
                running = event["start"]
            else:
                outcomes[event.pop("path")] = event
                running = None
    return outcomes, running


class _Worker:
    """One worker interpreter, its log and its share of the programs."""

    def __init__(self, log: Path, paths: list[str]) -> None:
        self.log, self.paths = log, paths
        self.proc = _start_worker(log, paths)
        self.running: str | None = None
        self.since = time.monotonic()

    def poll(self) -> tuple[dict, str | None, bool]:
        """(outcomes so far, the file running now, stuck on it for HANG_S?)"""
        outcomes, running = _read_log(self.log)
        if running != self.running:
            self.running, self.since = running, time.monotonic()
        return outcomes, running, running is not None and time.monotonic() - self.since > HANG_S


@pytest.fixture(scope="module")
def run_results(tmp_path_factory) -> dict:
    """Run every program in a couple of worker interpreters. A worker stuck on one file for
    ``HANG_S`` is killed and the rest of its share goes on in a fresh worker, the stuck file first
    once more (a gloo process group torn down on a loaded machine can deadlock inside PyTorch,
    rarely, and not twice in a row); a file stuck twice is reported as hanging."""
    out_dir = tmp_path_factory.mktemp("fixture-runs")
    paths = [str(p) for p in PROGRAMS]
    deadline = time.monotonic() + TOTAL_TIMEOUT_S
    workers = [_Worker(out_dir / f"w{i}-0.jsonl", paths[i::WORKERS]) for i in range(WORKERS) if paths[i::WORKERS]]
    results: dict = {}
    hung: set[str] = set()
    restarts = 0
    while workers:
        time.sleep(0.5)
        still = []
        for w in workers:
            outcomes, running, stuck = w.poll()
            if w.proc.poll() is None and not stuck:
                if time.monotonic() > deadline:
                    for other in workers:
                        other.proc.kill()
                    pytest.fail(f"fixture workers did not finish within {TOTAL_TIMEOUT_S} s")
                still.append(w)
                continue
            if stuck:
                w.proc.kill()
            output, _ = w.proc.communicate()
            outcomes, running = _read_log(w.log)
            results.update(outcomes)
            rest = [p for p in w.paths if p not in outcomes]
            if not rest:
                continue
            culprit = running or rest[0]
            if not stuck:  # the interpreter died (a fixture that kills it): report that file, go on
                results[culprit] = {"ok": False, "error": f"the worker died:\n{output[-4000:]}", "output": ""}
                rest.remove(culprit)
            elif culprit in hung:
                results[culprit] = {"ok": False, "error": f"stuck for {HANG_S:.0f} s, twice", "output": ""}
                rest.remove(culprit)
            else:
                hung.add(culprit)
            if rest:
                restarts += 1
                still.append(_Worker(out_dir / f"w-restart{restarts}.jsonl", rest))
        workers = still
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


def test_projects_and_notebooks_layout():
    """Projects and notebooks exist, each notebook is nbformat 4 JSON, and every `# expect:` is well formed."""
    assert len(PROJECTS) >= 14, f"only {len(PROJECTS)} projects"
    assert len(NOTEBOOKS) >= 10, f"only {len(NOTEBOOKS)} notebooks"
    for root in PROJECTS:
        project_entry(root)
        assert "[project]" in (root / "pyproject.toml").read_text(encoding="utf-8"), root.name
        for path in root.rglob("*.py"):
            _expectations(path)
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["language"] == "python", path.name
        for cell in nb["cells"]:
            assert cell["cell_type"] in ("code", "markdown"), path.name
            for line in "".join(cell["source"]).splitlines():
                if "expect:" in line:
                    assert EXPECT_RE.search(line), f"{path.name}: malformed expectation comment: {line}"


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: str(p.relative_to(CORPUS)))
def test_fixture_runs(path: Path, run_results: dict) -> None:
    outcome = run_results[str(path)]
    assert outcome["ok"], f"{path.relative_to(REPO)} failed:\n{outcome['error']}\n--- output ---\n{outcome['output']}"
    assert outcome["seconds"] < PER_FILE_LIMIT_S, (
        f"{path.relative_to(REPO)} took {outcome['seconds']:.1f} s (limit {PER_FILE_LIMIT_S} s)"
    )


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
