"""How fast is `sentinel probe`, and what does NaN localization cost next to detect_anomaly?

Run:  python benchmarks/probe_speed.py [--threads N] [--repeat R] [--only NAME]

Prints, in one run:

1. wall time of the whole probe suite (``run_probes``) on the small MLP and the small CNN of
   ``fixtures/probes/healthy.py`` on CPU: the first ("cold": includes torch's one-off lazy imports
   on the first optimizer) and the median of R warm runs, with the per-probe split. Target < 5 s.
2. the per-step cost of ``checked_step`` (the finite probe's traced step) on those healthy models
   against the same step with the cheap finiteness checks only.
3. on a model whose forward makes a NaN for one sample (``fixtures/probes/buggy.py:make_nan_for_some_inputs``)
   and on models whose backward produces an Inf/NaN (``fixtures/probes/buggy.py:make_inf_in_backward``,
   a 12-block residual MLP, a 4-layer transformer encoder and a 16-block ResNet-style CNN with
   in-place ReLUs and batch norm, with the same bug; the deep CNN also with a NaN made in its last
   block's forward, and with a backward NaN at its stem, under the whole network): the time of one
   failing step under ``torch.autograd.detect_anomaly()`` (until it raises) against the finite
   probe's ``checked_step`` on the same step, and what localization adds to it (the checked step
   minus the same step with the cheap checks only): the ratio localization / anomaly step is the
   target (<= 0.2). Also the plain step, the cheap check, ``localize()`` replaying the step from
   scratch (what the loop monitor does), what each one
   blames, and whether sentinel's answer is the exact origin (stage, module, step).

Timings: one intra-op thread by default (``--threads``): on a shared machine torch's threads wait
on each other and a step's time mostly measures the scheduler (a small CNN's step went from 30 ms
to over a second under load with 2 threads). The contenders run interleaved, one call each per
round, R rounds, in an order shuffled every round (seeded): a call runs slower right after one that
evicted the caches, and the anomaly step does (it records a Python traceback per autograd node);
in a fixed order the checked step always came right after it while the step with the cheap checks
it is compared with came right after the plain step, warm, which put up to half of a small model's
"localization" down to cold caches. The figures are the median over the rounds (wall clock, and
CPU time of the process), and each ratio is the median of the per-round ratios (so every ratio
compares calls made side by side, under the same load). The load average is printed. Not a test:
no assertion, just figures.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import random
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from sentinel.probes import run_probes
from sentinel.probes.nonfinite import all_finite, checked_step, localize
from sentinel.probes.workspace import synchronize

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "fixtures" / "probes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(fn, repeat: int, clock=time.perf_counter) -> tuple[float, object]:
    """Best (minimum) time of ``repeat`` calls, the least noisy figure on a shared machine
    (``clock``: wall by default, or CPU time of the process)."""
    times, out = [], None
    for _ in range(repeat):
        synchronize()
        start = clock()
        out = fn()
        synchronize()
        times.append(clock() - start)
    return min(times), out


# --------------------------------------------------------------------------------------- suite


def bench_suite(healthy, repeat: int) -> None:
    print("== probe suite (run_probes, CPU) ==")
    for name in ("make_mlp", "make_cnn"):
        made = healthy.__dict__[name]()
        args = (made["model"], made["loss_fn"], made["batch"], made.get("optimizer"))
        start = time.perf_counter()
        report = run_probes(*args, target=name)
        cold = time.perf_counter() - start
        warm, report = _timed(lambda args=args, name=name: run_probes(*args, target=name), repeat)
        warm_median = statistics.median(
            _timed(lambda args=args, name=name: run_probes(*args, target=name), 1)[0] for _ in range(repeat)
        )
        split = ", ".join(f"{p.name} {p.seconds:.3f}s" for p in report.probes)
        status = "no finding" if not report.findings else f"findings {report.codes()}"
        steps = report.probes[-1].data.get("steps")
        print(
            f"{name:10s} cold {cold:6.3f}s  warm best {warm:6.3f}s median {warm_median:6.3f}s"
            f"  ({split}; overfit {steps} steps; {status})"
        )


# ---------------------------------------------------------------------------------- localization


class _Distance(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, b = h.chunk(2, dim=1)
        return torch.sqrt(((a - b) ** 2).sum(dim=1, keepdim=True))


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width * 2)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(width * 2, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class _DeepSiamese(nn.Module):
    """12 residual blocks, then a pair distance that is exactly 0 for one sample."""

    def __init__(self, width: int = 64, depth: int = 12) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[_Block(width) for _ in range(depth)])
        self.proj = nn.Linear(width, width)
        self.dist = _Distance()
        self.head = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.blocks(x))
        h = torch.cat([h[:, : h.shape[1] // 2], h[:, : h.shape[1] // 2] * (x[:, :1] > -10)], dim=1)
        return self.head(self.dist(h))


class _TinyTransformer(nn.Module):
    """A 4-layer transformer encoder (d_model 64), mean-pooled, then the same pair distance."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 64)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.dist = _Distance()
        self.head = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x)).mean(1)
        h = torch.cat([h[:, :32], h[:, :32]], dim=1)
        return self.head(self.dist(h))


