"""Real-code idioms the shared analysis understands, checked through the rules that depend on them.

The lint corpus (fixtures/lint/**/*idiom_*.py) holds runnable programs for each idiom; these tests
cover the variants a runnable single-file program cannot show (library models whose classes
sentinel cannot see, imported helpers) and pin the exact finding set of each snippet.
"""

from __future__ import annotations

import textwrap

import pytest

from sentinel.engine import check_source


def findings(source: str) -> set[tuple[str, int]]:
    code = textwrap.dedent(source).lstrip("\n")
    return {(d.code, d.line) for d in check_source(code, "<string>", project=False)}


def line_of(source: str, marker: str) -> int:
    code = textwrap.dedent(source).lstrip("\n")
    for i, text in enumerate(code.splitlines(), 1):
        if marker in text:
            return i
    raise AssertionError(marker)


LOADED_TRAIN_MODE = """
import torch
model = torch.load("model.pt", weights_only=False)
model.train()
with torch.no_grad():
    for x in [torch.randn(2, 4)]:
        out = model(x)
"""


def test_loaded_module_with_unknown_layers_is_not_reported_by_sen003() -> None:
    # train mode is known, but whether the pickled module has dropout/batch norm is not
    assert findings(LOADED_TRAIN_MODE) == set()


LOADED_TENSOR = """
import torch
from torch import nn
features = torch.load("features.pt")
features.to("cpu")
model = nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for x in features:
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
"""


def test_loaded_data_used_as_data_is_no_model() -> None:
    assert findings(LOADED_TENSOR) == set()


ZOO_HEAD = """
import torch
import torchvision
from torch import nn
model = torchvision.models.resnet18()
model.fc = nn.Sequential(nn.Linear(512, 10), nn.Softmax(dim=1))
criterion = nn.CrossEntropyLoss()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for x, y in [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))]:
    opt.zero_grad()
    loss = criterion(model(x), y)  # here
    loss.backward()
    opt.step()
"""


def test_zoo_model_head_replaced_by_softmax_outputs_probabilities() -> None:
    assert findings(ZOO_HEAD) == {("SEN001", line_of(ZOO_HEAD, "# here"))}


def test_zoo_model_head_replaced_by_linear_again_outputs_logits() -> None:
    source = ZOO_HEAD.replace("criterion = nn", "model.fc = nn.Linear(512, 10)\ncriterion = nn")
    assert findings(source) == set()


def test_non_head_attribute_of_zoo_model_is_not_its_output() -> None:
    source = ZOO_HEAD.replace("model.fc = nn.Sequential", "model.aux = nn.Sequential")
    assert findings(source) == set()


UNSEEN_GENERATE = """
import torch
from mylib import build_model
model = build_model()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(2):
    model.train()
    for x in [torch.randn(2, 4)]:
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    with torch.no_grad():
        val_samples = model.generate(torch.randn(2, 4))  # here
    model.eval()
    test_codes = model.encode(torch.randn(2, 4))  # there
"""


def test_forward_like_methods_of_unseen_models_are_forwards() -> None:
    # generate() after training without eval(): SEN003; encode() without no_grad: SEN004
    assert findings(UNSEEN_GENERATE) == {
        ("SEN003", line_of(UNSEEN_GENERATE, "# here")),
        ("SEN004", line_of(UNSEEN_GENERATE, "# there")),
    }


def test_generate_grad_mode_is_unknown() -> None:
    # library generate() methods usually run under their own no_grad: never SEN004
    source = UNSEEN_GENERATE.replace("model.encode(", "model.generate(")
    assert ("SEN004", line_of(source, "# there")) not in findings(source)


IMPORTED_LOSS = """
import torch
from mylib import compute_loss
def train(model, loader, optimizer):
    losses = []
    for batch in loader:
        optimizer.zero_grad()
        loss = compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss)  # here
    return sum(l.item() for l in losses)
"""


def test_stored_value_that_was_backpropagated_carries_a_graph() -> None:
    assert findings(IMPORTED_LOSS) == {("SEN006", line_of(IMPORTED_LOSS, "# here"))}


@pytest.mark.parametrize("stored", ["loss.item()", "loss.detach()", "float(loss)"])
def test_stored_detached_value_of_a_backpropagated_loss_is_fine(stored: str) -> None:
    assert findings(IMPORTED_LOSS.replace("losses.append(loss)", f"losses.append({stored})")) == set()


def test_unrelated_result_of_an_unknown_call_is_not_proven_to_carry_a_graph() -> None:
    source = IMPORTED_LOSS.replace("losses.append(loss)", "losses.append(compute_loss(model, batch))")
    assert findings(source) == set()


UNROLLED_CELL = """
import torch
from torch import nn
cell = nn.GRUCell(4, 8)
head = nn.Linear(8, 1)
opt = torch.optim.SGD([*cell.parameters(), *head.parameters()], lr=0.1)
for step in range(3):
    h = None
    opt.zero_grad()
    for t in range(5):
        h = cell(torch.randn(2, 4), h)
    head(h).pow(2).mean().backward()
    opt.step()
"""


def test_state_carried_over_time_steps_and_backpropagated_once_after_is_fine() -> None:
    assert findings(UNROLLED_CELL) == set()


CARRIED = """
import torch
from torch import nn
rnn = nn.GRU(4, 8)
opt = torch.optim.SGD(rnn.parameters(), lr=0.1)
h = torch.zeros(1, 2, 8)
opt.zero_grad()
for step in range(3):
    out, h = rnn(torch.randn(5, 2, 4), h)  # here
    out.pow(2).mean().backward(retain_graph=True)
opt.step()
"""


