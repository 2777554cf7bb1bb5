"""The probe suite (SEN101-SEN105) on the healthy and buggy models of fixtures/probes.

Every test is seeded and CPU-only. Besides the exact codes and details, each probe is checked to
leave the user's model, optimizer and RNGs bit-exactly as it found them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sentinel.findings import Finding, ProbeResult, Report
from sentinel.probes import check_devices, check_finite, check_overfit, check_updates, run_probes
from sentinel.probes import curve as curves
from sentinel.probes.batch import plan
from sentinel.probes.nonfinite import all_finite, checked_step, first_nonfinite, localize
from sentinel.probes.screen import _exactly_finite, _kind, _nonfinite_kind
from sentinel.probes.state import Snapshot, preserved, same_bits

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "probes"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_probe_fixture_{name}", FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthy = _load("healthy")
buggy = _load("buggy")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two cores shared with other jobs: torch's intra-op thread pool only adds contention here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _args(made: dict) -> tuple:
    return made["model"], made["loss_fn"], made["batch"], made.get("optimizer")


# ------------------------------------------------------------------------------- fingerprints


def _bits(t: torch.Tensor):
    if t.is_meta:
        return ("meta", tuple(t.shape), str(t.dtype))
    c = t.detach().contiguous().cpu()
    return (tuple(t.shape), str(t.dtype), str(t.device), c.view(-1).view(torch.uint8).numpy().tobytes())


def _value(v):
    if isinstance(v, torch.Tensor):
        return ("tensor", id(v), _bits(v))
    if isinstance(v, (list, tuple)):
        return tuple(_value(x) for x in v)
    return v


def fingerprint(model: nn.Module, optimizer=None) -> dict:
    """Everything a probe must leave untouched, compared by identity and raw bits."""
    fp = {
        "params": [
            (n, id(p), _bits(p), p.requires_grad, None if p.grad is None else (id(p.grad), _bits(p.grad)))
            for n, p in model.named_parameters()
        ],
        "buffers": [(n, id(b), _bits(b)) for n, b in model.named_buffers()],
        "training": [(n, m.training) for n, m in model.named_modules()],
        "torch_rng": _bits(torch.get_rng_state()),
        "python_rng": random.getstate(),
        "numpy_rng": tuple(_value(x) if not isinstance(x, np.ndarray) else x.tobytes() for x in np.random.get_state()),
    }
    if optimizer is not None:
        fp["opt_state"] = [(id(p), sorted((k, _value(v)) for k, v in st.items())) for p, st in optimizer.state.items()]
        fp["opt_groups"] = [
            sorted((k, tuple(id(p) for p in v) if k == "params" else _value(v)) for k, v in g.items())
            for g in optimizer.param_groups
        ]
        fp["opt_group_ids"] = [id(g) for g in optimizer.param_groups]
    return fp


def _lived_in(made: dict) -> dict:
    """Give the user's objects some history: grads, optimizer state, mixed train/eval flags, RNGs."""
    model, loss_fn, batch, opt = _args(made)
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    if opt is not None:
        try:
            x, y = batch
            loss_fn(model(x), y).backward()
            opt.step()
            loss_fn(model(x), y).backward()  # grads present (not None) after the step
        except Exception:
            pass
    mods = list(model.modules())
    if len(mods) > 1:
        mods[-1].eval()
    return made


PROBES = {
    "overfit": lambda m, lf, b, o: check_overfit(m, lf, b, o, steps=20),
    "updates": lambda m, lf, b, o: check_updates(m, lf, b, o),
    "devices": lambda m, lf, b, o: check_devices(m, lf, b, o),
    "finite": lambda m, lf, b, o: check_finite(m, lf, b, o),
    "suite": lambda m, lf, b, o: run_probes(m, lf, b, o, steps=20),
    "suite_on_cpu": lambda m, lf, b, o: run_probes(m, lf, b, o, steps=5, device="cpu"),
}


