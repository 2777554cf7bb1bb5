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


def test_a_zoo_file_is_analysed_without_its_model_methods_and_with_a_few_factories(monkeypatch):
    source = ZOO + "".join(FACTORY.format(i=i) for i in range(8))
    names = entries_of(source, monkeypatch)
    assert not [n for n in names if "." in n]  # Block.forward, Net.load_pretrained...: part of the model
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
