"""Live progress of the probe suite on a terminal: which probe runs, and the overfit probe's steps.

Shown only when stderr is a terminal (never in pipes, CI logs or ``--format json`` output captured
by a tool), on stderr, and transient: it disappears when the suite ends, leaving only the report.
``SENTINEL_PROGRESS=0`` turns it off, ``=1`` forces it on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Progress", "StepCallback", "progress"]

StepCallback = Callable[[int, int, float], None]


class Progress:
    """What :func:`progress` yields: ``probe(name)`` when a probe starts, ``step(i, budget, loss)``
    for each overfit step. Both do nothing when progress is not shown."""

    def __init__(self, bar: Any = None) -> None:
        self._bar = bar
        self._task: Any = None

    def probe(self, name: str) -> None:
        if self._bar is None:
            return
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(f"probe {name}", total=None)

    def step(self, i: int, budget: int, loss: float) -> None:
        if self._bar is None or self._task is None:
            return
        self._bar.update(self._task, completed=i, total=budget, description=f"probe overfit  loss {loss:.4g}")


def _wanted() -> bool:
    flag = os.environ.get("SENTINEL_PROGRESS")
    if flag is not None:
        return flag not in ("", "0", "false", "no")
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


@contextmanager
def progress() -> Iterator[Progress]:
    """A :class:`Progress` that draws on stderr while the block runs (see the module docstring)."""
    if not _wanted():
        yield Progress()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    bar = RichProgress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        yield Progress(bar)
