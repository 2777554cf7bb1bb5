"""The pytest plugin (``sentinel.pytest_plugin``): the ``sentinel`` fixture, ``--sentinel-lint`` items,
options and ini keys, and the promise that loading the plugin imports nothing heavy.

Most tests run pytest in-process through ``pytester``; the import test needs a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

# pytester's in-process runs drop every module first imported during the run. Import the heavy ones
# once here so the runs share them: re-importing torch (or hypothesis, whose pytest plugin imports it
# at the end of each run) for every run is slow, and torch does not support being imported twice.
for _name in ("torch", "hypothesis", "libcst", "sentinel.lint", "sentinel.probes"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_name)


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# torch is an optional extra ("probe"): without it the fixture's tests are skipped, the rest still run.
needs_torch = pytest.mark.skipif(not _available("torch"), reason="torch is not installed")


# Tiny models with planted bugs, shared by the probe tests through a conftest in pytester's directory.
MODELS = '''
import pytest
import torch
from torch import nn


class Healthy(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.body(x))


class UnusedLayer(Healthy):
    """A layer defined and handed to the optimizer, but never used in forward: never updated."""

    def __init__(self):
        super().__init__()
        self.aux = nn.Linear(16, 3)


class Detached(Healthy):
    """The head's input is cut from the graph: the body never learns, the loss stalls."""

    def forward(self, x):
        return self.head(self.body(x).detach() * 0.0)


class MakesNaN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.act = SqrtAct()

    def forward(self, x):
        return self.act(self.fc(x))


class SqrtAct(nn.Module):
    def forward(self, x):
        return torch.sqrt(x)  # negative pre-activations -> NaN


class HotInit(Healthy):
    """The head initialised 40x too large: the loss starts far above ln 3."""

    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.head.weight.mul_(40.0)


class MixesBatch(Healthy):
    """Subtracts the batch mean: every sample's output reads the whole batch."""

    def forward(self, x):
        return self.head(self.body(x - x.mean(0)))