class _BasicBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class _LogVariance(nn.Module):
    """log of a linear output that goes negative for some samples: a NaN made in the forward."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.log(self.fc(h))


class _SampleNorm(nn.Module):
    """Scales each sample by its RMS, without an epsilon under the sqrt: a backward Inf (NaN) for
    a sample whose features are all 0."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h / (torch.sqrt(h.pow(2).mean(dim=(1, 2, 3), keepdim=True)) + 1e-6)


class _DeepCNN(nn.Module):
    """A ResNet-style CNN: stem, 16 basic blocks (in-place ReLU, batch norm), pooled features, then
    a pair distance that is exactly 0 for one sample (``head="dist"``: a backward Inf next to the
    loss), a log head (``"log"``: a NaN made in the forward) or a linear head whose stem normalises
    each sample (``"bottom"``: a backward NaN at the first module, under the whole network)."""

    def __init__(self, head: str, channels: int = 16, depth: int = 16) -> None:
        super().__init__()
        stem: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
        if head == "bottom":
            stem.append(_SampleNorm())
        self.stem = nn.Sequential(*stem, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*[_BasicBlock(channels) for _ in range(depth)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_kind = head
        self.dist = _Distance()
        self.logvar = _LogVariance(channels)
        self.fc = nn.Linear(channels, 1)
        self.out = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.layers(self.stem(x))).flatten(1)
        if self.head_kind == "log":
            return self.out(self.logvar(h))
        if self.head_kind == "bottom":
            return self.fc(h)
        half = h.shape[1] // 2
        first = x[:, :1, 0, 0] > -10
        h = torch.cat([h[:, :half], h[:, :half] * first], dim=1)
        return self.out(self.dist(h))


def make_deep_cnn(head: str = "dist") -> dict:
    torch.manual_seed(0)
    model = _DeepCNN(head)
    if head == "log":
        with torch.no_grad():  # some samples' linear output below 0
            model.logvar.fc.bias.fill_(0.05)
    x = torch.randn(8, 3, 16, 16)
    if head == "bottom":
        x[2] = 0.0  # an all-black image: its stem features are exactly 0
    return _regression_case(model, x, torch.randn(8, 1))


def make_transformer() -> dict:
    torch.manual_seed(0)
    model = _TinyTransformer()
    return _regression_case(model, torch.randn(8, 16, 16), torch.randn(8, 1))


def make_deep() -> dict:
    torch.manual_seed(0)
    model = _DeepSiamese()
    return _regression_case(model, torch.randn(32, 64), torch.randn(32, 1))


def _regression_case(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """A probe case: the model regressing ``y`` from ``x`` with MSE, stepped by plain SGD."""
    return {
        "model": model,
        "loss_fn": nn.MSELoss(),
        "batch": (x, y),
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.01),
    }


def _anomaly_step(model, loss_fn, batch):
    """One failing step under detect_anomaly, until it raises: what the timing covers. Returns
    the exception and the captured warnings, described (outside the timing) by _blamed_by_anomaly."""
    x, y = batch
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autograd.detect_anomaly():
                loss_fn(model(x), y).backward()
        except RuntimeError as exc:
            return exc, caught
    return None, caught


def _blamed_by_anomaly(result) -> str:
    exc, caught = result
    if exc is None:
        return "nothing (no NaN: anomaly mode only checks for NaN, not Inf)"
    op = re.search(r"Function '(\w+)'", str(exc))
    where = ""
    for w in caught:
        lines = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.*)', str(w.message))
        lines = [f for f in lines if f"{os.sep}torch{os.sep}" not in f[0]]  # the user's frames
        if lines:
            f, line, func, code = lines[-1]
            where = f"{os.path.basename(f)}:{line} in {func}: {code.strip()}"
    return f"{op.group(1) if op else '?'} ({where})"


