"""Machine-readable outputs of ``sentinel lint``: SARIF (against the official 2.1.0 schema), JUnit,
JSON and GitHub annotations, including paths that could not be checked, and ``--output-file``."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from tests.test_lint_cli import BUGGY, CLEAN, SOFTMAX_MESSAGE, run

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())


def validate_sarif(log: dict) -> None:
    jsonschema.Draft4Validator(SCHEMA).validate(log)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository (a `.git` directory is enough) with one buggy, one clean, one broken file."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(BUGGY)
    (tmp_path / "src" / "clean.py").write_text(CLEAN)
    return tmp_path


def sarif(*args: str, cwd: Path):
    result = run("lint", "--format", "sarif", *args, cwd=cwd)
    log = json.loads(result.stdout)
    validate_sarif(log)
    return result, log


def test_sarif_is_valid_and_lists_every_enabled_rule_with_docs(repo):
    from sentinel.rules import all_rules

    result, log = sarif("src", cwd=repo)
    assert result.exit_code == 1
    assert log["version"] == "2.1.0"
    (the_run,) = log["runs"]
    rules = the_run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [r.CODE for r in all_rules()]
    for descriptor, rule in zip(rules, all_rules()):
        assert descriptor["name"] == rule.NAME
        assert descriptor["shortDescription"]["text"] == rule.SUMMARY
        assert descriptor["fullDescription"]["text"] == rule.doc()
        assert descriptor["help"]["text"]
        assert descriptor["helpUri"] == rule.url()
    (res,) = the_run["results"]
    assert res["ruleId"] == "SEN001"
    assert rules[res["ruleIndex"]]["id"] == "SEN001"
    assert res["message"]["text"] == SOFTMAX_MESSAGE
    loc = res["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"] == {"uri": "src/train.py", "uriBaseId": "%SRCROOT%"}
    assert loc["region"] == {"startLine": 11, "startColumn": 12, "endLine": 11, "endColumn": 37}
    assert the_run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == repo.resolve().as_uri() + "/"
    assert the_run["invocations"][0]["executionSuccessful"] is True


def test_sarif_lists_only_the_enabled_rules(repo):
    _, log = sarif("src", "--select", "SEN001,SEN002", cwd=repo)
    assert [r["id"] for r in log["runs"][0]["tool"]["driver"]["rules"]] == ["SEN001", "SEN002"]


def test_sarif_paths_are_relative_to_the_repository_root_from_a_subdirectory(repo):
    _, log = sarif("train.py", cwd=repo / "src")
    uri = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "src/train.py"


def test_sarif_fingerprints_survive_lines_moving_and_tell_twins_apart(repo):
    _, before = sarif("src", cwd=repo)
    (repo / "src" / "train.py").write_text("# a new comment\n\n" + BUGGY)
    _, after = sarif("src", cwd=repo)
    fp_before = before["runs"][0]["results"][0]["partialFingerprints"]
    fp_after = after["runs"][0]["results"][0]["partialFingerprints"]
    assert after["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] == 13
    assert fp_before == fp_after
    # the same buggy loop twice: two findings on identical lines get different fingerprints
    (repo / "src" / "train.py").write_text(BUGGY + "\n" + BUGGY.split("\n", 3)[3])
    _, twice = sarif("src", cwd=repo)
    prints = [r["partialFingerprints"]["sentinel/v1"] for r in twice["runs"][0]["results"]]
    assert len(prints) == 2 and len(set(prints)) == 2
    assert prints[0] == fp_before["sentinel/v1"]


def test_sarif_reports_unreadable_files_as_tool_execution_notifications(repo):
    (repo / "src" / "broken.py").write_text("def broken(:\n    pass\n")
    result, log = sarif("src", cwd=repo)
    assert result.exit_code == 2
    invocation = log["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    (note,) = invocation["toolExecutionNotifications"]
    assert note["level"] == "error"
    assert note["message"]["text"] == "src/broken.py:1:12: syntax error: invalid syntax"
    assert note["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "src/broken.py"
    assert note["locations"][0]["physicalLocation"]["region"] == {"startLine": 1, "startColumn": 12}
    assert [r["ruleId"] for r in log["runs"][0]["results"]] == ["SEN001"]


def test_output_file_receives_the_report_and_stdout_stays_empty(repo):
    out = repo / "reports" / "sentinel.sarif"
    result = run("lint", "src", "--format", "sarif", "-o", str(out), cwd=repo)
    assert result.exit_code == 1
    assert result.stdout == ""
    validate_sarif(json.loads(out.read_text()))
    text_out = repo / "report.txt"
    result = run("lint", "src", "--output-file", str(text_out), "--color", "always", cwd=repo)
    assert result.stdout == ""
    written = text_out.read_text()
    assert "\x1b[" not in written
    assert written.splitlines()[0] == f"src/train.py:11:12 SEN001 {SOFTMAX_MESSAGE}"
    assert written.splitlines()[-1] == "Found 1 problem in 1 of 2 files."


def test_json_lists_unreadable_files_as_error_entries(repo):
    (repo / "src" / "broken.py").write_text("def broken(:\n    pass\n")
    result = run("lint", "--format", "json", "src", "missing.py", cwd=repo)
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert [d["kind"] for d in data] == ["finding", "error", "error"]
    assert data[0]["code"] == "SEN001"
    assert data[1] == {
        "kind": "error",
        "code": None,
        "name": None,
        "path": "missing.py",
        "line": None,
        "column": None,
        "end_line": None,
        "end_column": None,
        "message": "no such file or directory",
        "url": None,
    }
    assert data[2]["path"] == "src/broken.py"
    assert (data[2]["line"], data[2]["column"], data[2]["message"]) == (1, 12, "syntax error: invalid syntax")
    # every element keeps the contract keys, so consumers that read them keep working
    for element in data:
        assert {"code", "name", "path", "line", "column", "end_line", "end_column", "message"} <= set(element)
    # and the error is still on stderr
    assert "error: src/broken.py:1:12: syntax error: invalid syntax" in result.stderr


def test_github_annotations_include_unreadable_files(repo):
    (repo / "src" / "broken.py").write_text("def broken(:\n    pass\n")
    result = run("lint", "--format", "github", "src", cwd=repo)
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        "::error title=sentinel (SEN001),file=src/train.py,line=11,col=12,endColumn=37,endLine=11::"
        f"src/train.py:11:12: SEN001 {SOFTMAX_MESSAGE}",
        "::error title=sentinel (error),file=src/broken.py,line=1,col=12::"
        "src/broken.py:1:12: syntax error: invalid syntax",
    ]


def test_github_annotation_escapes_and_drops_columns_for_multiline_ranges():
    from sentinel.diagnostics import Diagnostic
    from sentinel.lint import FileResult, render_results

    diag = Diagnostic("a,b:c.py", 3, 5, 4, 2, "SEN001", "softmax-before-cross-entropy", "50% wrong\nreally")
    out = render_results([FileResult("a,b:c.py", [diag])], fmt="github")
    assert out == (
        "::error title=sentinel (SEN001),file=a%2Cb%3Ac.py,line=3,endLine=4::a,b:c.py:3:5: SEN001 50%25 wrong%0Areally"
    )


def test_junit_follows_ruffs_layout(repo):
    (repo / "src" / "broken.py").write_text("def broken(:\n    pass\n")
    result = run("lint", "--format", "junit", "src", cwd=repo)
    assert result.exit_code == 2
    root = ET.fromstring(result.stdout)
    assert root.tag == "testsuites"
    assert (root.get("failures"), root.get("errors")) == ("1", "1")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert sorted(suites) == ["src/broken.py", "src/train.py"]
    (case,) = suites["src/train.py"].findall("testcase")
    assert (case.get("name"), case.get("classname"), case.get("line"), case.get("column")) == (
        "sentinel.SEN001",
        "src/train.py",
        "11",
        "12",
    )
    failure = case.find("failure")
    assert failure.get("message") == SOFTMAX_MESSAGE
    assert failure.text == f"line 11, col 12, {SOFTMAX_MESSAGE}"
    (err_case,) = suites["src/broken.py"].findall("testcase")
    assert err_case.find("error").text == "src/broken.py:1:12: syntax error: invalid syntax"


def test_junit_clean_run_is_one_passing_testcase(repo):
    result = run("lint", "--format", "junit", "src/clean.py", cwd=repo)
    assert result.exit_code == 0
    root = ET.fromstring(result.stdout)
    cases = root.findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == ["No errors found"]
    assert root.find("testsuite/testcase/failure") is None


def test_findings_in_other_files_are_grouped_deduplicated_and_sorted_globally(tmp_path):
    """Project-aware analysis may locate a finding in an imported file: reporters must not assume one
    path per linted file, and the same finding reached from two files is reported once."""
    from sentinel.diagnostics import Diagnostic
    from sentinel.lint import FileResult, build_report
    from sentinel.reporters import get_reporter

    shared = Diagnostic("models.py", 4, 1, 4, 9, "SEN001", "softmax-before-cross-entropy", "m")
    a = FileResult("b_train.py", [Diagnostic("b_train.py", 9, 1, 9, 5, "SEN002", "missing-zero-grad", "z"), shared])
    b = FileResult("a_train.py", [shared])
    report = build_report([a, b], root=tmp_path)
    assert [(d.path, d.line) for d in report.diagnostics] == [("b_train.py", 9), ("models.py", 4)]
    assert report.files_checked == 2
    junit = ET.fromstring(get_reporter("junit").render(report))
    assert [s.get("name") for s in junit.findall("testsuite")] == ["b_train.py", "models.py"]
    assert len(json.loads(get_reporter("json").render(report))) == 2
    log = json.loads(get_reporter("sarif").render(report))
    validate_sarif(log)
    assert len(log["runs"][0]["results"]) == 2


def test_sarif_path_outside_the_root_is_an_absolute_file_uri(repo, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "far.py"
    outside.write_text(BUGGY)
    _, log = sarif(str(outside), cwd=repo)
    location = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": outside.resolve().as_uri()}
