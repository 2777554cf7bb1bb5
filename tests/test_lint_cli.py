"""``sentinel lint`` and ``sentinel rule`` as users and CI scripts drive them: output, exit status, config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from sentinel.cli import main

BUGGY = textwrap.dedent(
    """\
    import torch
    import torch.nn.functional as F
    from torch import nn

    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    for _ in range(5):
        optimizer.zero_grad()
        probs = F.softmax(model(x), dim=1)
        loss = F.cross_entropy(probs, y)
        loss.backward()
        optimizer.step()
    """
)
CLEAN = BUGGY.replace("probs = F.softmax(model(x), dim=1)", "probs = model(x)")
SOFTMAX_MESSAGE = (
    "cross-entropy loss receives softmax probabilities; CrossEntropyLoss/F.cross_entropy apply "
    "log_softmax themselves and expect raw logits (softmax on line 10)"
)


def run(*args: str, cwd: Path | None = None, env: dict | None = None):
    runner = CliRunner(env=env)
    if cwd is not None:
        old = os.getcwd()
        os.chdir(cwd)
        try:
            return runner.invoke(main, list(args), catch_exceptions=False)
        finally:
            os.chdir(old)
    return runner.invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text(BUGGY)
    (tmp_path / "clean.py").write_text(CLEAN)
    return tmp_path


def test_findings_exit_1_with_path_line_column_code_and_message(project):
    result = run("lint", "--format", "concise", str(project / "train.py"))
    assert result.exit_code == 1
    assert result.stdout.strip() == f"{project / 'train.py'}:11:12: SEN001 {SOFTMAX_MESSAGE}"


def test_clean_file_exits_0(project):
    result = run("lint", str(project / "clean.py"))
    assert result.exit_code == 0
    assert "All checks passed!" in result.stdout


def test_text_format_shows_the_source_line_and_a_summary(project):
    result = run("lint", str(project / "train.py"), "--color", "never")
    lines = result.stdout.splitlines()
    assert lines[0] == f"{project / 'train.py'}:11:12 SEN001 {SOFTMAX_MESSAGE}"
    assert lines[1] == "  11 |     loss = F.cross_entropy(probs, y)"
    assert lines[2] == " " * 18 + "^" * 25
    assert lines[-1] == "Found 1 problem in 1 of 1 file."
    assert "\x1b[" not in result.stdout


def test_color_always_emits_ansi_and_no_color_env_disables_it(project):
    assert "\x1b[" in run("lint", str(project / "train.py"), "--color", "always").stdout
    plain = run("lint", str(project / "train.py"), env={"NO_COLOR": "1", "FORCE_COLOR": "1"})
    assert "\x1b[" not in plain.stdout


def test_json_format_is_one_array_with_the_contract_fields(project):
    result = run("lint", "--format", "json", str(project))
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data == [
        {
            "kind": "finding",
            "code": "SEN001",
            "name": "softmax-before-cross-entropy",
            "path": str(project / "train.py"),
            "line": 11,
            "column": 12,
            "end_line": 11,
            "end_column": 37,
            "message": SOFTMAX_MESSAGE,
            "url": "https://github.com/torch-sentinel/torch-sentinel/blob/main/docs/rules/softmax-before-cross-entropy.md",
        }
    ]


def test_json_with_no_findings_is_an_empty_array(project):
    result = run("lint", "--format", "json", str(project / "clean.py"))
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []


def test_github_annotations(project):
    result = run("lint", "--format", "github", str(project / "train.py"))
    path = str(project / "train.py").replace(":", "%3A").replace(",", "%2C")
    assert result.stdout.startswith(
        f"::error title=sentinel (SEN001),file={path},line=11,col=12,endColumn=37,endLine=11::"
    )


@pytest.mark.parametrize(
    ("flags", "status"),
    [
        (["--select", "SEN001"], 1),
        (["--select", "SEN002,SEN003"], 0),
        (["--select", "softmax-before-cross-entropy"], 1),
        (["--ignore", "SEN001"], 0),
        (["--ignore", "SEN00"], 0),
        (["--select", "SEN", "--ignore", "softmax-before-cross-entropy"], 0),
        (["--select", "SEN002", "--extend-select", "SEN001"], 1),
        (["--ignore", "SEN001", "--exit-zero"], 0),
        (["--exit-zero"], 0),
    ],
)
def test_select_and_ignore_accept_codes_prefixes_and_names(project, flags, status):
    assert run("lint", str(project / "train.py"), *flags).exit_code == status


def test_unknown_selector_is_a_usage_error(project):
    result = run("lint", str(project / "train.py"), "--select", "SEN999")
    assert result.exit_code == 2
    assert "unknown rule selector: 'SEN999'" in result.stderr


@pytest.mark.parametrize(
    ("comment", "suppressed"),
    [
        ("  # noqa: SEN001", True),
        ("  # noqa:SEN002, SEN001", True),
        ("  # NOQA", True),
        ("  # noqa: SEN002", False),
        ("  # sentinel: ignore[SEN001]", True),
        ("  # sentinel: ignore[softmax-before-cross-entropy]", True),
        ("  # sentinel: ignore[missing-zero-grad]", False),
        ("  # sentinel: ignore", True),
    ],
)
def test_line_suppressions(tmp_path, comment, suppressed):
    source = BUGGY.replace("loss = F.cross_entropy(probs, y)", "loss = F.cross_entropy(probs, y)" + comment)
    (tmp_path / "t.py").write_text(source)
    assert run("lint", str(tmp_path / "t.py")).exit_code == (0 if suppressed else 1)


def test_file_level_suppression(tmp_path):
    (tmp_path / "a.py").write_text("# sentinel: noqa: SEN001\n" + BUGGY)
    (tmp_path / "b.py").write_text("# sentinel: noqa: SEN002\n" + BUGGY)
    assert run("lint", str(tmp_path / "a.py")).exit_code == 0
    assert run("lint", str(tmp_path / "b.py")).exit_code == 1


def test_pyproject_config_ignore_exclude_and_per_file_ignores(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.sentinel]\nexclude = ["generated"]\n[tool.sentinel.per-file-ignores]\n"legacy_*.py" = ["SEN001"]\n'
    )
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "g.py").write_text(BUGGY)
    (tmp_path / "legacy_train.py").write_text(BUGGY)
    (tmp_path / "train.py").write_text(BUGGY)
    result = run("lint", "--format", "concise", ".", cwd=tmp_path)
    assert result.exit_code == 1
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["train.py"]
    # an excluded file named explicitly is still linted, unless --force-exclude (pre-commit)
    assert run("lint", "generated/g.py", cwd=tmp_path).exit_code == 1
    assert run("lint", "--force-exclude", "generated/g.py", cwd=tmp_path).exit_code == 0
    # --no-config ignores the table
    assert "legacy_train.py" in run("lint", "--no-config", "--format", "concise", ".", cwd=tmp_path).stdout


def test_exclude_patterns_by_name_and_by_path(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.sentinel]\nexclude = ["fixtures", "src/gen"]\n')
    for rel in ("fixtures/a/x.py", "src/gen/y.py", "src/z.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(BUGGY)

    def linted(*args):
        out = run("lint", "--format", "concise", *args, cwd=tmp_path).stdout
        return sorted(line.split(":")[0] for line in out.splitlines())

    assert linted() == ["src/z.py"]
    assert linted("src") == ["src/z.py"]
    # a directory named explicitly is linted even though the config excludes it
    assert linted("fixtures") == ["fixtures/a/x.py"]
    assert linted("src/gen") == ["src/gen/y.py"]
    assert linted("--force-exclude", "src/gen") == []


def test_config_ignore_and_cli_select(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.sentinel]\nignore = ["SEN001"]\n')
    (tmp_path / "train.py").write_text(BUGGY)
    assert run("lint", "train.py", cwd=tmp_path).exit_code == 0
    # CLI --select replaces the config's selection but the config's ignore still applies, as in ruff
    assert run("lint", "train.py", "--select", "SEN001", cwd=tmp_path).exit_code == 0


def test_broken_config_exits_2_with_the_file_named(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.sentinel]\nselect = "SEN001"\nbogus = 1\n')
    (tmp_path / "train.py").write_text(BUGGY)
    result = run("lint", "train.py", cwd=tmp_path)
    assert result.exit_code == 2
    assert "unknown [tool.sentinel] key(s): bogus" in result.stderr
    assert "Traceback" not in result.stderr


def test_default_excludes_skip_virtualenvs_and_caches(tmp_path):
    for d in (".venv/lib", "__pycache__", ".git", "node_modules"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "train.py").write_text(BUGGY)
    (tmp_path / "ok.py").write_text(CLEAN)
    result = run("lint", ".", cwd=tmp_path)
    assert result.exit_code == 0
    assert "(1 file)" in result.stdout


def test_bad_input_is_reported_in_one_line_each_and_loses_nothing(tmp_path):
    (tmp_path / "a_syntax.py").write_text("def broken(:\n    pass\n")
    (tmp_path / "b_latin1.py").write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
    (tmp_path / "c_binary.py").write_bytes(b"\x7fELF\x00\x00\x01")
    (tmp_path / "d_empty.py").write_text("")
    (tmp_path / "e_train.py").write_text(BUGGY)
    (tmp_path / "f_dangling.py").symlink_to(tmp_path / "nowhere.py")
    result = run("lint", "--format", "concise", str(tmp_path), str(tmp_path / "missing.py"))
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [f"{tmp_path / 'e_train.py'}:11:12: SEN001 {SOFTMAX_MESSAGE}"]
    errors = result.stderr.strip().splitlines()
    assert errors == [
        f"error: {tmp_path / 'a_syntax.py'}:1:12: syntax error: invalid syntax",
        f"error: {tmp_path / 'b_latin1.py'}:1: not valid utf-8 text (byte 0xe9) and no encoding declaration",
        f"error: {tmp_path / 'c_binary.py'}: binary file (contains NUL bytes), not Python source",
        f"error: {tmp_path / 'f_dangling.py'}: no such file",
        f"error: {tmp_path / 'missing.py'}: no such file or directory",
    ]
    assert "Traceback" not in result.stderr


def test_syntax_error_in_a_training_file_is_reported_with_its_location(tmp_path):
    (tmp_path / "t.py").write_text(BUGGY + "for x in range(3)\n    pass\n")
    result = run("lint", str(tmp_path / "t.py"))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 't.py'}:14:18: syntax error: expected ':'"
    assert result.stdout.strip() == "No problems found in 0 files. 1 path could not be checked."


def test_pep263_encoding_cookie_is_honoured(tmp_path):
    src = "# -*- coding: latin-1 -*-\n" + BUGGY.replace("import torch\n", "import torch\nname = 'caf\xe9'\n", 1)
    (tmp_path / "t.py").write_bytes(src.encode("latin-1"))
    result = run("lint", "--format", "concise", str(tmp_path / "t.py"))
    assert result.exit_code == 1
    assert ":13:12: SEN001" in result.stdout


def test_parallel_jobs_give_the_same_result_as_one_process(tmp_path):
    for i in range(12):
        (tmp_path / f"m{i:02}.py").write_text(BUGGY if i % 3 == 0 else CLEAN)
    one = run("lint", "--format", "json", "-j", "1", str(tmp_path))
    two = run("lint", "--format", "json", "-j", "2", str(tmp_path))
    assert one.exit_code == two.exit_code == 1
    assert json.loads(one.stdout) == json.loads(two.stdout)
    assert len(json.loads(one.stdout)) == 4


def test_statistics(project):
    result = run("lint", "--statistics", str(project))
    assert result.stdout.strip() == "1\tSEN001\tsoftmax-before-cross-entropy"


def test_rule_command_prints_the_rule_documentation_by_code_or_name():
    by_code = run("rule", "SEN002")
    by_name = run("rule", "missing-zero-grad")
    assert by_code.exit_code == 0
    assert by_code.stdout == by_name.stdout
    assert by_code.stdout.startswith("# missing-zero-grad (SEN002)\n\n## What it does\n")
    assert "## Why is this bad?" in by_code.stdout


def test_rule_all_lists_every_rule_and_json_is_machine_readable():
    from sentinel.rules import all_rules

    static = [r.CODE for r in all_rules()]
    runtime = [f"SEN{n}" for n in range(101, 112)]
    table = run("rule", "--all")
    listed = [line.split()[1] for line in table.stdout.splitlines() if line.startswith("│ SEN")]
    assert listed == static + runtime
    data = json.loads(run("rule", "--all", "--format", "json").stdout)
    # the JSON lists exactly what the table lists, each with its documentation
    assert [d["code"] for d in data] == static + runtime
    assert {"SEN001", "SEN006"} <= set(static)
    assert all(d["explanation"].startswith("## What it does") for d in data)
    assert [d["kind"] for d in data] == ["static"] * len(static) + ["runtime"] * len(runtime)


def test_rule_command_documents_runtime_codes_by_code_or_name():
    by_code = run("rule", "SEN105")
    assert by_code.exit_code == 0
    assert by_code.stdout == run("rule", "non-finite-value").stdout
    assert by_code.stdout.startswith("# non-finite-value (SEN105)\n\n## What it does\n")
    for section in ("## Why is this bad?", "## How it is detected", "## Example", "Use instead:", "## Details"):
        assert section in by_code.stdout
    assert "`stage`" in by_code.stdout and "`module`" in by_code.stdout
    data = json.loads(run("rule", "SEN111", "--format", "json").stdout)
    assert data["name"] == "batch-samples-mixed" and data["kind"] == "runtime"
    assert data["url"].endswith("/docs/rules/batch-samples-mixed.md")


def test_rule_command_errors():
    assert run("rule", "SEN999").exit_code == 2
    assert run("rule").exit_code == 2


def test_lint_never_imports_torch_and_works_without_it(tmp_path):
    """`import sentinel` and `sentinel lint` must run where torch is not installed (pre-commit)."""
    (tmp_path / "train.py").write_text(BUGGY)
    code = textwrap.dedent(
        f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch'")
        sys.meta_path.insert(0, NoTorch())
        import sentinel
        from sentinel.cli import main
        try:
            main(["lint", "--format", "concise", {str(tmp_path / "train.py")!r}])
        except SystemExit as exc:
            assert "torch" not in sys.modules
            print("exit", exc.code)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "exit 1"
    assert ":11:12: SEN001" in proc.stdout


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert "0.1.0" in result.stdout