class _RandomUser(nn.Module):
    """Draws from every RNG a probe must restore: torch (dropout), Python random and NumPy."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 10)
        self.drop = nn.Dropout(0.2)
        self.bn = nn.BatchNorm1d(10)

    def forward(self, x):
        noise = random.random() * 1e-3 + float(np.random.rand()) * 1e-3
        return self.bn(self.drop(self.fc(x + noise)))


class _Local:
    @staticmethod
    def make_random_user():
        torch.manual_seed(0)
        model = _RandomUser()
        g = torch.Generator().manual_seed(0)
        batch = (torch.randn(8, 16, generator=g), torch.randint(0, 10, (8,), generator=g))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return {"model": model, "loss_fn": nn.CrossEntropyLoss(), "batch": batch, "optimizer": opt}


RESTORE_CASES = [
    (_Local, "make_random_user"),
    (healthy, "make_regression"),
    (healthy, "make_mlp"),
    (healthy, "make_cnn"),
    (healthy, "make_frozen"),
    (buggy, "make_unused_layer"),
    (buggy, "make_nan_for_some_inputs"),
    (buggy, "make_inf_in_backward"),
    (buggy, "make_meta_buffer"),
    (buggy, "make_float64_inputs"),
    (buggy, "make_model_raises"),
    (buggy, "make_lr_zero"),
]


@pytest.mark.parametrize("probe", sorted(PROBES))
@pytest.mark.parametrize(("module", "factory"), RESTORE_CASES, ids=[f for _, f in RESTORE_CASES])
def test_probe_restores_everything_bit_exact(module, factory, probe):
    made = _lived_in(getattr(module, factory)())
    model, loss_fn, batch, opt = _args(made)
    before = fingerprint(model, opt)
    batch_before = [_bits(t) for t in (batch if isinstance(batch, tuple) else [batch])]
    PROBES[probe](model, loss_fn, batch, opt)
    assert fingerprint(model, opt) == before
    assert [_bits(t) for t in (batch if isinstance(batch, tuple) else [batch])] == batch_before


def test_restored_when_the_user_code_raises_mid_training():
    calls = {"n": 0}

    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.bn = nn.BatchNorm1d(2)

        def forward(self, x):
            calls["n"] += 1
            if calls["n"] == 5:
                raise ValueError("boom on the 5th call")
            return self.bn(self.fc(x))

    torch.manual_seed(0)
    model = Flaky()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    before = fingerprint(model, opt)
    result = check_overfit(model, nn.CrossEntropyLoss(), (x, y), opt, steps=50)
    assert result.status == "error"
    assert result.message == "model raised ValueError: boom on the 5th call"
    assert "boom on the 5th call" in result.traceback and "sentinel/probes" not in result.traceback
    assert fingerprint(model, opt) == before  # BN running stats, flags, optimizer, RNG


def test_model_that_cannot_be_deep_copied_is_probed_in_place_and_restored():
    import threading

    made = _lived_in(_Local.make_random_user())
    model, loss_fn, batch, opt = _args(made)
    model.lock = threading.Lock()  # deepcopy fails on it
    before = fingerprint(model, opt)
    report = run_probes(model, loss_fn, batch, opt, steps=5)
    assert [p.status for p in report.probes[:3]] == ["pass", "pass", "pass"]
    assert "probed in place" in report.probes[2].data["notes"][0]
    assert fingerprint(model, opt) == before


class _LambdaBlock(nn.Module):
    """minGPT's style: the MLP is a lambda closing over the block's own ModuleDict."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.ModuleDict({"fc": nn.Linear(4, 8), "proj": nn.Linear(8, 4)})
        m = self.mlp
        self.mlpf = lambda x: m.proj(torch.relu(m.fc(x)))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(x + self.mlpf(x))


def test_a_model_whose_lambdas_capture_its_modules_is_probed_in_place():
    # A deep copy would share the lambda, so the copy's forward would run the *original* MLP and its
    # parameters (in the copy) would get no gradient: a false SEN102.
    torch.manual_seed(0)
    model = _LambdaBlock()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    before = fingerprint(model, opt)
    report = run_probes(model, nn.CrossEntropyLoss(), batch, opt)
    assert report.findings == []
    assert report.probes[2].data["notes"] == [
        "the model holds a function that captures the model's own modules or tensors"
        " (e.g. self.f = lambda x: self.fc(x)), which a copy would still share: probed in place and restored"
    ]
    assert fingerprint(model, opt) == before


def test_snapshot_restores_in_place_after_arbitrary_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    model[2].weight.grad = None
    before = fingerprint(model, opt)
    weight = model[0].weight
    snap = Snapshot.capture(model, opt)
    with torch.no_grad():
        weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    model[0].bias.grad = None
    model[2].weight.grad = torch.ones_like(model[2].weight)
    model[0].weight.requires_grad_(False)
    model.eval()
    model[1]._buffers["running_var"] = torch.zeros(4)
    opt.param_groups[0]["lr"] = 5.0
    opt.state[model[0].weight]["exp_avg"].zero_()
    opt.state.pop(model[2].bias)
    torch.rand(3)
    random.random()
    np.random.rand()
    snap.restore()
    assert model[0].weight is weight
    assert fingerprint(model, opt) == before


def test_preserved_does_not_bump_versions_of_untouched_tensors():
    model = nn.Linear(3, 1)
    out = (model(torch.randn(2, 3)) ** 2).sum()  # a graph that saved the weight
    with preserved(model):
        pass
    out.backward()  # would raise if restore had written into the saved weight
    assert model.weight.grad is not None


def test_same_bits_distinguishes_bits_not_values():
    nan = torch.tensor([float("nan")])
    assert same_bits(nan, nan.clone())
    assert not same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert not same_bits(torch.zeros(2), torch.zeros(2, dtype=torch.float64))


# --------------------------------------------------------------------------------- healthy


@pytest.mark.parametrize(
    "factory",
    [
        "make_mlp",
        "make_mlp_default_optimizer",
        "make_cnn",
        "make_frozen",
        "make_regression",
        "make_dict_batch",
        "make_float16_table",
    ],
)
def test_healthy_models_have_no_finding(factory):
    made = getattr(healthy, factory)()
    report = run_probes(*_args(made), target=factory)
    initial = "skipped" if factory == "make_regression" else "pass"  # MSE: not a classification loss
    assert [(p.name, p.status) for p in report.probes] == [
        ("devices", "pass"),
        ("finite", "pass"),
        ("updates", "pass"),
        ("initial-loss", initial),
        ("batch-independence", "pass"),
        ("overfit", "pass"),
    ]
    assert report.findings == []
    assert report.exit_code() == 0
    overfit = report.probes[-1]
    assert overfit.data["memorized"] is True
    assert overfit.data["steps"] < 100  # stopped early
    # the training loss, or the loss in eval mode (dropout off), reached the target
    assert min(overfit.data["final_loss"], overfit.data.get("eval_loss", math.inf)) <= overfit.data["threshold"]
    assert overfit.message.startswith(f"memorized in {overfit.data['steps']} steps")