def bench_localize(name: str, made: dict, rounds: int, expected: tuple[str, str]) -> dict[str, float]:
    """One failing step, timed side by side (see the module docstring); ``expected`` is the exact
    origin ``(stage, module)`` at step 0. Returns the median ratios."""
    model, loss_fn, batch, opt = made["model"], made["loss_fn"], made["batch"], made["optimizer"]
    x, y = batch
    named = list(model.named_parameters())
    healthy_grads = [p.detach().clone() for p in model.parameters()]  # same sizes, all finite

    def plain() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()

    def cheap() -> bool:
        return all_finite(healthy_grads)

    def detect() -> bool:  # the same step with the cheap checks only: what a step costs without tracing
        model.zero_grad(set_to_none=True)
        ok = all_finite([x, y])
        loss = loss_fn(model(x), y)
        ok = ok and all_finite([loss])
        loss.backward()
        return ok and all_finite([p.grad for _, p in named])

    def anomaly():
        return _anomaly_step(model, loss_fn, batch)

    def checked():
        model.zero_grad(set_to_none=True)
        return checked_step(model, batch, lambda: loss_fn(model(x), y), named, step=0)

    def replayed():
        return localize(model, loss_fn, batch, opt, 0)

    fns = {"plain": plain, "cheap": cheap, "detect": detect, "anomaly": anomaly, "checked": checked, "replay": replayed}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    out = {}
    for f in fns.values():
        f()  # warm-up
    # No collection in the middle of a timed call (collected between calls instead); everything that
    # exists now is frozen out of the collector, so that collecting between calls costs microseconds,
    # not a scan of torch's hundred thousand objects (seconds on a loaded machine).
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        order = list(fns.items())
        shuffle = random.Random(0).shuffle
        for _ in range(rounds):
            shuffle(order)  # see the module docstring: no contender always follows the same one
            for key, f in order:
                out.pop(key, None)
                gc.collect()
                synchronize()
                w0, c0 = time.perf_counter(), time.process_time()
                out[key] = f()
                synchronize()
                wall[key].append(time.perf_counter() - w0)
                cpu[key].append(time.process_time() - c0)
    finally:
        gc.enable()
        gc.unfreeze()
    exact = {}
    for key in ("checked", "replay"):
        d = out[key].details if out[key] is not None else {}
        exact[key] = (d.get("stage"), d.get("module"), d.get("step")) == (*expected, 0)
        out[key] = f"stage={d.get('stage')} module={d.get('module')!r} op={d.get('op')}" if d else "nothing"
        out[key] += "  (exact)" if exact[key] else f"  (NOT the origin: expected {expected})"
    for t in (wall, cpu):
        t["extra"] = [c - d for c, d in zip(t["checked"], t["detect"], strict=True)]
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in wall}
    n_modules = len(list(model.modules()))
    print(f"-- {name} ({n_modules} modules, {rounds} rounds)".ljust(72) + "wall ms    CPU ms")
    rows = [
        ("plain forward+backward", "plain", ""),
        ("cheap check (all grads)", "cheap", "per healthy step"),
        ("step with cheap checks", "detect", "plain + batch, loss and grads checked (detects, cannot localize)"),
        ("detect_anomaly step", "anomaly", f"blames {_blamed_by_anomaly(out['anomaly'])}"),
        ("sentinel checked step", "checked", f"blames {out['checked']}"),
        ("  of which localization", "extra", "checked step - step with cheap checks"),
        ("sentinel replay (localize)", "replay", f"blames {out['replay']}"),
    ]
    for label, key, note in rows:
        print(f"   {label:52s} {med[key][0] * 1e3:9.2f} {med[key][1] * 1e3:9.2f}   {note}")
    ratios = {}
    for label, key, target in (
        ("localization / anomaly step", "extra", "(target <= 0.2)"),
        ("checked step / anomaly step", "checked", "(the whole failing step)"),
        ("replay / anomaly step", "replay", "(localize() from scratch)"),
    ):
        rw = statistics.median(a / b for a, b in zip(wall[key], wall["anomaly"], strict=True))
        rc = statistics.median(a / b for a, b in zip(cpu[key], cpu["anomaly"], strict=True)) if med["anomaly"][1] else 0
        ratios[key] = rw
        print(f"   {label + ' (median of rounds)':52s} {rw:9.3f} {rc:9.3f}   {target}")
    return ratios


