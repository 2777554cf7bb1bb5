"""The lint cache: warm runs reuse findings exactly, and any change to a file or an import is seen."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import sentinel.parse
from sentinel import engine
from sentinel.engine import check_source
from sentinel.rules import all_rules

MODELS = textwrap.dedent(
    """
    import torch.nn as nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x).softmax(dim=1)
    """
).lstrip()

TRAIN = textwrap.dedent(
    """
    import torch
    import torch.nn as nn
    from models import Net

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(4, 4), torch.randint(0, 3, (4,))) for _ in range(3)]
    for x, y in loader:
        opt.zero_grad()
        loss = nn.CrossEntropyLoss()(model(x), y)
        loss.backward()
        opt.step()
    """
).lstrip()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "train.py").write_text(TRAIN)
    engine._PROJECTS.clear()  # a fresh process, as two pre-commit runs are
    return tmp_path


def run(root: Path) -> list[tuple[str, str, int, str]]:
    engine._PROJECTS.clear()
    path = root / "train.py"
    found = check_source(path.read_text(), str(path), cache=True)
    return [(d.code, Path(d.path).name, d.line, d.message) for d in found]


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = sentinel.parse.parse

    def counting(source: str):
        seen.append(source)
        return real(source)

    monkeypatch.setattr(sentinel.parse, "parse", counting)
    return seen


def test_a_warm_run_reports_the_same_findings_without_parsing(project, parses):
    cold = run(project)
    assert [c[:3] for c in cold] == [("SEN001", "train.py", 10)]
    assert len(parses) == 1
    warm = run(project)
    assert warm == cold
    assert len(parses) == 1  # nothing parsed the second time


def test_an_edited_file_is_analysed_again(project, parses):
    run(project)
    (project / "train.py").write_text(TRAIN.replace("model(x), y", "model(x).log(), y"))
    assert run(project) == []
    assert len(parses) == 2


def test_an_edited_import_invalidates_its_importers(project):
    assert [c[0] for c in run(project)] == ["SEN001"]
    (project / "models.py").write_text(MODELS.replace(".softmax(dim=1)", ""))
    assert run(project) == []


def test_the_cache_directory_is_tagged_and_ignored_by_git(project):
    run(project)
    cache = project / ".sentinel_cache"
    assert (cache / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert (cache / ".gitignore").read_text().splitlines()[-1] == "*"


def test_other_rules_or_a_corrupt_entry_are_misses(project, parses):
    run(project)
    engine._PROJECTS.clear()
    path = project / "train.py"
    others = [r for r in all_rules() if r.CODE != "SEN001"]
    assert check_source(path.read_text(), str(path), others, cache=True) == []
    assert len(parses) == 2
    for entry in (project / ".sentinel_cache").rglob("results/*.json"):
        entry.write_text("{not json")
    assert [c[0] for c in run(project)] == ["SEN001"]
    assert len(parses) == 3


def test_a_read_only_project_still_lints(project, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert [c[0] for c in run(project)] == ["SEN001"]
