"""Project analysis: a file is linted with the project modules it imports, as if they were one file.

Each test writes a small project (its own ``pyproject.toml`` marks the root) and checks the exact
findings: code, file and line. The bugs sit in one file and the evidence in another.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sentinel.analysis.project import MAX_REGISTERED, Project, build_index, find_root, scan_imports
from sentinel.engine import check_source

MODEL_SOFTMAX = """
    import torch.nn as nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
            self.out = nn.Softmax(dim=1)

        def forward(self, x):
            return self.out(self.body(x))
    """

TRAIN_TEMPLATE = textwrap.dedent(
    """
    import torch
    import torch.nn as nn
    {imports}

    model = {ctor}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    loader = [(torch.randn(4, 4), torch.randint(0, 3, (4,))) for _ in range(3)]
    for epoch in range(2):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            opt.step()
    """
)


def make_project(root: Path, files: dict[str, str], marker: str = "pyproject.toml") -> Path:
    (root / marker).write_text("[project]\nname = 'demo'\n" if marker == "pyproject.toml" else "")
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def lint(root: Path, rel: str) -> set[tuple[str, str, int]]:
    path = root / rel
    diags = check_source(path.read_text(), str(path))
    return {(d.code, Path(d.path).resolve().relative_to(root.resolve()).as_posix(), d.line) for d in diags}


def train(imports: str, ctor: str) -> str:
    return TRAIN_TEMPLATE.format(imports=imports, ctor=ctor)


def line_of(root: Path, rel: str, needle: str) -> int:
    lines = (root / rel).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if needle in text)


@pytest.mark.parametrize(
    ("files", "imports", "ctor"),
    [
        ({"models.py": MODEL_SOFTMAX}, "from models import Net", "Net()"),
        ({"models.py": MODEL_SOFTMAX}, "import models as M", "M.Net()"),
        ({"models.py": MODEL_SOFTMAX}, "import models", "models.Net()"),
        ({"models/__init__.py": "", "models/net.py": MODEL_SOFTMAX}, "from models.net import Net", "Net()"),
        ({"models/__init__.py": "", "models/net.py": MODEL_SOFTMAX}, "from models import net", "net.Net()"),
        (
            {"models/__init__.py": "from .net import Net\n", "models/net.py": MODEL_SOFTMAX},
            "from models import Net",
            "Net()",
        ),
        (
            {"models/__init__.py": "from models.net import *\n", "models/net.py": MODEL_SOFTMAX},
            "from models import Net",
            "Net()",
        ),
        ({"models.py": MODEL_SOFTMAX}, "from models import Net as Classifier", "Classifier()"),
        ({"models.py": MODEL_SOFTMAX}, "from models import *", "Net()"),
    ],
    ids=[
        "from",
        "import-as",
        "import",
        "submodule",
        "from-package-import-module",
        "reexport",
        "star-reexport",
        "alias",
        "star",
    ],
)
def test_a_model_class_from_another_file_is_known_where_it_is_used(tmp_path, files, imports, ctor):
    root = make_project(tmp_path, {**files, "train.py": train(imports, ctor)})
    assert lint(root, "train.py") == {("SEN001", "train.py", line_of(root, "train.py", "loss = criterion"))}


def test_src_layout_and_relative_imports_inside_the_package(tmp_path):
    root = make_project(
        tmp_path,
        {
            "src/demo/__init__.py": "",
            "src/demo/layers/__init__.py": "",
            "src/demo/layers/head.py": """
                import torch.nn as nn


                def make_head(n_in, n_out):
                    return nn.Sequential(nn.Linear(n_in, n_out), nn.Softmax(dim=-1))
                """,
            "src/demo/model.py": """
                import torch.nn as nn

                from .layers.head import make_head


                class Net(nn.Module):
                    def __init__(self):
                        super().__init__()
                        self.trunk = nn.Linear(4, 8)
                        self.head = make_head(8, 3)

                    def forward(self, x):
                        return self.head(self.trunk(x))
                """,
            "scripts/train.py": train("from demo.model import Net", "Net()"),
        },
    )
    loss_line = line_of(root, "scripts/train.py", "loss = criterion")
    assert lint(root, "scripts/train.py") == {("SEN001", "scripts/train.py", loss_line)}


def test_a_base_class_in_another_file_gives_the_subclass_its_dropout(tmp_path):
    root = make_project(
        tmp_path,
        {
            "base.py": """
                import torch.nn as nn


                class Base(nn.Module):
                    def __init__(self, width):
                        super().__init__()
                        self.drop = nn.Dropout(0.5)
                        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(2)])
                """,
            "model.py": """
                from base import Base


                class Net(Base):
                    def forward(self, x):
                        for layer in self.layers:
                            x = self.drop(layer(x))
                        return x
                """,
            "evaluate.py": """
                import torch

                from model import Net

                model = Net(4)
                model.load_state_dict(torch.load("ckpt.pt"))
                val_loader = [torch.randn(2, 4) for _ in range(3)]
                with torch.no_grad():
                    for x in val_loader:
                        print(model(x).sum())
                """,
        },
    )
    # the subclass's dropout (from the base class in base.py) makes the missing eval() a bug
    assert lint(root, "evaluate.py") == {("SEN003", "evaluate.py", 10)}


def test_findings_inside_an_imported_helper_are_located_in_that_file(tmp_path):
    root = make_project(
        tmp_path,
        {
            "models.py": MODEL_SOFTMAX.replace("return self.out(self.body(x))", "return self.body(x)"),
            "engine.py": """
                import torch


                def evaluate(model, loader, criterion):
                    total = 0.0
                    for x, y in loader:
                        out = model(x)
                        total += criterion(out, y).item()
                    return total
                """,
            "train.py": train("from models import Net\nfrom engine import evaluate", "Net()")
            + "    print(evaluate(model, loader, criterion))\n",
        },
    )
    assert lint(root, "train.py") == {("SEN003", "engine.py", 7), ("SEN004", "engine.py", 7)}


def test_a_noqa_in_the_imported_file_silences_its_finding(tmp_path):
    root = make_project(
        tmp_path,
        {
            "models.py": MODEL_SOFTMAX.replace("return self.out(self.body(x))", "return self.body(x)"),
            "engine.py": """
                import torch


                def evaluate(model, loader):
                    model.eval()
                    return [model(x) for x, _ in loader]  # noqa: SEN004
                """,
            "train.py": train("from models import Net\nfrom engine import evaluate", "Net()")
            + "    print(evaluate(model, loader))\n",
        },
    )
    assert lint(root, "train.py") == set()


def test_the_trigger_text_of_imported_files_counts(tmp_path):
    """train.py never says "softmax": the model file does, and that is enough to analyse train.py."""
    root = make_project(tmp_path, {"models.py": MODEL_SOFTMAX, "train.py": train("from models import Net", "Net()")})
    assert "softmax" not in (root / "train.py").read_text().lower()
    assert lint(root, "train.py") == {("SEN001", "train.py", line_of(root, "train.py", "loss = criterion"))}


def test_unknown_names_and_import_cycles_stay_quiet(tmp_path):
    root = make_project(
        tmp_path,
        {
            "a.py": "from b import helper\nfrom b import missing_name\n\nVALUE = 1\n",
            "b.py": "from a import VALUE\n\n\ndef helper(m):\n    return m\n",
            "train.py": train("from a import helper, missing_name\nfrom models_not_here import Net", "Net()"),
        },
    )
    assert lint(root, "train.py") == set()


def test_only_imported_files_are_read(tmp_path):
    root = make_project(
        tmp_path,
        {
            "models.py": MODEL_SOFTMAX,
            "broken.py": "def oops(:\n",  # not imported: never read, never reported
            "unrelated/big.py": "x = 1\n" * 10,
            "train.py": train("from models import Net", "Net()"),
        },
    )
    project = Project(root)
    path = root / "train.py"
    check_source(path.read_text(), str(path), project=project)
    read = {p.relative_to(root.resolve()).as_posix() for p in project._texts}
    assert read == {"train.py", "models.py"}


def test_an_edited_dependency_is_read_again(tmp_path):
    root = make_project(tmp_path, {"models.py": MODEL_SOFTMAX, "train.py": train("from models import Net", "Net()")})
    assert lint(root, "train.py") == {("SEN001", "train.py", line_of(root, "train.py", "loss = criterion"))}
    fixed = MODEL_SOFTMAX.replace("return self.out(self.body(x))", "return self.body(x)  # logits now")
    (root / "models.py").write_text(textwrap.dedent(fixed).lstrip("\n"))
    assert lint(root, "train.py") == set()


def test_a_main_block_of_an_imported_module_does_not_run(tmp_path):
    root = make_project(
        tmp_path,
        {
            "models.py": textwrap.dedent(MODEL_SOFTMAX)
            + "\n\nif __name__ == '__main__':\n    Net = None  # a script-only rebinding\n",
            "train.py": train("from models import Net", "Net()"),
        },
    )
    assert lint(root, "train.py") == {("SEN001", "train.py", line_of(root, "train.py", "loss = criterion"))}


def test_find_root_uses_the_nearest_marker(tmp_path):
    make_project(tmp_path, {"pkg/sub/x.py": "x = 1\n"})
    (tmp_path / "pkg" / "setup.py").write_text("")
    assert find_root(tmp_path / "pkg" / "sub" / "x.py") == (tmp_path / "pkg").resolve()
    (tmp_path / "pkg" / "setup.py").unlink()
    assert find_root(tmp_path / "pkg" / "sub" / "x.py") == tmp_path.resolve()


def test_module_index_lists_top_level_bindings_with_their_lines():
    source = textwrap.dedent(
        """
        import torch
        from torch import nn as tnn

        @decorate
        def f():
            pass

        try:
            import apex
        except ImportError:
            apex = None

        if __name__ == "__main__":
            main_only = 1
        from helpers import *
        """
    ).lstrip("\n")
    idx = build_index(source)
    # (first line, last line, index among the top-level statements)
    assert idx.bindings["torch"] == [(1, 1, 0)]
    assert idx.bindings["tnn"] == [(2, 2, 1)]
    assert idx.bindings["f"] == [(4, 6, 2)]  # the decorator line is part of the definition
    assert idx.bindings["apex"] == [(8, 11, 3)]
    assert "main_only" not in idx.bindings
    assert idx.star == [("helpers", 0)]


def test_scan_imports_reads_every_import_form():
    text = "import a.b as c, d\nfrom . import e\nfrom ..f.g import (h,\n    i)\n    from j import k as kk\n"
    assert scan_imports(text) == [
        ("a.b", 0, []),
        ("d", 0, []),
        ("", 1, ["e"]),
        ("f.g", 2, ["h"]),
        ("j", 0, ["k"]),
    ]


def test_a_file_no_rule_can_trigger_is_answered_without_libcst(tmp_path):
    root = make_project(tmp_path, {"util.py": "def add(a, b):\n    return a + b\n"})
    code = (
        "import sys\nfrom sentinel.lint import lint_file\n"
        f"r = lint_file(__import__('pathlib').Path({str(root / 'util.py')!r}))\n"
        "assert r.ok, r\nprint('libcst' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_each_file_is_parsed_at_most_once_per_run(tmp_path, monkeypatch):
    """Two scripts import the same model file, which is linted (and analysed) too: one parse each,
    three in all."""
    import libcst

    predict = "\n\n@torch.no_grad()\ndef predict(model, x):\n    return model.eval()(x)\n"
    root = make_project(
        tmp_path,
        {
            "models.py": "import torch\n" + textwrap.dedent(MODEL_SOFTMAX) + predict,
            "train.py": train("from models import Net", "Net()"),
            "finetune.py": train("from models import Net", "Net()"),
        },
    )
    parsed: list[str] = []
    real = libcst.parse_module
    monkeypatch.setattr(libcst, "parse_module", lambda text, *a, **k: parsed.append(text) or real(text, *a, **k))
    project = Project(root)
    files = [root / "train.py", root / "finetune.py", root / "models.py"]
    project.expect(files)
    found = set()
    for f in files:
        found |= {(d.code, Path(d.path).name, d.line) for d in check_source(f.read_text(), str(f), project=project)}
    assert len(parsed) == 3
    line = line_of(root, "train.py", "loss = criterion")
    assert found == {("SEN001", "train.py", line), ("SEN001", "finetune.py", line)}


def test_a_linted_file_no_rule_triggers_on_is_read_like_an_imported_one(tmp_path, monkeypatch):
    """models.py is in the run but nothing in it can trigger a rule: it is never parsed whole, only
    the definitions train.py uses (the class and the import it needs), once."""
    import libcst

    root = make_project(
        tmp_path,
        {
            "models.py": textwrap.dedent(MODEL_SOFTMAX) + "\n\ndef unrelated():\n    return 1\n",
            "train.py": train("from models import Net", "Net()"),
        },
    )
    parsed: list[str] = []
    real = libcst.parse_module
    monkeypatch.setattr(libcst, "parse_module", lambda text, *a, **k: parsed.append(text) or real(text, *a, **k))
    project = Project(root)
    files = [root / "train.py", root / "models.py"]
    project.expect(files)
    found = set()
    for f in files:
        found |= {(d.code, Path(d.path).name) for d in check_source(f.read_text(), str(f), project=project)}
    assert found == {("SEN001", "train.py")}
    from_models = [t for t in parsed if "class Net" in t or t.startswith("import torch.nn")]
    assert len(from_models) == 2 and not any("def unrelated" in t for t in from_models)
    assert len(parsed) == 3


def test_definitions_of_files_outside_the_run_are_parsed_once_and_alone(tmp_path, monkeypatch):
    import libcst

    root = make_project(
        tmp_path,
        {
            "models.py": textwrap.dedent(MODEL_SOFTMAX) + "\n\ndef unrelated():\n    return 1\n",
            "train.py": train("from models import Net", "Net()"),
            "finetune.py": train("from models import Net", "Net()"),
        },
    )
    parsed: list[str] = []
    real = libcst.parse_module
    monkeypatch.setattr(libcst, "parse_module", lambda text, *a, **k: parsed.append(text) or real(text, *a, **k))
    project = Project(root)
    for name in ("train.py", "finetune.py"):
        f = root / name
        check_source(f.read_text(), str(f), project=project)
    snippets = [t for t in parsed if "class Net" in t]
    assert len(snippets) == 1 and "def unrelated" not in snippets[0]


def test_closure_follows_only_what_the_package_binds_for_the_imported_names(tmp_path):
    files = {f"layers/m{i}.py": f"class L{i}:\n    pass\n" for i in range(20)}
    files["layers/__init__.py"] = "".join(f"from .m{i} import L{i}\n" for i in range(20))
    files["train.py"] = "from layers import L3\nfrom layers import m7\n"
    root = make_project(tmp_path, files)
    project = Project(root)
    deps = project.closure(root / "train.py", (root / "train.py").read_text())
    names = sorted(p.relative_to(root.resolve()).as_posix() for p in deps)
    assert names == ["layers/__init__.py", "layers/m3.py", "layers/m7.py"]


def test_a_helper_stepping_on_the_callers_accumulation_condition_is_not_a_missing_reset(tmp_path):
    """A loss scaler in another file steps under `if update_grad:`, bound to the caller's condition."""
    scaler = """
        import torch


        class Scaler:
            def __init__(self):
                self._scaler = torch.cuda.amp.GradScaler()

            def __call__(self, loss, optimizer, update_grad=True):
                self._scaler.scale(loss).backward()
                if update_grad:
                    self._scaler.step(optimizer)
                    self._scaler.update()
        """
    loop = """
        import torch
        from util import Scaler

        model = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss_scaler = Scaler()
        accum_iter = 4
        optimizer.zero_grad()
        for step, x in enumerate([torch.randn(2, 3) for _ in range(8)]):
            loss = model(x).pow(2).mean() / accum_iter
            loss_scaler(loss, optimizer, update_grad=(step + 1) % accum_iter == 0)
            if (step + 1) % accum_iter == 0:
                optimizer.zero_grad()
        """
    root = make_project(tmp_path, {"util.py": scaler, "train.py": loop})
    assert lint(root, "train.py") == set()
    reset = "    if (step + 1) % accum_iter == 0:\n        optimizer.zero_grad()\n"
    no_reset = textwrap.dedent(loop).replace(reset, "")
    (root / "train.py").write_text(no_reset)
    assert lint(root, "train.py") == {("SEN002", "util.py", line_of(root, "util.py", ".backward()"))}