def test_state_carried_across_backpropagated_iterations_is_reported() -> None:
    assert findings(CARRIED) == {("SEN006", line_of(CARRIED, "# here"))}


@pytest.mark.parametrize(
    "cut",
    [
        "    h = h.detach()\n",
        "    h = tuple(s.detach() for s in (h,))[0]\n",
    ],
)
def test_state_detached_each_iteration_is_fine(cut: str) -> None:
    source = CARRIED.replace("    out, h = rnn", cut + "    out, h = rnn")
    assert findings(source) == set()


def test_state_detached_after_the_call_is_fine() -> None:
    source = CARRIED.replace("  # here\n", "\n    h = h.detach()\n")
    assert findings(source) == set()


MAP_EVAL = """
import torch
from torch import nn
G = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2))
D = nn.Sequential(nn.Linear(4, 1), nn.Dropout(0.2))
opt = torch.optim.SGD([*G.parameters(), *D.parameters()], lr=0.1)
nets = [G, D]
z_val = torch.load("z_val.pt")
for epoch in range(2):
    for m in nets:
        m.train()
    opt.zero_grad()
    D(G(torch.randn(2, 4))).mean().backward()
    opt.step()
    SWITCH
    with torch.no_grad():
        score = D(G(z_val)).mean().item()
"""


@pytest.mark.parametrize(
    "switch",
    [
        "[m.eval() for m in nets]",
        "list(map(lambda m: m.eval(), nets))",
        "for m in (G, D): m.eval()",
        "_ = {m.eval() for m in nets}",
    ],
)
def test_mode_switches_of_every_element(switch: str) -> None:
    assert findings(MAP_EVAL.replace("SWITCH", switch)) == set()


def test_mode_switch_of_only_some_elements_is_not_all() -> None:
    source = MAP_EVAL.replace("SWITCH", "[m.eval() for m in nets[:1]]")
    # `nets[:1]` is not a list sentinel can enumerate: D's mode is not known to be eval
    assert ("SEN003", line_of(source, "score =")) in findings(source)


WITH_FLAG = """
import torch
from torch import nn
model = nn.Linear(4, 2)
model.eval()
with torch.inference_mode(FLAG):
    for x in torch.load("test_batches.pt"):
        out = model(x)
"""


def test_inference_mode_false_disables_nothing() -> None:
    assert findings(WITH_FLAG.replace("FLAG", "False")) == {("SEN004", line_of(WITH_FLAG, "out = model"))}
    assert findings(WITH_FLAG.replace("FLAG", "mode=True")) == set()


UNKNOWN_BRANCH = """
import torch
from torch import nn
def run(cfg):
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(2):
        model.train()
        opt.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        BRANCH
        with torch.no_grad():
            val_out = model(cfg.x_val)
run(None)
"""


def test_mode_switch_under_an_unknown_condition_is_unknown() -> None:
    branch = "if cfg.mc:\n            model.train()\n        else:\n            model.eval()"
    assert findings(UNKNOWN_BRANCH.replace("BRANCH", branch)) == set()


def test_eval_on_every_path_is_eval_and_missing_eval_is_still_reported() -> None:
    both = "if cfg.mc:\n            model.eval()\n        else:\n            model.eval()"
    assert findings(UNKNOWN_BRANCH.replace("BRANCH", both)) == set()
    assert findings(UNKNOWN_BRANCH.replace("BRANCH", "pass")) == {("SEN003", line_of(UNKNOWN_BRANCH, "val_out ="))}


SAVED_AND_RELOADED = """
import torch
from torch import nn
model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for x in torch.load("batches.pt"):
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
SWITCH
torch.save({"net": model}, "net.pt")
restored = torch.load("net.pt", weights_only=False)["net"]
with torch.no_grad():
    out = restored(torch.load("test.pt"))
"""


def test_module_reloaded_from_the_path_it_was_saved_to_keeps_its_mode_and_layers() -> None:
    # saved in train mode with dropout: the copy read back is too
    assert findings(SAVED_AND_RELOADED.replace("SWITCH", "")) == {("SEN003", line_of(SAVED_AND_RELOADED, "out ="))}
    assert findings(SAVED_AND_RELOADED.replace("SWITCH", "model.eval()")) == set()


LIST_OF_MODELS = """
import torch
from torch import nn
def make():
    return nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
students = [make() for _ in range(3)]
teachers = [make() for _ in range(2)]
opt = torch.optim.SGD([p for s in students for p in s.parameters()], lr=0.1)
for x in torch.load("batches.pt"):
    opt.zero_grad()
    sum(s(x).sum() for s in students).backward()
    opt.step()
SWITCH
with torch.no_grad():
    votes = [s(torch.load("test.pt")) for s in students]
"""


@pytest.mark.parametrize(
    ("switch", "reported"),
    [
        ("[s.eval() for s in students]", False),
        ("list(map(lambda m: m.eval(), teachers + students))", False),
        ("[t.eval() for t in teachers]", True),
    ],
)
def test_lists_of_models_built_by_comprehensions(switch: str, reported: bool) -> None:
    expected = {("SEN003", line_of(LIST_OF_MODELS, "votes ="))} if reported else set()
    assert findings(LIST_OF_MODELS.replace("SWITCH", switch)) == expected


KEYED_OUTPUTS = """
import torch
from torch import nn
body = nn.Linear(4, 4)
opt = torch.optim.SGD(body.parameters(), lr=0.1)
for x in torch.load("batches.pt"):
    opt.zero_grad()
    outputs = {}
    for k in range(3):
        outputs[k] = body(x * k)
    loss = sum(o.pow(2).mean() for o in outputs.values())
    loss.backward()
    opt.step()
"""


