"""The loop monitor's Python API: ``with sentinel.watch(...) as w: <the user's loop>``.

Every loop here is the kind of code a user writes; the monitor is never told anything about it
beyond (sometimes) the model or optimizer. Seeded, CPU only, a few ms per loop.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_mod
from torch.optim import optimizer as optimizer_mod

import sentinel
from sentinel.findings import Report
from sentinel.probes.state import same_bits
from sentinel.probes.watch import Watch, WatchError, watch

# ----------------------------------------------------------------------------------------- helpers


def codes(w: Watch) -> list[str]:
    return [f.code for f in w.findings]


def details(w: Watch, code: str) -> dict:
    (found,) = [f for f in w.findings if f.code == code]
    return found.details


def global_hooks() -> tuple[int, ...]:
    return (
        len(module_mod._global_forward_pre_hooks),
        len(module_mod._global_forward_hooks),
        len(module_mod._global_forward_hooks_with_kwargs),
        len(module_mod._global_forward_hooks_always_called),
        len(optimizer_mod._global_optimizer_pre_hooks),
        len(optimizer_mod._global_optimizer_post_hooks),
    )


def local_hooks(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
    for p in model.parameters():
        n += len(p._backward_hooks or {})
    return n


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 1))


def regression(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 6)
    return x, x.sum(dim=1, keepdim=True)


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    *,
    data: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None,
    zero_grad: bool = True,
    keep: list | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss,
) -> list[float]:
    """The textbook loop; ``keep`` collects the loss tensors (the SEN108 bug)."""
    torch.manual_seed(1)
    x, y = regression()
    losses = []
    for step in range(steps):
        xb, yb = data(step) if data is not None else (x, y)
        if zero_grad:
            optimizer.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if keep is not None:
            keep.append(loss)
    return losses


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # tiny CPU ops: intra-op threads only add OpenMP wake-up latency (seconds on a busy machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_hooks_left_behind() -> Iterator[None]:
    before = global_hooks()
    yield
    assert global_hooks() == before


# ------------------------------------------------------------------------------------- the basics


def test_sentinel_watch_is_the_lazy_attribute():
    assert sentinel.watch is watch


def test_healthy_loop_has_no_findings_and_the_report_has_the_contract_shape():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with sentinel.watch() as w:
        train(model, opt, 8)
    report = w.report
    assert isinstance(report, Report)
    assert report.findings == [] and report.exit_code() == 0
    assert w.steps == 8 and not w.stopped and w.models == [model]
    out = json.loads(report.to_json())
    assert set(out) == {"target", "device", "findings", "probes"}
    assert out["target"] == "watch" and out["device"] == "cpu" and out["findings"] == []
    assert [set(p) for p in out["probes"]] == [{"name", "status", "seconds"}]
    assert out["probes"][0]["name"] == "loop-monitor" and out["probes"][0]["status"] == "pass"
    assert report.probes[0].data["steps"] == 8


def test_bad_arguments():
    with pytest.raises(ValueError):
        watch(mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        watch(max_steps=0)
    with pytest.raises(TypeError):
        watch(model=[mlp(), "not a module"])  # type: ignore[list-item]


def test_watches_do_not_nest():
    with sentinel.watch() as outer:
        with pytest.raises(WatchError):
            sentinel.watch().start()
        assert outer.active
    assert not outer.active


# ----------------------------------------------------------------------------- zero interference


def _loop_with_everything(mode: str | None, steps: int = 12, nan_at: int | None = None, blank_at: int | None = None):
    """Dropout + batch norm (RNG and buffers), Adam, periodic validation; optionally a NaN batch
    (``nan_at``) or a blank record that the ``norm`` layer turns into NaN (``blank_at``)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            drop0=nn.Dropout(0.1),
            norm=L2Normalize(),
            fc=nn.Linear(6, 16),
            bn=nn.BatchNorm1d(16),
            act=nn.ReLU(),
            drop=nn.Dropout(0.3),
            out=nn.Linear(16, 1),
        )
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = regression(96)
    losses, vals = [], []
    ctx = sentinel.watch(mode=mode) if mode is not None else contextlib.nullcontext()
    with ctx as w:
        for step in range(steps):
            idx = torch.randint(0, 96, (16,))
            xb = x[idx].clone()
            if step == nan_at:
                xb[3, 2] = float("nan")
            if step == blank_at:
                xb[3] = 0.0
            opt.zero_grad()
            loss = F.mse_loss(model(xb), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item().hex())
            if step % 4 == 3:
                model.eval()
                with torch.no_grad():
                    vals.append(F.mse_loss(model(x), y).item().hex())
                model.train()
    state = [t.detach().clone() for t in model.state_dict().values()]
    return losses, vals, state, torch.get_rng_state(), w


