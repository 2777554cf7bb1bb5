"""Peak memory of a gradient-accumulation language-model run, plain vs under ``sentinel.watch``.

Each variant runs in its own fresh process (so one run's high-water mark cannot hide the other's):
a small GPT-shaped model (embedding, 2 transformer layers, a 4,000-token head) trained with AdamW,
8 micro-batches of 8 x 128 tokens per optimizer step (the logits of one micro-batch are 16 MB),
for 12 steps. The figure is the growth of the process's peak resident set size
(``ru_maxrss``) over its size after setup (model and optimizer built, data made, the monitor's
modules imported, in both variants: their code is a fixed few MB, printed apart): what training
adds, plain or watched. The ratio is watched / plain.

Two allocator settings, because glibc's *dynamic* mmap threshold makes peak RSS of a PyTorch CPU
run depend on the order of small and large allocations (freed activations stay in the heap and a
few small live allocations keep it from shrinking), plain runs included:

- ``fixed mmap``: ``MALLOC_MMAP_THRESHOLD_=131072`` (large tensors are mapped and unmapped): the
  peak then measures what the process holds; this is the figure for what the monitor keeps;
- ``glibc default``: as a user's process runs; noisy from run to run, watched or not.

Usage::

    python benchmarks/watch_memory.py [--steps 12] [--accum 8]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

CHILD = "--child"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(watched: bool, steps: int, accum: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    import sentinel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    vocab, width, block = 4000, 64, 128
    layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.Embedding(vocab, width), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                          nn.Linear(width, vocab))  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randint(0, vocab, (steps * accum, 8, block + 1))
    # the first optimizer step of a process imports torch._dynamo (hundreds of MB, plain or not):
    # done on a throwaway model before the measurement
    warm = nn.Linear(2, 1)
    warm_opt = torch.optim.AdamW(warm.parameters())
    warm(torch.ones(1, 2)).sum().backward()
    warm_opt.step()
    # The monitor's modules are imported before the baseline, in both variants: their code is a fixed
    # few MB (printed apart), not memory the monitor keeps while it watches the run.
    before_import = rss_mb()
    import sentinel.probes.watch  # noqa: F401

    gc.collect()
    base = rss_mb()
    w = sentinel.watch() if watched else None
    if w is not None:
        w.start()
    try:
        for step in range(steps):
            for micro in range(accum):
                chunk = data[step * accum + micro]
                x, y = chunk[:, :-1], chunk[:, 1:]
                loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1)) / accum
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    finally:
        if w is not None:
            w.stop()
            assert not w.findings, w.findings
    return {"base_mb": base, "peak_mb": peak_mb(), "added_mb": peak_mb() - base, "import_mb": base - before_import}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--accum", type=int, default=8)
    parser.add_argument(CHILD, choices=["plain", "watch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "watch", args.steps, args.accum)))
        return
    print(f"gradient accumulation: {args.accum} micro-batches x 8 x 128 tokens, vocab 4000, {args.steps} AdamW steps")
    for label, extra in (("fixed mmap", {"MALLOC_MMAP_THRESHOLD_": "131072"}), ("glibc default", {})):
        env = dict(os.environ)
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
        env.update(extra)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
        results = {}
        for variant in ("plain", "watch"):
            out = subprocess.run(
                [sys.executable, __file__, CHILD, variant, "--steps", str(args.steps), "--accum", str(args.accum)],
                capture_output=True, text=True, check=True, env=env,
            )  # fmt: skip
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"\n{label}")
        print(f"  {'variant':<7} {'after setup MB':>15} {'peak MB':>9} {'added MB':>9}")
        for variant, r in results.items():
            print(f"  {variant:<7} {r['base_mb']:15.1f} {r['peak_mb']:9.1f} {r['added_mb']:9.1f}")
        plain, watched = results["plain"]["added_mb"], results["watch"]["added_mb"]
        print(f"  watched / plain, memory training adds: {watched / plain:.3f}x")
        whole = results["watch"]["peak_mb"] / results["plain"]["peak_mb"]
        print(f"  watched / plain, whole-process peak:   {whole:.3f}x")
        print(f"  (importing the monitor's modules, before the baseline: {results['watch']['import_mb']:.1f} MB)")


if __name__ == "__main__":
    main()