def test_outputs_stored_under_keys_then_backpropagated_are_training() -> None:
    # the dict holds what was stored in it: the loss read back from it is what backward() runs on
    assert findings(KEYED_OUTPUTS) == set()


BOUND_MODE_METHOD = """
import torch
from mylib import build
def run(model, loader, training):
    set_mode = model.train if training else model.eval
    set_mode()
    with torch.set_grad_enabled(training):
        for x in loader:
            out = model(x)
model = build()
run(model, torch.load("val.pt"), training=False)
"""


def test_mode_method_referenced_then_called_switches_the_mode() -> None:
    # `model.train` is a bound method of the model, not a submodule it runs
    assert findings(BOUND_MODE_METHOD) == set()


LIST_BUILT_HEADS = """
import torch
import torch.nn as nn

def build(sizes, act=None):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.pop()
    if act == "softmax":
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers)

def popped():
    layers = [nn.Linear(4, 3), nn.Softmax(dim=1)]
    layers.pop()
    return nn.Sequential(*layers)

probs_net = build([4, 8, 3], act="softmax")
logits_net = build([4, 8, 3])
popped_net = popped()
criterion = nn.CrossEntropyLoss()
params = [*probs_net.parameters(), *logits_net.parameters(), *popped_net.parameters()]
opt = torch.optim.SGD(params, lr=0.1)
x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
for _ in range(3):
    opt.zero_grad()
    a = criterion(probs_net(x), y)  # probs
    b = criterion(logits_net(x), y)
    c = criterion(popped_net(x), y)
    (a + b + c).backward()
    opt.step()
"""


def test_last_layer_appended_after_a_loop_built_list_is_the_sequential_output() -> None:
    """A layer list built in a loop, popped, then given a softmax under a literal-bound flag: the
    Sequential ends in softmax; without the flag, or after popping the softmax, it does not."""
    assert findings(LIST_BUILT_HEADS) == {("SEN001", line_of(LIST_BUILT_HEADS, "# probs"))}


ATTENTION_POOL = """
import torch
import torch.nn as nn

class Pool(nn.Module):
    def __init__(self):
        super().__init__()
        self.score = nn.Linear(8, 1)
        self.out = nn.Linear(8, 3)

    def forward(self, items):
        w = torch.softmax(self.score(items).squeeze(-1), dim=-1)
        return self.out((w.unsqueeze(-1) * items).sum(1))

model = Pool()
items = torch.randn(32, 5, 8)
with torch.no_grad():
    model.eval()
    over_batch = torch.softmax(model(items), dim=0)  # batch
    over_classes = torch.softmax(model(items), dim=1)
"""


def test_attention_weighted_sum_keeps_the_batch_at_dimension_zero() -> None:
    """squeeze(-1), unsqueeze(-1) and sum(1) inside a forward keep dimension 0 the batch, so a softmax
    over dimension 0 of the model's output normalizes over the batch; dimension 1 is the classes."""
    assert findings(ATTENTION_POOL) == {("SEN020", line_of(ATTENTION_POOL, "# batch"))}


CALLBACKS = """
import torch
import torch.nn as nn

class Callback:
    def on_batch_start(self, trainer): ...

class ZeroGrad(Callback):
    def on_batch_start(self, trainer):
        trainer.optimizer.zero_grad()

class Log(Callback):
    pass

class Trainer:
    def __init__(self, model, callbacks=None):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        self.callbacks = list(callbacks or [])

    def emit(self, hook):
        for cb in self.callbacks:
            getattr(cb, hook)(self)

    def fit(self, batches):
        for x, y in batches:
            self.emit("on_batch_start")
            loss = nn.functional.mse_loss(self.model(x), y)
            loss.backward()  # here
            self.optimizer.step()

batches = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(3)]
Trainer(nn.Linear(2, 1), CALLBACKS).fit(batches)
"""


@pytest.mark.parametrize(
    ("callbacks", "found"),
    [
        ("[Log(), ZeroGrad()]", False),  # a short literal list: each callback run in turn
        ("[Log()] * 3 + [ZeroGrad()] + [Log()] * 4", False),  # one of them, unknown which: may reset
        ("[Log() for _ in range(8)]", True),  # none of these can reset
        ("[Log(), Log()]", True),
        ("load_callbacks()", False),  # unknown callbacks given the trainer: may reset
    ],
)
def test_gradient_reset_by_a_callback_is_followed_or_left_unknown(callbacks: str, found: bool) -> None:
    source = CALLBACKS.replace("CALLBACKS", callbacks)
    expected = {("SEN002", line_of(source, "# here"))} if found else set()
    assert findings(source) == expected


PREDICT_PROBA = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(x)

    @torch.no_grad()
    def predict_proba(self, x):
        return torch.softmax(self(x), dim=0)  # batch

    @torch.no_grad()
    def predict(self, x):
        return self.forward(x).softmax(dim=1).argmax(1)

model = Net().eval()
batch = torch.randn(16, 8)
probs = model.predict_proba(batch)
labels = model.predict(batch)
"""


def test_softmax_over_the_batch_in_a_models_own_prediction_method() -> None:
    """A model's method other than forward runs on the caller's batch: ``softmax(self(x), dim=0)``
    normalizes over it; over dim 1 it does not."""
    assert findings(PREDICT_PROBA) == {("SEN020", line_of(PREDICT_PROBA, "# batch"))}


LIBRARY_SCALER_STEP = """
import torch
from torch import nn
from optimlib import build_optimizer, AmpScaler

