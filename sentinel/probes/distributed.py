"""The loop monitor under ``torchrun``: SEN109 across ranks and one report for the whole job.

``torchrun --nproc-per-node N -m sentinel probe train.py --steps K`` runs the same command on every
rank; each rank watches its own loop.

- :class:`RankSync` (SEN109 ranks-out-of-sync): after an optimizer step (the first one, then every
  few steps and the last one, the same steps on every rank), each rank hashes every parameter
  exactly (:func:`sentinel.probes._watch_util.param_hashes`, one int64 per parameter, on the
  device) and the vectors are exchanged with **one** ``all_gather`` over the user's own default
  process group (on the current CUDA device under NCCL). A parameter whose hash differs from rank
  0's is out of sync: gradients that were not all-reduced (a forward through ``ddp.module``, a
  model never wrapped, ``no_sync()`` never left) or ranks seeded differently without DDP's initial
  broadcast. The collective has a timeout; when it fails or times out, the check is abandoned for
  the rest of the run (a note in the report), never a hang.
- :class:`RankExchange`: when the watch ends every rank sends its report (JSON) through a key-value
  store: torchrun's own agent store (``TORCHELASTIC_USE_AGENT_STORE``; it outlives the user's
  process group, which scripts often destroy before the end), else the default group's store.
  Rank 0 waits for them with a timeout and merges them (:func:`sentinel.probes.report.merge_rank_reports`);
  a rank that never reports is an error in the report, not a hang.
- :func:`release_peers`: a rank whose script raised destroys the user's process group, so that
  peers blocked in a collective with it fail at once (their scripts raise and they report too).

The timeout of every collective and wait sentinel adds is ``SENTINEL_DIST_TIMEOUT`` seconds
(default 60).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from typing import Any

import torch

from sentinel.probes import _watch_util as U
from sentinel.probes.report import WatchReport, full_dict, merge_rank_reports, report_from_dict

__all__ = ["RankExchange", "RankSync", "env_rank", "release_peers", "timeout_seconds"]


def timeout_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get("SENTINEL_DIST_TIMEOUT", "60")))
    except ValueError:
        return 60.0


def _dist() -> Any:
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available():
        return None
    return dist


def env_rank() -> tuple[int, int] | None:
    """(rank, world size) from the launcher's environment (``RANK``, ``WORLD_SIZE``), or None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return None
    if world <= 1:
        return None
    return rank, world


class RankSync:
    """SEN109 over the user's default process group (see the module docstring)."""

    def __init__(self, dist: Any) -> None:
        self.dist = dist
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.broken = ""
        self.checked_length = False
        backend = str(dist.get_backend()).lower()
        if "nccl" in backend and torch.cuda.is_available():
            self.device: torch.device | None = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")

    @classmethod
    def create(cls) -> RankSync | None:
        dist = _dist()
        if dist is None or not dist.is_initialized() or dist.get_world_size() <= 1:
            return None
        return cls(dist)

    def _gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(t) for _ in range(self.world)]
        work = self.dist.all_gather(out, t, async_op=True)
        work.wait(timeout=datetime.timedelta(seconds=timeout_seconds()))
        return out

    def check(self, step: int, params: list[torch.Tensor]) -> dict[str, Any] | None:
        """After optimizer step ``step``: the parameters whose copy differs from rank 0's, or None."""
        if self.broken or not self.dist.is_initialized():
            return None
        try:
            if not self.checked_length:  # a different parameter count would make all_gather hang
                sizes = self._gather(torch.tensor([len(params)], dtype=torch.int64, device=self.device))
                if len({int(s.item()) for s in sizes}) != 1:
                    self.broken = "ranks hold different numbers of parameters: SEN109 not checked"
                    return None
                self.checked_length = True
            hashes = U.param_hashes(params)
            if hashes is None:
                return None
            rows = torch.stack([r.cpu() for r in self._gather(hashes.to(self.device))])
        except Exception as exc:  # noqa: BLE001 - a failed collective must not break the run
            self.broken = f"the SEN109 check across ranks was abandoned at step {step}: {type(exc).__name__}: {exc}"
            return None
        differ = (rows != rows[0]).tolist()  # [rank][param]
        bad = []
        for i, p in enumerate(params):
            ranks = [r for r in range(1, self.world) if differ[r][i]]
            if ranks:
                bad.append((p, f"param[{i}]", ranks))
        if not bad:
            return None
        return {"step": step, "parameters": bad}


def release_peers() -> None:
    """This rank's script failed: destroy the user's process group so that peers blocked in a
    collective with this rank fail now instead of waiting for their timeout."""
    dist = _dist()
    if dist is not None and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


class RankExchange:
    """Every rank's report to rank 0 through a key-value store (see the module docstring)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank = rank
        self.world = world
        self.store: Any = None
        self.error = ""
        run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.prefix = f"sentinel/{run}/{attempt}/report/"
        self.started = time.time()

    @classmethod
    def from_env(cls) -> RankExchange | None:
        ranks = env_rank()
        if ranks is None:
            return None
        ex = cls(*ranks)
        ex.connect()
        return ex

    def connect(self) -> None:
        """Connect to torchrun's agent store now (it exists before the script runs)."""
        dist = _dist()
        if dist is None:
            self.error = "torch.distributed is not available"
            return
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
            try:
                self.store = dist.TCPStore(
                    os.environ["MASTER_ADDR"],
                    int(os.environ["MASTER_PORT"]),
                    is_master=False,
                    timeout=datetime.timedelta(seconds=timeout_seconds()),
                )
            except Exception as exc:  # noqa: BLE001
                self.error = f"cannot reach torchrun's store: {type(exc).__name__}: {exc}"

    def _fallback_store(self) -> Any:
        dist = _dist()
        if self.store is None and dist is not None and dist.is_initialized():
            with contextlib.suppress(Exception):
                from torch.distributed import distributed_c10d

                self.store = distributed_c10d._get_default_store()
        return self.store

    def exchange(self, report: WatchReport) -> WatchReport | None:
        """Send this rank's report; on rank 0 return the merged report of every rank (other ranks: None)."""
        store = self._fallback_store()
        if store is None:
            if self.rank != 0:
                return None
            note = self.error or "no store to collect the other ranks' reports"
            merged = merge_rank_reports({0: report}, 1, report.target)
            merged.world_size = self.world
            merged.probes[0].message = "; ".join(m for m in (merged.probes[0].message, f"rank 0 only: {note}") if m)
            return merged
        if self.rank != 0:
            with contextlib.suppress(Exception):
                store.set(self.prefix + str(self.rank), json.dumps(full_dict(report), default=str))
            return None
        reports: dict[int, Any] = {0: report}
        deadline = time.monotonic() + timeout_seconds()
        for r in range(1, self.world):
            left = max(0.1, deadline - time.monotonic())
            try:
                store.wait([self.prefix + str(r)], datetime.timedelta(seconds=left))
                reports[r] = report_from_dict(json.loads(store.get(self.prefix + str(r))))
            except Exception:  # noqa: BLE001 - a rank that never reports
                reports[r] = None
        return merge_rank_reports(reports, self.world, report.target)
