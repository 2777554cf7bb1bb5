"""The loop monitor on real-world training patterns: exact change detection, gradient clipping / AMP /
DDP bucket views, torch.compile, copies and pickles of a watched model, names, no host syncs on a
healthy step, a bounded memory footprint, and a readable report."""

from __future__ import annotations

import copy
import io
import math
import pickle
import socket
import weakref
from collections import OrderedDict
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_mod
from torch.optim import optimizer as optimizer_mod

import sentinel
from sentinel.probes._watch_util import ScalarRing, tensor_hash
from sentinel.probes.watch import Watch

# ----------------------------------------------------------------------------------------- helpers


def codes(w: Watch) -> list[str]:
    return [f.code for f in w.findings]


def details(w: Watch, code: str) -> dict:
    (found,) = [f for f in w.findings if f.code == code]
    return found.details


def global_hooks() -> tuple[int, ...]:
    return (
        len(module_mod._global_forward_pre_hooks),
        len(module_mod._global_forward_hooks),
        len(module_mod._global_forward_hooks_with_kwargs),
        len(module_mod._global_forward_hooks_always_called),
        len(optimizer_mod._global_optimizer_pre_hooks),
        len(optimizer_mod._global_optimizer_post_hooks),
    )


def local_hooks(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(m._forward_hooks_with_kwargs) + len(m._forward_hooks_always_called)
        n += len(m._forward_pre_hooks_with_kwargs)
    for p in model.parameters():
        n += len(p._backward_hooks or {})
    return n


def classifier(classes: int = 2) -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, classes))


def data(n: int = 64, classes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 6)
    return x, (x[:, 0] > 0).long() % classes


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_hooks_left_behind() -> Iterator[None]:
    before = global_hooks()
    yield
    assert global_hooks() == before


# ------------------------------------------------------------------------ exact change detection


def test_the_hash_sees_equal_and_opposite_moves_that_a_sum_of_bit_patterns_misses():
    a = torch.tensor([0.5, -0.25, 3.0])
    bits = a.view(torch.int32).clone()
    bits[0] += 1
    bits[1] -= 1  # the plain sum of bit patterns is unchanged
    moved = bits.view(torch.float32)
    assert int(a.view(torch.int32).sum()) == int(moved.view(torch.int32).sum())
    assert int(tensor_hash(a)) != int(tensor_hash(moved))
    assert int(tensor_hash(a)) == int(tensor_hash(a.clone()))


def test_a_two_logit_head_trained_with_adam_is_not_unchanged():
    torch.manual_seed(0)
    model = classifier(2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data()
    with sentinel.watch() as w:
        for _ in range(10):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert w.findings == []


def test_a_parameter_that_never_moves_is_unchanged_even_with_gradients():
    torch.manual_seed(0)
    model = classifier(2)
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.0}], lr=0.1)
    x, y = data()
    with sentinel.watch() as w:
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert details(w, "SEN102") == {
        "parameters": [{"name": "2.weight", "reason": "unchanged"}, {"name": "2.bias", "reason": "unchanged"}]
    }


class _OppositeUlps(torch.optim.Optimizer):
    """Moves the first two elements of each parameter by +1 and -1 in their bit patterns: the sum of
    bit patterns stays the same, the values do not."""

    def __init__(self, params) -> None:
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                bits = p.view(-1).view(torch.int32)
                bits[0] += 1
                bits[1] -= 1


def test_a_move_that_keeps_the_sum_of_bit_patterns_is_still_a_change():
    # the end-of-watch check skips the exact hash only for parameters whose bit-pattern sum moved
    torch.manual_seed(0)
    model = classifier(2)
    opt = _OppositeUlps(model.parameters())
    x, y = data()
    with sentinel.watch() as w:
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert "SEN102" not in codes(w)


# ----------------------------------------------------------------- SEN106 with in-place .grad rewrites


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def one_rank_group() -> Iterator[None]:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _loop(kind: str, zero_grad: bool, steps: int = 5) -> Watch:
    torch.manual_seed(0)
    model: nn.Module = classifier(3)
    if kind == "ddp-bucket-view":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, gradient_as_bucket_view=True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    x, y = data(classes=3)
    with sentinel.watch() as w:
        for _ in range(steps):
            if zero_grad:
                opt.zero_grad(set_to_none=kind != "ddp-bucket-view")
            loss = F.cross_entropy(model(x), y)
            if kind == "amp-unscale":
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)  # rewrites .grad in place
                opt.step()
    return w