def test_a_slow_optimizer_on_a_healthy_model_is_projected_not_reported():
    made = healthy.make_plain_sgd()
    report = run_probes(*_args(made))
    assert report.findings == [] and report.exit_code() == 0
    d = report.probes[-1].data
    assert (d["memorized"], d["steps"], d["max_steps"]) == (False, 400, 400)
    assert d["final_loss"] > d["threshold"]
    assert 400 < d["projected_steps"] <= curves.HORIZON * 100
    assert d["verdict"] == "slow"
    assert report.probes[-1].message.startswith("slow: loss 2.34 -> 1.282 in 400 steps and still falling")
    capped = check_overfit(*_args(made), steps=100).data  # an explicit budget is not extended
    assert (capped["memorized"], capped["steps"], capped["max_steps"]) == (False, 100, 100)
    assert capped["projected_steps"] <= curves.HORIZON * 100
    ten_times_slower = dict(made, optimizer=torch.optim.SGD(made["model"].parameters(), lr=0.001))
    d = _overfit_finding(ten_times_slower).details  # would need thousands of steps: too slow
    assert (d["trend"], d["steps"], d["causes"][0]) == ("slow", 400, "learning-rate")
    assert "projected_steps" not in d
    falling = [2.34, 2.33, 2.32, 2.31, 2.30, 2.29, 2.28, 2.27]  # 0.01 a step: 204 more steps to 0.234
    assert curves.projected_steps(falling, 0.234) == 7 + 204
    assert curves.projected_steps([1.0] * 8, 0.1) is None


def test_a_buffer_kept_in_another_dtype_and_cast_where_used_passes():
    result = check_devices(*_args(healthy.make_float16_table()))
    assert result.status == "pass" and result.findings == []
    assert result.data == {"device": "cpu", "dtype": "float32", "cast_on_use": ["table"]}
    assert result.message == (
        "1 model tensor of another dtype (table) never reaches the output: the forward and the loss stay float32"
    )


def test_a_float64_buffer_that_promotes_the_output_is_a_dtype_mismatch():
    report = run_probes(*_args(buggy.make_float64_buffer()))
    assert [(f.code, f.details) for f in report.findings] == [
        ("SEN104", {"tensors": [{"name": "scale", "dtype": "float64", "expected": "float32"}]}),
    ]
    assert "cast_on_use" not in report.probes[0].data


class _Fourier(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(4, dtype=torch.float64))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        a = x * self.freqs  # the features are computed in float64, then cast back
        return self.fc(torch.cat([a.sin(), a.cos()], -1).float())


def test_a_wider_buffer_is_reported_even_when_cast_back():
    torch.manual_seed(0)
    result = check_devices(_Fourier(), nn.CrossEntropyLoss(), (torch.rand(6, 1), torch.randint(0, 2, (6,))))
    assert [(f.code, f.details) for f in result.findings] == [
        ("SEN104", {"tensors": [{"name": "freqs", "dtype": "float64", "expected": "float32"}]}),
    ]


def test_overfit_data_of_a_healthy_mlp():
    result = check_overfit(*_args(healthy.make_mlp()))
    assert result.status == "pass" and result.findings == []
    d = result.data
    assert d["steps"] == 21 and d["max_steps"] == 100
    assert d["optimizer"] == "Adam(lr=0.01)"
    assert d["threshold"] == pytest.approx(0.1 * d["initial_loss"])
    assert d["curve"][0] == pytest.approx(d["initial_loss"], rel=1e-5)
    assert d["curve"][-1] == pytest.approx(d["final_loss"], rel=1e-5)
    assert d["initial_loss"] == pytest.approx(2.33977, rel=1e-4)


def test_label_smoothing_floor_is_taken_into_account():
    made = healthy.make_mlp()
    made["loss_fn"] = nn.CrossEntropyLoss(label_smoothing=0.1)
    result = check_overfit(*_args(made))
    floor = curves.smoothed_ce_floor(10, 0.1)
    assert result.status == "pass"
    assert result.data["threshold"] == pytest.approx(floor + 0.1 * (result.data["initial_loss"] - floor))


# ------------------------------------------------------------------------------------ SEN102


def _updates(made: dict) -> list[dict]:
    result = check_updates(*_args(made))
    assert result.status == "fail"
    assert [f.code for f in result.findings] == ["SEN102"]
    return result.findings[0].details["parameters"]


def test_unused_layer_gets_no_grad():
    assert _updates(buggy.make_unused_layer()) == [
        {"name": "aux.weight", "reason": "no-grad"},
        {"name": "aux.bias", "reason": "no-grad"},
    ]


def test_detached_intermediate_cuts_the_encoder_off():
    assert _updates(buggy.make_detached()) == [
        {"name": "encoder.weight", "reason": "no-grad"},
        {"name": "encoder.bias", "reason": "no-grad"},
    ]


def test_parameter_group_left_out_of_the_optimizer():
    assert _updates(buggy.make_missing_param_group()) == [
        {"name": "head.weight", "reason": "not-in-optimizer"},
        {"name": "head.bias", "reason": "not-in-optimizer"},
    ]


def test_lr_zero_leaves_every_parameter_unchanged():
    made = buggy.make_lr_zero()
    params = _updates(made)
    assert params == [{"name": n, "reason": "unchanged"} for n in ("0.weight", "0.bias", "2.weight", "2.bias")]


