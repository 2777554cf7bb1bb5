"""Generated rule docs stay in sync and every link points at a page that exists; the pre-commit hook
and the GitHub Action run the command lines they declare."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sentinel.ruledocs import DOCS_BASE_URL, all_documented, generate_docs, main
from tests.test_lint_cli import BUGGY
from tests.test_lint_outputs import validate_sarif

REPO = Path(__file__).resolve().parent.parent


def test_generated_rule_docs_are_in_sync():
    stale = [rel for rel, text in generate_docs().items() if _read(REPO / rel) != text]
    assert not stale, f"out of date: {stale}; regenerate with `python -m sentinel.ruledocs`"
    generated = {Path(rel).name for rel in generate_docs()}
    on_disk = {p.name for p in (REPO / "docs" / "rules").glob("*.md")}
    assert on_disk == generated, "stale pages in docs/rules: regenerate with `python -m sentinel.ruledocs`"


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def test_every_rule_url_points_at_a_page_in_this_repository():
    codes = [r.CODE for r in all_documented()]
    assert codes[:1] == ["SEN001"] and "SEN105" in codes and "SEN111" in codes
    for rule in all_documented():
        url = rule.url()
        assert url.startswith(DOCS_BASE_URL)
        page = REPO / "docs" / "rules" / url[len(DOCS_BASE_URL) :]
        assert page.is_file(), url
        assert page.read_text(encoding="utf-8").startswith(f"# {rule.NAME} ({rule.CODE})\n")
    index = (REPO / "docs" / "rules" / "README.md").read_text(encoding="utf-8")
    for rule in all_documented():
        assert f"[{rule.NAME}]({rule.NAME}.md)" in index


def test_regenerating_writes_the_pages_and_removes_stale_ones(tmp_path, capsys):
    (tmp_path / "docs" / "rules").mkdir(parents=True)
    (tmp_path / "docs" / "rules" / "renamed-rule.md").write_text("old")
    assert main([str(tmp_path), "--check"]) == 1
    assert main([str(tmp_path)]) == 0
    assert main([str(tmp_path), "--check"]) == 0
    assert not (tmp_path / "docs" / "rules" / "renamed-rule.md").exists()
    assert (tmp_path / "docs" / "rules" / "non-finite-value.md").is_file()


def test_pre_commit_hook_lints_python_and_notebooks_with_force_exclude():
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["entry"] == "sentinel lint --force-exclude"
    assert hook["language"] == "python"
    assert hook["types_or"] == ["python", "pyi", "jupyter"]
    assert hook["require_serial"] is True


def test_license_matches_pyproject():
    import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["license"] == {"text": "MIT"}
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    # torch is never a base dependency: the pre-commit hook must not download it
    assert not any(dep.startswith("torch") for dep in meta["dependencies"])
    assert "numpy" in meta["optional-dependencies"]["probe"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="the action's steps are bash")
def test_github_action_runs_its_lint_command_and_writes_valid_sarif(tmp_path):
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    steps = action["runs"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("actions/setup-python@") for u in uses)
    assert any(u.startswith("github/codeql-action/upload-sarif@") for u in uses)
    install = next(s for s in steps if "pip install" in s.get("run", ""))
    assert install["env"]["SENTINEL_SOURCE"] == "${{ github.action_path }}"
    lint = next(s for s in steps if s.get("id") == "lint")
    inputs = action["inputs"]
    env = dict(os.environ)
    env.update(
        SENTINEL_PATHS="src",
        SENTINEL_ARGS=inputs["args"]["default"],
        SENTINEL_SARIF=inputs["sarif-file"]["default"],
        GITHUB_OUTPUT=str(tmp_path / "github_output"),
        PYTHONPATH=str(REPO),
    )
    for key, value in lint["env"].items():  # the step maps the action's inputs to these variables
        assert value.startswith("${{ inputs.")
        assert key in env
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "src").mkdir()
    (project / "src" / "train.py").write_text(BUGGY)
    script = f'sentinel() {{ "{sys.executable}" -m sentinel "$@"; }}\nset -e\n{lint["run"]}'
    proc = subprocess.run(["bash", "-c", script], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "github_output").read_text() == "status=1\n"
    log = json.loads((project / "sentinel.sarif").read_text())
    validate_sarif(log)
    (result,) = log["runs"][0]["results"]
    assert result["ruleId"] == "SEN001"
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "src/train.py"
    upload = next(s for s in steps if s.get("uses", "").startswith("github/codeql-action/upload-sarif@"))
    assert upload["with"]["sarif_file"] == "${{ inputs.sarif-file }}"