@pytest.mark.parametrize("kind", ["clip", "amp-unscale"])
def test_missing_zero_grad_is_found_through_in_place_gradient_rewrites(kind):
    assert details(_loop(kind, zero_grad=False), "SEN106") == {"step": 1}
    assert _loop(kind, zero_grad=True).findings == []


def test_missing_zero_grad_is_found_with_ddp_bucket_views(one_rank_group):
    w = _loop("ddp-bucket-view", zero_grad=False)
    assert codes(w) == ["SEN106"] and details(w, "SEN106") == {"step": 1}
    assert _loop("ddp-bucket-view", zero_grad=True).findings == []
    assert [type(m).__name__ for m in w.models] == ["Sequential"]  # named inside the DDP wrapper


# ---------------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_a_compiled_model_is_watched_and_never_traced(backend):
    # inductor needs a C++ toolchain and minutes on this CPU; these backends run Dynamo's tracing
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc=nn.Linear(6, 8), act=nn.GELU(), drop=nn.Dropout(0.1), out=nn.Linear(8, 3)))
    compiled = torch.compile(model, backend=backend)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = data(classes=3)
    with sentinel.watch() as w:
        for step in range(6):
            loss = F.cross_entropy(compiled(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step != 3:  # the bug: no reset before step 4
                opt.zero_grad(set_to_none=True)
    assert w.models == [model]
    assert codes(w) == ["SEN106"] and details(w, "SEN106") == {"step": 4}
    assert local_hooks(model) == 0 and local_hooks(compiled) == 0


class _Compiled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.drop = nn.Dropout(0.1)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(F.gelu(self.fc(x))))


def test_a_model_compiled_in_place_is_discovered_watched_and_never_recompiled_by_the_monitor():
    # model.compile() runs the module's whole call under Dynamo: its hooks are frames Dynamo would
    # compile into no-ops (the model was never discovered). Dynamo's "eager" backend, counted: it
    # traces like inductor without needing a C++ toolchain.
    graphs = []

    def backend(gm: torch.fx.GraphModule, inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    model = _Compiled()
    model.compile(backend=backend)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = data(classes=3)
    with sentinel.watch() as w:
        for step in range(6):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if step != 3:  # the bug: no reset before step 4
                opt.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            model(x)
    assert w.models == [model]
    assert codes(w) == ["SEN106"] and details(w, "SEN106") == {"step": 4}
    assert len(graphs) == 2  # one per grad mode: the monitor's hooks caused no recompilation
    assert local_hooks(model) == 0


# ------------------------------------------------------------------------- copies, pickles, hooks


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + torch.relu(self.bn(self.fc(x))))


def _users_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
    return None


def test_deepcopy_pickle_and_torch_save_during_and_after_a_watch_carry_no_monitor():
    torch.manual_seed(0)
    model = Residual()
    user_hook = model.register_forward_hook(_users_hook)  # the user's own hook survives
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data()
    copies = []
    with sentinel.watch() as w:
        for step in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if step >= 1:  # the model is hooked by now
                assert local_hooks(model) > 1
                twin = copy.deepcopy(model)
                buf = io.BytesIO()
                torch.save(model, buf)
                buf.seek(0)
                loaded = torch.load(buf, weights_only=False)
                unpickled = pickle.loads(pickle.dumps(model))
                copies += [twin, loaded, unpickled]
    assert w.findings == []
    for c in copies:
        assert local_hooks(c) == 1  # the user's hook only
        assert type(c._forward_hooks) is OrderedDict
    assert local_hooks(model) == 1 and type(model._forward_hooks) is OrderedDict
    user_hook.remove()
    assert local_hooks(model) == 0
    after = copy.deepcopy(model)
    assert local_hooks(after) == 0
    torch.save(model, io.BytesIO())
    # a copy made during the watch trains on its own, unwatched
    copies[0](x).sum().backward()


def test_a_hook_the_user_registers_during_the_watch_stays_removable():
    torch.manual_seed(0)
    model = classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data()
    with sentinel.watch():
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        handle = model.register_forward_hook(lambda m, a, o: None)
    assert len(model._forward_hooks) == 1
    handle.remove()
    assert local_hooks(model) == 0


# --------------------------------------------------------------------------------- nothing to watch


def test_a_loop_without_an_optimizer_is_nothing_to_watch_never_passed():
    torch.manual_seed(0)
    model = nn.Linear(6, 1)
    x = torch.randn(16, 6)
    with sentinel.watch() as w:
        for _ in range(3):
            model.zero_grad()
            model(x).pow(2).mean().backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
    probe = w.report.probes[0]
    assert probe.status == "skipped" and probe.message.startswith("nothing to watch")
    assert w.report.exit_code() == 0 and w.findings == []
    text = str(w.report)
    assert "Nothing to watch" in text and "passed" not in text


# ------------------------------------------------------------------------------------------ names


class HalfEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 8).half()
        self.mid = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.mid(self.encoder(x.half()).float())))