def test_zero_gradient_and_frozen_parameters():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)
            self.fc = nn.Linear(4, 2)
            self.gate = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.fc(self.frozen(x)) + 0.0 * self.gate  # the gate's gradient is exactly 0

    torch.manual_seed(0)
    model = Gated()
    batch = (torch.randn(6, 4), torch.randint(0, 2, (6,)))
    result = check_updates(model, nn.CrossEntropyLoss(), batch)
    assert result.findings[0].details == {"parameters": [{"name": "gate", "reason": "zero-grad"}]}
    assert "frozen" not in result.findings[0].message
    assert result.data["optimizer"] == "Adam(lr=0.01), the default: no optimizer given"


def test_frozen_layer_is_never_reported_even_with_lr_zero():
    made = healthy.make_frozen()
    made["optimizer"] = torch.optim.SGD([p for p in made["model"].parameters() if p.requires_grad], lr=0.0)
    assert _updates(made) == [
        {"name": "2.weight", "reason": "unchanged"},
        {"name": "2.bias", "reason": "unchanged"},
    ]


def test_whole_graph_detached():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = torch.randn(5, 4), torch.randn(5, 2)
    result = check_updates(model, lambda out, t: ((out.detach() - t) ** 2).mean(), (x, y))
    assert result.findings[0].details["parameters"] == [
        {"name": "weight", "reason": "no-grad"},
        {"name": "bias", "reason": "no-grad"},
    ]
    overfit = check_overfit(model, lambda out, t: ((out.detach() - t) ** 2).mean(), (x, y))
    d = overfit.findings[0].details
    assert (d["steps"], d["trend"], d["causes"][0]) == (0, "flat", "detached-graph")


# ------------------------------------------------------------------------------------ SEN101


def _overfit_finding(made: dict, **kw):
    result = check_overfit(*_args(made), **kw)
    assert result.status == "fail"
    assert [f.code for f in result.findings] == ["SEN101"]
    return result.findings[0]


def test_softmax_into_cross_entropy_cannot_overfit():
    f = _overfit_finding(buggy.make_softmax_into_cross_entropy())
    d = f.details
    assert d["trend"] == "plateau"
    assert d["causes"] == ["probabilities-into-cross-entropy", "learning-rate", "detached-graph", "labels"]
    assert d["steps"] == 100 and d["max_steps"] == 100
    assert d["min_loss"] > 1.4  # the floor of CE on probabilities over 10 classes is ~1.46
    assert {"initial_loss", "final_loss", "steps", "min_loss", "curve"} <= set(d)
    assert len(d["curve"]) == 21
    assert "outputs probabilities" in f.message and "remove the final softmax" in f.message


def test_lr_zero_curve_is_flat():
    d = _overfit_finding(buggy.make_lr_zero()).details
    assert d["trend"] == "flat"
    assert d["causes"][0] == "learning-rate"
    assert d["initial_loss"] == d["final_loss"] == d["min_loss"]
    assert d["optimizer"] == "SGD(lr=0)"


@pytest.mark.filterwarnings("ignore:Using a target size")
def test_target_shape_broadcast_is_named():
    f = _overfit_finding(buggy.make_target_shape_broadcast())
    assert f.details["causes"][0] == "labels"
    assert "target shape (24,) differs from output shape (24, 1)" in f.message
    assert f.details["trend"] == "plateau"


def test_missing_param_group_leads_the_causes():
    f = _overfit_finding(buggy.make_missing_param_group(), steps=100)
    assert f.details["causes"][0] == "not-in-optimizer"


def test_diverging_curve_reports_the_nonfinite_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1))
    batch = (torch.randn(16, 4), torch.randn(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    d = _overfit_finding({"model": model, "loss_fn": nn.MSELoss(), "batch": batch, "optimizer": opt}).details
    assert d["trend"] == "diverging"
    assert math.isinf(d["final_loss"]) or math.isnan(d["final_loss"])
    assert d["nonfinite_step"] == d["steps"]
    assert d["causes"][0] == "learning-rate"
    report = Report("t", "cpu", [ProbeResult("overfit", "fail", findings=[Finding("SEN101", "m", d)])])

    def no_bare_constants(token):
        raise AssertionError(f"non-standard JSON token {token}")

    strict = json.loads(report.to_json(), parse_constant=no_bare_constants)
    assert strict["findings"][0]["details"]["final_loss"] in ("NaN", "Infinity")


def test_overfit_steps_argument():
    d = _overfit_finding(buggy.make_lr_zero(), steps=7).details
    assert d["steps"] == 7 and d["max_steps"] == 7
    with pytest.raises(ValueError):
        check_overfit(*_args(buggy.make_lr_zero()), steps=0)


@pytest.mark.parametrize(
    ("curve", "trend"),
    [
        ([1.0, 1.0, 1.001, 0.999, 1.0], "flat"),
        ([1.0, 1.5, 2.0, 4.0], "diverging"),
        ([1.0, float("nan")], "diverging"),
        ([1.0, 0.5, 1.2, 0.4, 1.1, 0.6, 0.95], "noisy"),
        ([1.0, 0.7, 0.6, 0.55, 0.55, 0.55, 0.55, 0.55], "plateau"),
        ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], "slow"),
    ],
)
def test_curve_classification(curve, trend):
    assert curves.classify(curve) == trend


