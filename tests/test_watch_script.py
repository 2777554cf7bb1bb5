"""``sentinel probe path/to/train.py``: unmodified training scripts under the loop monitor.

The scripts are in fixtures/watch/. Most tests call :func:`sentinel.probes.script.run_script`
in-process or the CLI through click's runner; one runs the real ``sentinel`` command.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch.nn.modules import module as module_mod
from torch.optim import optimizer as optimizer_mod

from sentinel.cli import main
from sentinel.probes.script import run_script

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "watch"


def fixture(name: str) -> str:
    return str((FIXTURES / name).relative_to(ROOT)) if Path.cwd() == ROOT else str(FIXTURES / name)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    hooks = (len(module_mod._global_forward_hooks), len(optimizer_mod._global_optimizer_pre_hooks))
    argv, path, main_mod = list(sys.argv), list(sys.path), sys.modules["__main__"]
    yield
    assert (len(module_mod._global_forward_hooks), len(optimizer_mod._global_optimizer_pre_hooks)) == hooks
    assert sys.argv == argv and sys.path == path and sys.modules["__main__"] is main_mod
    assert "watch_helper_models" not in sys.modules


def run(name: str, steps: int | None = 10, args: list[str] | None = None):
    out = io.StringIO()
    report = run_script(str(FIXTURES / name), steps=steps, device="auto", script_args=args or [], stdout=out)
    return report, out.getvalue()


def found(report) -> list[tuple[str, dict]]:
    return [(f.code, f.details) for f in report.findings]


# ------------------------------------------------------------------------------ every fixture

EXPECTED = {
    "missing_zero_grad.py": [("SEN106", {"step": 1})],
    "unused_layer.py": [
        (
            "SEN102",
            {
                "parameters": [
                    {"name": "extra.weight", "reason": "no-grad"},
                    {"name": "extra.bias", "reason": "no-grad"},
                ]
            },
        ),
    ],
    "head_not_in_optimizer.py": [
        (
            "SEN102",
            {
                "parameters": [
                    {"name": "head.weight", "reason": "not-in-optimizer"},
                    {"name": "head.bias", "reason": "not-in-optimizer"},
                ]
            },
        ),
    ],
    "nan_mid_training.py": [
        (
            "SEN105",
            {
                "stage": "forward",
                "module": "norm",
                "parameter": None,
                "step": 5,
                "value": "nan",
                "indices": [3],
            },
        ),
    ],
    "eval_without_eval_mode.py": [("SEN107", {"modules": ["1", "3"]})],
    "losses_append.py": [("SEN108", {"steps": 9})],
    "module_never_called.py": [
        (
            "SEN102",
            {
                "parameters": [
                    {"name": "aux_proj.weight", "reason": "no-grad"},
                    {"name": "aux_proj.bias", "reason": "no-grad"},
                ]
            },
        ),
    ],
    "float64_input.py": [
        ("SEN104", {"tensors": [{"name": "batch[0]", "dtype": "float64", "expected": "float32"}]}),
    ],
    "gan_optimizer_typo.py": [
        (
            "SEN102",
            {
                "parameters": [
                    {"name": f"D.{n}", "reason": "not-in-optimizer"}
                    for n in ("0.weight", "0.bias", "2.weight", "2.bias")
                ]
            },
        ),
    ],
}
HEALTHY = [
    "healthy_mlp.py",
    "healthy_cnn.py",
    "train_with_args.py",
    "uses_local_module.py",
    "two_logit_head_adam.py",
    "loss_network_eval.py",
]
OWN_TESTS = {
    "crashes.py",
    "exits_early.py",
    "half_encoder.py",
    "manual_sgd.py",
    "prints_argv_and_path.py",
    "nan_loss_raises.py",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_buggy_script_gets_exactly_its_finding(name):
    report, _ = run(name)
    assert found(report) == EXPECTED[name]
    assert report.exit_code() == 1 and report.probes[0].status == "fail"
    assert report.target.endswith(name) and report.device == "cpu"
    assert report.probes[0].data["steps"] == 10 and report.probes[0].data["stopped"]


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_scripts_have_no_findings(name):
    report, _ = run(name, steps=None)
    assert found(report) == [] and report.exit_code() == 0 and report.probes[0].status == "pass"


def test_every_fixture_script_is_covered():
    scripts = {p.name for p in FIXTURES.glob("*.py")} - {"watch_helper_models.py"}
    assert scripts == set(EXPECTED) | set(HEALTHY) | OWN_TESTS


def test_the_odd_dtype_out_is_blamed_even_when_the_script_then_crashes():
    report, _ = run("half_encoder.py")
    assert found(report) == [
        (
            "SEN104",
            {
                "tensors": [
                    {"name": "encoder.0.weight", "dtype": "float16", "expected": "float32"},
                    {"name": "encoder.0.bias", "dtype": "float16", "expected": "float32"},
                ]
            },
        ),
    ]
    assert report.probes[0].status == "error" and "mat1 and mat2 must have the same dtype" in report.probes[0].message


def test_a_script_that_raises_on_its_nan_loss_still_gets_the_forward_that_made_it():
    report, _ = run("nan_loss_raises.py")
    ((code, details),) = found(report)
    assert code == "SEN105"
    assert (details["stage"], details["module"], details["step"], details["value"]) == ("forward", "", 0, "nan")
    assert details["error"] == "FloatingPointError: NaN loss at step 0"
    probe = report.probes[0]
    assert probe.status == "error" and report.exit_code() == 2  # the script raised: its traceback is shown
    assert probe.traceback.rstrip().endswith("FloatingPointError: NaN loss at step 0")


def test_a_script_without_an_optimizer_has_nothing_to_watch():
    report, out = run("manual_sgd.py")
    assert out.startswith("loss ")
    assert report.probes[0].status == "skipped" and report.exit_code() == 0 and report.findings == []
    assert "nothing to watch" in report.probes[0].message and "Nothing to watch" in str(report)


def test_the_script_sees_what_python_gives_it():
    report, out = run("prints_argv_and_path.py", args=["--lr", "3e-4", "x"])
    assert report.probes[0].status == "pass"
    assert out.splitlines() == ["argv ['--lr', '3e-4', 'x']", "path0 True", "main __main__ True True"]


REAL = ROOT / "fixtures" / "watch" / "real"


@pytest.mark.parametrize(
    "name", ["mingpt_style.py", "vae_adam.py", "gcn_dropout.py", "rnn_adadelta.py", "dcgan.py", "actor_critic.py"]
)
def test_real_world_style_healthy_scripts_have_no_findings(name):
    report = run_script(str(REAL / name), steps=30, script_args=[], stdout=io.StringIO())
    assert report.findings == [] and report.probes[0].status == "pass", report.probes[0].message


def test_a_compiled_nanogpt_style_script_is_healthy_and_its_missing_zero_grad_is_found():
    # backend "eager": Dynamo traces the model (the monitor must stay out of its graphs); inductor
    # needs a C++ toolchain and about a minute on this CPU
    report = run_script(
        str(REAL / "nanogpt_style.py"), steps=8, script_args=["--compile", "eager", "--accum", "2"],
        stdout=io.StringIO(),
    )  # fmt: skip
    assert report.findings == [] and report.probes[0].status == "pass", report.probes[0].message
    report = run_script(
        str(REAL / "nanogpt_style.py"), steps=8, script_args=["--compile", "none", "--bug", "zero_grad"],
        stdout=io.StringIO(),
    )  # fmt: skip
    assert found(report) == [("SEN106", {"step": 1})]


# --------------------------------------------------------------------------- zero interference


def _unwatched(name: str, args: list[str] | None = None) -> str:
    out = io.StringIO()
    saved = list(sys.argv)
    sys.argv = [str(FIXTURES / name), *(args or [])]
    sys.path.insert(0, str(FIXTURES))
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(FIXTURES / name), run_name="__main__")
    finally:
        sys.argv = saved
        sys.path.remove(str(FIXTURES))
    return out.getvalue()


@pytest.mark.parametrize(
    "name, args",
    [("healthy_cnn.py", None), ("nan_mid_training.py", None), ("train_with_args.py", ["--hidden", "5"])],
)
def test_watched_script_prints_exactly_what_the_unwatched_script_prints(name, args):
    plain = _unwatched(name, args)
    report, watched = run(name, steps=None, args=args)
    assert watched == plain and "loss" in plain  # losses printed with repr(): bit-exact


def test_the_script_stops_inside_the_nth_optimizer_step():
    report, out = run("healthy_mlp.py", steps=3)
    assert out.splitlines()[-1].startswith("step 2 loss")  # step 3 never reached its print
    assert len(out.splitlines()) == 2
    assert report.probes[0].data["steps"] == 3 and report.probes[0].data["stopped"]


def test_a_script_that_ends_before_n_steps_reports_what_it_ran():
    report, out = run("healthy_mlp.py", steps=500)
    assert len(out.splitlines()) == 20
    assert report.probes[0].data["steps"] == 20 and not report.probes[0].data["stopped"]
    assert report.exit_code() == 0


def test_sys_exit_zero_is_a_normal_end():
    report, out = run("exits_early.py")
    assert out == "early stop\n"
    assert report.exit_code() == 0 and report.probes[0].data["steps"] == 3


# ------------------------------------------------------------------------ the script's own errors


def test_a_crashing_script_is_an_error_with_its_traceback():
    report, _ = run("crashes.py")
    probe = report.probes[0]
    assert probe.status == "error" and report.exit_code() == 2
    assert probe.message == ("the script raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x5 and 4x2)")
    assert probe.data["steps"] == 3
    tb = probe.traceback
    assert tb.startswith("Traceback (most recent call last):")
    assert f'File "{FIXTURES / "crashes.py"}", line 19, in <module>' in tb
    assert tb.rstrip().endswith("RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x5 and 4x2)")
    assert "sentinel" not in tb.replace(str(ROOT), "")  # no frame of ours


def test_findings_before_a_crash_are_kept(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import torch\n"
        "model = torch.nn.Linear(3, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for step in range(5):\n"
        "    model(torch.randn(4, 3)).sum().backward()\n"
        "    opt.step()\n"
        "    if step == 2:\n"
        "        raise SystemExit(3)\n"
    )
    report = run_script(str(script), steps=None, script_args=[])
    assert found(report) == [("SEN106", {"step": 1})]
    assert report.probes[0].status == "error" and report.exit_code() == 2
    assert report.probes[0].message == "the script exited with status 3"


def test_syntax_error_and_missing_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("for i in range(3)\n    pass\n")
    report = run_script(str(bad), steps=2, script_args=[])
    assert report.exit_code() == 2 and report.probes[0].message.startswith("the script does not compile")
    assert "SyntaxError" in report.probes[0].traceback
    report = run_script(str(tmp_path / "nope.py"), steps=2, script_args=[])
    assert report.exit_code() == 2 and report.probes[0].message.startswith("cannot read the script")


def test_global_state_the_script_changes_is_put_back(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, torch\n"
        "torch.set_grad_enabled(False)\n"
        "torch.set_default_dtype(torch.float64)\n"
        "sys.path.append('/nowhere')\n"
        "assert __name__ == '__main__' and sys.argv[1:] == ['--x', '1'], sys.argv\n"
        f"assert sys.path[0] == {str(tmp_path)!r}, sys.path[0]\n"
    )
    report = run_script(str(script), steps=2, script_args=["--x", "1"])
    assert report.exit_code() == 0, report.probes[0].message
    assert torch.is_grad_enabled() and torch.get_default_dtype() == torch.float32


def test_script_arguments_reach_argparse():
    report, out = run("train_with_args.py", args=["--skip-zero-grad", "--hidden", "7"])
    assert found(report) == [("SEN106", {"step": 1})]
    assert out.startswith("epoch 0 loss ") and out.splitlines()[0].endswith(" hidden 7")


# ----------------------------------------------------------------------------------------- CLI


def cli(*args: str):
    return CliRunner().invoke(main, ["probe", *args], catch_exceptions=False)


def test_cli_json_for_a_buggy_script():
    result = cli(fixture("losses_append.py"), "--steps", "10", "--format", "json")
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["target"] == fixture("losses_append.py") and out["device"] == "cpu"
    assert [(f["code"], f["name"], f["details"]) for f in out["findings"]] == [
        ("SEN108", "graph-retained-across-steps", {"steps": 9})
    ]
    assert [(p["name"], p["status"]) for p in out["probes"]] == [("loop-monitor", "fail")]


def test_cli_healthy_script_and_script_arguments():
    result = cli(fixture("train_with_args.py"), "--steps", "10", "--format", "json", "--", "--hidden", "3")
    assert result.exit_code == 0 and json.loads(result.stdout)["findings"] == []
    assert "hidden 3" in result.stderr  # the script's prints go to stderr with --format json
    result = cli(fixture("train_with_args.py"), "--steps", "10", "--", "--skip-zero-grad")
    assert result.exit_code == 1 and "SEN106" in result.stdout


def test_cli_crashing_script_exits_2_with_the_traceback_on_stderr():
    result = cli(fixture("crashes.py"), "--steps", "10", "--format", "json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["probes"][0]["status"] == "error"
    assert "Traceback (most recent call last):" in result.stderr
    assert 'crashes.py", line 19, in <module>' in result.stderr
    assert result.stderr.rstrip().endswith(
        "sentinel probe: loop-monitor: the script raised RuntimeError: mat1 and mat2 shapes cannot be"
        " multiplied (8x5 and 4x2)"
    )


def test_the_real_command_end_to_end():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "sentinel"),
            "probe",
            fixture("eval_without_eval_mode.py"),
            "--steps",
            "10",
            "--format",
            "json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert [(f["code"], f["details"]) for f in out["findings"]] == [("SEN107", {"modules": ["1", "3"]})]
    assert "val accuracy" in proc.stderr
