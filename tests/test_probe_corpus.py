"""Every factory of fixtures/probes/corpus (and of fixtures/probes/healthy_real.py and
buggy_real.py) against its EXPECT: the codes, the SEN105 stage, module, parameter, step and input
tensor, the SEN102 parameter names and reasons, the SEN103/104 tensor names, the SEN110 classes,
the SEN111 sample and the samples it depends on; and no finding at all (and no error) on healthy
models."""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path

import pytest

from sentinel.probes import run_probes

PROBES = Path(__file__).resolve().parent.parent / "fixtures" / "probes"
CORPUS = PROBES / "corpus"
REAL = [PROBES / "healthy_real.py", PROBES / "buggy_real.py"]
_ALIASES = ({"x", "input", "inputs", "inp", "0"}, {"y", "target", "targets", "label", "labels", "1"})


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_probe_corpus_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cases() -> list:
    cases = []
    for path in [*sorted(CORPUS.glob("*.py")), *REAL]:
        module = _load(path)
        expect = getattr(module, "EXPECT", None) or {n: [] for n in dir(module) if n.startswith("make_")}
        cases += [pytest.param(path, name, expected, id=f"{path.stem}:{name}") for name, expected in expect.items()]
    return cases


def _tokens(s: str) -> list[str]:
    return re.findall(r"[a-z0-9_]+", s.lower())


def _same_tensor(expected: str, reported: str) -> bool:
    """``x`` matches ``batch[0]``, ``head.weight`` matches ``model.head.weight``."""
    te, tr = _tokens(expected), _tokens(reported)
    if any(tr[i : i + len(te)] == te for i in range(len(tr) - len(te) + 1)):
        return True
    return len(te) == 1 and any(te[0] in a and any(t in a for t in tr) for a in _ALIASES)


@pytest.mark.parametrize(("path", "factory", "expected"), _cases())
def test_corpus_factory(path: Path, factory: str, expected: list[dict]) -> None:
    made = getattr(_load(path), factory)()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = run_probes(
            made["model"],
            made.get("loss_fn"),
            made["batch"],
            made.get("optimizer"),
            compute_loss=made.get("compute_loss"),
            target=factory,
        )
    assert not [p for p in report.probes if p.status == "error"], [(p.name, p.message) for p in report.probes]
    found = {}
    for f in report.findings:
        found.setdefault(f.code, f)
    allowed = {e["code"] for e in expected}
    assert set(found) <= allowed, [f.message for f in report.findings]
    for e in expected:
        if e.get("optional"):
            continue
        assert e["code"] in found, f"{e['code']} missing; got {[f.message for f in report.findings]}"
        d = found[e["code"]].details
        if e["code"] == "SEN105":
            for key in ("stage", "module", "parameter", "step", "tensor"):
                if key in e:
                    assert d[key] == e[key], (key, d)
        elif e["code"] in ("SEN110", "SEN111"):
            for key in ("classes", "sample", "depends_on"):
                if key in e:
                    assert d[key] == e[key], (key, d)
        elif e["code"] == "SEN102" and "parameters" in e:
            assert {p["name"]: p["reason"] for p in d["parameters"]} == e["parameters"]
        elif e["code"] in ("SEN103", "SEN104") and "names" in e:
            reported = [t["name"] for t in d["tensors"]]
            for name in e["names"]:
                assert any(_same_tensor(name, r) for r in reported), (name, reported)
