"""Notebooks: IPython syntax masked, findings located by cell in every format, config applies, and a
file that only pretends to be a notebook is an input error."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sentinel.notebook import NotebookError, load_notebook, mask_ipython
from tests.test_lint_cli import SOFTMAX_MESSAGE, run
from tests.test_lint_outputs import validate_sarif

SETUP = "import torch\nimport torch.nn.functional as F\nfrom torch import nn\n%matplotlib inline\n"
MODEL = (
    "model = nn.Linear(4, 3)\n"
    "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
    "x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))\n"
    "!pip install tqdm\n"
)
LOOP = (
    "for _ in range(5):\n"
    "    optimizer.zero_grad()\n"
    "    %time probs = F.softmax(model(x), dim=1)\n"
    "    probs = F.softmax(model(x), dim=1)\n"
    "    loss = F.cross_entropy(probs, y)\n"
    "    loss.backward()\n"
    "    optimizer.step()\n"
)


def cell(kind: str, source: str, **meta) -> dict:
    out = {"cell_type": kind, "metadata": meta, "source": source.splitlines(keepends=True)}
    if kind == "code":
        out.update(execution_count=None, outputs=[])
    return out


def notebook(*cells: dict, language: str = "python") -> str:
    return json.dumps(
        {
            "cells": list(cells),
            "metadata": {"kernelspec": {"name": "python3", "language": language}},
            "nbformat": 4,
            "nbformat_minor": 5,
        },
        indent=1,
    )


BUGGY_NB = notebook(
    cell("markdown", "# Training\nSome words."),
    cell("code", SETUP),
    cell("code", "%%time\nthis is not python at all\n"),
    cell("code", MODEL),
    cell("markdown", "## Loop"),
    cell("code", LOOP),
)


@pytest.fixture
def nb(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()
    path = tmp_path / "train.ipynb"
    path.write_text(BUGGY_NB)
    return path


def test_masking_keeps_line_count_and_statement_starts_only():
    lines = [
        "%load_ext autoreload",
        "files = !ls",
        "t = %timeit -o f()",
        "x = (1",
        "     % 2)",
        "model?",
        "?model",
        "s = '''",
        "!not a shell line inside a string",
        "'''",
        "!echo a \\",
        "  continued",
        "if True:",
        "    !ls",
    ]
    masked = mask_ipython(lines)
    assert len(masked) == len(lines)
    assert masked[0] == "pass  # %load_ext autoreload"
    assert masked[1] == "pass  # files = !ls"
    assert masked[2] == "pass  # t = %timeit -o f()"
    assert masked[3:5] == ["x = (1", "     % 2)"]
    assert masked[5] == "pass  # model?" and masked[6] == "pass  # ?model"
    assert masked[8] == "!not a shell line inside a string"
    assert masked[10:12] == ["pass  # !echo a \\", "  # continued"]
    assert masked[13] == "    pass  # !ls"
    import ast

    ast.parse("\n".join(masked))


def test_cells_map_back_counting_markdown_and_skipping_cell_magics():
    nb = load_notebook(BUGGY_NB)
    # cell 3 (%%time) is skipped entirely; markdown cells still count in the numbering
    assert nb.source.count("\n") == 4 + 4 + 7
    assert nb.locate(1) == (2, 1)
    assert nb.locate(5) == (4, 1)
    assert nb.locate(9) == (6, 1)
    assert nb.locate(13) == (6, 5)
    assert nb.cell_line(6, 5) == "    loss = F.cross_entropy(probs, y)"


def test_notebook_findings_are_located_by_cell_in_text_concise_and_json(nb):
    concise = run("lint", "--format", "concise", "train.ipynb", cwd=nb.parent)
    assert concise.exit_code == 1
    message = SOFTMAX_MESSAGE.replace("(softmax on line 10)", "(softmax on line 4)")
    assert concise.stdout.strip() == f"train.ipynb:cell 6:5:12: SEN001 {message}"
    text = run("lint", "--color", "never", "train.ipynb", cwd=nb.parent).stdout.splitlines()
    assert text[0].startswith("train.ipynb:cell 6:5:12 SEN001 ")
    assert text[1] == "   5 |     loss = F.cross_entropy(probs, y)"
    data = json.loads(run("lint", "--format", "json", "train.ipynb", cwd=nb.parent).stdout)
    assert [(d["cell"], d["line"], d["column"], d["end_line"], d["end_column"]) for d in data] == [(6, 5, 12, 5, 37)]


def test_notebook_in_github_junit_and_sarif(nb):
    gh = run("lint", "--format", "github", "train.ipynb", cwd=nb.parent).stdout.strip()
    assert gh.startswith("::error title=sentinel (SEN001),file=train.ipynb::train.ipynb:cell 6:5:12: SEN001 ")
    junit = ET.fromstring(run("lint", "--format", "junit", "train.ipynb", cwd=nb.parent).stdout)
    assert junit.find("testsuite/testcase/failure").text.startswith("cell 6, line 5, col 12, ")
    log = json.loads(run("lint", "--format", "sarif", "train.ipynb", cwd=nb.parent).stdout)
    validate_sarif(log)
    (result,) = log["runs"][0]["results"]
    assert result["properties"] == {"cell": 6}
    assert result["message"]["text"].startswith("cell 6: cross-entropy loss receives softmax")
    loc = result["locations"][0]
    assert loc["physicalLocation"]["region"]["startLine"] == 5
    assert loc["logicalLocations"][0]["fullyQualifiedName"] == "train.ipynb:cell 6"


def test_related_lines_in_messages_are_cell_coordinates():
    nb = load_notebook(notebook(cell("code", SETUP), cell("code", MODEL), cell("code", LOOP)))
    assert nb.relocate_message("m (softmax on line 12)", 3) == "m (softmax on line 4)"
    assert nb.relocate_message("m (softmax on line 2)", 3) == "m (softmax in cell 1, line 2)"
    assert nb.relocate_message("no related line", 3) == "no related line"


def test_noqa_inside_a_cell_and_per_file_ignores_and_excludes_apply(nb):
    flagged = "loss = F.cross_entropy(probs, y)"
    suppressed = BUGGY_NB.replace(flagged, flagged + "  # noqa: SEN001")
    (nb.parent / "quiet.ipynb").write_text(suppressed)
    assert run("lint", "quiet.ipynb", cwd=nb.parent).exit_code == 0
    (nb.parent / "pyproject.toml").write_text('[tool.sentinel.per-file-ignores]\n"*.ipynb" = ["SEN001"]\n')
    assert run("lint", "train.ipynb", cwd=nb.parent).exit_code == 0
    (nb.parent / "pyproject.toml").write_text('[tool.sentinel]\nextend-exclude = ["*.ipynb"]\n')
    result = run("lint", ".", cwd=nb.parent)
    assert "No Python files or notebooks found" in result.stderr


def test_a_directory_of_notebooks_is_discovered(nb):
    (nb.parent / "sub").mkdir()
    clean = BUGGY_NB.replace("    probs = F.softmax(model(x), dim=1)\\n", "    probs = model(x)\\n")
    assert clean != BUGGY_NB
    (nb.parent / "sub" / "clean.ipynb").write_text(clean)
    result = run("lint", "--color", "never", ".", cwd=nb.parent)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1] == "Found 1 problem in 1 of 2 files."
    only_clean = run("lint", "--color", "never", "sub", cwd=nb.parent)
    assert only_clean.exit_code == 0
    assert only_clean.stdout.strip() == "All checks passed! (1 file)"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("import torch\n", "not a valid notebook: invalid JSON at line 1 column 1: Expecting value"),
        ('{"metadata": {}}', "not a valid notebook: no 'cells' list (only nbformat 4 notebooks are supported)"),
        ("[1, 2]", "not a valid notebook: the top level is not a JSON object"),
    ],
)
def test_a_file_that_is_not_a_notebook_is_an_input_error(tmp_path, content, reason):
    (tmp_path / "bad.ipynb").write_text(content)
    result = run("lint", "bad.ipynb", cwd=tmp_path)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: bad.ipynb: {reason}"
    data = json.loads(run("lint", "--format", "json", "bad.ipynb", cwd=tmp_path).stdout)
    assert data[0]["kind"] == "error" and data[0]["message"] == reason


def test_syntax_error_in_a_cell_is_reported_in_cell_coordinates(tmp_path):
    (tmp_path / "s.ipynb").write_text(notebook(cell("markdown", "x"), cell("code", "a = 1\n"), cell("code", "b = (\n")))
    result = run("lint", "--format", "json", "s.ipynb", cwd=tmp_path)
    assert result.exit_code == 2
    (err,) = json.loads(result.stdout)
    assert (err["kind"], err["cell"], err["line"]) == ("error", 3, 1)
    assert "error: s.ipynb:cell 3:1:" in result.stderr


def test_non_python_notebooks_and_cells_are_skipped(tmp_path):
    r_nb = notebook(cell("code", "library(ggplot2)\nx <- c(1, 2)\n"), language="R")
    (tmp_path / "r.ipynb").write_text(r_nb)
    mixed = notebook(cell("code", "SELECT * FROM t;\n", vscode={"languageId": "sql"}), cell("code", "x = 1\n"))
    (tmp_path / "mixed.ipynb").write_text(mixed)
    assert run("lint", "r.ipynb", "mixed.ipynb", cwd=tmp_path).exit_code == 0


def test_load_notebook_rejects_non_text_sources():
    with pytest.raises(NotebookError):
        load_notebook(json.dumps({"cells": [{"cell_type": "code", "source": [1, 2]}]}))


def test_stdin_notebook(nb):
    from click.testing import CliRunner

    from sentinel.cli import main

    result = CliRunner().invoke(
        main, ["lint", "--stdin-filename", "from_editor.ipynb", "--format", "concise"], input=BUGGY_NB
    )
    assert result.exit_code == 1
    assert result.stdout.startswith("from_editor.ipynb:cell 6:5:12: SEN001 ")


def _indented(text: str, margin: str = "    ") -> str:
    return "".join(margin + line if line.strip() else line for line in text.splitlines(keepends=True))


def test_an_indented_cell_is_dedented_as_ipython_runs_it_and_columns_point_into_the_original(tmp_path):
    # IPython removes the indentation all lines of a cell share (a block pasted from a function body)
    pasted = notebook(cell("code", SETUP), cell("code", MODEL), cell("code", "\n" + _indented(LOOP) + "\n  \n"))
    (tmp_path / "p.ipynb").write_text(pasted)
    concise = run("lint", "--format", "concise", "p.ipynb", cwd=tmp_path)
    assert concise.exit_code == 1, concise.stdout + concise.stderr
    assert concise.stdout.startswith("p.ipynb:cell 3:6:16: SEN001 ")  # `F.cross_entropy(` at column 16
    (finding,) = json.loads(run("lint", "--format", "json", "p.ipynb", cwd=tmp_path).stdout)
    original = load_notebook(pasted).cell_line(3, 6)
    assert original[finding["column"] - 1 : finding["end_column"] - 1].startswith("F.cross_entropy(")
    text = run("lint", "--color", "never", "p.ipynb", cwd=tmp_path).stdout.splitlines()
    assert text[1].endswith(original) and text[2].index("^") == text[1].index("F.cross_entropy")


def test_a_syntax_error_in_an_indented_cell_is_located_in_the_original_text(tmp_path):
    (tmp_path / "s.ipynb").write_text(notebook(cell("code", "  a = 1\n  b = (1,\n")))
    result = run("lint", "--format", "json", "s.ipynb", cwd=tmp_path)
    assert result.exit_code == 2
    (err,) = json.loads(result.stdout)
    assert (err["cell"], err["line"], err["column"]) == (1, 2, 7)  # the '(' in "  b = (1,"


def test_a_stray_space_before_a_def_is_removed_as_ipython_does_and_later_cells_are_linted(tmp_path):
    # IPython strips the first line's indentation from every line that has it: ` def f():` runs
    helper = " def scale(x):\n    return 2 * x\n\nprint(scale(1))\n"
    (tmp_path / "h.ipynb").write_text(
        notebook(cell("code", helper), cell("code", SETUP), cell("code", MODEL), cell("code", LOOP))
    )
    concise = run("lint", "--format", "concise", "h.ipynb", cwd=tmp_path)
    assert concise.exit_code == 1, concise.stdout + concise.stderr
    assert concise.stdout.startswith("h.ipynb:cell 4:")
    assert " SEN001 " in concise.stdout


def test_unequal_indentation_is_still_a_syntax_error_as_in_ipython(tmp_path):
    (tmp_path / "s.ipynb").write_text(notebook(cell("code", "    a = 1\n  b = 2\n")))
    assert run("lint", "s.ipynb", cwd=tmp_path).exit_code == 2


@pytest.mark.parametrize(
    "line",
    ["torch.*Tensor?", "obj??", "?obj", "??obj", "np.sum?", "a[0]?", "  model.forward?  ", "%timeit?"],
)
def test_help_lines_are_masked(line):
    (masked,) = mask_ipython([line])
    assert masked.strip() == f"pass  # {line.strip()}"


@pytest.mark.parametrize("line", ["x = 1  # why?", "print('what?')", "# really?", "s = '''is it?", "f(a,"])
def test_python_lines_ending_near_a_question_mark_are_kept(line):
    assert mask_ipython([line]) == [line]


def test_public_notebook_cells_that_ipython_runs_are_not_syntax_errors(tmp_path):
    # the cells a review found reported as syntax errors (pytorch-deep-learning, NYU-DLSP20)
    cells = [
        cell("code", "import torch"),
        cell("code", ' # Make sure we have a GPU\n device = "cuda" if torch.cuda.is_available() else "cpu"\n device'),
        cell("code", " # Number of parameters in pretrained ViT\n num_params = 85,800,963\n num_params"),
        cell("code", "# What about all `*Tensor`s?\n# Press <esc> to get out of help\ntorch.*Tensor?"),
    ]
    (tmp_path / "t.ipynb").write_text(notebook(*cells))
    result = run("lint", "t.ipynb", cwd=tmp_path)
    assert result.exit_code == 0, result.stdout + result.stderr


def test_a_cell_magic_after_blank_lines_or_indentation_is_still_a_cell_magic(tmp_path):
    nb = load_notebook(notebook(cell("code", "\n  %%bash\n  echo hi\n"), cell("code", "x = 1\n")))
    assert nb.source == "x = 1\n" and nb.locate(1) == (2, 1)


def test_a_cell_that_only_parses_joined_to_the_next_is_a_syntax_error(tmp_path):
    # Jupyter runs cells one by one: a decorator closing a cell breaks it, whatever the next cell holds
    cells = [cell("code", "import torch\nx = 1\n@torch.no_grad()"), cell("code", "def f():\n    return 1\n")]
    (tmp_path / "d.ipynb").write_text(notebook(*cells))
    result = run("lint", "--format", "json", "d.ipynb", cwd=tmp_path)
    assert result.exit_code == 2
    (err,) = json.loads(result.stdout)
    assert (err["kind"], err["cell"], err["line"]) == ("error", 1, 3)
    assert err["message"] == "syntax error: invalid syntax (the cell does not run on its own); later cells not analysed"
    (tmp_path / "p.ipynb").write_text(notebook(cell("code", "x = (1,\n"), cell("code", "  2)\n")))
    assert run("lint", "p.ipynb", cwd=tmp_path).exit_code == 2


def test_the_cells_before_a_broken_cell_are_still_linted(tmp_path):
    # a course template: a placeholder cell after the training loop, another after it
    cells = [
        cell("code", SETUP),
        cell("code", MODEL),
        cell("code", LOOP),
        cell("code", "def accuracy(model, x, y):\n    # your code here\n"),
        cell("code", "preds = <YOUR CODE>\n"),
    ]
    (tmp_path / "t.ipynb").write_text(notebook(*cells))
    result = run("lint", "--format", "json", "t.ipynb", cwd=tmp_path)
    assert result.exit_code == 2
    finding, err = json.loads(result.stdout)
    assert (finding["kind"], finding["code"], finding["cell"], finding["line"]) == ("finding", "SEN001", 3, 5)
    # the error is in the cell whose `def` has no body, not in the next cell where the parser stops
    assert (err["kind"], err["cell"], err["line"]) == ("error", 4, 2)
    tail = "(the cell does not run on its own); later cells not analysed (1 more do not compile)"
    assert err["message"].endswith(tail)


def test_a_cell_in_a_newer_python_grammar_is_not_a_syntax_error(tmp_path):
    # PEP 695 generics (Python 3.12): CPython 3.11 cannot compile the cell, LibCST reads it
    generic = cell("code", "def first[T](items: list[T]) -> T:\n    return items[0]\n")
    (tmp_path / "g.ipynb").write_text(notebook(cell("code", SETUP), generic, cell("code", MODEL), cell("code", LOOP)))
    result = run("lint", "--format", "json", "g.ipynb", cwd=tmp_path)
    assert result.exit_code == 1, result.stdout + result.stderr
    (finding,) = json.loads(result.stdout)
    assert (finding["kind"], finding["code"], finding["cell"], finding["line"]) == ("finding", "SEN001", 4, 5)


def test_cells_after_a_broken_cell_are_not_analysed(tmp_path):
    # the broken cell defines what later cells use: analysing them without it would guess
    broken = cell("code", "class Net(<YOUR CODE>):\n    pass\n")
    cells = [cell("code", SETUP), broken, cell("code", MODEL), cell("code", LOOP)]
    (tmp_path / "t.ipynb").write_text(notebook(*cells))
    result = run("lint", "--format", "json", "t.ipynb", cwd=tmp_path)
    assert result.exit_code == 2
    (err,) = json.loads(result.stdout)
    assert (err["kind"], err["cell"], err["line"]) == ("error", 2, 1)


def test_cells_are_judged_as_ipython_compiles_them(tmp_path):
    """Top-level `await` runs in IPython, so it is no syntax error; `return` outside a function does
    not, wherever the joined program would accept it."""
    awaiting = notebook(cell("code", "import asyncio\nawait asyncio.sleep(0)\n"), cell("code", "x = 1\n"))
    (tmp_path / "a.ipynb").write_text(awaiting)
    assert run("lint", "a.ipynb", cwd=tmp_path).exit_code == 0
    (tmp_path / "r.ipynb").write_text(notebook(cell("code", "x = 1\nreturn x\n")))
    result = run("lint", "--format", "json", "r.ipynb", cwd=tmp_path)
    assert result.exit_code == 2
    (err,) = json.loads(result.stdout)
    assert (err["cell"], err["line"]) == (1, 2) and "outside function" in err["message"]