def test_the_odd_dtype_out_is_blamed_not_the_majority():
    torch.manual_seed(0)
    model = HalfEncoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data()
    with sentinel.watch() as w:
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert details(w, "SEN104") == {
        "tensors": [
            {"name": "encoder.weight", "dtype": "float16", "expected": "float32"},
            {"name": "encoder.bias", "dtype": "float16", "expected": "float32"},
        ]
    }


def test_a_double_batch_into_a_float_model_blames_the_batch_by_its_field_name():
    torch.manual_seed(0)
    model = classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data()
    with sentinel.watch() as w:
        opt.zero_grad()
        try:
            model(x.double())
        except RuntimeError:
            pass
    assert details(w, "SEN104") == {"tensors": [{"name": "batch[0]", "dtype": "float64", "expected": "float32"}]}


def test_a_module_the_optimizer_holds_but_never_calls_is_reported():
    torch.manual_seed(0)
    model = classifier()
    aux = nn.Linear(4, 4)
    opt = torch.optim.Adam([*model.parameters(), *aux.parameters()], lr=1e-3)
    x, y = data()
    with sentinel.watch() as w:
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert [(p["name"].rpartition(".")[2], p["reason"]) for p in details(w, "SEN102")["parameters"]] == [
        ("weight", "no-grad"),
        ("bias", "no-grad"),
    ]


# --------------------------------------------------------------------- no host sync, bounded memory

_SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__")


class SyncCounter:
    def __init__(self) -> None:
        self.calls = 0
        self.saved = {n: getattr(torch.Tensor, n) for n in _SYNCS}

    def __enter__(self) -> SyncCounter:
        for name, fn in self.saved.items():

            def counted(t: torch.Tensor, *a, _fn=fn, **k):  # noqa: ANN001, ANN202
                self.calls += 1
                return _fn(t, *a, **k)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self.saved.items():
            setattr(torch.Tensor, name, fn)


def _per_step_syncs(watched: bool, steps: int = 12) -> list[int]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = data(classes=3)
    counts = []
    w = sentinel.watch(read_every=8) if watched else None
    if w is not None:
        w.start()
    try:
        for _ in range(steps):
            with SyncCounter() as c:
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
            counts.append(c.calls)
    finally:
        if w is not None:
            w.stop()
            assert w.findings == []
    return counts


def test_a_healthy_step_costs_no_host_sync_only_every_read_every_steps():
    plain = _per_step_syncs(False)
    watched = _per_step_syncs(True)
    extra = [b - a for a, b in zip(plain, watched, strict=True)]
    # reads at the first step and every 8th (steps 0 and 7); no other step synchronizes
    assert [i for i, e in enumerate(extra) if e] == [0, 7]
    assert all(e <= 3 for e in extra)


