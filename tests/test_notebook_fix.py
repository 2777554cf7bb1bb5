"""`--fix` on notebooks: every edit stays inside one code cell that still runs on its own, and the
file keeps its formatting (only the modified cells' `source` changes)."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest

from sentinel.notebook import cell_program, load_notebook
from sentinel.notebook_fix import place_edits, splice_sources
from tests.test_fix_cli import sentinel

SETUP = "import torch\nfrom torch import nn\nmodel = nn.Linear(3, 2)\nopt = torch.optim.SGD(model.parameters(), lr=0.1)"
TRAIN = (
    "losses = []\n"
    "for step in range(3):\n"
    "    opt.zero_grad()\n"
    "    loss = model(torch.randn(4, 3)).pow(2).mean()\n"
    "    loss.backward()\n"
    "    opt.step()\n"
    "    losses.append(loss)\n"
)


def code(source: str) -> dict:
    return {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {},
        "outputs": [],
        "source": source.splitlines(keepends=True),
    }


def markdown(source: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": source.splitlines(keepends=True)}


def notebook(*cells: dict) -> dict:
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "language": "python"}},
        "cells": list(cells),
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    return tmp_path


def cell_texts(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"]]


def run_like_jupyter(path: Path) -> None:
    """Each code cell compiled and run on its own, in order, in one namespace (as a kernel does)."""
    namespace: dict = {}
    for number, c in enumerate(json.loads(path.read_text())["cells"], start=1):
        if c["cell_type"] == "code":
            program = cell_program("".join(c["source"]).splitlines())
            assert program is not None
            exec(compile("\n".join(program[1]) + "\n", f"<cell {number}>", "exec"), namespace)


def test_a_decorator_goes_into_the_cell_of_the_function_it_decorates(project):
    # the review's repro: @torch.no_grad() was appended to the previous cell, which Jupyter cannot run
    evaluate = "def evaluate(x):\n    return model(x).argmax(1)"
    loop = "for step in range(3):\n    opt.zero_grad()\n    loss = model(torch.randn(4, 3)).pow(2).mean()\n"
    loop += "    loss.backward()\n    opt.step()\n    print(evaluate(torch.randn(4, 3)))"
    path = project / "mini.ipynb"
    path.write_text(json.dumps(notebook(code(SETUP), markdown("Evaluate"), code(evaluate), code(loop)), indent=1))
    out = sentinel("--fix", "--unsafe-fixes", "mini.ipynb", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    cells = cell_texts(path)
    assert cells[0] == SETUP
    assert cells[2] == "@torch.no_grad()\n" + evaluate
    run_like_jupyter(path)


def test_a_fix_that_cannot_be_placed_is_not_applied_and_is_reported(project):
    # wrapping the loop in `with torch.no_grad():` would re-indent the masked `%time` line
    path = project / "magic.ipynb"
    evaluation = "val_data = [torch.randn(4, 3) for _ in range(2)]\nfor x in val_data:\n    %time\n"
    evaluation += "    print(model(x).sum().item())\n"
    original = json.dumps(notebook(code(SETUP), code(TRAIN.replace("(loss)", "(loss.item())")), code(evaluation)))
    path.write_text(original)
    out = sentinel("--fix", "--unsafe-fixes", "magic.ipynb", cwd=project)
    assert path.read_text() == original
    assert "1 fix(es) not applied" in out.stderr and "Fixed" not in out.stderr
    assert out.returncode == 1 and "SEN004" in out.stdout  # the finding is still reported
    assert "1 fix(es) not applied" in sentinel("--diff", "--unsafe-fixes", "magic.ipynb", cwd=project).stderr


def _nb(*cells: str) -> object:
    return load_notebook(json.dumps(notebook(*(code(c) for c in cells))))


def test_placement_keeps_each_edit_in_one_cell():
    nb = _nb("a = 1\n", "b = 2\n")
    assert place_edits(nb, "a = 1\nc = 3\nb = 2\n") == {1: ["a = 1", "c = 3"]}  # continues cell 1
    assert place_edits(nb, "a = 1\n@dec\nb = 2\n") is None  # its cell 2 would be `@dec\nb = 2`: no def
    nb = _nb("a = 1\n", "def f():\n    pass\n")
    assert place_edits(nb, "a = 1\n@dec\ndef f():\n    pass\n") == {2: ["@dec", "def f():", "    pass"]}
    nb = _nb("a = 1\n", "b = 2\n")
    assert place_edits(nb, "x = 1\ny = 2\nz = 3\n") is None  # one rewrite across two cells
    assert place_edits(nb, "x = [1,\n2]\n") is None  # line by line, but neither cell compiles alone
    assert place_edits(nb, "a = 1\nb = 3\n") == {2: ["b = 3"]}


def test_placement_restores_an_indented_cell_and_its_magics():
    nb = _nb("%matplotlib inline\nimport torch\n", "  for x in y:\n      total += x\n")
    fixed = nb.source.replace("total += x", "total += x.item()")
    assert place_edits(nb, fixed) == {2: ["  for x in y:", "      total += x.item()"]}
    assert place_edits(nb, nb.source.replace("pass  # %matplotlib inline", "pass")) is None


def test_fix_in_an_indented_cell_keeps_its_indentation(project):
    path = project / "indented.ipynb"
    indented = "".join("    " + line for line in TRAIN.splitlines(keepends=True))
    path.write_text(json.dumps(notebook(code(SETUP), code(indented)), indent=1))
    out = sentinel("--fix", "indented.ipynb", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    assert cell_texts(path)[1] == indented.replace("append(loss)", "append(loss.detach())")
    run_like_jupyter(path)


@pytest.mark.parametrize("ensure_ascii", [False, True])
@pytest.mark.parametrize("indent", [2, 4])
def test_fix_changes_only_the_fixed_cells_source_lines(project, indent, ensure_ascii):
    path = project / "colab.ipynb"
    nb = notebook(markdown("# Entraînement"), code(SETUP), code(TRAIN + "print('fini ✓')"))
    nb["metadata"]["colab"] = {"name": "colab.ipynb", "provenance": []}  # keys in the file's own order
    original = json.dumps(nb, indent=indent, ensure_ascii=ensure_ascii)  # no trailing newline, as Colab
    path.write_text(original, encoding="utf-8")
    out = sentinel("--fix", "colab.ipynb", cwd=project)
    assert out.returncode == 0, out.stdout + out.stderr
    fixed = path.read_text(encoding="utf-8")
    changed = [
        line
        for line in difflib.unified_diff(original.splitlines(), fixed.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    pad = " " * indent * 4
    assert changed == [f'-{pad}"    losses.append(loss)\\n",', f'+{pad}"    losses.append(loss.detach())\\n",']
    assert not fixed.endswith("\n")


def test_splice_formats_new_sources_like_the_originals():
    text = (
        '{\r\n  "cells": [\r\n    {"cell_type": "code", "source": []},\r\n'
        '    {"cell_type": "code", "source": "a"}\r\n  ]\r\n}'
    )
    out = splice_sources(text, {1: ["x = 1", "y = 2"], 2: ["b"]})
    assert out == (
        '{\r\n  "cells": [\r\n    {"cell_type": "code", "source": [\r\n      "x = 1\\n",\r\n      "y = 2"\r\n    ]},'
        '\r\n    {"cell_type": "code", "source": "b"}\r\n  ]\r\n}'
    )


def test_fix_on_stdin_treats_a_notebook_as_a_notebook(project):
    # it was linted as Python (notebook JSON parses as a dict display): nothing fixed, exit 0
    original = json.dumps(notebook(code(SETUP), code(TRAIN)), indent=1)
    out = sentinel("--fix", "--stdin-filename", "nb.ipynb", cwd=project, stdin=original)
    assert out.returncode == 0, out.stderr
    fixed = json.loads(out.stdout)
    assert "".join(fixed["cells"][1]["source"]) == TRAIN.replace("append(loss)", "append(loss.detach())")
    assert not (project / "nb.ipynb").exists()
    broken = sentinel("--fix", "--stdin-filename", "nb.ipynb", cwd=project, stdin="{")
    assert broken.returncode == 2 and broken.stdout == "{"


def test_a_notebook_with_a_cell_jupyter_cannot_run_is_left_alone(project):
    # like a .py file that does not parse: reported, never rewritten
    path = project / "broken.ipynb"
    original = json.dumps(notebook(code(SETUP + "\n@torch.no_grad()"), code("def f():\n    pass\n"), code(TRAIN)))
    path.write_text(original)
    out = sentinel("--fix", "broken.ipynb", cwd=project)
    assert out.returncode == 2 and "cell 1:5" in out.stderr
    assert path.read_text() == original