def test_curve_threshold_and_subsample():
    assert curves.threshold(2.0) == pytest.approx(0.2)
    assert curves.threshold(0.0) == curves.ABS_FLOOR
    assert curves.subsample(list(range(101)), 5) == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert curves.subsample([1.0, 2.0]) == [1.0, 2.0]


# ------------------------------------------------------------------------------------ SEN105


def _finite_details(made: dict, **kw) -> dict:
    result = check_finite(*_args(made), **kw)
    assert result.status == "fail", result.message
    assert [f.code for f in result.findings] == ["SEN105"]
    return result.findings[0].details


def test_nan_for_some_inputs_is_blamed_on_the_log_module():
    assert _finite_details(buggy.make_nan_for_some_inputs()) == {
        "stage": "forward",
        "module": "logf",
        "parameter": None,
        "step": 0,
        "value": "nan",
        "indices": [3],
    }


def test_inf_in_backward_only_is_blamed_on_the_sqrt():
    assert _finite_details(buggy.make_inf_in_backward()) == {
        "stage": "backward",
        "module": "dist",
        "parameter": None,
        "step": 0,
        "op": "SqrtBackward0",
        "value": "inf",
    }


def test_nan_in_the_inputs():
    made = healthy.make_mlp()
    x, y = made["batch"]
    x = x.clone()
    x[1, 2] = float("nan")
    made["batch"] = (x, y)
    assert _finite_details(made) == {
        "stage": "input",
        "module": None,
        "parameter": None,
        "step": 0,
        "tensor": "batch[0]",
        "value": "nan",
    }


def test_inf_in_the_loss():
    made = healthy.make_regression()
    made["loss_fn"] = lambda out, y: torch.log((out - out).abs()).mean()  # log(0)
    assert _finite_details(made) == {
        "stage": "loss",
        "module": None,
        "parameter": None,
        "step": 0,
        "value": "inf",
    }


def test_nan_parameter_is_named_in_the_forward_stage():
    made = healthy.make_mlp()
    with torch.no_grad():
        made["model"][2].weight[0, 0] = float("nan")
    assert _finite_details(made) == {
        "stage": "forward",
        "module": "2",
        "parameter": "2.weight",
        "step": 0,
        "value": "nan",
    }


def test_update_stage_and_later_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    batch = (torch.randn(8, 4), torch.randn(8, 1))
    inf_lr = {
        "model": model,
        "loss_fn": nn.MSELoss(),
        "batch": batch,
        "optimizer": torch.optim.SGD(model.parameters(), lr=float("inf")),
    }
    assert _finite_details(inf_lr) == {
        "stage": "update",
        "module": "0",
        "parameter": "0.weight",
        "step": 0,
        "value": "inf",
    }
    huge_lr = dict(inf_lr, optimizer=torch.optim.SGD(model.parameters(), lr=1e25))
    d = _finite_details(huge_lr)
    assert (d["stage"], d["module"], d["step"]) == ("forward", "1", 1)


def test_finite_probe_passes_and_counts_steps():
    result = check_finite(*_args(healthy.make_cnn()), steps=2)
    assert result.status == "pass" and result.data == {"steps": 2}


def test_localize_is_reusable_and_restores():
    made = buggy.make_inf_in_backward()
    model, loss_fn, batch, opt = _args(made)
    before = fingerprint(model, opt)
    finding = localize(model, loss_fn, batch, opt, 41)
    assert finding is not None and finding.code == "SEN105"
    d = finding.details
    assert (d["stage"], d["module"], d["step"]) == ("backward", "dist", 41)
    assert fingerprint(model, opt) == before
    healthy_made = healthy.make_mlp()
    assert localize(*_args(healthy_made), 0) is None


def test_localize_with_compute_loss_and_no_batch():
    made = buggy.make_nan_for_some_inputs()
    model, loss_fn, (x, y), _ = _args(made)
    finding = localize(model, None, None, None, 3, compute_loss=lambda m, lf, b: nn.functional.cross_entropy(m(x), y))
    assert finding.details == {
        "stage": "forward",
        "module": "logf",
        "parameter": None,
        "step": 3,
        "value": "nan",
        "indices": [3],
    }


def test_inplace_relu_does_not_move_the_blame():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU(inplace=True)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.act(self.fc(x)))

    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.fc.bias[0] = float("inf")  # fc's output is Inf, the in-place ReLU then rewrites it
    batch = (torch.randn(3, 4), torch.randint(0, 2, (3,)))
    d = _finite_details({"model": model, "loss_fn": nn.CrossEntropyLoss(), "batch": batch})
    assert (d["stage"], d["module"], d["parameter"]) == ("forward", "fc", "fc.bias")


def test_cheap_finiteness_checks():
    t = [torch.ones(3), None, torch.tensor([1, 2]), torch.tensor([1.0, float("inf")])]
    assert first_nonfinite(t) == 3
    assert not all_finite(t)
    assert all_finite([torch.ones(2), torch.zeros(0), torch.ones(1, device="meta")])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64])