@pytest.mark.parametrize("mode", ["default", "full"])
def test_watched_run_is_bit_identical_to_the_unwatched_one(mode):
    plain = _loop_with_everything(None)
    watched = _loop_with_everything(mode)
    assert watched[0] == plain[0]  # every loss, bit for bit
    assert watched[1] == plain[1]
    assert all(same_bits(a, b) for a, b in zip(watched[2], plain[2], strict=True))
    assert torch.equal(watched[3], plain[3])  # the monitor drew nothing from the RNG
    assert watched[4].findings == []


@pytest.mark.parametrize("mode", ["default", "full"])
def test_replaying_a_failing_step_changes_nothing(mode):
    plain = _loop_with_everything(None, nan_at=5)
    watched = _loop_with_everything(mode, nan_at=5)
    assert watched[0] == plain[0] and "nan" in watched[0][6]
    assert all(same_bits(a, b) for a, b in zip(watched[2], plain[2], strict=True))
    assert torch.equal(watched[3], plain[3])
    w = watched[4]
    assert codes(w) == ["SEN105"]
    assert details(w, "SEN105") == {
        "stage": "input",
        "module": None,
        "parameter": None,
        "step": 5,
        "tensor": "batch[0]",
    }


@pytest.mark.parametrize("mode", ["default", "full"])
def test_replaying_through_localize_changes_nothing(mode):
    # the replay re-runs the forward pass (dropout draws, batch-norm statistics) and the backward
    plain = _loop_with_everything(None, blank_at=4)
    watched = _loop_with_everything(mode, blank_at=4)
    assert watched[0] == plain[0] and "nan" in watched[0][5]
    assert all(same_bits(a, b) for a, b in zip(watched[2], plain[2], strict=True))
    assert torch.equal(watched[3], plain[3])
    got = details(watched[4], "SEN105")
    assert {k: got[k] for k in ("stage", "module", "parameter", "step")} == {
        "stage": "forward",
        "module": "norm",
        "parameter": None,
        "step": 4,
    }


def test_hooks_are_removed_and_the_exception_surfaces():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(KeyError, match="boom"):
        with sentinel.watch() as w:
            for step in range(5):
                loss = F.mse_loss(model(torch.randn(4, 6)), torch.randn(4, 1))
                loss.backward()
                opt.step()  # no zero_grad: SEN106 at step 1
                if step == 3:
                    raise KeyError("boom")
    assert local_hooks(model) == 0
    assert w.steps == 4 and codes(w) == ["SEN106"]


def test_default_mode_drops_the_global_module_hooks_after_the_first_step():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = global_hooks()
    seen = []
    with sentinel.watch():
        for _ in range(3):
            seen.append(global_hooks()[:2])
            opt.zero_grad()
            F.mse_loss(model(torch.randn(4, 6)), torch.randn(4, 1)).backward()
            opt.step()
    assert seen == [(before[0] + 1, before[1] + 1), before[:2], before[:2]]
    with sentinel.watch(mode="full"):
        opt.zero_grad()
        F.mse_loss(model(torch.randn(4, 6)), torch.randn(4, 1)).backward()
        opt.step()
        assert global_hooks()[:2] == (before[0] + 1, before[1] + 1)