def train_epoch(model, loader, optimizer, loss_scaler):
    model.train()
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss_scaler(loss, optimizer, clip_grad=1.0)

model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1), nn.Linear(8, 2))
optimizer = build_optimizer(model)
loader = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(3)]
for epoch in range(2):
    train_epoch(model, loader, optimizer, AmpScaler())
"""


def test_a_library_optimizer_handed_to_a_loss_scaler_with_the_loss_trains() -> None:
    """``loss_scaler(loss, optimizer)`` backpropagates and steps even when the optimizer comes from a
    library factory: the forward is training, not an evaluation without no_grad."""
    assert findings(LIBRARY_SCALER_STEP) == set()


HELPER_DETACHES_STATE = """
import torch
from torch import nn

net = nn.LSTM(4, 8)

def step(x, h):
    h = tuple(t.detach() for t in h)
    out, h = net(x, h)
    return out, h

def step_keeping_graph(x, h):
    out, h = net(x, h)
    return out, h

opt = torch.optim.SGD(net.parameters(), lr=0.1)
h = g = (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8))
for x in [torch.randn(3, 2, 4) for _ in range(4)]:
    opt.zero_grad()
    out, h = step(x, h)
    out2, g = step_keeping_graph(x, g)  # kept
    (out.sum() + out2.sum()).backward(retain_graph=True)
    opt.step()
"""


def test_recurrent_state_detached_inside_the_helper_that_steps_it_is_not_carried() -> None:
    """A helper that rebinds its state parameter to a detached copy before the forward cuts the graph;
    one that does not carries every step's graph into the next."""
    assert findings(HELPER_DETACHES_STATE) == {("SEN006", line_of(HELPER_DETACHES_STATE, "# kept"))}


POLICY_ACTS = """
import random
import torch
from torch import nn

class Policy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)

    def act(self, state, eps):
        if random.random() < eps:
            return random.randrange(2)
        return int(self.forward(state.unsqueeze(0)).argmax(1))

policy = Policy()
opt = torch.optim.Adam(policy.parameters())
for episode in range(3):
    state = torch.randn(4)
    action = policy.act(state, 0.1)
    for update in range(2):
        loss = policy(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

policy.eval()
test_returns = []
for episode in range(3):
    test_state = torch.randn(4)
    test_returns.append(policy.act(test_state, 0.0))  # evaluation
"""


def test_a_policy_acting_in_the_loop_that_trains_it_collects_data() -> None:
    """``policy.act(state)`` inside the loop that trains the policy is data collection, not an
    evaluation without no_grad; acting in a test loop after training is evaluation."""
    assert findings(POLICY_ACTS) == {("SEN004", line_of(POLICY_ACTS, "# evaluation"))}


SHAPE_CHECK = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.fc = nn.Linear(4, hidden)

    def forward(self, x):
        return self.fc(x)

test_net = Net()
test_out = test_net(torch.tensor([[0.5, 0.1, 0.2, 0.3]]))
print(test_out.shape)

