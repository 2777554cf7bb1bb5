"""Overhead of the loop monitor (``sentinel.watch``) on CPU training steps.

Measures, in one run, the time per training step (zero_grad, forward, loss, backward, step) of an
MLP and of a small CNN, each:

- ``plain``:   no monitor;
- ``watch``:   ``with sentinel.watch():`` (default mode: cheap per-step checks);
- ``full``:    ``with sentinel.watch(mode="full"):`` (every module output checked on every step);
- ``anomaly``: ``with torch.autograd.set_detect_anomaly(True):`` (PyTorch's own NaN hunting).

The variants are interleaved round by round (plain, watch, full, anomaly, plain, ...) so that
machine load drifts hit all of them alike; the figure per variant is the median over rounds of the
mean step time of a round. Ratios are relative to ``plain``.

Usage::

    python benchmarks/watch_overhead.py [--rounds 15] [--steps 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

import sentinel

VARIANTS = ("plain", "watch", "full", "anomaly")


def make_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(
        nn.Linear(128, 256), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(256, 10),
    )
    return model, torch.randn(64, 128), torch.randint(0, 10, (64,))


def make_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 8 * 8, 10),
    )
    return model, torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    if name == "plain":
        yield
    elif name == "watch":
        with sentinel.watch() as w:
            yield
        assert not w.findings, w.findings
    elif name == "full":
        with sentinel.watch(mode="full") as w:
            yield
        assert not w.findings, w.findings
    elif name == "anomaly":
        with torch.autograd.set_detect_anomaly(True):
            yield
    else:  # pragma: no cover
        raise ValueError(name)


def run_round(make: Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]], name: str, steps: int) -> float:
    torch.manual_seed(0)
    model, x, y = make()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    with variant(name):
        for i in range(steps + 3):
            if i == 3:  # the first steps (discovery, allocator warm-up) are not timed
                start = time.perf_counter()
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: steadier figures on a shared machine; 0: torch's default)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps")
    for label, make in (("MLP 128-256-256-10, batch 64", make_mlp), ("CNN 2 conv+BN, 32x32x3, batch 32", make_cnn)):
        for name in VARIANTS:  # warm-up: imports, first-call costs
            run_round(make, name, 3)
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name in VARIANTS:
                times[name].append(run_round(make, name, args.steps))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        print(f"\n{label}")
        print(f"  {'variant':<8} {'ms/step':>9} {'ratio':>7}")
        for name in VARIANTS:
            print(f"  {name:<8} {med[name] * 1e3:9.3f} {med[name] / med['plain']:7.3f}x")


if __name__ == "__main__":
    main()