def test_max_steps_stops_the_loop_inside_optimizer_step():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    after_step = []
    with sentinel.watch(max_steps=5) as w:
        for step in range(100):
            opt.zero_grad()
            F.mse_loss(model(torch.randn(4, 6)), torch.randn(4, 1)).backward()
            opt.step()
            after_step.append(step)
    assert after_step == [0, 1, 2, 3] and w.steps == 5 and w.stopped


def test_explicit_model_and_optimizer():
    torch.manual_seed(0)
    model, other = mlp(), mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_other = torch.optim.SGD(other.parameters(), lr=0.1)
    x, y = regression()
    with sentinel.watch(model, opt, max_steps=3) as w:
        for _ in range(10):
            opt_other.zero_grad()  # another model's loop, with its own bug, not watched
            F.mse_loss(other(x), y).backward()
            opt_other.step()
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    assert w.steps == 3 and w.models == [model] and w.findings == []
    assert local_hooks(model) == 0


# --------------------------------------------------------------------------- SEN106 accumulation


def test_missing_zero_grad_is_reported_at_the_second_step():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with sentinel.watch() as w:
        train(model, opt, 6, zero_grad=False)
    assert codes(w) == ["SEN106"] and details(w, "SEN106") == {"step": 1}


def test_zero_grad_every_other_step_is_reported_where_it_is_missing():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = regression()
    with sentinel.watch() as w:
        for step in range(6):
            if step % 3 == 0:
                opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
    assert details(w, "SEN106") == {"step": 1}


@pytest.mark.parametrize("reset", ["set_to_none", "zeros", "model"])
def test_deliberate_gradient_accumulation_is_fine(reset):
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = regression()
    with sentinel.watch() as w:
        for i in range(16):
            F.mse_loss(model(x[i::16]), y[i::16]).backward()
            if i % 4 == 3:
                opt.step()
                if reset == "set_to_none":
                    opt.zero_grad()
                elif reset == "zeros":
                    opt.zero_grad(set_to_none=False)
                else:
                    model.zero_grad()
    assert w.steps == 4 and w.findings == []


# ---------------------------------------------------------------------- SEN102 not updated


class TwoBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Linear(6, 1)
        self.aux = nn.Linear(6, 1)  # contributes 0 * aux(x): exactly zero gradients
        self.unused = nn.Linear(6, 6)
        self.frozen = nn.Linear(6, 1)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + 0.0 * self.aux(x) + self.frozen(x)


@pytest.mark.parametrize("given", [False, True])
def test_parameters_not_updated_with_every_reason(given):
    torch.manual_seed(0)
    model = TwoBranch()
    model.head = nn.Linear(1, 1)  # trainable, never handed to the optimizer
    opt = torch.optim.SGD(
        [
            {"params": [*model.main.parameters(), *model.aux.parameters(), *model.unused.parameters()]},
            {"params": [model.head.weight], "lr": 0.0},  # handed over with lr 0: never moves
        ],
        lr=0.1,
    )

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out * model.head.weight, y)

    with sentinel.watch(model if given else None) as w:
        train(model, opt, 4, loss_fn=loss_fn)
    assert codes(w) == ["SEN102"]
    assert details(w, "SEN102") == {
        "parameters": [
            {"name": "aux.weight", "reason": "zero-grad"},
            {"name": "aux.bias", "reason": "zero-grad"},
            {"name": "unused.weight", "reason": "no-grad"},
            {"name": "unused.bias", "reason": "no-grad"},
            {"name": "head.weight", "reason": "unchanged"},
            {"name": "head.bias", "reason": "not-in-optimizer"},
        ]
    }


def test_bias_before_batch_norm_is_not_reported_as_unchanged():
    # its true gradient is 0 (batch norm removes the mean), numerically ~1e-9: SGD cannot move it
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with sentinel.watch() as w:
        train(model, opt, 5)
    assert w.findings == []


# ------------------------------------------------------------------------------ SEN105 non-finite


class L2Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=1, keepdim=True)