def test_exact_finiteness_and_kind_of_a_non_finite_tensor(dtype):
    t = torch.linspace(-2, 2, 40).to(dtype)
    assert _nonfinite_kind(t) is None and _exactly_finite(t)
    t[7] = float("-inf")
    assert _nonfinite_kind(t) == "Inf" and not _exactly_finite(t) and _kind(t) == "Inf"
    t[30] = float("nan")
    assert _nonfinite_kind(t) == "NaN" and not _exactly_finite(t) and _kind(t) == "NaN"
    # huge finite values whose sum overflows are finite; no entries at all is finite
    big = torch.full((8,), torch.finfo(torch.float32).max / 2)
    assert not torch.isfinite(big.sum()) and _nonfinite_kind(big) is None
    assert _nonfinite_kind(torch.zeros(0, dtype=dtype)) is None
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 3]]), torch.tensor([1.0, float("nan")]), (5,))
    assert _kind(sparse) == "NaN" and not _exactly_finite(sparse)


# -------------------------------------------------------------------------------- SEN103/104


def test_meta_buffer_is_a_device_mismatch_and_the_rest_is_skipped():
    made = buggy.make_meta_buffer()
    devices = check_devices(*_args(made))
    assert devices.status == "fail"
    assert [(f.code, f.details) for f in devices.findings] == [
        ("SEN103", {"tensors": [{"name": "scale", "device": "meta", "expected": "cpu"}]}),
    ]
    report = run_probes(*_args(made))
    assert [(p.name, p.status) for p in report.probes] == [
        ("devices", "fail"),
        ("finite", "skipped"),
        ("updates", "skipped"),
        ("initial-loss", "skipped"),
        ("batch-independence", "skipped"),
        ("overfit", "skipped"),
    ]
    assert report.probes[1].message == (
        "not run: SEN103 device-mismatch: scale (meta) (model raised RuntimeError: Tensor on device"
        " meta is not on the expected device cpu!)"
    )
    assert report.codes() == ["SEN103"] and report.exit_code() == 1


def test_standalone_probe_on_a_mismatch_is_an_error_naming_it():
    result = check_overfit(*_args(buggy.make_meta_buffer()))
    assert result.status == "error"
    assert result.message.endswith("caused by SEN103 device-mismatch: scale (meta)")
    assert not result.ok


def test_float64_inputs():
    made = buggy.make_float64_inputs()
    report = run_probes(*_args(made))
    assert [(f.code, f.details) for f in report.findings] == [
        ("SEN104", {"tensors": [{"name": "batch[0]", "dtype": "float64", "expected": "float32"}]}),
    ]
    assert [p.status for p in report.probes] == ["fail", "skipped", "skipped", "skipped", "skipped", "skipped"]


def test_int32_labels_into_cross_entropy():
    result = check_devices(*_args(buggy.make_int32_labels()))
    assert result.findings[0].code == "SEN104"
    assert result.findings[0].details == {
        "tensors": [{"name": "batch[1]", "dtype": "int32", "expected": "int64"}],
    }
    assert "y.long()" in result.findings[0].message


def test_int64_labels_are_not_a_dtype_mismatch():
    assert check_devices(*_args(healthy.make_mlp())).status == "pass"


def test_float64_targets_are_reported_but_do_not_stop_the_other_probes():
    made = healthy.make_regression()
    x, y = made["batch"]
    made["batch"] = (x, y.double())
    report = run_probes(*_args(made))
    assert report.findings[0].details == {
        "tensors": [{"name": "batch[1]", "dtype": "float64", "expected": "float32"}],
    }
    assert [p.status for p in report.probes] == ["fail", "pass", "pass", "skipped", "pass", "pass"]


def test_batch_optimizer_state_and_device_argument():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters())
    opt.state[model.weight]["exp_avg"] = torch.zeros(2, 4, device="meta")
    opt.state[model.weight]["exp_avg_sq"] = torch.zeros(2, 4, dtype=torch.float64)
    opt.state[model.weight]["step"] = torch.tensor(3.0)  # 0-dim CPU scalars are fine anywhere
    batch = {"inputs": torch.randn(3, 4), "targets": torch.randn(3, 2, device="meta")}
    result = check_devices(model, nn.MSELoss(), batch, opt, device="cpu")
    assert [(f.code, f.details) for f in result.findings] == [
        (
            "SEN103",
            {
                "tensors": [
                    {"name": 'batch["targets"]', "device": "meta", "expected": "cpu"},
                    {"name": "optimizer.state[weight].exp_avg", "device": "meta", "expected": "cpu"},
                ]
            },
        ),
        (
            "SEN104",
            {
                "tensors": [
                    {"name": "optimizer.state[weight].exp_avg_sq", "dtype": "float64", "expected": "float32"},
                ]
            },
        ),
    ]
    assert result.data == {"device": "cpu", "dtype": "float32"}


# ------------------------------------------------------------------------- batch conventions


def test_batch_conventions():
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    p = plan((x, y))
    assert p.args[0] is x and p.targets is y and p.target_name == "batch[1]"
    p = plan(((x, x), y))
    assert len(p.args) == 2 and p.target_name == "batch[1]"
    p = plan((x, x, y))
    assert len(p.args) == 2 and p.input_names == ["batch[0]", "batch[1]"]
    p = plan({"inputs": {"a": x}, "labels": y})
    assert p.kwargs == {"a": x} and p.target_name == 'batch["labels"]'
    p = plan({"ids": x, "mask": x, "y": y})
    assert set(p.kwargs) == {"ids", "mask"} and p.target_name == 'batch["y"]'
    p = plan(x)
    assert p.args == (x,) and not p.has_targets
    Batch = namedtuple("Batch", ["inputs", "targets"])
    p = plan(Batch(x, y))
    assert p.args == (x,) and p.target_name == "batch.targets"