@pytest.mark.parametrize("read_every", [1, 8, 100])
def test_a_nan_read_later_is_still_found_at_its_step_and_module(read_every):
    class Normalize(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x / x.norm(dim=1, keepdim=True)

    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(norm=Normalize(), hidden=nn.Linear(6, 8), out=nn.Linear(8, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [torch.randn(8, 6) for _ in range(10)]
    batches[3][2] = 0.0
    with sentinel.watch(read_every=read_every) as w:
        for x in batches:
            opt.zero_grad()
            F.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
            opt.step()
    got = details(w, "SEN105")
    assert (got["stage"], got["module"], got["step"]) == ("forward", "norm", 3)


def test_gradient_accumulation_keeps_no_output_or_gradient_alive():
    # a language-model-shaped loop: 4 micro-batches per step; the monitor must not keep the logits
    # (or the gradient flowing into them) of any micro-batch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 50))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    logits_refs: list[weakref.ref] = []
    with sentinel.watch() as w:
        for _ in range(3):
            for _ in range(4):
                idx = torch.randint(0, 50, (4, 12))
                logits = model(idx)
                logits_refs.append(weakref.ref(logits))
                (F.cross_entropy(logits.view(-1, 50), idx.view(-1)) / 4).backward()
                del logits
            opt.step()
            opt.zero_grad(set_to_none=True)
            assert all(r() is None for r in logits_refs)
    assert w.findings == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_healthy_step_does_not_synchronize():
    torch.manual_seed(0)
    model = classifier(3).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = (t.cuda() for t in data(classes=3))
    with sentinel.watch(read_every=8) as w:
        for step in range(7):
            if step >= 1:  # step 0 is a read step; steps 1..6 are not
                torch.cuda.set_sync_debug_mode("error")
            try:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    assert w.findings == [] and w.report.device.startswith("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_nan_is_found_and_localized():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with sentinel.watch() as w:
        for step in range(6):
            x = torch.randn(8, 6, device="cuda")
            if step == 2:
                x[1, 1] = float("nan")
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    got = details(w, "SEN105")
    assert (got["stage"], got["step"], got["tensor"]) == ("input", 2, "batch[0]")


# ---------------------------------------------------------------------------------- the report


def test_print_of_the_report_is_readable_and_each_problem_is_listed_once():
    torch.manual_seed(0)
    model = classifier()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = data()
    with sentinel.watch() as w:
        for _ in range(4):
            F.cross_entropy(model(x), y).backward()  # no zero_grad
            opt.step()
    text = str(w.report)
    lines = text.splitlines()
    assert lines[0] == "sentinel probe watch  on cpu"
    assert lines[1].startswith("FAIL    loop-monitor")
    assert lines[2].startswith("  SEN106 [gradients-accumulate] gradients were not reset") and "step 1" in lines[2]
    assert lines[-1] == "Found 1 problem."
    assert text.count("SEN106") == 1


def test_kept_scalars_share_one_buffer_per_dtype_and_a_row_is_reused_only_once_released():
    ring = ScalarRing(size=2)
    a = ring.norm(torch.tensor([3.0, 4.0]))
    b = ring.norm(torch.tensor([1.0, 0.0]))
    assert (a.item(), b.item()) == (5.0, 1.0) and a._base is b._base is not None and a.dtype == torch.float32
    half = ring.norm(torch.tensor([6.0, 8.0], dtype=torch.float16))  # accumulated in float32, same buffer
    assert half.dtype == torch.float32 and half._base is None and half.item() == 10.0  # both rows held
    wide = ring.norm(torch.tensor([2.0], dtype=torch.float64))
    assert wide.dtype == torch.float64 and wide._base is not None and wide._base is not a._base
    fresh = ring.keep(torch.tensor(3.5))
    assert fresh._base is None  # the next row is still held (by ``a``): the value keeps its own tensor
    del a
    d = ring.keep(torch.tensor(4.5))
    assert (d.item(), b.item()) == (4.5, 1.0) and d._base is b._base


def test_several_norms_go_to_consecutive_rows_in_one_write():
    ring = ScalarRing(size=16)
    first = ring.norms([torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([3.0])])
    assert [v.item() for v in first] == [1.0, 2.0, 3.0] and all(v._base is not None for v in first)
    more = [ring.norms([torch.tensor([float(i)])] * 4) for i in range(3)]  # rows 3 to 14
    assert [v.item() for v in first + more[0]] == [1.0, 2.0, 3.0] + [0.0] * 4
    values = ring.norms([torch.tensor([5.0]), torch.tensor([-6.0])])
    assert [v._base for v in values] == [None, None]  # no room left: the rows from 0 on are still held
    assert [v.item() for v in values] == [5.0, 6.0]
    del first
    again = ring.norms([torch.tensor([5.0]), torch.tensor([-6.0])])
    assert [v.item() for v in again] == [5.0, 6.0] and [v.item() for v in more[2]] == [2.0] * 4
    assert all(v._base is not None for v in again)


def test_norms_of_16_bit_gradients_are_accumulated_in_float32_rows():
    ring = ScalarRing(size=8)
    big = torch.full((4,), 60000.0, dtype=torch.float16)  # squares overflow float16
    (n,) = ring.norms([big])
    assert n.dtype == torch.float32 and n.item() == 120000.0 and n._base is not None


def test_a_watched_forward_keeps_its_output_norm_in_the_preallocated_ring():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with sentinel.watch(model, opt) as w:
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(5, 4)), torch.tensor([0, 1, 0, 1, 1])).backward()
            opt.step()
        model(torch.randn(5, 4))  # a forward whose step is not taken yet: its record is pending
        norm = w._records[-1].out_norm
        assert norm is not None and norm._base is not None and norm.dtype == torch.float32
        assert math.isfinite(norm.item())
    assert not w.findings