def make(model_cls=Healthy, lr=1e-2, dtype=torch.float32):
    torch.manual_seed(0)
    model = model_cls()
    x = torch.randn(8, 4, dtype=dtype)
    y = torch.randint(0, 3, (8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return dict(model=model, loss_fn=nn.CrossEntropyLoss(), batch=(x, y), optimizer=optimizer)


@pytest.fixture
def setup():
    return make
'''


@pytest.fixture(scope="module")
def _torch_ready() -> Iterator[None]:
    """One torch thread for this module's tiny models, and the probe suite run once up front.

    With several threads, the models here spend their time in thread hand-offs (40x slower on a
    busy 2-core machine). And the first optimizer step imports parts of torch lazily (torch._dynamo
    and friends): if that happened inside an in-process pytester run, pytester would drop those
    modules afterwards and the next run would import them again, which torch refuses (duplicate
    operator registrations).
    """
    import torch
    from torch import nn

    from sentinel.probes import run_probes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    batch = (torch.randn(4, 2), torch.randint(0, 2, (4,)))
    for optimizer in (torch.optim.Adam(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1)):
        run_probes(model, nn.CrossEntropyLoss(), batch, optimizer, steps=2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def models(pytester: pytest.Pytester, _torch_ready: None) -> pytest.Pytester:
    pytester.makeconftest(MODELS)
    return pytester


# --- the fixture's helpers -------------------------------------------------------------------------


@needs_torch
def test_healthy_model_passes_every_helper_and_gets_results_back(models: pytest.Pytester) -> None:
    models.makepyfile(
        """
        from sentinel.findings import ProbeResult

        def test_overfits(sentinel, setup):
            result = sentinel.assert_overfits(**setup())
            assert isinstance(result, ProbeResult) and result.status == "pass"

        def test_updates(sentinel, setup):
            assert sentinel.assert_updates(**setup()).findings == []

        def test_devices(sentinel, setup):
            assert sentinel.assert_devices(**setup()).ok

        def test_finite(sentinel, setup):
            assert sentinel.assert_finite(**setup()).ok

        def test_initial_loss(sentinel, setup):
            result = sentinel.assert_initial_loss(**setup())
            assert result.status == "pass" and result.data["classes"] == 3

        def test_batch_independent(sentinel, setup):
            assert sentinel.assert_batch_independent(**setup()).status == "pass"

        def test_not_applicable_is_skipped_not_failed(sentinel, setup):
            args = setup()
            args["loss_fn"] = lambda out, y: out.pow(2).mean()   # not a classification loss
            result = sentinel.assert_initial_loss(**args)
            assert result.status == "skipped" and "not a classification loss" in result.message

        def test_trains(sentinel, setup):
            sentinel.assert_trains(**setup())
        """
    )
    result = models.runpytest()
    result.assert_outcomes(passed=8)


@needs_torch
@pytest.mark.parametrize(
    ("helper", "make_args", "expected"),
    [
        pytest.param("assert_overfits", "lr=0.0", ["*SEN101 cannot-overfit-one-batch*", "*steps*"], id="lr0"),
        pytest.param("assert_overfits", "model_cls=Detached", ["*SEN101 cannot-overfit-one-batch*"], id="detached"),
        pytest.param(
            "assert_updates",
            "model_cls=UnusedLayer",
            ["*SEN102 parameter-not-updated*", "*aux.weight*", "*aux.bias*"],
            id="unused-layer",
        ),
        pytest.param(
            "assert_devices",
            "dtype=torch.float64",
            ["*SEN104 dtype-mismatch*", "*float64*"],
            id="float64-input",
        ),
        pytest.param(
            "assert_finite",
            "model_cls=MakesNaN",
            ["*SEN105 non-finite-value*", "*module: act*"],
            id="nan-module",
        ),
        pytest.param(
            "assert_initial_loss",
            "model_cls=HotInit",
            ["*SEN110 unexpected-initial-loss*", "*expected_loss: 1.09861*", "*classes: 3*"],
            id="initial-loss",
        ),
        pytest.param(
            "assert_batch_independent",
            "model_cls=MixesBatch",
            ["*SEN111 batch-samples-mixed*", "*sample: 0*", "*depends_on: [[]1, 2, 3, 4, 5, 6, 7[]]*"],
            id="samples-mixed",
        ),
        pytest.param("assert_trains", "model_cls=UnusedLayer", ["*SEN102*aux.weight*"], id="trains"),
    ],
)
def test_planted_bug_fails_with_readable_report(
    models: pytest.Pytester, helper: str, make_args: str, expected: list[str]
) -> None:
    models.makepyfile(
        f"""
        import torch
        from conftest import *

        def test_bug(sentinel, setup):
            sentinel.{helper}(**setup({make_args}))
        """
    )
    result = models.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"E * sentinel.{helper}: SEN1*", *expected], consecutive=False)
    # the report points at the test's line, not into sentinel's internals
    result.stdout.fnmatch_lines([f">*sentinel.{helper}(**setup(*"])
    out = result.stdout.str()
    assert "_pytest_probes.py" not in out and "sentinel/probes" not in out
    result.stdout.fnmatch_lines(["FAILED test_planted_bug_fails_with_readable_report.py::test_bug - *"])


@needs_torch
def test_failure_is_an_assertion_error_carrying_the_result(models: pytest.Pytester) -> None:
    models.makepyfile(
        """
        import pytest
        from conftest import UnusedLayer

        def test_expects_the_bug(sentinel, setup):
            with pytest.raises(AssertionError, match="SEN102") as info:
                sentinel.assert_updates(**setup(model_cls=UnusedLayer))
            names = {p["name"] for f in info.value.result.findings for p in f.details["parameters"]}
            assert {"aux.weight", "aux.bias"} <= names
            assert not names & {"head.weight", "body.0.weight"}
        """
    )
    models.runpytest().assert_outcomes(passed=1)


@needs_torch
def test_probe_that_cannot_run_fails_with_its_message(models: pytest.Pytester) -> None:
    models.makepyfile(
        """
        import torch
        from torch import nn

        def test_shape_bug(sentinel, setup):
            args = setup()
            args["model"] = nn.Linear(5, 3)   # the batch has 4 features
            args["optimizer"] = None
            sentinel.assert_overfits(**args)
        """
    )
    result = models.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * sentinel.assert_overfits: 1 probe could not run",
            "E * probe 'overfit': error: model raised RuntimeError: mat1 and mat2 shapes cannot be multiplied*",
        ]
    )


@needs_torch
def test_unknown_option_is_a_clear_type_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_it(sentinel):
            with pytest.raises(TypeError, match="assert_devices.*'stepz'"):
                sentinel.assert_devices(model=None, loss_fn=None, batch=None, stepz=3)
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


README = Path(__file__).resolve().parents[1] / "README.md"


@needs_torch
def test_the_documented_example_passes(pytester: pytest.Pytester, _torch_ready: None) -> None:
    section = README.read_text().split("## pytest plugin", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S)
    assert example, "the README's pytest section lost its example test file"
    pytester.makepyfile(test_training=example.group(1))
    result = pytester.runpytest()
    result.assert_outcomes(passed=example.group(1).count("\ndef test_"))


# --- options and ini keys ----------------------------------------------------------------------------


DEFAULTS_TEST = """
def test_defaults(sentinel):
    print("DEFAULTS", sorted(sentinel.defaults.items()))
"""


@pytest.mark.parametrize(
    ("ini", "args", "expected"),
    [
        pytest.param("", [], "DEFAULTS []", id="none"),
        pytest.param(
            "sentinel_steps = 7\nsentinel_device = cpu",
            [],
            "DEFAULTS [('device', 'cpu'), ('steps', 7)]",
            id="ini",
        ),
        pytest.param(
            "sentinel_steps = 7\nsentinel_device = cuda",
            ["--sentinel-steps", "3", "--sentinel-device=cpu"],
            "DEFAULTS [('device', 'cpu'), ('steps', 3)]",
            id="cli-beats-ini",
        ),
        pytest.param("", ["--sentinel-steps=12"], "DEFAULTS [('steps', 12)]", id="cli-only"),
    ],
)
def test_defaults_come_from_cli_then_ini(pytester: pytest.Pytester, ini: str, args: list[str], expected: str) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(DEFAULTS_TEST)
    result = pytester.runpytest("-s", *args)
    result.assert_outcomes(passed=1)
    assert expected in result.stdout.str()


@needs_torch
def test_steps_default_reaches_the_probe_and_explicit_argument_wins(models: pytest.Pytester) -> None:
    models.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        sentinel_steps = "1"
        """
    )
    models.makepyfile(
        """
        import pytest

        def test_default_from_ini(sentinel, setup):
            with pytest.raises(AssertionError, match="SEN101") as info:
                sentinel.assert_overfits(**setup())   # one step cannot overfit anything
            assert info.value.result.findings[0].details["steps"] == 1
            assert sentinel.assert_finite(**setup()).data["steps"] == 1

        def test_explicit_steps_win(sentinel, setup):
            assert sentinel.assert_overfits(**setup(), steps=300).data["max_steps"] == 300

        def test_default_only_goes_to_probes_that_take_steps(sentinel, setup):
            sentinel.assert_updates(**setup())   # check_updates has no `steps`: not passed to it
        """
    )
    models.runpytest().assert_outcomes(passed=3)
    # the command line beats the ini file
    models.makepyfile(
        test_cli="""
        def test_cli_steps(sentinel, setup):
            assert sentinel.assert_finite(**setup()).data["steps"] == 5
        """
    )
    models.runpytest("--sentinel-steps", "5", "test_cli.py").assert_outcomes(passed=1)


@needs_torch
@pytest.mark.skipif(
    _available("torch") and importlib.import_module("torch").cuda.is_available(),
    reason="needs a machine without CUDA",
)
def test_device_default_reaches_the_probe(models: pytest.Pytester) -> None:
    models.makeini("[pytest]\nsentinel_device = cuda\n")
    models.makepyfile(
        """
        def test_devices(sentinel, setup):
            assert sentinel.assert_devices(**setup()).data["device"] == "cpu"
        """
    )
    # ini: cuda, which this machine lacks: one clean line, no traceback through sentinel
    result = models.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*sentinel.assert_devices: cannot run the probe (device='cuda'): CUDA is not available*"]
    )
    assert "workspace.py" not in result.stdout.str() and "Traceback" not in result.stdout.str()
    # the command line wins
    models.runpytest("--sentinel-device", "cpu").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sentinel-steps", "zero"], "*--sentinel-steps: expected a positive integer, got 'zero'*"),
        (["--sentinel-steps=0"], "*--sentinel-steps: expected a positive integer, got '0'*"),
        (["--sentinel-device="], "*--sentinel-device: expected auto, cpu, cuda or cuda:N*"),
    ],
)
def test_bad_option_is_a_usage_error(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(DEFAULTS_TEST)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_bad_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsentinel_steps = -2\n")
    pytester.makepyfile(DEFAULTS_TEST)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*sentinel_steps (ini): expected a positive integer, got '-2'*"])


def test_options_are_listed_in_a_sentinel_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "torch-sentinel: training probes and lint:",
            "*--sentinel-lint*",
            "*--sentinel-steps=N*",
            "*--sentinel-device=DEVICE*",
        ]
    )
    result.stdout.fnmatch_lines(["*sentinel_steps (string):*", "*sentinel_device (string):*"])


def test_lint_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.sentinel_lint: *"])


# --- lint as test items ----------------------------------------------------------------------------

SOFTMAX_INTO_CE = """\
import torch.nn.functional as F
from torch import nn


def train(model, loader, optimizer):
    loss_fn = nn.CrossEntropyLoss()
    for x, y in loader:
        optimizer.zero_grad()
        probs = F.softmax(model(x), dim=1)
        loss = loss_fn(probs, y){noqa}
        loss.backward()
        optimizer.step()
"""

CLEAN = """\
from torch import nn


def train(model, loader, optimizer):
    loss_fn = nn.CrossEntropyLoss()
    for x, y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
"""


def _lint_tree(pytester: pytest.Pytester, noqa: str = "") -> None:
    pytester.makepyfile(
        train_bad=SOFTMAX_INTO_CE.format(noqa=noqa),
        train_clean=CLEAN,
        test_unit="def test_unit():\n    pass\n",
    )


def test_lint_items_fail_on_findings_and_pass_clean_files(pytester: pytest.Pytester) -> None:
    _lint_tree(pytester)
    result = pytester.runpytest("--sentinel-lint", "-v")
    result.assert_outcomes(passed=3, failed=1)  # train_clean, test_unit's lint item, test_unit
    result.stdout.fnmatch_lines(
        [
            "train_bad.py::sentinel-lint FAILED*",
            "train_clean.py::sentinel-lint PASSED*",
        ],
        consecutive=False,
    )
    # the failure lists the finding the way `sentinel lint` does: path:line:col, code, source line
    result.stdout.fnmatch_lines(
        [
            "*_ sentinel-lint train_bad.py _*",
            "train_bad.py:10:* SEN001 *",
            "*10 |*loss = loss_fn(probs, y)",
            "*= help: sentinel rule SEN001",
        ]
    )
    result.stdout.fnmatch_lines(["FAILED train_bad.py::sentinel-lint*"])
    assert "Traceback" not in result.stdout.str()


def _notebook(*cells: str) -> str:
    import json

    return json.dumps(
        {
            "cells": [
                {"cell_type": "code", "metadata": {}, "source": c, "outputs": [], "execution_count": None}
                for c in cells
            ],
            "metadata": {"language_info": {"name": "python"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    )


def test_notebooks_are_lint_items_reported_by_cell(pytester: pytest.Pytester) -> None:
    setup = "import torch\nfrom torch import nn\nimport torch.nn.functional as F\nmodel = nn.Linear(4, 3)\n"
    train = (
        "loss_fn = nn.CrossEntropyLoss()\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for x, y in [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]:\n"
        "    opt.zero_grad()\n"
        "    loss = loss_fn(F.softmax(model(x), dim=1), y)\n"
        "    loss.backward()\n"
        "    opt.step()\n"
    )
    pytester.makefile(".ipynb", bad=_notebook(setup, "%matplotlib inline\n" + train))
    pytester.makefile(".ipynb", clean=_notebook(setup, train.replace("F.softmax(model(x), dim=1)", "model(x)")))
    result = pytester.runpytest("--sentinel-lint", "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["bad.ipynb::sentinel-lint FAILED*", "clean.ipynb::sentinel-lint PASSED*"], consecutive=False
    )
    result.stdout.fnmatch_lines(["bad.ipynb:cell 2:6:* SEN001 *"])


def test_without_the_option_nothing_is_linted(pytester: pytest.Pytester) -> None:
    _lint_tree(pytester)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=1)
    assert "sentinel-lint" not in result.stdout.str()


def test_marker_selects_only_lint_items(pytester: pytest.Pytester) -> None:
    _lint_tree(pytester)
    result = pytester.runpytest("--sentinel-lint", "-m", "sentinel_lint", "-v")
    result.assert_outcomes(passed=2, failed=1, deselected=1)
    assert "test_unit.py::test_unit" not in result.stdout.str()
    result = pytester.runpytest("--sentinel-lint", "-m", "not sentinel_lint")
    result.assert_outcomes(passed=1, deselected=3)


def test_noqa_comment_suppresses_the_finding(pytester: pytest.Pytester) -> None:
    _lint_tree(pytester, noqa="  # noqa: SEN001")
    result = pytester.runpytest("--sentinel-lint", "-m", "sentinel_lint")
    result.assert_outcomes(passed=3)


def test_config_exclude_and_per_file_ignores_are_honoured(pytester: pytest.Pytester) -> None:
    _lint_tree(pytester)
    pytester.mkdir("vendored")
    pytester.path.joinpath("vendored", "old.py").write_text(SOFTMAX_INTO_CE.format(noqa=""))
    pytester.makepyprojecttoml(
        """
        [tool.sentinel]
        exclude = ["vendored"]
        per-file-ignores = { "train_bad.py" = ["SEN001"] }
        """
    )
    result = pytester.runpytest("--sentinel-lint", "-m", "sentinel_lint", "-v")
    result.assert_outcomes(passed=3)
    assert "old.py" not in result.stdout.str()


def test_unparsable_file_fails_with_one_line_reason(pytester: pytest.Pytester) -> None:
    broken = CLEAN.replace("def train(model, loader, optimizer):", "def train(model, loader, optimizer:")
    pytester.makepyfile(train_broken=broken, train_clean=CLEAN)
    result = pytester.runpytest("--sentinel-lint")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["cannot lint train_broken.py:*: syntax error: *"])
    assert "Traceback" not in result.stdout.str()


def test_broken_config_fails_the_items_with_its_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(train_clean=CLEAN)
    pytester.makepyprojecttoml("[tool.sentinel]\nselekt = ['SEN001']\n")
    result = pytester.runpytest("--sentinel-lint")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["cannot lint train_clean.py: *selekt*"])


def test_unchanged_file_that_passed_is_not_linted_again(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the cache key includes sentinel's source mtimes; pin it so edits elsewhere can't interfere
    monkeypatch.setattr("sentinel._pytest_lint._engine_version", lambda: "pinned")
    buggy_call = "loss_fn(model(x).softmax(1), y)"
    clean_call = "loss_fn(model(x), y)".ljust(len(buggy_call))  # same length: trailing blanks
    pytester.makepyfile(train=CLEAN.replace("loss_fn(model(x), y)", clean_call))
    path = pytester.path / "train.py"
    pytester.runpytest("--sentinel-lint").assert_outcomes(passed=1)
    before = path.stat()

    # plant the bug but keep size and mtime: the remembered pass stands, the file is not re-linted
    path.write_text(path.read_text().replace(clean_call, buggy_call))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    pytester.runpytest("--sentinel-lint").assert_outcomes(passed=1)

    # --cache-clear forgets it: the bug is found
    pytester.runpytest("--sentinel-lint", "--cache-clear").assert_outcomes(failed=1)
    # a failure is not remembered, and a new mtime alone is enough to re-lint
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    pytester.runpytest("--sentinel-lint").assert_outcomes(failed=1)


def test_config_change_invalidates_remembered_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(train_bad=SOFTMAX_INTO_CE.format(noqa=""))
    pytester.makepyprojecttoml('[tool.sentinel]\nignore = ["SEN001"]\n')
    pytester.runpytest("--sentinel-lint").assert_outcomes(passed=1)
    pytester.makepyprojecttoml("[tool.sentinel]\nignore = []\n")
    pytester.runpytest("--sentinel-lint").assert_outcomes(failed=1)


def test_no_cacheprovider_still_lints(pytester: pytest.Pytester) -> None:
    _lint_tree(pytester)
    for _ in range(2):
        result = pytester.runpytest("--sentinel-lint", "-p", "no:cacheprovider", "-m", "sentinel_lint")
        result.assert_outcomes(passed=2, failed=1)


# --- without torch ---------------------------------------------------------------------------------

NO_TORCH_CONFTEST = """
import sys

sys.modules["torch"] = None  # as if torch were not installed: `import torch` raises ImportError
"""


def test_without_torch_the_fixture_says_how_to_install_it(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(NO_TORCH_CONFTEST)
    pytester.makepyfile(
        """
        def test_probe(sentinel):
            sentinel.assert_trains(model=None, loss_fn=None, batch=None)

        def test_lint_half_still_works():
            import sentinel
            assert sentinel
        """
    )
    result = pytester.runpytest_subprocess(*ISOLATED)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*sentinel.assert_trains: the training probes need PyTorch, which is not installed here;"
            " install the probe extra: pip install 'torch-sentinel[[]probe[]]' (for a CPU-only machine,*"
            "pip install torch --index-url *whl/cpu)*",
        ]
    )
    out = result.stdout.str()
    assert "Traceback" not in out and "ImportError" not in out and "halted" not in out


# --- loading the plugin costs nothing ------------------------------------------------------------

RECORD_IMPORTS = """
import sys

HEAVY = ("torch", "libcst", "sentinel.lint", "sentinel.probes", "sentinel._pytest_probes",
         "sentinel._pytest_lint", "sentinel.findings", "rich")

def test_record(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("sentinel"), "plugin not loaded via its entry point"
    assert "sentinel.pytest_plugin" in sys.modules
    print("LOADED", sorted(m for m in HEAVY if m in sys.modules))
"""


# A fresh interpreter, with every installed plugin autoloaded except Hypothesis's: it imports nothing
# while the test records, but importing hypothesis at the end of the session costs seconds.
ISOLATED = ("-s", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def test_loading_the_plugin_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_record=RECORD_IMPORTS)
    result = pytester.runpytest_subprocess(*ISOLATED)
    result.assert_outcomes(passed=1)
    assert "LOADED []" in result.stdout.str()


def test_lint_option_and_fixture_load_their_halves_on_demand(pytester: pytest.Pytester) -> None:
    """Control for the test above: the same recorder does see the lazily imported modules."""
    pytester.makepyfile(
        test_record=RECORD_IMPORTS
        + textwrap.dedent(
            """
            def test_uses_fixture(sentinel):
                assert "sentinel._pytest_probes" in sys.modules
                assert "torch" not in sys.modules  # only a helper that runs a probe needs torch
            """
        )
    )
    result = pytester.runpytest_subprocess(*ISOLATED, "--sentinel-lint")
    result.assert_outcomes(passed=3)  # two tests + the lint item of test_record.py
    assert "'sentinel.lint'" in result.stdout.str()
    # the recorder file cannot trigger any rule: it is answered without loading the parser
    assert "'libcst'" not in result.stdout.str()
