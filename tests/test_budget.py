"""The analysis budget: a pathological file costs a bounded amount and never yields a guessed finding."""

from __future__ import annotations

import os
import textwrap

import libcst as cst

from sentinel.analysis.interpreter import Interpreter
from sentinel.engine import check_source

# each helper calls the next six times: fully inlined, that is 6**7 calls
EXPLOSIVE_HELPERS = (
    "".join(
        f"def h{k}(x):\n" + "".join(f"    x = h{k + 1}(x)\n" for _ in range(6)) + "    return x\n\n\n" for k in range(7)
    )
    + "def h7(x):\n    return x + 1\n"
)

# the reset comes after the helper that exhausts the budget: a half-analysed iteration "has no reset"
TRAINING = textwrap.dedent(
    """
    import torch
    from torch import nn

    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(4)]
    for x, y in loader:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        x = h0(x)
        opt.zero_grad()
    """
)


def test_work_the_budget_cuts_short_is_dropped_not_guessed():
    source = EXPLOSIVE_HELPERS + TRAINING
    interp = Interpreter(cst.parse_module(source), source)
    facts = interp.run()
    assert interp.exhausted
    # the training loop was cut short inside h0(): none of what it recorded is kept
    assert facts.backwards == [] and facts.steps == [] and facts.resets == []
    assert check_source(source, "<string>") == []


def test_the_same_loop_without_the_explosion_is_analysed_fully():
    source = "def h0(x):\n    return x\n\n\n" + TRAINING
    interp = Interpreter(cst.parse_module(source), source)
    facts = interp.run()
    assert not interp.exhausted
    assert len(facts.backwards) >= 1 and len(facts.resets) >= 1
    assert check_source(source, "<string>") == []


def test_a_real_bug_before_the_explosion_is_still_found():
    """Top-level statements finished before the budget ran out keep their findings."""
    buggy = textwrap.dedent(
        """
        import torch
        from torch import nn

        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(4)]
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
        """
    )
    source = EXPLOSIVE_HELPERS + buggy + "h0(1)\n"
    lines = source.splitlines()
    backward_line = next(i for i, text in enumerate(lines, 1) if "loss.backward()" in text)
    assert [(d.code, d.line) for d in check_source(source, "<string>")] == [("SEN002", backward_line)]


def test_collector_runs_rarely_during_analysis_and_host_thresholds_come_back(monkeypatch):
    """A lint relaxes the cyclic collector while it parses and analyses (LibCST's trees are acyclic
    and large), and a host process (the pytest plugin, an editor) gets its own thresholds back."""
    import gc

    from sentinel import engine
    from sentinel.analysis import interpreter

    seen: list[tuple[int, int, int]] = []
    run = interpreter.Interpreter.run

    def recording_run(self):
        seen.append(gc.get_threshold())
        return run(self)

    monkeypatch.setattr(interpreter.Interpreter, "run", recording_run)
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        check_source("def h0(x):\n    return x\n\n\n" + TRAINING, "<string>")
        assert seen == [engine.GC_THRESHOLDS]
        assert gc.get_threshold() == (700, 10, 10)
        # a host that already collects rarely keeps its choice
        gc.set_threshold(500_000, 20, 20)
        check_source("def h0(x):\n    return x\n\n\n" + TRAINING, "<string>")
        assert seen[-1] == (500_000, 20, 20) and gc.get_threshold() == (500_000, 20, 20)
    finally:
        gc.set_threshold(*before)


def test_a_file_cut_short_is_named_in_a_warning_every_run(tmp_path):
    """The cut is not silent: `sentinel lint` warns on stderr (not with -q), keeps the exit status, and
    does not cache the file, so a warm run warns again."""
    from click.testing import CliRunner

    from sentinel.cli import main

    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (tmp_path / "train.py").write_text(EXPLOSIVE_HELPERS + TRAINING)
    (tmp_path / "plain.py").write_text("def h0(x):\n    return x\n\n\n" + TRAINING)
    runner = CliRunner()
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        for _ in range(2):  # cold, then with the cache written by the first run
            result = runner.invoke(main, ["lint", "."], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            assert result.stderr.count("warning: ") == 1
            assert "warning: train.py: the analysis of this file ran out of its budget" in result.stderr
        quiet = runner.invoke(main, ["lint", "-q", "."], catch_exceptions=False)
        assert quiet.exit_code == 0 and quiet.stderr == ""
    finally:
        os.chdir(old)