def test_zero_grad_on_a_model_covers_the_optimized_parts_of_its_submodules(tmp_path):
    models = """
        import torch.nn as nn


        class Encoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = nn.Linear(4, 4)
                self.linear = nn.Linear(4, 2)

            def forward(self, x):
                return self.linear(self.backbone(x))
        """
    train = """
        import torch
        from models import Encoder

        encoder = Encoder()
        head = torch.nn.Linear(2, 1)
        params = list(head.parameters()) + list(encoder.linear.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-3)
        for x in [torch.randn(2, 4) for _ in range(3)]:
            loss = head(encoder(x)).mean()
            head.zero_grad()
            encoder.zero_grad()
            loss.backward()
            optimizer.step()
        """
    root = make_project(tmp_path, {"models.py": models, "train.py": train})
    assert lint(root, "train.py") == set()


def test_super_init_runs_the_base_class_init_from_another_file(tmp_path):
    root = make_project(
        tmp_path,
        {
            "base.py": """
                import torch.nn as nn


                class BaseModel(nn.Module):
                    def __init__(self, dropout=0.25):
                        super().__init__()
                        self.dropout = nn.Dropout(dropout)
                """,
            "model.py": """
                from torch import nn

                from base import BaseModel


                class Classifier(BaseModel):
                    def __init__(self):
                        super().__init__(dropout=0.3)
                        self.fc = nn.Linear(8, 2)

                    def forward(self, x):
                        return self.fc(self.dropout(x))
                """,
            "train.py": """
                import torch

                from model import Classifier

                model = Classifier()
                opt = torch.optim.SGD(model.parameters(), lr=0.1)
                val_loader = [torch.randn(4, 8) for _ in range(2)]
                for epoch in range(2):
                    model.train()
                    loss = model(torch.randn(4, 8)).sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        for x in val_loader:
                            print(model(x).sum())
                """,
        },
    )
    assert lint(root, "train.py") == {("SEN003", "train.py", line_of(root, "train.py", "print(model(x)"))}