net = Net()
opt = torch.optim.SGD(net.parameters(), lr=0.1)
for step in range(3):
    loss = net(torch.randn(4, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
test_x = torch.tensor([[0.5, 0.1, 0.2, 0.3]])
test_pred = net(test_x)  # after training
"""


def test_a_shape_check_of_an_untrained_throwaway_model_is_not_evaluation() -> None:
    """``test_net = Net(); test_net(sample)`` before anything trains, on a model nothing trains: a
    dimension check. The trained model's test prediction afterwards is evaluation."""
    assert findings(SHAPE_CHECK) == {("SEN004", line_of(SHAPE_CHECK, "# after training"))}


def test_functools_partial_keeps_the_arguments_it_binds() -> None:
    """``partial(torch.optim.SGD, momentum=0.9)`` builds an SGD with momentum: rebuilding it every
    batch loses state (SEN014); a partial of plain SGD keeps none."""
    source = """
import functools
import torch
from torch import nn

model = nn.Linear(4, 2)
with_momentum = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)
plain = functools.partial(torch.optim.SGD, lr=0.1)
for x in [torch.randn(8, 4) for _ in range(3)]:
    opt = with_momentum(model.parameters())  # state lost
    opt2 = plain(model.parameters())
    opt.zero_grad()
    opt2.zero_grad()
    model(x).sum().backward()
    opt.step()
    opt2.step()
"""
    assert findings(source) == {("SEN014", line_of(source, "# state lost"))}


def test_batches_yielded_by_a_generator_keep_their_layout() -> None:
    """``for xb, yb in batches(...)`` binds what the generator yields: samples stacked into a batch,
    so an implicit-dim log_softmax on the model's 3-D output is over the batch (SEN020)."""
    source = """
import torch
import torch.nn as nn
import torch.nn.functional as F

class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(24, 8)
        self.out = nn.Linear(8, 24)

    def forward(self, tokens):
        return F.log_softmax(self.out(self.embed(tokens)))  # implicit

def batches(stream, n):
    for _ in range(n):
        starts = torch.randint(0, 500, (16,))
        yield (torch.stack([stream[s : s + 10] for s in starts]),
               torch.stack([stream[s + 1 : s + 11] for s in starts]))

model = LM()
opt = torch.optim.Adam(model.parameters())
stream = torch.arange(600) % 24
for xb, yb in batches(stream, 3):
    loss = F.nll_loss(model(xb).reshape(-1, 24), yb.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
"""
    assert findings(source) == {("SEN020", line_of(source, "# implicit"))}


def test_test_data_with_noise_added_is_still_test_data() -> None:
    """``noisy = test_images + 0.3 * torch.randn(...)`` keeps naming the test loader's batch: the
    forward on it after training, with gradients on, is evaluation (SEN004)."""
    source = """
import torch
from torch import nn

model = nn.Sequential(nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 16))
opt = torch.optim.Adam(model.parameters())
train_loader = [(torch.rand(8, 16),) for _ in range(3)]
test_loader = [(torch.rand(8, 16),) for _ in range(2)]
for (images,) in train_loader:
    noisy = images + 0.3 * torch.randn(*images.shape)
    loss = nn.functional.mse_loss(model(noisy), images)
    opt.zero_grad()
    loss.backward()
    opt.step()
(images,) = next(iter(test_loader))
noisy_imgs = images + 0.3 * torch.randn(*images.shape)
output = model(noisy_imgs)  # evaluation
"""
    assert findings(source) == {("SEN004", line_of(source, "# evaluation"))}


def test_a_distributed_sampler_inside_a_batch_sampler_still_needs_set_epoch() -> None:
    source = """
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

def make_loader(dataset):
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0)
    return DataLoader(dataset, batch_sampler=BatchSampler(sampler, batch_size=8, drop_last=True))

model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loader = make_loader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))))
for epoch in range(3):  # no set_epoch
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
"""
    assert findings(source) == {("SEN018", line_of(source, "# no set_epoch"))}
    set_epoch = "    loader.batch_sampler.sampler.set_epoch(epoch)\n"
    fixed = source.replace("    for x, y in loader:", set_epoch + "    for x, y in loader:")
    assert findings(fixed) == set()


def test_lists_made_anew_for_each_optimizer_step_hold_one_steps_graphs() -> None:
    """Micro-batches: ``outputs``/``losses`` are new lists every step, each chunk backpropagated at once:
    nothing grows across iterations. A list kept across steps is SEN006."""
    source = """
import torch
from torch import nn

model = nn.Linear(4, 3)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
history = []
for data, targets in [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(3)]:
    opt.zero_grad()
    outputs, losses = [], []
    for x, y in zip(data.chunk(4), targets.chunk(4)):
        out = model(x)
        outputs.append(out)
        loss = nn.functional.cross_entropy(out, y)
        losses.append(loss)
        loss.backward()
    opt.step()
    history.append(sum(losses))  # kept
    acc = (torch.cat(outputs).argmax(1) == targets).float().mean().item()
"""
    assert findings(source) == {("SEN006", line_of(source, "# kept"))}


def test_a_state_dict_inside_a_record_appended_to_a_kept_list_is_a_snapshot() -> None:
    source = """
import torch
from torch import nn

model = nn.Linear(4, 1)
opt = torch.optim.Adam(model.parameters())
top_k = []
for epoch in range(3):
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    top_k.append((epoch, model.state_dict()))  # live
print(top_k[0][1])
"""
    assert findings(source) == {("SEN005", line_of(source, "# live"))}


def test_a_tensor_dataset_loader_batch_keeps_each_tensors_rank() -> None:
    """Batches of ``DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]))`` are 2-D token ids: the
    language model's output is 3-D, and a log_softmax without ``dim`` normalizes over the batch."""
    source = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.gru = nn.GRU(8, 16, batch_first=True)
        self.out = nn.Linear(16, 20)

    def forward(self, x):
        h, _ = self.gru(self.emb(x))
        return F.log_softmax(self.out(h))  # implicit

tokens = torch.randint(0, 20, (64, 12))
loader = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=16, shuffle=True)
model = LM()
opt = torch.optim.Adam(model.parameters())
for x, y in loader:
    loss = F.nll_loss(model(x).reshape(-1, 20), y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
"""
    assert findings(source) == {("SEN020", line_of(source, "# implicit"))}


def test_a_distributed_loader_read_by_a_training_comprehension_needs_set_epoch() -> None:
    source = """
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
loader = DataLoader(data, batch_size=8, sampler=DistributedSampler(data, num_replicas=1, rank=0))
val_loader = DataLoader(data, batch_size=8, sampler=DistributedSampler(data, num_replicas=1, rank=0))

def train_step(x, y):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()

for epoch in range(3):  # no set_epoch
    losses = [train_step(x, y) for x, y in loader]
    with torch.no_grad():
        scores = [model(x).argmax(1) for x, _ in val_loader]
"""
    assert findings(source) == {("SEN018", line_of(source, "# no set_epoch"))}


def test_stacking_batches_does_not_make_dimension_zero_a_batch() -> None:
    """``torch.stack`` of samples is a batch; ``torch.stack`` of whole batches puts the number of
    batches at dimension 0, so a softmax over it is not over a batch of samples."""
    source = """
import torch
from torch import nn

model = nn.Linear(4, 3)
stream = torch.arange(100) % 4
samples = torch.stack([stream[i : i + 4].float() for i in range(8)])
batches = torch.stack([torch.randn(8, 4) for _ in range(3)])
with torch.no_grad():
    model.eval()
    over_samples = torch.softmax(model(samples), dim=0)  # batch
    over_batches = torch.softmax(model(batches), dim=0)
"""
    assert findings(source) == {("SEN020", line_of(source, "# batch"))}


ZOO_WEIGHTS_TRANSFORMS = """
import torch
import torchvision

def predict(paths, model, transform):
    out = []
    for path in paths:
        x = transform(path).unsqueeze(0)  # preprocessing
        model.eval()
        with torch.inference_mode():
            out.append(model(x).argmax(1).item())  # the forward
    return out

weights = torchvision.models.ViT_B_16_Weights.DEFAULT
model = torchvision.models.vit_b_16(weights=weights)
print(predict(["a.jpg"], model, weights.transforms()))
"""


def test_zoo_weights_transforms_are_preprocessing_not_a_model() -> None:
    """`weights.transforms()` of a torchvision weights enum is the preprocessing pipeline: calling it
    outside eval mode and no_grad is not an evaluation forward (the model is evaluated correctly)."""
    assert findings(ZOO_WEIGHTS_TRANSFORMS) == set()
    without_eval = ZOO_WEIGHTS_TRANSFORMS.replace("        model.eval()\n", "")
    assert findings(without_eval) == {("SEN003", line_of(without_eval, "# the forward"))}


NO_GRAD_RUNNING_SUM = """
import torch
from torch import nn
model = nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
history = []
for epoch in range(3):
    total = torch.zeros(1)
    for x in [torch.randn(4, 3)]:
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        with torch.no_grad():
            total += loss  # arithmetic under no_grad
            history.append(loss)  # the tensor itself, graph and all
"""


def test_sum_under_no_grad_keeps_no_graph_but_the_tensor_kept_does() -> None:
    assert findings(NO_GRAD_RUNNING_SUM) == {("SEN006", line_of(NO_GRAD_RUNNING_SUM, "# the tensor itself"))}


HAND_WRITTEN_CELL = """
import torch
from torch import nn

W = torch.randn(4, 4, requires_grad=True)

def cell(xs, h):
    outputs = []
    for x in xs:
        act = nn.Tanh()
        h = act(x @ W + h @ W)  # an activation layer applied
        outputs.append(h)
    return outputs, h

def predict(xs):
    outs, _ = cell(xs, torch.zeros(1, 4))
    return [o.argmax(1) for o in outs]

opt = torch.optim.SGD([W], lr=0.1)
for epoch in range(2):
    outs, _ = cell([torch.randn(1, 4) for _ in range(3)], torch.zeros(1, 4))
    opt.zero_grad()
    torch.stack(outs).sum().backward()
    opt.step()
    print(predict([torch.randn(1, 4)]))
"""


def test_a_parameter_free_layer_called_in_evaluation_code_is_not_a_model_forward() -> None:
    """`act = nn.Tanh(); act(x)` inside a hand-written RNN cell is a function application, not a forward of
    `act`. The cell itself is a model written by hand (its weight `W` requires grad): `predict` runs it with
    autograd on, at its call of the cell."""
    found = check_source(textwrap.dedent(HAND_WRITTEN_CELL).lstrip("\n"), "<string>", project=False)
    assert [(d.code, d.line) for d in found] == [("SEN004", line_of(HAND_WRITTEN_CELL, "outs, _ = cell(xs,"))]
    assert "forward pass of `cell`" in found[0].message
    with_layer = HAND_WRITTEN_CELL.replace("nn.Tanh()", "nn.Linear(4, 4)")
    # the cell is shared with training: the missing no_grad is at predict's call of it
    assert ("SEN004", line_of(with_layer, "outs, _ = cell(xs,")) in findings(with_layer)


FRAMEWORK_RUN = """
import torch
from torch import nn
from ignite.engine import create_supervised_evaluator, create_supervised_trainer

model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))
optimizer = torch.optim.Adam(model.parameters())
trainer = create_supervised_trainer(model, optimizer, nn.CrossEntropyLoss())
evaluator = create_supervised_evaluator(model)
loader = torch.utils.data.DataLoader(torch.load("train.pt"), batch_size=32)
val_loader = torch.utils.data.DataLoader(torch.load("val.pt"), batch_size=32)
trainer.run(loader, max_epochs=2)
evaluator.run(val_loader)
with torch.no_grad():
    for x, y in val_loader:
        preds = model(x).argmax(1)  # after the framework ran
