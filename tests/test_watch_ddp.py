"""``torchrun --nproc-per-node 2 -m sentinel probe train.py``: the loop monitor on every rank, one
report from rank 0 (gloo, 2 CPU processes).

Each fixture of fixtures/watch/ddp/ runs as a real torchrun job (``python -m torch.distributed.run``
on 127.0.0.1 with a free port). The jobs are started together once per module, a few at a time,
each with a hard timeout, and every test reads its job's output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DDP = ROOT / "fixtures" / "watch" / "ddp"
STEPS = 6
JOB_TIMEOUT = 240


@dataclass
class Job:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(script: str, fmt: str) -> Job:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        MASTER_ADDR="127.0.0.1",
        SENTINEL_DIST_TIMEOUT="90",
        OMP_NUM_THREADS="1",
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "sentinel", "probe", str(DDP / script), "--steps", str(STEPS), "--format", fmt,
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_TIMEOUT, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired as exc:
        return Job(-1, str(exc.stdout or ""), f"timed out: {exc.stderr!r}")
    return Job(done.returncode, done.stdout, done.stderr)


JOBS = {
    ("healthy.py", "json"),
    ("forward_through_module.py", "json"),
    ("unwrapped.py", "text"),
    ("missing_zero_grad.py", "json"),
    ("nan_one_rank.py", "json"),
    ("rank_raises.py", "json"),
    ("seeded_per_rank.py", "json"),
    ("reinit_after_wrap.py", "json"),
}


@pytest.fixture(scope="module")
def jobs() -> dict[tuple[str, str], Job]:
    pytest.importorskip("torch.distributed")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    order = sorted(JOBS)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda job: _torchrun(*job), order))
    return dict(zip(order, results, strict=True))


def findings(job: Job) -> list[tuple[str, dict]]:
    return [(f["code"], f["details"]) for f in job.json()["findings"]]


def test_healthy_ddp_has_no_findings_and_one_report(jobs):
    job = jobs["healthy.py", "json"]
    assert job.returncode == 0, job.stderr[-2000:]
    out = job.json()  # exactly one JSON object on stdout: rank 1 printed nothing
    assert out["world_size"] == 2 and out["findings"] == []
    assert [(p["name"], p["status"]) for p in out["probes"]] == [("loop-monitor", "pass")]


def test_a_forward_through_ddp_module_is_ranks_out_of_sync(jobs):
    job = jobs["forward_through_module.py", "json"]
    assert job.returncode != 0
    ((code, details),) = findings(job)
    assert code == "SEN109"
    assert details["step"] == 0 and details["ranks"] == [0, 1]
    names = [p["name"] for p in details["parameters"]]
    assert names == ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "head.weight", "head.bias"]
    assert all(p["ranks"] == [1] for p in details["parameters"])


def test_a_model_never_wrapped_is_out_of_sync_in_one_text_report_from_rank_0(jobs):
    job = jobs["unwrapped.py", "text"]
    assert job.returncode != 0
    assert job.stdout.count("sentinel probe ") == 1  # rank 1 printed nothing
    assert job.stdout.count("SEN109") == 1 and "(2 ranks)" in job.stdout
    assert "6 parameters differ across ranks (body.0.weight, body.0.bias" in job.stdout


def test_ranks_seeded_differently_are_out_of_sync_although_their_gradients_are_averaged(jobs):
    # gradients all-reduced by hand, weights never broadcast: every parameter differs from step 0 on
    job = jobs["seeded_per_rank.py", "json"]
    assert job.returncode != 0
    ((code, details),) = findings(job)
    assert code == "SEN109" and details["step"] == 0 and details["ranks"] == [0, 1]
    assert [p["name"] for p in details["parameters"]] == [
        "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "head.weight", "head.bias",
    ]  # fmt: skip
    assert all(p["ranks"] == [1] for p in details["parameters"])


def test_weights_re_initialised_per_rank_after_ddp_wrapping_are_out_of_sync(jobs):
    # DDP broadcast rank 0's weights when it was built; the per-rank init after it is never undone
    ((code, details),) = findings(jobs["reinit_after_wrap.py", "json"])
    assert code == "SEN109" and details["step"] == 0 and details["ranks"] == [0, 1]
    assert [p["name"] for p in details["parameters"]] == ["body.0.weight", "body.2.weight", "head.weight"]


def test_missing_zero_grad_under_ddp_with_bucket_views_and_clipping(jobs):
    job = jobs["missing_zero_grad.py", "json"]
    # DDP rebuilds its buckets after the first step (new .grad tensors holding the same values)
    assert findings(job) == [("SEN106", {"step": 1, "ranks": [0, 1]})]
    assert job.json()["world_size"] == 2


def test_nan_on_one_rank_names_the_rank_and_the_input(jobs):
    ((code, details),) = findings(jobs["nan_one_rank.py", "json"])
    assert code == "SEN105"
    assert (details["stage"], details["step"], details["tensor"]) == ("input", 3, "batch[0]")
    assert details["ranks"] == [0, 1]  # all-reduced: both ranks' gradients went NaN
    assert details["origin_ranks"] == [1]  # the corrupt sample was in rank 1's batch


def test_a_rank_that_raises_is_reported_not_a_hang(jobs):
    job = jobs["rank_raises.py", "json"]
    assert job.returncode not in (0, -1), job.stderr[-2000:]
    out = job.json()
    (probe,) = out["probes"]
    assert probe["status"] == "error" and out["world_size"] == 2
    # the rank that failed first leads, with its own traceback: rank 0's error only follows from it
    assert probe["message"].startswith("rank 1: the script raised RuntimeError: corrupt shard on rank 1")
    assert "(rank 1)\nTraceback" in job.stderr and "(rank 0)\nTraceback" not in job.stderr


def test_merged_errors_lead_with_the_rank_that_failed_first():
    from sentinel.findings import ProbeResult
    from sentinel.probes.report import WatchReport, merge_rank_reports

    def report(message: str, failed_at: float, tb: str) -> WatchReport:
        data = {"steps": 3, "error": message, "failed_at": failed_at}
        return WatchReport("t.py", "cpu", [ProbeResult("loop-monitor", "error", 0.1, [], message, data, tb)])

    peer = report("the script raised RuntimeError: Connection closed by peer", 12.5, "tb of rank 0")
    cause = report("the script raised ValueError: bad record", 12.0, "tb of rank 1")
    (probe,) = merge_rank_reports({0: peer, 1: cause, 2: None}, 3, "t.py").probes
    assert probe.message == (
        "rank 1: the script raised ValueError: bad record; "
        "rank 0: the script raised RuntimeError: Connection closed by peer; rank 2 did not report"
    )
    assert probe.traceback == "(rank 1)\ntb of rank 1" and "failed_at" not in probe.data["ranks"]["1"]


def test_merged_nan_keeps_the_rank_it_started_on_apart_from_the_ranks_it_reached():
    from sentinel.findings import Finding, ProbeResult
    from sentinel.probes.report import WatchReport, merge_rank_reports

    def report(details: dict) -> WatchReport:
        f = Finding("SEN105", "first non-finite value", details)
        return WatchReport("t.py", "cpu", [ProbeResult("loop-monitor", "fail", 0.1, [f], "", {"steps": 6})])

    common = {"module": None, "parameter": None}
    rank0 = report({**common, "stage": "backward", "step": 3, "parameter": "fc.weight"})
    rank1 = report({**common, "stage": "input", "step": 3, "tensor": "batch[0]"})
    (f,) = merge_rank_reports({0: rank0, 1: rank1}, 2, "t.py").findings
    assert (f.details["stage"], f.details["tensor"], f.details["ranks"], f.details["origin_ranks"]) == (
        "input", "batch[0]", [0, 1], [1],
    )  # fmt: skip
    assert f.message.endswith("(ranks 0, 1); it started on rank 1")
    (f,) = merge_rank_reports({0: rank1, 1: rank1}, 2, "t.py").findings
    assert f.details["origin_ranks"] == [0, 1] and "started" not in f.message