class Distance(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((x * x).sum(dim=1, keepdim=True))


def _batches_with(step: int, edit: Callable[[torch.Tensor, torch.Tensor], None]):
    torch.manual_seed(3)
    batches = [regression(8) for _ in range(8)]
    edit(*batches[step])
    return lambda i: batches[i]


@pytest.mark.parametrize("mode", ["default", "full"])
def test_nan_in_the_forward_pass_names_the_module(mode):
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(norm=L2Normalize(), hidden=nn.Linear(6, 8), out=nn.Linear(8, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def blank(x: torch.Tensor, y: torch.Tensor) -> None:
        x[2] = 0.0

    with sentinel.watch(mode=mode) as w:
        train(model, opt, 8, data=_batches_with(3, blank))
    assert codes(w) == ["SEN105"]
    got = details(w, "SEN105")
    assert {k: got[k] for k in ("stage", "module", "parameter", "step")} == {
        "stage": "forward",
        "module": "norm",
        "parameter": None,
        "step": 3,
    }


def test_nan_in_the_targets_is_a_loss_stage():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def bad_label(x: torch.Tensor, y: torch.Tensor) -> None:
        y[5] = float("nan")

    with sentinel.watch() as w:
        train(model, opt, 8, data=_batches_with(4, bad_label))
    got = details(w, "SEN105")
    assert {k: got[k] for k in ("stage", "module", "parameter", "step")} == {
        "stage": "loss",
        "module": None,
        "parameter": None,
        "step": 4,
    }


def test_nan_only_in_the_backward_pass_names_the_module():
    # sqrt is finite at 0, its derivative is not: the forward pass is clean, the gradient is NaN
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(proj=nn.Linear(6, 4, bias=False), dist=Distance(), out=nn.Linear(1, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def zero_row(x: torch.Tensor, y: torch.Tensor) -> None:
        x[1] = 0.0

    with sentinel.watch() as w:
        train(model, opt, 6, data=_batches_with(2, zero_row))
    got = details(w, "SEN105")
    assert (got["stage"], got["module"], got["step"]) == ("backward", "dist", 2)


@pytest.mark.parametrize("mode", ["default", "full"])
@pytest.mark.parametrize("steps", [1, 4])
def test_nan_made_by_the_optimizer_is_an_update_stage(mode, steps):
    # Adam with eps=0 divides 0 by 0 for weights whose gradient is exactly 0 (an all-zero input column)
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc=nn.Linear(6, 4), out=nn.Linear(4, 1)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=0.0)
    x, y = regression()
    x[:, 0] = 0.0
    with sentinel.watch(mode=mode, max_steps=steps) as w:
        train(model, opt, 10, data=lambda i: (x, y))
    assert codes(w) == ["SEN105"]
    assert details(w, "SEN105") == {"stage": "update", "module": "fc", "parameter": "fc.weight", "step": 0}


# ---------------------------------------------------------------------- SEN107 eval in train mode


def _classifier() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))


@pytest.mark.parametrize("guard", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("when", ["before", "after"])
def test_evaluation_without_eval_mode(guard, when):
    torch.manual_seed(0)
    model = _classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 6), torch.randint(0, 2, (32,))

    def validate() -> None:
        with guard():
            model(x)

    with sentinel.watch() as w:
        if when == "before":
            validate()  # a sanity check before training (the model is not known yet)
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        if when == "after":
            validate()
    assert codes(w) == ["SEN107"] and details(w, "SEN107") == {"modules": ["1", "3"]}


def test_evaluation_in_eval_mode_is_fine_and_dropout_zero_does_not_count():
    torch.manual_seed(0)
    model = _classifier()
    model[3].p = 0.0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 6), torch.randint(0, 2, (32,))
    with sentinel.watch() as w:
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            model.eval()
            with torch.no_grad():
                model(x)
            model.train()
            model[1].eval()  # only batch norm frozen: dropout p=0 is a no-op either way
            with torch.no_grad():
                model(x)
            model[1].train()
    assert w.findings == []


# ------------------------------------------------------------------------- SEN108 retained graphs


@pytest.mark.parametrize("mode", ["default", "full"])
def test_losses_append_keeps_every_graph(mode):
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    kept: list = []
    with sentinel.watch(mode=mode) as w:
        train(model, opt, 10, keep=kept)
    assert codes(w) == ["SEN108"] and details(w, "SEN108") == {"steps": 9}


def test_running_total_of_loss_tensors_keeps_every_graph():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = regression()
    with sentinel.watch(max_steps=7) as w:
        total = 0.0
        for _ in range(100):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            total += loss
    assert details(w, "SEN108") == {"steps": 6}


def test_item_totals_and_the_last_loss_are_fine():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = regression()
    with sentinel.watch() as w:
        total, previous = 0.0, None
        for _ in range(8):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item()
            previous = loss  # one graph kept for a while: bounded, not a leak  # noqa: F841
    assert w.findings == []


# ------------------------------------------------------------------ SEN103/SEN104 devices, dtypes


def test_device_mismatch_is_reported_before_the_forward_pass_fails():
    torch.manual_seed(0)
    model = mlp()
    with pytest.raises(RuntimeError):
        with sentinel.watch() as w:
            model(torch.empty(4, 6, device="meta"))
    assert codes(w) == ["SEN103"]
    assert details(w, "SEN103") == {"tensors": [{"name": "batch[0]", "device": "meta", "expected": "cpu"}]}


class ElementwiseRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(6))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).sum(dim=1, keepdim=True) + self.b


