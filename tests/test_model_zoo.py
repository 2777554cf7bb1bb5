"""Model zoos: files of hundreds of model classes and registered factories cost what their findings need.

A zoo file triggers SEN003/SEN004 (its weight loading says ``load_state_dict``), but forwards inside a
model's own methods are part of its forward, never an evaluation: such a file is analysed without its
``nn.Module`` methods as entries of their own. Its registered factories (``@register_model``) are
configurations of the same builders: a few are analysed. A training script that imports the zoo reads
only the definitions it uses. Each test pins what is analysed, and that findings are unchanged.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sentinel.analysis import interpreter as interp_mod
from sentinel.analysis.interpreter import Interpreter
from sentinel.analysis.project import Project
from sentinel.engine import check_source

ZOO = textwrap.dedent(
    """
    import torch
    from torch import nn

    _REGISTRY = {}


    def register_model(fn):
        _REGISTRY[fn.__name__] = fn
        return fn


    class Block(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc = nn.Linear(width, width)
            self.drop = nn.Dropout(0.1)

        def forward(self, x):
            return x + self.drop(self.fc(x))


    class Net(nn.Module):
        def __init__(self, width=8, depth=2, classes=3):
            super().__init__()
            self.blocks = nn.Sequential(*[Block(width) for _ in range(depth)])
            self.head = nn.Linear(width, classes)

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return self.head(x)

        def load_pretrained(self, path):
            self.load_state_dict(torch.load(path))


    def _create(depth, width, pretrained=False):
        model = Net(width=width, depth=depth)
        if pretrained:
            model.load_pretrained("weights.pt")
        return model
    """
)

FACTORY = """

@register_model
def net_{i}(pretrained=False, **kwargs):
    cfg_{i} = dict(depth={i} + 1, width=8)
    return _create(cfg_{i}["depth"], cfg_{i}["width"], pretrained=pretrained)
"""


#: a module of six small layers, `Layer0` ... `Layer5`
LAYERS = "from torch import nn\n" + "".join(
    f"\n\nclass Layer{i}(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    f"        self.fc = nn.Linear(4, 4)\n\n    def forward(self, x):\n        return self.fc(x)\n"
    for i in range(6)
)


def read_definitions(tmp_path: Path, script: str) -> list[str]:
    """The texts of the imported definitions a lint of ``train.py`` read (parsed) from other files."""
    import libcst as cst

    interp = Interpreter(cst.parse_module(script), script, path=tmp_path / "train.py", project=Project(tmp_path))
    interp.run()
    return [text for _, _, parts in interp.imported_sources() for _, text, *_ in parts]


def entries_of(source: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    names: list[str] = []
    run_entry = Interpreter.run_entry

    def spy(self, info, state):
        names.append(info.name if info.cls is None else f"{info.cls.name}.{info.name}")
        return run_entry(self, info, state)

    monkeypatch.setattr(interp_mod.Interpreter, "run_entry", spy)
    assert check_source(source, "zoo.py", project=False) == []
    return names


def test_a_zoo_file_is_analysed_without_its_model_methods_factories_and_builders(monkeypatch):
    # only SEN003/SEN004 trigger (`load_state_dict`), and they never fire in model code: the model's
    # methods, the registered factories and `_create`, which only the factories call, all build models
    source = ZOO + "".join(FACTORY.format(i=i) for i in range(8))
    assert entries_of(source, monkeypatch) == []


def test_a_builder_the_file_also_calls_elsewhere_stays_an_entry(monkeypatch):
    source = ZOO + "".join(FACTORY.format(i=i) for i in range(2)) + "\n\ndef demo():\n    return _create(1, 8)\n"
    assert entries_of(source, monkeypatch) == ["demo"]


def test_with_a_rule_that_reads_model_code_a_few_factories_are_analysed(monkeypatch):
    # SEN015 can fire in a model's methods: they are entries, and so are three of the factories
    source = ZOO.replace("return self.head(x)", "return self.head(torch.nn.functional.dropout(x, 0.1, self.training))")
    names = entries_of(source + "".join(FACTORY.format(i=i) for i in range(8)), monkeypatch)
    assert [n for n in names if n.startswith("net_")] == ["net_0", "net_1", "net_2"]
    assert "_create" not in names  # it ran inside the factories


def test_a_rule_that_can_fire_inside_a_model_still_gets_its_methods():
    # SEN015 (F.dropout without training=) fires inside a forward nothing in the file calls
    source = ZOO.replace("x + self.drop(self.fc(x))", "x + torch.nn.functional.dropout(self.fc(x), 0.1)")
    line = next(i for i, t in enumerate(source.splitlines(), 1) if "functional.dropout" in t)
    assert {(d.code, d.line) for d in check_source(source, "zoo.py", project=False)} == {("SEN015", line)}


def test_an_evaluation_method_of_a_model_class_called_by_the_script_is_still_checked():
    # the script's call runs the method as the model's code: what the script does around it is checked
    source = ZOO + textwrap.dedent(
        """
        model = _create(2, 8)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for x, y in [(torch.randn(4, 8), torch.randint(0, 3, (4,)))] * 2:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
        for x, y in [(torch.randn(4, 8), torch.randint(0, 3, (4,)))] * 2:
            pred = model(x).argmax(1)  # evaluation
        """
    )
    line = next(i for i, t in enumerate(source.splitlines(), 1) if "# evaluation" in t)
    assert {(d.code, d.line) for d in check_source(source, "zoo.py", project=False)} == {("SEN004", line)}


def test_a_script_reads_only_the_imported_definitions_it_uses(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'zoo'\n")
    (tmp_path / "layers.py").write_text(LAYERS)
    script = textwrap.dedent(
        """
        import torch
        from layers import Layer0, Layer1, Layer2, Layer3, Layer4, Layer5

        model = Layer3()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for x in [torch.randn(2, 4)] * 3:
            model(x).sum().backward()
            opt.step()
        """
    )
    (tmp_path / "train.py").write_text(script)
    read = read_definitions(tmp_path, script)
    assert [i for i in range(6) if any(f"class Layer{i}(" in text for text in read)] == [3]
    # and the finding that needs the definition is made
    assert {d.code for d in check_source(script, str(tmp_path / "train.py"))} == {"SEN002"}


def test_an_imported_module_binds_only_the_names_of_its_imports_that_are_used(tmp_path: Path):
    # a zoo's model file imports thirty layers in one statement; the model a script uses needs one
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'zoo'\n")
    (tmp_path / "layers.py").write_text(LAYERS)
    (tmp_path / "models.py").write_text(
        "from torch import nn\nfrom layers import (\n"
        + "".join(f"    Layer{i},\n" for i in range(6))
        + ")\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.body = Layer4()\n        self.drop = nn.Dropout(0.5)\n\n"
        "    def forward(self, x):\n        return self.drop(self.body(x))\n"
    )
    script = textwrap.dedent(
        """
        import torch
        from models import Net

        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for x in [torch.randn(2, 4)] * 3:
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
        for x in [torch.randn(2, 4)]:
            with torch.no_grad():
                print(model(x))  # evaluation
        """
    )
    (tmp_path / "train.py").write_text(script)
    read = read_definitions(tmp_path, script)
    assert [i for i in range(6) if any(f"class Layer{i}(" in text for text in read)] == [4]
    # Net's dropout (through the one layer read) still makes the evaluation in train mode a finding
    line = next(i for i, t in enumerate(script.splitlines(), 1) if "# evaluation" in t)
    assert {(d.code, d.line) for d in check_source(script, str(tmp_path / "train.py"))} == {("SEN003", line)}


HELPERS = textwrap.dedent(
    """
    import torch


    def load_weights(model, path):
        model.load_state_dict(torch.load(path))
        model.eval()
        return model
    """
)


def analysed_rules(tmp_path: Path, name: str, source: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The rules a lint of ``name`` (in a project with ``helpers.py``) analyses it for."""
    from sentinel import engine

    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'zoo'\nversion = '0'\n")
    (tmp_path / "helpers.py").write_text(HELPERS)
    (tmp_path / name).write_text(source)
    seen: list[str] = []
    analyse = engine._analyse

    def spy(source, path, file, proj, active, *args):
        seen.extend(r.CODE for r in active)
        return analyse(source, path, file, proj, active, *args)

    monkeypatch.setattr(engine, "_analyse", spy)
    assert check_source(source, str(tmp_path / name)) == []
    return seen


ZOO_WITH_HELPER = (
    "from helpers import load_weights\n"
    + ZOO.replace('model.load_pretrained("weights.pt")', 'load_weights(model, "weights.pt")').replace(
        "self.load_state_dict(torch.load(path))", "load_weights(self, path)"
    )
    + "".join(FACTORY.format(i=i) for i in range(3))
)


def test_a_zoo_file_is_not_read_for_evaluation_its_package_helpers_do(tmp_path, monkeypatch):
    # the helper's `load_state_dict` / `eval()` would trigger SEN003/SEN004 in any importer; a file of
    # registered factories is model code: those rules trigger on its own code only, and nothing is parsed
    assert "load_state_dict" not in ZOO_WITH_HELPER
    assert analysed_rules(tmp_path, "zoo.py", ZOO_WITH_HELPER, monkeypatch) == []


def test_a_script_importing_the_same_helper_is_read_for_evaluation(tmp_path, monkeypatch):
    script = ZOO_WITH_HELPER.split("@register_model")[0] + textwrap.dedent(
        """
        model = load_weights(_create(2, 8), "weights.pt")
        """
    )
    assert analysed_rules(tmp_path, "predict.py", script, monkeypatch) == ["SEN003", "SEN004"]
