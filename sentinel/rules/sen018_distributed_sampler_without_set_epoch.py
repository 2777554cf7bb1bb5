"""SEN018 distributed-sampler-without-set-epoch: a DistributedSampler whose epoch never changes."""

from __future__ import annotations

import re
from collections.abc import Iterator

from sentinel.analysis.facts import Facts
from sentinel.rules.base import Rule, Violation


class DistributedSamplerWithoutSetEpoch(Rule):
    """## What it does
    Finds a `DistributedSampler` (shuffling, the default) feeding a training `DataLoader` that is
    iterated once per epoch inside an epoch loop, with no `sampler.set_epoch(epoch)` (or
    `loader.sampler.set_epoch(epoch)`) anywhere in that epoch loop, or only with a constant
    (`set_epoch(0)`). It is reported on the epoch loop.

    ## Why is this bad?
    A `DistributedSampler` seeds its shuffle with `seed + epoch`; the epoch only changes through
    `set_epoch()`. Without it every epoch visits the data in exactly the same order on every rank,
    as if shuffling were off: the model sees the same batches in the same sequence, generalises worse
    and converges more slowly, and nothing reports it.

    ## Example
    ```python
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    def train(model, optimizer, dataset, rank, world_size, epochs):
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank)
        loader = DataLoader(dataset, batch_size=32, sampler=sampler)
        for epoch in range(epochs):  # error: same order every epoch
            for x, y in loader:
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
    ```

    Use instead:
    ```python
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    def train(model, optimizer, dataset, rank, world_size, epochs):
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank)
        loader = DataLoader(dataset, batch_size=32, sampler=sampler)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for x, y in loader:
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
    ```

    ## Known problems
    A loader iterated once (a single epoch), a sampler built with `shuffle=False` or rebuilt each
    epoch with its own `seed=`, an evaluation loader
    and a sampler or loader sentinel cannot follow (built by a library) are not reported; any
    `set_epoch()` call in the epoch loop whose receiver is unknown counts as setting it.

    ## References
    - [`torch.utils.data.distributed.DistributedSampler`](https://pytorch.org/docs/stable/data.html#torch.utils.data.distributed.DistributedSampler)
    """

    CODE = "SEN018"
    NAME = "distributed-sampler-without-set-epoch"
    SUMMARY = "DistributedSampler loader iterated for several epochs without sampler.set_epoch()"
    TRIGGER = (re.compile(r"DistributedSampler"),)

    VALID = [
        # set through the loader, inside a helper called per epoch
        """
import torch
from torch.utils.data import DataLoader, DistributedSampler
def train_one_epoch(model, opt, loader, epoch):
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    for x, y in loader:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
def main(model, opt, ds):
    loader = DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds))
    for epoch in range(10):
        train_one_epoch(model, opt, loader, epoch)
""",
        # a fixed order on purpose; and an evaluation loader
        """
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
def main(model, opt, train_ds, val_ds):
    train_loader = DataLoader(train_ds, sampler=DistributedSampler(train_ds, shuffle=False))
    val_loader = DataLoader(val_ds, sampler=DistributedSampler(val_ds))
    for epoch in range(10):
        model.train()
        for x, y in train_loader:
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for x, y in val_loader:
                print(model(x).mean().item())
""",
    ]
    INVALID = [
        """
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
class Trainer:
    def __init__(self, model, opt, ds):
        self.model, self.opt = model, opt
        self.sampler = DistributedSampler(ds)
        self.loader = DataLoader(ds, batch_size=8, sampler=self.sampler)
    def fit(self, epochs):
        self.sampler.set_epoch(0)
        for epoch in range(epochs):  # error
            for i, (x, y) in enumerate(self.loader):
                self.opt.zero_grad()
                torch.nn.functional.mse_loss(self.model(x), y).backward()
                self.opt.step()
""",
    ]

    def check(self, facts: Facts) -> Iterator[Violation]:
        shuffled = {s.ident: s for s in facts.samplers if s.shuffle is not False}
        seen: set[int] = set()
        for it in facts.loader_iters:
            if it.sampler not in shuffled or it.frame_id is None or not facts.frame_trains(it.frame_id):
                continue
            epoch = next((f for f in reversed(it.frames) if not facts.frames[f].unrolled), None)
            if epoch is None:
                continue  # iterated once: a single epoch
            loop = facts.frames[epoch]
            if id(loop.node) in seen:
                continue
            if shuffled[it.sampler].seeded and epoch in shuffled[it.sampler].frames:
                continue  # a new sampler every epoch, seeded per epoch
            if any(epoch in s.frames and s.sampler in (None, it.sampler) and not s.fixed for s in facts.set_epochs):
                continue
            seen.add(id(loop.node))
            yield Violation(
                loop.node,
                loop.node,
                "this epoch loop iterates a loader with a DistributedSampler but never calls "
                "`sampler.set_epoch(epoch)`: every epoch sees the same order on every rank; call it at "
                "the start of each epoch",
                related=it.loop,
                related_stmt=it.loop,
                related_label="loader loop",
            )