class _Weighted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x, weights):
        return self.fc(x) * weights


class _ByKeyword(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, **fields):
        return self.fc(fields["x"]) * fields["weights"]


class _Positional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, features, weights=None):
        return self.fc(features) * (1 if weights is None else weights)


def test_extra_fields_of_a_dict_batch_reach_the_model_by_keyword():
    x, w, y = torch.randn(4, 3), torch.rand(4, 1), torch.randint(0, 2, (4,))
    batch = {"x": x, "weights": w, "mask": torch.ones(4), "targets": y}
    p = plan(batch, _Weighted())  # forward(x, weights): everything it names, by keyword
    assert p.args == () and set(p.kwargs) == {"x", "weights"} and p.target_name == 'batch["targets"]'
    p = plan(batch, _ByKeyword())  # forward(**fields): every field but the target
    assert p.args == () and set(p.kwargs) == {"x", "weights", "mask"}
    p = plan(batch, _Positional())  # forward(features, weights): x positionally, weights by name
    assert p.args[0] is x and set(p.kwargs) == {"weights"}
    assert p.input_names == ['batch["x"]', 'batch["weights"]']
    for model in (_Weighted(), _ByKeyword(), _Positional()):
        report = run_probes(model, nn.CrossEntropyLoss(), batch, steps=3)
        assert [p.status for p in report.probes[:3]] == ["pass", "pass", "pass"], report.probes


def test_unsupervised_batch_and_compute_loss():
    torch.manual_seed(0)
    auto = nn.Sequential(nn.Linear(6, 2), nn.Linear(2, 6))
    x = torch.randn(10, 6)
    report = run_probes(auto, None, x, compute_loss=lambda m, lf, b: ((m(b) - b) ** 2).mean(), steps=5)
    assert [p.status for p in report.probes[:3]] == ["pass", "pass", "pass"]
    report = run_probes(nn.Linear(6, 1), lambda out: out.pow(2).mean(), (x,), steps=5)
    assert [p.status for p in report.probes[:3]] == ["pass", "pass", "pass"]


def test_loss_that_is_not_a_tensor_is_the_users_error():
    result = check_updates(nn.Linear(2, 1), lambda out, y: 1.0, (torch.randn(2, 2), torch.randn(2, 1)))
    assert result.status == "error"
    assert result.message == "loss_fn raised LossTypeError: loss_fn returned a float, not a tensor"


def test_device_argument_validation():
    made = healthy.make_mlp()
    report = run_probes(*_args(made), device="cpu", steps=3)
    assert report.device == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_devices(*_args(made), device="cuda")


# ----------------------------------------------------------------------------------- contract


def test_report_json_contract():
    made = buggy.make_inf_in_backward()
    report = run_probes(*_args(made), target="buggy.py:make_inf_in_backward", steps=10)
    data = json.loads(report.to_json())
    assert set(data) == {"target", "device", "findings", "probes"}
    assert data["target"] == "buggy.py:make_inf_in_backward" and data["device"] == "cpu"
    assert [set(f) for f in data["findings"]] == [{"code", "name", "message", "details"}]
    assert data["findings"][0]["code"] == "SEN105" and data["findings"][0]["name"] == "non-finite-value"
    assert data["findings"][0]["details"]["stage"] == "backward"
    assert [p["name"] for p in data["probes"]] == [
        "devices",
        "finite",
        "updates",
        "initial-loss",
        "batch-independence",
        "overfit",
    ]
    assert [p["status"] for p in data["probes"]][:3] == ["pass", "fail", "pass"]
    assert data["probes"][-1]["status"] == "skipped"
    assert all({"name", "status", "seconds"} <= set(p) and p["seconds"] >= 0 for p in data["probes"])
    assert isinstance(report, Report) and all(isinstance(p, ProbeResult) for p in report.probes)


def test_public_api_is_exactly_the_seven_names():
    import sentinel.probes as probes

    assert probes.__all__ == [
        "check_batch_independence",
        "check_devices",
        "check_finite",
        "check_initial_loss",
        "check_overfit",
        "check_updates",
        "run_probes",
    ]


def test_import_sentinel_stays_torch_free():
    import subprocess

    code = "import sys, sentinel, sentinel.findings, sentinel.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_backward_origin_deep_in_the_graph_is_reached_by_on_demand_hooks():
    class Root(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(6))

        def forward(self, x):
            return torch.sqrt((x * self.w) ** 2)  # finite, but d sqrt(u)/du = inf at u = 0

    torch.manual_seed(0)
    layers = [nn.Linear(6, 6) for _ in range(6)]
    model = nn.Sequential(Root(), *[m for lin in layers for m in (lin, nn.Tanh())], nn.Linear(6, 1))
    x = torch.randn(5, 6)
    x[2, 3] = 0.0
    made = {"model": model, "loss_fn": nn.MSELoss(), "batch": (x, torch.randn(5, 1))}
    d = _finite_details(made)
    assert (d["stage"], d["module"], d["op"], d["value"]) == ("backward", "0", "SqrtBackward0", "inf")


# ------------------------------------------------- SEN105: localized from the failing step itself