def test_float64_batch_and_float64_targets_into_a_loss_module():
    torch.manual_seed(0)
    model = ElementwiseRegression()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = regression()
    loss_fn = nn.MSELoss()
    with sentinel.watch() as w:
        for _ in range(3):
            opt.zero_grad()
            loss_fn(model(x.double()), y.double()).backward()  # promotes silently, runs in float64
            opt.step()
    assert codes(w) == ["SEN104"]
    assert details(w, "SEN104") == {"tensors": [{"name": "batch[0]", "dtype": "float64", "expected": "float32"}]}
    with sentinel.watch() as w:
        for _ in range(3):
            opt.zero_grad()
            loss_fn(model(x), y.double()).backward()
            opt.step()
    assert details(w, "SEN104") == {
        "tensors": [{"name": "MSELoss.input[1]", "dtype": "float64", "expected": "float32"}]
    }


def test_autocast_mixed_dtypes_are_not_a_mismatch():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = regression()
    with sentinel.watch() as w:
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x.bfloat16())
            F.mse_loss(out.float(), y).backward()
            opt.step()
    assert w.findings == []


# ------------------------------------------------------------------------ two models, two optimizers


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
        self.unused = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("bug", [False, True])
def test_gan_loop(bug):
    # D's gradients from the generator's backward are discarded by d_opt.zero_grad(): not SEN106.
    torch.manual_seed(0)
    gen, disc = Generator(), Discriminator()
    g_opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    d_opt = torch.optim.Adam([*disc.net.parameters()], lr=1e-3)
    real = torch.randn(32, 8)
    ones, zeros = torch.ones(32, 1), torch.zeros(32, 1)
    with sentinel.watch() as w:
        for _ in range(6):
            fake = gen(torch.randn(32, 4))
            d_opt.zero_grad()
            d_loss = F.binary_cross_entropy_with_logits(disc(real), ones)
            d_loss = d_loss + F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros)
            d_loss.backward()
            d_opt.step()
            if not bug:
                g_opt.zero_grad()
            F.binary_cross_entropy_with_logits(disc(fake), ones).backward()
            g_opt.step()
    assert w.models == [disc, gen] and w.steps == 6  # in the order their optimizers first stepped
    expected = {
        "SEN102": {
            "parameters": [
                {"name": "Discriminator.unused.weight", "reason": "not-in-optimizer"},
                {"name": "Discriminator.unused.bias", "reason": "not-in-optimizer"},
            ]
        }
    }
    if bug:
        expected["SEN106"] = {"step": 1}
    assert {f.code: f.details for f in w.findings} == expected
