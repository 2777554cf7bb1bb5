"""Overhead of the loop monitor (``sentinel.watch``) on CPU training steps.

Measures, in one run, the time per training step (zero_grad, forward, loss, backward, Adam step)
of two MLPs and a small CNN, each:

- ``plain``:   no monitor;
- ``watch``:   ``with sentinel.watch():`` (default mode: cheap per-step checks);
- ``full``:    ``with sentinel.watch(mode="full"):`` (every module's output and the parameters
  checked for NaN/Inf on every step, global module hooks on all the time);
- ``anomaly``: ``with torch.autograd.set_detect_anomaly(True):`` (PyTorch's own NaN hunting).

The variants are interleaved round by round (plain, watch, full, anomaly, plain, ...) so that load
drifts on a shared machine hit all of them alike. Time is the process's CPU time
(``time.process_time``), with one intra-op thread by default: wall-clock time of tiny CPU steps on
a busy machine mostly measures the scheduler. The figure per variant is the median over rounds of
the mean step time of a round; ratios are relative to ``plain``, and ``+us`` is the absolute cost
per step. ``paired`` is the median over rounds of the ratio to the ``plain`` run of the same round
(neighbours in time see the same load: the steadiest ratio on a shared machine).

Usage::

    python benchmarks/watch_overhead.py [--rounds 15] [--steps 40] [--threads 1] [--wall]
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

Make = Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]]


def make_tiny_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Worst case for a per-step fixed cost: a ~1 ms step."""
    model = nn.Sequential(
        nn.Linear(128, 256),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(256, 10),
    )
    return model, torch.randn(64, 128), torch.randint(0, 10, (64,))


def make_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MNIST-sized MLP."""
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 512),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(256, 10),
    )
    return model, torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))


def make_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(32 * 8 * 8, 10),
    )
    return model, torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))


MODELS: list[tuple[str, Make]] = [
    ("tiny MLP 128-256-256-10, batch 64", make_tiny_mlp),
    ("MLP 784-512-256-10, batch 128", make_mlp),
    ("CNN 2x(conv+BN), 32x32x3, batch 32", make_cnn),
]


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    if name == "plain":
        yield
    elif name in ("watch", "full"):
        with sentinel.watch(mode="full" if name == "full" else "default") as w:
            yield
        assert not w.findings, w.findings
    elif name == "anomaly":
        with torch.autograd.set_detect_anomaly(True):
            yield
    else:  # pragma: no cover
        raise ValueError(name)


def run_round(make: Make, name: str, steps: int, clock: Callable[[], float]) -> float:
    torch.manual_seed(0)
    model, x, y = make()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    with variant(name):
        for i in range(steps + 3):
            if i == 3:  # the first steps (model discovery, allocator warm-up) are not timed
                start = clock()
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    return (clock() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave torch's default)")
    parser.add_argument("--wall", action="store_true", help="wall-clock time instead of CPU time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.process_time
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{'wall' if args.wall else 'CPU'} time, median of {args.rounds} rounds x {args.steps} steps"
    )
    for label, make in MODELS:
        for name in VARIANTS:  # warm-up: imports, first-call costs
            run_round(make, name, 3, clock)
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name in VARIANTS:
                times[name].append(run_round(make, name, args.steps, clock))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        paired = {
            name: statistics.median(t / p for t, p in zip(ts, times["plain"], strict=True))
            for name, ts in times.items()
        }
        print(f"\n{label}")
        print(f"  {'variant':<8} {'ms/step':>9} {'ratio':>7} {'+us/step':>9} {'paired':>7}")
        for name in VARIANTS:
            extra = (med[name] - med["plain"]) * 1e6
            print(
                f"  {name:<8} {med[name] * 1e3:9.3f} {med[name] / med['plain']:6.3f}x {extra:9.0f} {paired[name]:6.3f}x"
            )


if __name__ == "__main__":
    main()