def test_a_model_method_that_runs_no_layer_is_not_a_forward(tmp_path):
    """`model.estimate_mfu(...)` after training computes a number from the config: not an evaluation."""
    root = make_project(
        tmp_path,
        {
            "model.py": """
                import torch.nn as nn


                class GPT(nn.Module):
                    def __init__(self):
                        super().__init__()
                        self.drop = nn.Dropout(0.1)
                        self.head = nn.Linear(8, 8)

                    def forward(self, x):
                        return self.head(self.drop(x))

                    def num_params(self):
                        return sum(p.numel() for p in self.parameters())

                    def estimate_mfu(self, steps, dt):
                        return 6 * self.num_params() * steps / dt / 312e12
                """,
            "bench.py": """
                import torch

                from model import GPT

                model = GPT()
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
                for stage in range(2):
                    for k in range(3):
                        loss = model(torch.randn(2, 8)).pow(2).mean()
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                    mfu = model.estimate_mfu(3, 0.5)
                    print(mfu)
                """,
        },
    )
    assert lint(root, "bench.py") == set()


def test_a_model_built_and_moved_in_one_expression_is_one_model(tmp_path):
    """`Seq2Seq(encoder).to(device)` builds one model: `model.eval()` later reaches `model.encoder` too
    (the expression used to be evaluated twice, leaving the encoder registered under a phantom model)."""
    root = make_project(tmp_path, {"translate.py": SEQ2SEQ})
    assert lint(root, "translate.py") == set()


