"""``sentinel probe TARGET``: exit statuses, JSON contract, text output and the user's tracebacks."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sentinel.cli import main
from sentinel.findings import ProbeResult, Report

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "probes"
HEALTHY = str(FIXTURES / "healthy.py")
BUGGY = str(FIXTURES / "buggy.py")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def probe(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, ["probe", *args], env=env, catch_exceptions=False)


def test_healthy_model_exits_0_with_plain_text_when_piped():
    result = probe(f"{HEALTHY}:make_mlp", env={"NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == f"sentinel probe {HEALTHY}:make_mlp  on cpu"
    assert [line.split()[0:2] for line in lines[1:7]] == [
        ["PASS", "devices"],
        ["PASS", "finite"],
        ["PASS", "updates"],
        ["PASS", "initial-loss"],
        ["PASS", "batch-independence"],
        ["PASS", "overfit"],
    ]
    assert lines[-1] == "All probes passed."
    assert result.stderr == ""


def test_findings_exit_1_and_json_is_exactly_the_contract():
    result = probe(f"{BUGGY}:make_inf_in_backward", "--format", "json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert list(data) == ["target", "device", "findings", "probes"]
    assert data["target"] == f"{BUGGY}:make_inf_in_backward"
    assert data["device"] == "cpu"
    [finding] = data["findings"]
    assert list(finding) == ["code", "name", "message", "details"]
    assert (finding["code"], finding["name"]) == ("SEN105", "non-finite-value")
    assert finding["details"] == {
        "stage": "backward",
        "module": "dist",
        "parameter": None,
        "step": 0,
        "op": "SqrtBackward0",
        "value": "inf",
    }
    assert [(p["name"], p["status"]) for p in data["probes"]] == [
        ("devices", "pass"),
        ("finite", "fail"),
        ("updates", "pass"),
        ("initial-loss", "skipped"),
        ("batch-independence", "skipped"),
        ("overfit", "skipped"),
    ]
    assert all(isinstance(p["seconds"], float) for p in data["probes"])


def test_text_output_names_the_finding():
    result = probe(f"{BUGGY}:make_unused_layer", "--color", "never")
    assert result.exit_code == 1
    assert "FAIL    updates" in result.stdout
    assert "SEN102 2 of 6 trainable parameters not updated" in result.stdout
    assert "aux.weight (no-grad), aux.bias (no-grad)" in result.stdout
    assert result.stdout.splitlines()[-1] == "Found 1 problem."


def test_steps_option_caps_the_overfit_probe():
    result = probe(f"{BUGGY}:make_lr_zero", "--steps", "5", "--format", "json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    overfit = next(f for f in data["findings"] if f["code"] == "SEN101")
    assert (overfit["details"]["steps"], overfit["details"]["max_steps"]) == (5, 5)
    assert [f["code"] for f in data["findings"]] == ["SEN102", "SEN101"]


def test_device_mismatch_skips_with_the_reason():
    result = probe(f"{BUGGY}:make_meta_buffer", "--device", "cpu", "--format", "json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert [f["code"] for f in data["findings"]] == ["SEN103"]
    assert data["findings"][0]["details"] == {
        "tensors": [{"name": "scale", "device": "meta", "expected": "cpu"}],
    }
    assert [p["status"] for p in data["probes"]] == ["fail", "skipped", "skipped", "skipped", "skipped", "skipped"]
    assert data["probes"][1]["message"].startswith("not run: SEN103 device-mismatch: scale (meta)")


def test_factory_exception_exits_2_with_the_users_traceback():
    result = probe(f"{BUGGY}:make_factory_raises")
    assert result.exit_code == 2
    assert result.stdout == ""
    err = result.stderr
    assert err.startswith("Traceback (most recent call last):\n")
    assert f'File "{BUGGY}", line' in err and "in make_factory_raises" in err
    assert 'raise FileNotFoundError("data/train.csv")' in err
    assert "sentinel/probes" not in err and "sentinel/cli.py" not in err
    assert err.splitlines()[-1] == (
        f"sentinel probe: the factory {BUGGY}:make_factory_raises raised FileNotFoundError: data/train.csv"
    )


def test_model_exception_exits_2_with_the_users_traceback():
    result = probe(f"{BUGGY}:make_model_raises", "--format", "json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)  # stdout stays valid JSON
    assert [p["status"] for p in data["probes"]] == ["pass", "error", "skipped", "skipped", "skipped", "skipped"]
    err = result.stderr
    assert err.count("Traceback (most recent call last):") == 1
    assert "return self.fc(x)  # 16 features arrive" in err
    assert "sentinel/probes" not in err and "_call_impl" not in err
    assert err.splitlines()[-1] == (
        "sentinel probe: finite: model raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (32x16 and 15x10)"
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("fixtures/probes/nope.py:make", "no such file: fixtures/probes/nope.py"),
        (
            "justaword",
            "bad TARGET 'justaword': expected path/to/file.py:factory, package.module:factory or path/to/train.py",
        ),
        ("model.py:", "bad TARGET 'model.py:': both sides of ':' are needed (e.g. model.py:make)"),
        ("model.py:make-it", "bad TARGET 'model.py:make-it': 'make-it' is not a function name"),
        ("no_such_module_xyz:make", "no module named 'no_such_module_xyz' (is it on sys.path?)"),
        ("missing.py", "no such file: missing.py"),
    ],
)
def test_usage_errors_exit_2_with_one_line(target, message):
    result = probe(target)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"sentinel probe: {message}\n"


def test_missing_factory_lists_the_available_ones():
    result = probe(f"{HEALTHY}:make_nothing")
    assert result.exit_code == 2
    assert result.stderr == (
        f"sentinel probe: {HEALTHY} has no attribute 'make_nothing' (it has: make, make_cnn, make_dict_batch,"
        " make_float16_table, make_frozen, make_mlp, make_mlp_default_optimizer, make_plain_sgd,"
        " make_regression, make_warmup_from_zero)\n"
    )


def test_factory_returning_garbage_exits_2():
    result = probe(f"{BUGGY}:make_not_a_mapping")
    assert result.exit_code == 2
    assert "returned a list; it must return a mapping with 'model', 'loss_fn', 'batch'" in result.stderr


def test_module_target_import_error_and_printing_factory(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def make():\n"
        "    print('hello from the factory')\n"
        "    torch.manual_seed(0)\n"
        "    m = nn.Linear(4, 2)\n"
        "    return {'model': m, 'loss_fn': nn.CrossEntropyLoss(),\n"
        "            'batch': (torch.randn(8, 4), torch.randint(0, 2, (8,)))}\n"
    )
    (tmp_path / "broken.py").write_text("import torch\nx = 1 / 0\ndef make():\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    result = probe("mymodels:make", "--format", "json", "--steps", "20")
    assert json.loads(result.stdout)["target"] == "mymodels:make"  # the print went to stderr
    assert "hello from the factory" in result.stderr
    result = probe("broken:make")
    assert result.exit_code == 2
    assert 'File "' in result.stderr and "x = 1 / 0" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last == "sentinel probe: importing broken raised ZeroDivisionError: division by zero"


def test_extra_arguments_are_only_for_scripts():
    result = probe(f"{HEALTHY}:make_mlp", "--", "--epochs", "3")
    assert result.exit_code == 2
    assert result.stderr == (
        "sentinel probe: extra arguments '--epochs 3' are only passed to training scripts (TARGET = path/to/train.py)\n"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable_is_a_usage_error():
    result = probe(f"{HEALTHY}:make_mlp", "--device", "cuda")
    assert result.exit_code == 2
    assert result.stderr == ("sentinel probe: CUDA is not available on this machine (use --device cpu or auto)\n")


def test_script_target_delegates_to_run_script(tmp_path, monkeypatch):
    script = tmp_path / "train.py"
    script.write_text("print('training')\n")
    calls = []

    def run_script(path, *, steps, device, script_args):
        calls.append((path, steps, device, script_args))
        return Report(target=path, device="cpu", probes=[ProbeResult("watch", "pass", 0.5)])

    fake = types.ModuleType("sentinel.probes.script")
    fake.run_script = run_script
    monkeypatch.setitem(sys.modules, "sentinel.probes.script", fake)
    result = probe(str(script), "--steps", "7", "--format", "json", "--", "--lr", "0.1")
    assert result.exit_code == 0
    assert calls == [(str(script), 7, "auto", ["--lr", "0.1"])]
    assert json.loads(result.stdout)["probes"] == [{"name": "watch", "status": "pass", "seconds": 0.5}]