def bench_healthy_overhead(healthy, repeat: int) -> None:
    """What the tracing of checked_step costs on a step that is fine (the finite probe's steps)."""
    print("== checked_step on healthy steps (forward, backward, optimizer step; CPU) ==")
    for name in ("make_mlp", "make_cnn"):
        made = healthy.__dict__[name]()
        model, loss_fn, (x, y) = made["model"], made["loss_fn"], made["batch"]
        opt = made.get("optimizer") or torch.optim.Adam(model.parameters(), lr=1e-3)
        named = list(model.named_parameters())
        params = [p for _, p in named]

        def plain(model=model, loss_fn=loss_fn, x=x, y=y, opt=opt, params=params) -> None:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            all_finite([loss])
            loss.backward()
            all_finite([p.grad for p in params])
            opt.step()
            all_finite(params)

        def checked(model=model, loss_fn=loss_fn, x=x, y=y, opt=opt, named=named) -> None:
            model.zero_grad(set_to_none=True)
            checked_step(model, (x, y), lambda: loss_fn(model(x), y), named, update=opt.step)

        for f in (plain, checked):
            f()
        best = {"plain": float("inf"), "checked": float("inf")}
        for _ in range(repeat * 4):
            for key, f in (("plain", plain), ("checked", checked)):
                c0 = time.process_time()
                f()
                best[key] = min(best[key], time.process_time() - c0)
        print(
            f"{name:10s} step with cheap checks {best['plain'] * 1e3:7.2f} ms   checked_step"
            f" {best['checked'] * 1e3:7.2f} ms   ratio {best['checked'] / best['plain']:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (default 1, like watch_overhead.py; 0: torch's)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--only", default="", help="localization cases whose name contains this (skips 1. and 2.)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores,"
        f" load average {load:.2f}, python {sys.version.split()[0]}"
    )
    healthy = _load("healthy")
    buggy = _load("buggy")
    if not args.only:
        bench_suite(healthy, args.repeat)
        bench_healthy_overhead(healthy, args.repeat)
    print("== NaN/Inf localization vs torch.autograd.detect_anomaly (one failing step) ==")
    print(
        "   compared on the same failing step, from the same state: 'detect_anomaly step' = zero_grad,\n"
        "   forward, loss and backward under torch.autograd.detect_anomaly() until it raises (parsing its\n"
        "   message is not timed); 'sentinel checked step' = the finite probe's step: zero_grad, traced\n"
        "   forward, checks, backward keeping the graph and the gradients at module boundaries, checks,\n"
        "   then the origin search (module boundaries, the origin module's nodes re-run) and the finding;\n"
        "   'localization' = that minus the same step with the cheap checks only (= tracing, search,\n"
        "   finding); 'replay' = localize() from scratch (snapshot, traced forward, hooked backward,\n"
        "   restore), what the loop monitor uses. Medians of N interleaved rounds, each in a shuffled\n"
        "   order (no GC inside a timed call); each ratio is the median of the per-round ratios."
    )
    cases = [
        ("buggy.py:make_nan_for_some_inputs", buggy.make_nan_for_some_inputs(), 40, ("forward", "logf")),
        ("buggy.py:make_inf_in_backward", buggy.make_inf_in_backward(), 40, ("backward", "dist")),
        ("deep residual MLP + sqrt at 0", make_deep(), 10, ("backward", "dist")),
        ("4-layer transformer + sqrt at 0", make_transformer(), 4, ("backward", "dist")),
        ("16-block ResNet-style CNN + sqrt at 0", make_deep_cnn("dist"), 4, ("backward", "dist")),
        ("16-block ResNet-style CNN + log < 0", make_deep_cnn("log"), 4, ("forward", "logvar")),
        ("16-block ResNet-style CNN, NaN at its stem", make_deep_cnn("bottom"), 4, ("backward", "stem.1")),
    ]
    summary = []
    for name, made, per_repeat, expected in cases:
        if args.only not in name:
            continue
        ratios = bench_localize(name, made, args.repeat * per_repeat, expected)
        summary.append((name, ratios["extra"]))
    print("== localization / anomaly step, median of rounds (wall; target <= 0.2) ==")
    for name, ratio in summary:
        print(f"   {name:52s} {ratio:6.3f}")
    if summary:
        print(f"   {'worst':52s} {max(r for _, r in summary):6.3f}")


if __name__ == "__main__":
    main()