SEQ2SEQ = """
import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 8, 2, dropout=0.5)

    def forward(self, x):
        return self.rnn(x)


class Seq2Seq(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, x):
        return self.encoder(x)[0]


encoder = Encoder()
model = Seq2Seq(encoder).to("cpu")
optimizer = torch.optim.Adam(model.parameters())
model.apply(lambda m: None)


def train_fn(model, loader):
    model.train()
    for x in loader:
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()


def translate(model, x):
    model.eval()
    with torch.no_grad():
        hidden = model.encoder(x)
    return hidden


loader = [torch.randn(3, 2, 4) for _ in range(2)]
for _ in range(2):
    train_fn(model, loader)
print(translate(model, torch.randn(3, 1, 4)))
"""


REGISTRY = """
    MODELS = {}
    _CACHE = {}


    def register(name):
        def wrap(cls):
            MODELS[name] = cls
            return cls

        return wrap


    def cached(key, build):
        value = build()
        _CACHE[key] = value
        return value


    def create(name, **kwargs):
        return MODELS[name](**kwargs)
    """

SOFTMAX_HEAD = """
    from torch import nn
    from .registry import register


    @register("{key}")
    class {cls}(nn.Module):
        def __init__(self, classes=3):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, classes){head})

        def forward(self, x):
            return self.net(x)
    """