"""


def test_a_training_framework_given_the_model_decides_its_mode() -> None:
    """ignite's evaluator switches the model to eval() when it runs (Lightning, Hugging Face alike):
    after it, the mode is unknown, never evidence of a forgotten eval()."""
    assert findings(FRAMEWORK_RUN) == set()
    # the same calls into an unknown library say nothing of modes: the model is still in training mode
    unknown = FRAMEWORK_RUN.replace("from ignite.engine import", "from mylib import")
    assert findings(unknown) == {("SEN003", line_of(unknown, "# after the framework ran"))}


APEX_AMP = """
import torch
from torch import nn
from apex import amp

generator = nn.Sequential(nn.Conv2d(3, 8, 3), nn.InstanceNorm2d(8, track_running_stats=False), nn.ReLU())
optimizer = torch.optim.Adam(generator.parameters())
models, optimizers = amp.initialize([generator], [optimizer], opt_level="O2")
generator, = models
optimizer, = optimizers
loader = torch.utils.data.DataLoader(torch.load("train.pt"))
for x in loader:
    optimizer.zero_grad()
    generator(x).mean().backward()
    optimizer.step()
test_loader = torch.utils.data.DataLoader(torch.load("test.pt"))
with torch.no_grad():
    for x in test_loader:
        fake = generator(x)  # no eval(), no layer that minds
"""


def test_apex_amp_initialize_returns_the_same_models() -> None:
    """`amp.initialize(models, optimizers)` hands back the same (patched) objects: what is known of the
    model (instance norm without running statistics behaves the same in both modes) survives it."""
    assert findings(APEX_AMP) == set()
    with_dropout = APEX_AMP.replace("nn.ReLU())", "nn.ReLU(), nn.Dropout(0.5))")
    assert findings(with_dropout) == {("SEN003", line_of(with_dropout, "# no eval()"))}


HF_PRETRAINED = """
import torch
from transformers import AutoModelForSequenceClassification

