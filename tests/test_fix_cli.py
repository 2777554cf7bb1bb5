"""`sentinel lint --fix / --diff / --unsafe-fixes`, the cache flags and `sentinel clean`, as a user runs them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BUGGY = textwrap.dedent(
    """
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(3)]
    val_data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(2)]
    history = []
    for epoch in range(2):
        model.train()
        for x, y in data:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            history.append(loss)
        model.eval()
        for x, y in val_data:
            print(nn.functional.mse_loss(model(x), y).item())
    """
).lstrip()


def sentinel(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "sentinel", "lint", *args], cwd=cwd, capture_output=True, text=True, input=stdin, env=env
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (tmp_path / "train.py").write_text(BUGGY)
    return tmp_path


def test_diff_shows_the_safe_fix_and_writes_nothing(project):
    before = (project / "train.py").read_text()
    out = sentinel("--diff", "train.py", cwd=project)
    assert out.returncode == 1
    assert "-        history.append(loss)\n+        history.append(loss.detach())" in out.stdout
    assert "no_grad" not in out.stdout  # SEN004's fix is unsafe: hidden without --unsafe-fixes
    assert "--unsafe-fixes" in out.stderr
    assert (project / "train.py").read_text() == before


def test_fix_writes_atomically_keeps_the_mode_and_reports_what_is_left(project):
    os.chmod(project / "train.py", 0o640)
    out = sentinel("--fix", "--format", "concise", "train.py", cwd=project)
    fixed = (project / "train.py").read_text()
    assert "history.append(loss.detach())" in fixed
    assert stat.S_IMODE((project / "train.py").stat().st_mode) == 0o640
    assert out.returncode == 1  # SEN004 remains (its fix is unsafe)
    assert [line.split(" ")[1] for line in out.stdout.splitlines()] == ["SEN004"]
    assert "Fixed 1 problem(s) in 1 file(s)" in out.stderr
    assert not list(project.glob(".train.py.*"))  # no temporary file left behind
    second = sentinel("--fix", "--format", "concise", "train.py", cwd=project)
    assert second.returncode == 1 and "Fixed" not in second.stderr
    assert (project / "train.py").read_text() == fixed


def test_unsafe_fixes_wrap_the_evaluation_loop_and_the_program_still_runs(project):
    out = sentinel("--fix", "--unsafe-fixes", "train.py", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    fixed = (project / "train.py").read_text()
    assert "    with torch.no_grad():\n        for x, y in val_data:" in fixed
    run = subprocess.run([sys.executable, "train.py"], cwd=project, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_fix_on_stdin_prints_the_fixed_source(project):
    out = sentinel("--fix", "--stdin-filename", "train.py", cwd=project, stdin=BUGGY)
    assert "history.append(loss.detach())" in out.stdout
    assert out.stdout.startswith("import torch")
    assert (project / "train.py").read_text() == BUGGY


def test_warm_cache_gives_the_same_report_and_no_cache_writes_nothing(project):
    cold = sentinel("--format", "json", ".", cwd=project)
    assert (project / ".sentinel_cache" / "CACHEDIR.TAG").exists()
    warm = sentinel("--format", "json", ".", cwd=project)
    assert warm.stdout == cold.stdout and warm.returncode == cold.returncode == 1
    clean = sentinel("--no-cache", "--format", "json", ".", cwd=project)
    assert clean.stdout == cold.stdout
    removed = subprocess.run([sys.executable, "-m", "sentinel", "clean"], cwd=project, capture_output=True, text=True)
    assert removed.returncode == 0 and not (project / ".sentinel_cache").exists()
    sentinel("--no-cache", ".", cwd=project)
    assert not (project / ".sentinel_cache").exists()


def test_fix_on_a_notebook_rewrites_cells_in_place_and_keeps_magics(tmp_path):
    import json

    def code(text: str) -> dict:
        lines = textwrap.dedent(text).strip("\n").split("\n")
        return {
            "cell_type": "code",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": [line + "\n" for line in lines[:-1]] + lines[-1:],
        }

    cells = [
        code("%matplotlib inline\nimport torch\nfrom torch import nn"),
        {"cell_type": "markdown", "metadata": {}, "source": ["## Training"]},
        code(
            """
            model = nn.Linear(4, 1)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            best, best_loss = None, float("inf")
            for x in [torch.randn(8, 4) for _ in range(3)]:
                opt.zero_grad()
                loss = model(x).pow(2).mean()
                loss.backward()
                opt.step()
                if loss.item() < best_loss:
                    best_loss, best = loss.item(), model.state_dict()
            model.load_state_dict(best)
            """
        ),
    ]
    nb = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    path = tmp_path / "train.ipynb"
    path.write_text(json.dumps(nb, indent=1))
    assert sentinel("--diff", "train.ipynb", cwd=tmp_path).returncode == 1
    out = sentinel("--fix", "--format", "concise", "train.ipynb", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    fixed = json.loads(path.read_text())["cells"]
    first = "".join(fixed[0]["source"]).splitlines()
    assert "%matplotlib inline" in first and "import copy" in first and "import torch" in first
    assert fixed[1] == cells[1]
    assert "best = loss.item(), copy.deepcopy(model.state_dict())" in "".join(fixed[2]["source"])
    assert sentinel("--format", "concise", "--no-cache", "train.ipynb", cwd=tmp_path).returncode == 0
