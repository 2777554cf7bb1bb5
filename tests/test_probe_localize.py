"""SEN105 backward localization from the gradients a failing step's own backward leaves at module
boundaries (sentinel.probes.boundary): on CPU each boundary gradient is checked as it arrives, the
backward stops at the first non-finite one, and only the module call it points at is run again."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sentinel.probes.nonfinite import checked_step


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=None):
    loss_fn = loss_fn or nn.MSELoss()
    named = list(model.named_parameters())
    return checked_step(model, (x, y), lambda: loss_fn(model(x), y), named, step=2)


class _PairDistance(nn.Module):
    def forward(self, h):
        a, b = h.chunk(2, dim=1)
        return torch.sqrt(((a - b) ** 2).sum(dim=1, keepdim=True))  # d sqrt/ds = inf at s = 0


class _Siamese(nn.Module):
    def __init__(self, depth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.body = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(depth)])
        self.dist = _PairDistance()
        self.head = nn.Linear(1, 1)

    def forward(self, x):
        h = self.body(self.stem(x))
        h = torch.cat([h[:, :4], h[:, :4] * (x[:, :1] > -10)], dim=1)  # identical halves: distance 0
        return self.head(self.dist(h))


def test_the_backward_stops_at_the_first_non_finite_boundary_and_names_the_op():
    torch.manual_seed(0)
    model = _Siamese()
    finding = _step(model, torch.randn(6, 8), torch.randn(6, 1))
    d = finding.details
    assert (d["stage"], d["module"], d["op"], d["value"], d["step"]) == (
        "backward", "dist", "SqrtBackward0", "inf", 2,
    )  # fmt: skip
    # nothing under the origin was backpropagated: the layers below never got a gradient
    assert model.stem.weight.grad is None and model.body[0][0].weight.grad is None


class _Split(nn.Module):
    def forward(self, h):
        return h.chunk(2, dim=1)  # two values made by one autograd node


class _Distance(nn.Module):
    def forward(self, a, b):
        return torch.sqrt(((a - b) ** 2).sum(dim=1, keepdim=True))


class _SmallSiamese(nn.Module):
    def __init__(self, split: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.split = _Split() if split else None
        self.dist = _Distance() if split else _PairDistance()
        self.head = nn.Linear(1, 1)

    def forward(self, x):
        h = self.embed(x)
        return self.head(self.dist(*self.split(h)) if self.split is not None else self.dist(h))


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("drop", [False, True])
def test_a_non_finite_gradient_near_the_bottom_is_dropped_or_stops_the_backward(monkeypatch, split, drop):
    # Little of the backward left below the bad boundary gradient: it is replaced by None (an
    # exception through the autograd engine would cost more than the rest); else the backward stops.
    # Either way nothing below it is computed and the origin is the same.
    from sentinel.probes import boundary

    monkeypatch.setattr(boundary, "DROP_SECONDS", 1.0 if drop else 0.0)
    stops = []
    got_now = boundary.BoundaryGrads._got_now

    def spy(self, key, grad):
        try:
            return got_now(self, key, grad)
        except boundary.StopBackward:
            stops.append(key)
            raise

    monkeypatch.setattr(boundary.BoundaryGrads, "_got_now", spy)
    torch.manual_seed(0)
    model = _SmallSiamese(split)
    with torch.no_grad():
        model.embed.weight.copy_(torch.eye(8))
        model.embed.bias.zero_()
    x = torch.randn(6, 8)
    x[2, 4:] = x[2, :4]  # identical halves: distance 0
    d = _step(model, x, torch.randn(6, 1)).details
    assert (d["stage"], d["module"], d["op"], d["value"]) == ("backward", "dist", "SqrtBackward0", "inf")
    assert len(stops) == (0 if drop else 1)
    assert model.embed.weight.grad is None and model.head.weight.grad is not None


class _Gate(nn.Module):
    """Two children with the bad op in the parent's own forward between them."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 4)
        self.out = nn.Linear(4, 1)

    def forward(self, x):
        h = self.inp(x) * (x[:, :1] * 0)  # exactly 0
        return self.out(h.abs().sqrt())  # the parent's own sqrt at 0


def test_an_origin_in_the_enclosing_modules_own_code_names_that_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), _Gate(), nn.Tanh())
    d = _step(model, torch.randn(5, 4), torch.randn(5, 1)).details
    assert (d["stage"], d["module"], d["op"]) == ("backward", "1", "SqrtBackward0")


class _SampleNorm(nn.Module):
    def forward(self, h):
        return h / (torch.sqrt(h.pow(2).mean(dim=(1, 2, 3), keepdim=True)) + 1e-6)


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)) + x)


def test_an_origin_under_the_whole_network_with_in_place_relus_is_exact():
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), _SampleNorm(), nn.ReLU(inplace=True))
    model = nn.Sequential(stem, *[_Block(4) for _ in range(3)], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    x = torch.randn(4, 3, 6, 6)
    x[1] = 0.0  # its stem features are exactly 0: the sample norm's sqrt at 0
    d = _step(model, x, torch.randn(4, 1)).details
    assert (d["stage"], d["module"], d["op"], d["value"]) == ("backward", "0.1", "SqrtBackward0", "nan")


@pytest.mark.parametrize("drop", [False, True])
def test_a_boundary_gradient_whose_sum_overflows_is_not_mistaken_for_an_inf(monkeypatch, drop):
    from sentinel.probes import boundary

    monkeypatch.setattr(boundary, "DROP_SECONDS", 1.0 if drop else 0.0)  # the first one is near the bottom
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1))
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    x = torch.rand(10, 8) * 0.01

    def loss_fn(out, y):
        return out.mean() * 3e38  # each boundary gradient ~3e37: finite, but 80 of them sum to inf

    finding = _step(model, x, torch.zeros(10, 1), loss_fn=loss_fn)
    assert finding is None
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), None).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(got, model.parameters(), strict=True))
    assert all(bool(torch.isfinite(g).all()) for g in got)


def test_a_finite_cpu_backward_keeps_only_the_gradients_a_candidate_could_need():
    # Every call whose inputs all got a finite gradient is cleared, including the calls fed by an
    # in-place ReLU (their input cannot be hooked: cleared once the backward has passed below it).
    # Left: the outputs of the calls whose input is the batch (no gradient: they can only be an
    # origin through their parameters): the stem conv's, and the stem's (its in-place ReLU's).
    from sentinel.probes.boundary import StopBackward
    from sentinel.probes.nonfinite import _Tracer

    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    model = nn.Sequential(stem, *[_Block(4) for _ in range(3)], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    x = torch.randn(4, 3, 6, 6)
    tracer = _Tracer(model, grads=True)
    try:
        loss = model(x).pow(2).mean()
    finally:
        tracer.remove()
    assert tracer.hook_values()
    try:
        loss.backward(retain_graph=True)
    except StopBackward:  # pragma: no cover - the step is finite
        raise AssertionError("a finite backward was stopped") from None
    finally:
        tracer.release()
    kept = {c.name for c in tracer.calls for k in c.outputs if k in tracer.boundary.grads}
    assert kept == {"0", "0.0", "0.2"} and len(tracer.boundary.grads) == 2
    assert len([c for c in tracer.calls if c.outputs]) == 20
