"""The learning rate the probes train with: the base rate of an optimizer handed over with its LR
scheduler attached (a param group the user set to lr 0 is still a SEN102 "unchanged")."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sentinel.probes import check_overfit, check_updates

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "probes"
_spec = importlib.util.spec_from_file_location("_lr_healthy", FIXTURES / "healthy.py")
healthy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(healthy)


def _args(made: dict) -> tuple:
    return made["model"], made["loss_fn"], made["batch"], made.get("optimizer")


def test_an_optimizer_at_the_start_of_its_warmup_trains_with_its_base_rate():
    made = healthy.make_warmup_from_zero()
    assert made["optimizer"].param_groups[0]["lr"] == 0.0  # what the scheduler left
    updates = check_updates(*_args(made))
    assert updates.status == "pass" and updates.findings == []
    assert updates.data["optimizer"] == "AdamW(lr=0.003)"
    overfit = check_overfit(*_args(made))
    assert overfit.status == "pass" and overfit.findings == []
    assert made["optimizer"].param_groups[0]["lr"] == 0.0  # the user's optimizer is left as it was
