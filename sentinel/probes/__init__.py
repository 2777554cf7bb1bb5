"""Runtime probes: run the user's model on real tensors and prove (or disprove) that it trains.

Public API (keyword arguments after ``batch``; ``optimizer`` optional; ``device=None`` leaves the
model and batch where they are, ``"auto"``/``"cpu"``/``"cuda"`` moves the probe's copy there)::

    check_overfit(model, loss_fn, batch, optimizer=None, *, steps=100, device=None)  # SEN101
    check_updates(model, loss_fn, batch, optimizer=None, *, device=None)             # SEN102
    check_devices(model, loss_fn, batch, optimizer=None, *, device=None)             # SEN103/104
    check_finite(model, loss_fn, batch, optimizer=None, *, steps=3, device=None)     # SEN105
    check_initial_loss(model, loss_fn, batch, optimizer=None, *, device=None)        # SEN110
    check_batch_independence(model, loss_fn, batch, optimizer=None, *, device=None)  # SEN111
    run_probes(model, loss_fn, batch, optimizer=None, *, steps=None, device=None, target="<python>")

Each ``check_*`` returns a :class:`sentinel.findings.ProbeResult`, ``run_probes`` a
:class:`sentinel.findings.Report`. All accept ``compute_loss=`` for batches that the convention of
:mod:`sentinel.probes.batch` does not cover. Reusable pieces: :mod:`sentinel.probes.state`
(snapshot/restore) and :func:`sentinel.probes.nonfinite.localize` (replay a step, find the first NaN).

This package imports torch; nothing outside it does.
"""

from sentinel.probes.checks import (
    check_batch_independence,
    check_devices,
    check_finite,
    check_initial_loss,
    check_overfit,
    check_updates,
    run_probes,
)

__all__ = [
    "check_batch_independence",
    "check_devices",
    "check_finite",
    "check_initial_loss",
    "check_overfit",
    "check_updates",
    "run_probes",
]
