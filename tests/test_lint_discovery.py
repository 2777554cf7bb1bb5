"""What ``sentinel lint`` reads: ignore files, stdin, sentinel.toml, broken configuration, the
``--show-files`` / ``--show-settings`` / ``--extend-exclude`` / ``--quiet`` options, empty inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_lint_cli import BUGGY, CLEAN, SOFTMAX_MESSAGE, run


def write(root: Path, rel: str, text: str = BUGGY) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def shown(root: Path, *args: str) -> list[str]:
    result = run("lint", "--show-files", *args, cwd=root)
    assert result.exit_code == 0, result.stderr
    return sorted(Path(line).as_posix() for line in result.stdout.splitlines())


def test_gitignore_in_a_repository_is_respected_and_nested_files_apply_below_them(tmp_path):
    (tmp_path / ".git" / "info").mkdir(parents=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("local_only.py\n")
    (tmp_path / ".gitignore").write_text("generated/\n*_tmp.py\n")
    write(tmp_path, "train.py")
    write(tmp_path, "local_only.py")
    write(tmp_path, "scratch_tmp.py")
    write(tmp_path, "generated/model.py")
    write(tmp_path, "pkg/.gitignore", "old.py\n!keep_tmp.py\n")
    write(tmp_path, "pkg/old.py")
    write(tmp_path, "pkg/keep_tmp.py")
    write(tmp_path, "pkg/new.py")
    write(tmp_path, "other/old.py")  # the nested .gitignore does not apply here
    assert shown(tmp_path) == ["other/old.py", "pkg/keep_tmp.py", "pkg/new.py", "train.py"]
    # linting agrees with --show-files
    out = run("lint", "--format", "concise", cwd=tmp_path).stdout
    assert sorted({line.split(":")[0] for line in out.splitlines()}) == [
        "other/old.py",
        "pkg/keep_tmp.py",
        "pkg/new.py",
        "train.py",
    ]
    # a subdirectory walk still obeys the parent's .gitignore
    assert shown(tmp_path, "pkg") == ["pkg/keep_tmp.py", "pkg/new.py"]
    everything = shown(tmp_path, "--no-respect-gitignore")
    assert "generated/model.py" in everything and "pkg/old.py" in everything and "local_only.py" in everything


def test_ignored_directories_are_pruned_not_walked(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".gitignore").write_text("data/\n")
    write(tmp_path, "data/deep/x.py")
    write(tmp_path, "train.py")
    import sentinel.discovery as discovery

    walked: list[str] = []
    real_walk = discovery.os.walk

    def spy(top, *a, **k):
        for dirpath, dirnames, filenames in real_walk(top, *a, **k):
            walked.append(Path(dirpath).name)
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(discovery.os, "walk", spy)
    assert shown(tmp_path) == ["train.py"]
    assert "data" not in walked and "deep" not in walked


def test_gitignore_outside_a_repository_is_not_used_but_dot_ignore_is(tmp_path):
    (tmp_path / ".gitignore").write_text("a.py\n")
    (tmp_path / ".ignore").write_text("b.py\n")
    for name in ("a.py", "b.py", "c.py"):
        write(tmp_path, name)
    assert shown(tmp_path) == ["a.py", "c.py"]


def test_a_gitignored_file_named_explicitly_is_linted_unless_force_exclude(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".gitignore").write_text("train.py\n")
    write(tmp_path, "train.py")
    assert run("lint", "train.py", cwd=tmp_path).exit_code == 1
    assert run("lint", "--force-exclude", "train.py", cwd=tmp_path).exit_code == 0


def test_respect_gitignore_can_be_turned_off_in_the_configuration(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".gitignore").write_text("gen.py\n")
    (tmp_path / "sentinel.toml").write_text("respect-gitignore = false\n")
    write(tmp_path, "gen.py")
    assert shown(tmp_path) == ["gen.py"]


def test_stdin_with_a_filename_uses_its_config_and_per_file_ignores(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.sentinel.per-file-ignores]\n"legacy/*.py" = ["SEN001"]\n')
    (tmp_path / "legacy").mkdir()
    result = run_stdin(["lint", "-", "--stdin-filename", "src/train.py", "--format", "concise"], tmp_path)
    assert result.exit_code == 1
    assert result.stdout.strip() == f"src/train.py:11:12: SEN001 {SOFTMAX_MESSAGE}"
    # the per-file ignore matches the name given; --stdin-filename alone implies stdin
    assert run_stdin(["lint", "--stdin-filename", "legacy/old.py"], tmp_path).exit_code == 0
    # without a name, stdin is "-"
    plain = run_stdin(["lint", "-", "--format", "json"], tmp_path)
    assert json.loads(plain.stdout)[0]["path"] == "-"


def test_stdin_text_format_shows_the_source_line_and_errors_are_reported(tmp_path):
    result = run_stdin(["lint", "-", "--stdin-filename", "t.py", "--color", "never"], tmp_path)
    assert result.stdout.splitlines()[1] == "  11 |     loss = F.cross_entropy(probs, y)"
    broken = run_stdin(["lint", "-", "--stdin-filename", "t.py"], tmp_path, data="def f(:\n")
    assert broken.exit_code == 2
    assert "error: t.py:1:7: syntax error: invalid syntax" in broken.stderr


def test_stdin_filename_with_paths_warns_that_the_paths_are_ignored(tmp_path):
    write(tmp_path, "other.py", CLEAN)
    result = run_stdin(["lint", "other.py", "--stdin-filename", "t.py"], tmp_path)
    assert result.exit_code == 1
    assert "Ignoring file other.py in favor of standard input." in result.stderr


def test_stdin_excluded_name_with_force_exclude_is_not_linted(tmp_path):
    (tmp_path / "sentinel.toml").write_text('exclude = ["vendored"]\n')
    result = run_stdin(["lint", "--force-exclude", "--stdin-filename", "vendored/x.py"], tmp_path)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert run_stdin(["lint", "--stdin-filename", "vendored/x.py"], tmp_path).exit_code == 1


def run_stdin(args: list[str], cwd: Path, data: str = BUGGY):
    import os

    from click.testing import CliRunner

    from sentinel.cli import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, input=data, catch_exceptions=False)
    finally:
        os.chdir(old)


def test_sentinel_toml_is_read_and_wins_over_pyproject_in_the_same_directory(tmp_path):
    write(tmp_path, "train.py")
    (tmp_path / "pyproject.toml").write_text('[tool.sentinel]\nignore = ["SEN002"]\n')
    assert run("lint", "train.py", cwd=tmp_path).exit_code == 1
    (tmp_path / "sentinel.toml").write_text('ignore = ["SEN001"]\n')
    assert run("lint", "train.py", cwd=tmp_path).exit_code == 0
    settings = run("lint", "--show-settings", "train.py", cwd=tmp_path)
    assert settings.exit_code == 0
    assert f"config: {tmp_path / 'sentinel.toml'}" in settings.stdout
    assert "  SEN001 softmax-before-cross-entropy" not in settings.stdout
    assert "  SEN002 missing-zero-grad" in settings.stdout


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("pyproject.toml", "[tool.sentinel\nselect = 1\n", "not valid TOML"),
        ("sentinel.toml", "select = [\n", "not valid TOML"),
        ("sentinel.toml", "bogus = 1\n", "unknown key(s): bogus"),
        ("sentinel.toml", "select = 3\n", "select must be a list of strings"),
        ("pyproject.toml", "[tool.sentinel]\nrespect-gitignore = 'yes'\n", "respect-gitignore must be true or false"),
        ("pyproject.toml", "[tool]\nsentinel = 3\n", "[tool.sentinel] must be a table"),
    ],
)
def test_broken_configuration_is_reported_with_file_and_reason(tmp_path, name, text, reason):
    write(tmp_path, "train.py")
    (tmp_path / name).write_text(text)
    result = run("lint", "train.py", cwd=tmp_path)
    assert result.exit_code == 2
    assert f"sentinel: configuration error: {tmp_path / name}: " in result.stderr
    assert reason in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_extend_exclude_on_the_command_line(tmp_path):
    write(tmp_path, "a/x.py")
    write(tmp_path, "b/y.py")
    assert shown(tmp_path, "--extend-exclude", "a") == ["b/y.py"]
    assert run("lint", "--extend-exclude", "a,b", cwd=tmp_path).exit_code == 0


def test_quiet_prints_findings_only(tmp_path):
    write(tmp_path, "train.py")
    result = run("lint", "-q", "--color", "never", "train.py", cwd=tmp_path)
    assert result.exit_code == 1
    assert "Found" not in result.stdout
    assert result.stdout.startswith("train.py:11:12 SEN001")
    clean = run("lint", "--quiet", ".", cwd=write(tmp_path, "sub/c.py", CLEAN).parent)
    assert clean.stdout == "" and clean.exit_code == 0


def test_no_files_found_is_a_warning_with_exit_0(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = run("lint", ".", cwd=tmp_path)
    assert result.exit_code == 0
    assert "All checks passed" not in result.stdout
    assert "No Python files or notebooks found under the given path(s)." in result.stderr
    assert json.loads(run("lint", "--format", "json", ".", cwd=tmp_path).stdout) == []


def test_dash_cannot_be_mixed_with_paths(tmp_path):
    write(tmp_path, "a.py", CLEAN)
    result = run_stdin(["lint", "-", "a.py"], tmp_path)
    assert result.exit_code == 2
    assert "cannot mix stdin ('-') with other paths" in result.stderr


def test_show_files_reports_missing_paths_with_exit_2(tmp_path):
    write(tmp_path, "a.py", CLEAN)
    result = run("lint", "--show-files", "a.py", "missing.py", cwd=tmp_path)
    assert result.exit_code == 2
    assert result.stdout.splitlines() == ["a.py"]
    assert "error: missing.py: no such file or directory" in result.stderr


def test_a_named_directory_under_an_excluded_path_reports_findings_in_its_imported_files(tmp_path):
    """`sentinel lint examples/proj` where the config excludes `examples`: every file of the named
    directory is linted, so a bug found from train.py in its engine.py is reported, not dropped as
    "excluded"."""
    (tmp_path / "pyproject.toml").write_text('[tool.sentinel]\nexclude = ["examples"]\n')
    proj = tmp_path / "examples" / "proj"
    proj.mkdir(parents=True)
    (proj / "pyproject.toml").write_text("")
    (proj / "models.py").write_text(
        "import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = nn.Linear(4, 3)\n\n    def forward(self, x):\n        return self.fc(x).softmax(dim=1)\n"
    )
    (proj / "engine.py").write_text(
        "import torch.nn as nn\n\n\ndef train(model, loader, opt):\n    loss_fn = nn.CrossEntropyLoss()\n"
        "    for x, y in loader:\n        opt.zero_grad()\n        loss = loss_fn(model(x), y)\n"
        "        loss.backward()\n        opt.step()\n"
    )
    (proj / "train.py").write_text(
        "import torch\n\nfrom engine import train\nfrom models import Net\n\nmodel = Net()\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "train(model, [(torch.randn(8, 4), torch.randint(0, 3, (8,)))], opt)\n"
    )
    result = run("lint", "--no-cache", "--format", "concise", "examples/proj", cwd=tmp_path)
    assert result.exit_code == 1
    assert [line.split(" ")[:2] for line in result.output.splitlines() if "SEN" in line] == [
        ["examples/proj/engine.py:8:16:", "SEN001"]
    ]