model = AutoModelForSequenceClassification.from_pretrained("distilbert-base-uncased", num_labels=2)
test_loader = torch.utils.data.DataLoader(torch.load("test.pt"), batch_size=8)
with torch.inference_mode():
    for batch in test_loader:
        logits = model(**batch).logits  # straight after from_pretrained
"""


def test_a_hugging_face_model_comes_back_from_from_pretrained_in_eval_mode() -> None:
    """`from_pretrained` calls `model.eval()` (Hugging Face's documented behaviour): evaluating right
    away is not SEN003; after fine-tuning in `model.train()` it is."""
    assert findings(HF_PRETRAINED) == set()
    fine_tuning = (
        "model.train()\n"
        "opt = torch.optim.AdamW(model.parameters())\n"
        "for batch in torch.utils.data.DataLoader(torch.load('train.pt')):\n"
        "    opt.zero_grad()\n"
        "    model(**batch).loss.backward()\n"
        "    opt.step()\n"
    )
    trained = HF_PRETRAINED.replace("test_loader = ", fine_tuning + "test_loader = ")
    assert findings(trained) == {("SEN003", line_of(trained, "# straight after from_pretrained"))}


HF_DEMO_FORWARD = """
import torch
from transformers import AutoModel

encoder = AutoModel.from_pretrained("bert-base-uncased")
sample = {"input_ids": torch.tensor([[101, 2023, 102]]), "attention_mask": torch.tensor([[1, 1, 1]])}
hidden = encoder(**sample).last_hidden_state  # a look at the output's shape
print(hidden.shape)
"""


def test_a_lone_forward_of_a_model_that_came_in_eval_mode_is_no_evaluation() -> None:
    """A lone forward outside any loop counts as evaluation when the code says so (an `eval()` it
    calls, `no_grad`, evaluation names); the eval mode `from_pretrained` hands back does not."""
    assert findings(HF_DEMO_FORWARD) == set()
    explicit = HF_DEMO_FORWARD.replace("sample = ", "encoder.eval()\nsample = ")
    assert findings(explicit) == {("SEN004", line_of(explicit, "# a look at the output's shape"))}


FROZEN_COPY = """
import copy
import torch
from torch import nn

net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
for x, y in [(torch.randn(8, 6), torch.randint(0, 3, (8,)))] * 3:
    optimizer.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()
frozen = copy.deepcopy(net).eval()
{freeze}
for x, y in [(torch.randn(8, 6), torch.randint(0, 3, (8,)))] * 2:
    pred = frozen(x).argmax(1)  # forward
"""


@pytest.mark.parametrize(
    ("freeze", "reported"),
    [
        ("for p in frozen.parameters():\n    p.requires_grad_(False)", False),
        ("for p in frozen.parameters():\n    p.requires_grad = False", False),
        ("frozen.requires_grad_(False)", False),
        # thawed again (a head fine-tuned on top): its forward records a graph
        ("frozen.requires_grad_(False)\nfor p in frozen[2].parameters():\n    p.requires_grad = True", True),
        # an attribute on the module, not its parameters: nothing is frozen
        ("frozen.requires_grad = False", True),
        ("", True),
    ],
)
def test_a_forward_through_frozen_parameters_is_no_evaluation_that_needs_no_grad(freeze: str, reported: bool) -> None:
    source = FROZEN_COPY.replace("{freeze}", freeze)
    expected = {("SEN004", line_of(source, "# forward"))} if reported else set()
    assert {f for f in findings(source) if f[0] == "SEN004"} == expected


UNTRAINED_LAYER = """
import torch
from torch import nn

test_batches = torch.load("test_batches.pt")
cell = nn.GRUCell(5, 3)
hidden = torch.zeros(2, 3)
SWITCH
for x_t in LOADER:
    hidden = cell(x_t, hidden)  # forward
print(hidden.shape)
"""


@pytest.mark.parametrize(
    ("switch", "loader", "reported"),
    [
        ("", "torch.randn(4, 2, 5)", False),  # a fresh layer unrolled to show shapes: nothing evaluated
        ("cell.eval()", "torch.randn(4, 2, 5)", True),  # evaluated on purpose, trained or not
        ("", "test_batches", True),
        ("cell.load_state_dict(torch.load('cell.pt'))", "torch.randn(4, 2, 5)", True),  # given weights
    ],
)
def test_a_fresh_layer_never_trained_nor_loaded_is_evaluated_only_when_the_code_says_so(
    switch: str, loader: str, reported: bool
) -> None:
    source = UNTRAINED_LAYER.replace("SWITCH", switch).replace("LOADER", loader)
    expected = {("SEN004", line_of(source, "# forward"))} if reported else set()
    assert {f for f in findings(source) if f[0] == "SEN004"} == expected


OPTIMIZER_TEST = """
import torch
from torch import nn


def _test_model(opt_class, steps=5):
    model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1))
    optimizer = opt_class(model.parameters(), lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(torch.randn(4, 2)).sum()
        loss.backward()
        optimizer.step()  # step


def test_sgd():
    _test_model(torch.optim.SGD)
"""


@pytest.mark.parametrize(("name", "reported"), [("test_optim.py", False), ("optim_test.py", False), ("bench.py", True)])
def test_test_in_a_pytest_function_name_is_a_unit_test_not_test_data(tmp_path, name: str, reported: bool) -> None:
    # an optimizer's unit test trains; outside a pytest module `_test_model` reads as evaluation code
    path = tmp_path / name
    code = textwrap.dedent(OPTIMIZER_TEST).lstrip("\n")
    path.write_text(code)
    found = {(d.code, d.line) for d in check_source(code, str(path), project=False)}
    assert found == ({("SEN013", line_of(OPTIMIZER_TEST, "# step"))} if reported else set())


HAND_WRITTEN_NET = """
import torch

W = torch.randn(8, 3, requires_grad=True)
b = torch.zeros(3, requires_grad=True)

def net(x):
    return x @ W + b

opt = torch.optim.SGD([W, b], lr=0.1)
train = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(3)]
test = [(torch.randn(4, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
for epoch in range(2):
    for x, y in train:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    hits = 0
    for x, y in test:
        hits += (net(x).argmax(1) == y).sum().item()
"""


TEST_FORWARD = "hits += (net(x)"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # the test loop runs the hand-written model with autograd on
        ("", "", {"SEN004"}),
        # `W.requires_grad_()` after the fact makes the weights trainable just the same
        ("W = torch.randn(8, 3, requires_grad=True)", "W = torch.randn(8, 3)\nW.requires_grad_()", {"SEN004"}),
        # `nn.Parameter` weights
        ("W = torch.randn(8, 3, requires_grad=True)", "W = torch.nn.Parameter(torch.randn(8, 3))", {"SEN004"}),
        # under no_grad the weights record nothing
        ("    for x, y in test:", "    with torch.no_grad():\n     for x, y in test:", set()),
        # weights that do not require grad: no graph, nothing to report
        ("requires_grad=True", "requires_grad=False", set()),
        # a function handing out the weights is no forward
        ("    return x @ W + b", "    return W", set()),
    ],
)
def test_a_model_written_as_a_function_over_trainable_tensors_is_a_model(old, new, expected) -> None:
    source = HAND_WRITTEN_NET.replace(old, new) if old else HAND_WRITTEN_NET
    assert source != HAND_WRITTEN_NET or not old
    found = findings(source)
    assert {code for code, _ in found} == expected
    if expected:
        assert found == {("SEN004", line_of(source, TEST_FORWARD))}


EINOPS_PATCHES = """
import torch
from einops.layers.torch import Rearrange
from torch import nn

class PatchClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.patchify = nn.Sequential(Rearrange("b c (h p) (w q) -> b (h w) (p q c)", p=4, q=4), nn.Linear(48, 16))
        self.head = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 2))

    def forward(self, img):
        return self.head(self.patchify(img).mean(dim=1))

net = PatchClassifier()
opt = torch.optim.Adam(net.parameters())
train = [(torch.randn(4, 3, 8, 8), torch.randint(0, 2, (4,))) for _ in range(2)]
valid = [(torch.randn(4, 3, 8, 8), torch.randint(0, 2, (4,))) for _ in range(2)]
for epoch in range(2):
    for x, y in train:
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        for x, y in valid:
            out = net(x)
"""


def test_einops_layers_are_not_mode_dependent() -> None:
    # `Rearrange` reshapes its input: a model of it, LayerNorm and Linear evaluates the same in both modes
    assert findings(EINOPS_PATCHES) == set()
    with_dropout = EINOPS_PATCHES.replace("nn.Linear(48, 16))", "nn.Linear(48, 16), nn.Dropout(0.1))")
    assert findings(with_dropout) == {("SEN003", line_of(with_dropout, "out = net(x)"))}


SNAPSHOT_OF_FRESH_COPIES = """
import copy
import torch

def fit(stage, nets):
    while True:
        stage.opt.step()
        snapshot = {}
        for name, module in nets:
            if module is not None:
                module = copy.deepcopy(module).eval()
            snapshot[name] = module
"""


def test_a_model_copied_just_before_it_is_stored_is_no_alias() -> None:
    # the optimizer's parameters are unknown, so any model could be stepped; not a copy made here
    assert findings(SNAPSHOT_OF_FRESH_COPIES) == set()
    alias = SNAPSHOT_OF_FRESH_COPIES.replace("module = copy.deepcopy(module).eval()", "module.eval()")
    assert findings(alias) == {("SEN005", line_of(alias, "snapshot[name] = module"))}


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("model", True),
        ("net_G", True),
        ("teacher_model", True),
        ("network_pkl", False),  # stylegan2-ada's `open_url(network_pkl)`: a file, not a network
        ("model_path", False),
        ("model_name", False),
        ("net_cfg", False),
        ("model_kwargs", False),
        ("model_ckpt", False),
    ],
)
def test_a_name_about_a_model_is_not_guessed_to_be_one(name: str, model: bool) -> None:
    from sentinel.analysis import torchapi

    assert torchapi.modelish(name) is model


KEYED_SNAPSHOTS = """
import torch
model = torch.nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
best, history = {}, {}
for epoch in range(3):
    opt.zero_grad()
    loss = model(torch.randn(4, 3)).pow(2).mean()
    loss.backward()
    opt.step()
    best[epoch] = model.state_dict()
    history[epoch] = loss
print(best, history)
"""


def test_a_keyed_target_is_named_as_written() -> None:
    messages = {d.code: d.message for d in check_source(KEYED_SNAPSHOTS, "<string>", project=False)}
    assert messages["SEN005"].startswith("`best[epoch]` holds references to the live model tensors")
    assert messages["SEN006"].startswith("`history[epoch]` accumulates a tensor that carries its autograd graph")