def registry_project(tmp_path: Path, heads: dict[str, str], ctor: str) -> Path:
    files = {"models/registry.py": REGISTRY, "models/__init__.py": "from . import " + ", ".join(heads) + "\n"}
    files["models/__init__.py"] += "from .registry import create\n"
    for key, head in heads.items():
        files[f"models/{key}.py"] = SOFTMAX_HEAD.format(key=key, cls=key.upper(), head=head)
    files["train.py"] = train("from models import create\nimport sys", ctor)
    return make_project(tmp_path, files)


def test_a_registry_filled_by_a_decorator_knows_its_classes_in_other_files():
    index = build_index(textwrap.dedent(REGISTRY))
    assert index.fillers == {"MODELS": ["register"]}  # the memo cache stores a result, not what it was given
    heads = build_index(textwrap.dedent(SOFTMAX_HEAD.format(key="cnn", cls="CNN", head="")))
    assert heads.decorated == [("register", "CNN", "cnn")]


@pytest.mark.parametrize(
    "heads, ctor, found",
    [
        ({"cnn": ", nn.Softmax(dim=1)", "mlp": ", nn.Softmax(dim=1)"}, "create(sys.argv[1])", True),
        ({"cnn": ", nn.Softmax(dim=1)", "mlp": ""}, "create(sys.argv[1])", False),  # one of them has logits
        ({"cnn": ", nn.Softmax(dim=1)", "mlp": ""}, 'create("cnn")', True),  # the key picks the softmax one
        ({"cnn": ", nn.Softmax(dim=1)", "mlp": ""}, 'create("mlp")', False),
    ],
)
def test_a_model_built_from_a_decorator_registry_is_known_where_it_is_trained(tmp_path, heads, ctor, found):
    root = registry_project(tmp_path, heads, ctor)
    expected = {("SEN001", "train.py", line_of(root, "train.py", "loss = criterion"))} if found else set()
    assert {f for f in lint(root, "train.py") if f[0] == "SEN001"} == expected
    deps = Project(root).closure(root / "train.py", (root / "train.py").read_text())
    # the registered files are dependencies (cache keys, trigger text) though nothing imports them by name
    assert {p.name for p in deps} >= {"registry.py", *(f"{k}.py" for k in heads)}