class _Counted(nn.Module):
    """Wraps a model and counts its forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize(
    ("make", "where"),
    [("make_inf_in_backward", ("backward", "inner.dist")), ("make_nan_for_some_inputs", ("forward", "inner.logf"))],
)
def test_the_failing_step_is_localized_without_running_the_forward_again(make, where):
    made = getattr(buggy, make)()
    model = _Counted(made["model"])
    x, y = made["batch"]
    loss_fn = made["loss_fn"]
    named = list(model.named_parameters())
    finding = checked_step(model, (x, y), lambda: loss_fn(model(x), y), named, step=4)
    assert model.calls == 1
    d = finding.details
    assert (d["stage"], d["module"], d["step"]) == (*where, 4)


def _backward_origin(model: nn.Module, batch, loss_fn=None) -> dict:
    loss_fn = loss_fn or nn.MSELoss()
    return _finite_details({"model": model, "loss_fn": loss_fn, "batch": batch})


class _Pair(nn.Module):
    """Two sibling branches reading the same tensor; only ``b`` has a derivative that blows up."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(3, 3)
        self.a = nn.Linear(3, 1)
        self.b = _SqrtAbs()

    def forward(self, x):
        h = self.stem(x) * (x[:, :1] * 0)  # exactly 0: sqrt's derivative is inf there
        return self.a(h) + self.b(h)


class _SqrtAbs(nn.Module):
    def forward(self, h):
        return h.abs().sqrt().sum(dim=1, keepdim=True)


def test_siblings_sharing_an_input_blame_the_one_whose_backward_blows_up():
    torch.manual_seed(0)
    d = _backward_origin(_Pair(), (torch.randn(4, 3), torch.randn(4, 1)))
    assert (d["stage"], d["module"], d["op"]) == ("backward", "b", "SqrtBackward0")


class _ScaledBySqrtOfWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.zeros(1))  # sqrt(0): the gradient reaching `gain` is inf
        self.fc = nn.Linear(3, 1)

    def forward(self, x):
        return self.fc(x) * (1 + self.gain.sqrt())


def test_an_origin_that_only_feeds_a_parameter_is_found_and_named():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), _ScaledBySqrtOfWeight())
    d = _backward_origin(model, (torch.randn(4, 3), torch.randn(4, 1)))
    assert (d["stage"], d["module"], d["parameter"], d["op"]) == ("backward", "1", "1.gain", "SqrtBackward0")


def test_a_blow_up_in_the_loss_backward_has_no_module():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(4, 3)

    def rmse(out, y):
        return torch.sqrt(((out - y) ** 2).mean())  # the model fits exactly: sqrt(0)

    with torch.no_grad():
        y = model(x)
    d = _backward_origin(model, (x, y), loss_fn=rmse)
    assert (d["stage"], d["module"], d["op"]) == ("backward", None, "SqrtBackward0")


class _Normalize(nn.Module):
    def forward(self, h):
        return h / h[:, :1]  # a row of zeros becomes 0/0 = NaN


class _Masker(nn.Module):
    """NaN made in a forward, hidden from the loss by nan_to_num; its backward is still NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = _Normalize()
        self.out = nn.Linear(4, 1)

    def forward(self, x):
        h = self.fc(x) * (x[:, :1] != 0)  # exactly 0 where the first input is 0
        return self.out(torch.nan_to_num(self.norm(h), posinf=0.0, neginf=0.0))


def test_a_nan_hidden_from_the_loss_is_still_a_forward_origin():
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    x[1, 0] = 0.0
    d = _backward_origin(_Masker(), (x, torch.randn(3, 1)))
    assert (d["stage"], d["module"], d["value"]) == ("forward", "norm", "nan")


class _InPlaceAfterLog(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.logf = _Log()
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        h = self.logf(self.fc(x))
        h.mul_(2.0)  # overwrites logf's output in place before anything checked it
        return self.head(h)


class _Log(nn.Module):
    def forward(self, h):
        return torch.log(h)


def test_a_value_overwritten_in_place_is_checked_by_an_eager_replay():
    torch.manual_seed(0)
    model = _InPlaceAfterLog()
    made = {"model": model, "loss_fn": nn.MSELoss(), "batch": (torch.randn(6, 3), torch.randn(6, 1))}
    before = fingerprint(model, None)
    d = _finite_details(made)
    assert (d["stage"], d["module"], d["value"]) == ("forward", "logf", "nan")
    assert fingerprint(model, None) == before


class _TinyPath(nn.Module):
    """A bias whose gradient is ~1e-9 of the weights': like a bias before batch norm, it cannot move."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.shift = nn.Parameter(torch.full((3,), 0.5))

    def forward(self, x):
        return self.fc(x) + 1e-9 * self.shift


def _tiny_path(lr: float) -> tuple:
    torch.manual_seed(0)
    model = _TinyPath()
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    return model, nn.CrossEntropyLoss(), batch, torch.optim.SGD(model.parameters(), lr=lr)


def test_update_below_float_precision_is_not_reported():
    model, loss_fn, batch, opt = _tiny_path(0.01)
    result = check_updates(model, loss_fn, batch, opt)
    assert result.status == "pass", result.findings


def test_learning_rate_zero_still_leaves_parameters_unchanged():
    model, loss_fn, batch, opt = _tiny_path(0.0)
    result = check_updates(model, loss_fn, batch, opt)
    assert [f.code for f in result.findings] == ["SEN102"]
    reasons = {p["name"]: p["reason"] for p in result.findings[0].details["parameters"]}
    # a real gradient left unapplied is reported; `shift`'s could not have moved it at any rate
    assert reasons == {"fc.weight": "unchanged", "fc.bias": "unchanged"}