def test_a_model_zoo_registry_is_unknown_and_none_of_its_files_is_read(tmp_path):
    # timm registers over a thousand factories: `create(args.model)` is then one model nobody can name,
    # and reading every registered definition would cost more than the file being linted
    heads = {f"net{i}": ", nn.Softmax(dim=1)" for i in range(MAX_REGISTERED + 1)}
    root = registry_project(tmp_path, heads, "create(sys.argv[1])")
    assert {f for f in lint(root, "train.py") if f[0] == "SEN001"} == set()
    deps = Project(root).closure(root / "train.py", (root / "train.py").read_text())
    assert not {p.name for p in deps} & {f"{k}.py" for k in heads}
    # within the limit, a constant key still picks its class out of many (only that one is read)
    (tmp_path / "keyed").mkdir()
    keyed = registry_project(tmp_path / "keyed", dict(list(heads.items())[:MAX_REGISTERED]), 'create("net3")')
    assert {f[0] for f in lint(keyed, "train.py")} == {"SEN001"}


def test_a_package_init_that_only_re_exports_is_answered_without_analysis(tmp_path, monkeypatch):
    root = make_project(
        tmp_path,
        {
            "pkg/__init__.py": """
                \"\"\"The package's public names.\"\"\"
                from .models import Net
                from .engine import *

                __all__ = ["Net", "fit"]
                try:
                    from .extras import Extra
                except ImportError:
                    Extra = None
                """,
            "pkg/models.py": MODEL_SOFTMAX,
            "pkg/engine.py": """
                import torch

                def fit(model, loader):
                    opt = torch.optim.SGD(model.parameters(), lr=0.1)
                    for x, y in loader:
                        loss = torch.nn.functional.cross_entropy(model(x), y)
                        loss.backward()
                        opt.step()
                """,
        },
    )
    import sentinel.engine as engine

    def no_analysis(*args, **kwargs):
        raise AssertionError("the re-exporting __init__ was analysed")

    monkeypatch.setattr(engine, "_analyse", no_analysis)
    init = root / "pkg" / "__init__.py"
    assert check_source(init.read_text(), str(init)) == []
    # a file with code of its own is still analysed (and the bug it imports is found in engine.py)
    monkeypatch.undo()
    user = root / "run.py"
    user.write_text(
        "from pkg import Net, fit\nimport torch\nfit(Net(), [(torch.randn(4, 4), torch.tensor([0, 1, 2, 0]))])\n"
    )
    assert {(c, f) for c, f, _ in lint(root, "run.py")} >= {("SEN002", "pkg/engine.py")}
