"""Documentation of the runtime findings SEN101-SEN111 (``sentinel probe``, ``sentinel.watch``).

Torch-free: ``sentinel rule SEN105`` and the generated ``docs/rules/`` pages read it without
importing the probes. One :class:`RuntimeRule` per code, in the sections the static rules' docstrings
use, plus how the probe or the loop monitor detects it and the fields of its ``details`` object
(the JSON contract of ``sentinel probe --format json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RUNTIME_RULES", "RuntimeRule", "runtime_rule"]


@dataclass(frozen=True)
class RuntimeRule:
    """One runtime finding's documentation."""

    code: str
    name: str
    summary: str
    what: str
    why: str
    how: str
    example: str
    fix: str
    details: dict[str, str] = field(default_factory=dict)

    # the same class-level API as a static rule, so docs and `sentinel rule` treat both alike
    @property
    def CODE(self) -> str:  # noqa: N802
        return self.code

    @property
    def NAME(self) -> str:  # noqa: N802
        return self.name

    @property
    def SUMMARY(self) -> str:  # noqa: N802
        return self.summary[:1].upper() + self.summary[1:]

    def url(self) -> str:
        from sentinel.ruledocs import doc_url

        return doc_url(self.name)

    def doc(self) -> str:
        """Markdown in the static rules' sections, with the detection and the ``details`` fields."""
        fields = "\n".join(f"- `{k}`: {v}" for k, v in self.details.items())
        return (
            f"## What it does\n\n{self.what}\n\n"
            f"## Why is this bad?\n\n{self.why}\n\n"
            f"## How it is detected\n\n{self.how}\n\n"
            f"## Example\n\n```python\n{self.example.strip()}\n```\n\n"
            f"Use instead:\n\n```python\n{self.fix.strip()}\n```\n\n"
            f"## Details\n\nThe finding's `details` object (JSON output of `sentinel probe`) holds:\n\n{fields}"
        )


_RULES = [
    RuntimeRule(
        "SEN101",
        "cannot-overfit-one-batch",
        "the model cannot drive the loss down on one fixed batch",
        "Trains a copy of the model on one batch for a bounded number of steps and reports when the loss "
        "does not fall well below where it started.",
        "Any model that can learn at all can memorise one small batch. If it cannot, something between the "
        "data and the update is broken: a wrong loss for the output (probabilities into a logits loss), a "
        "learning rate of zero, a detached output, frozen layers, targets that do not match the output's "
        "shape. A full training run would show the same flat curve hours later.",
        "`sentinel probe file.py:factory` runs the factory's model, loss and batch for `--steps` optimizer "
        "steps on a private copy (the user's model, optimizer and RNG state are restored bit-exactly "
        "afterwards) and compares the final loss with the initial loss and with the loss's floor. The "
        "message names the likely cause when one is visible (zero learning rate, probabilities fed to "
        "cross-entropy, a shape mismatch).",
        """
model = nn.Sequential(nn.Linear(16, 10), nn.Softmax(dim=1))
loss_fn = nn.CrossEntropyLoss()          # softmax applied twice: gradients vanish
optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
""",
        """
model = nn.Sequential(nn.Linear(16, 10))  # raw logits
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
""",
        {
            "initial_loss": "the loss before the first step",
            "final_loss": "the loss after the last step",
            "steps": "how many optimizer steps were run",
        },
    ),
    RuntimeRule(
        "SEN102",
        "parameter-not-updated",
        "a trainable parameter gets no gradient, a zero gradient, is not in the optimizer or never changes",
        "Reports every trainable parameter (`requires_grad=True`) that training leaves untouched, with the reason.",
        "A layer that never learns keeps its random initialisation: the model trains, only worse. Common "
        "causes are a layer defined but not used in `forward`, an optimizer built from a subset of the "
        "parameters (or before a layer was replaced), a `.detach()` in the middle of the model, or an "
        "output that does not reach the loss.",
        "The probe runs training steps on a copy and inspects every parameter: `.grad` is None "
        "(`no-grad`), the gradient is all zeros (`zero-grad`), no optimizer param group holds it "
        "(`not-in-optimizer`), or its value is bit-for-bit the same afterwards (`unchanged`); not when its "
        "gradient is so small next to its weights (under 1e-4 of their norm) that no step could move them "
        "in float32, as for the bias of a layer followed by batch norm, whose true gradient is 0. The loop "
        "monitor does the same on the user's own loop with one fused norm reduction per step and a "
        "fingerprint of each parameter at its first step and at the end.",
        """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)   # never used in forward

    def forward(self, x):
        return self.body(x)[:, :2]
""",
        """
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))
""",
        {
            "parameters": 'list of `{"name", "reason"}`: the name as in `named_parameters()`, the reason one '
            "of `no-grad`, `zero-grad`, `not-in-optimizer`, `unchanged`",
        },
    ),
    RuntimeRule(
        "SEN103",
        "device-mismatch",
        "parameters, buffers, batch tensors or optimizer state on different devices",
        "Reports tensors that take part in one training step but live on different devices (CPU and a "
        "GPU, or two GPUs).",
        "PyTorch raises on most mixed-device operations, but not all of them: scalars, some buffers and "
        "optimizer state can sit on another device and be copied every step, or the error only appears "
        "on the GPU machine after the job was queued. Finding it on the first step saves the run.",
        "Before running the model the probe lists every parameter, buffer, batch field and optimizer "
        "state tensor with its device; the loop monitor checks the inputs, parameters and buffers at the "
        "first call of each watched model.",
        """
model = Net().cuda()
batch = (torch.randn(32, 8), torch.randint(0, 2, (32,)))   # still on the CPU
""",
        """
model = Net().cuda()
x, y = (t.cuda(non_blocking=True) for t in batch)
""",
        {"tensors": 'list of `{"name", "device"}` (parameters, buffers, batch fields, optimizer state)'},
    ),
    RuntimeRule(
        "SEN104",
        "dtype-mismatch",
        "floating-point tensors of one step in different dtypes outside autocast",
        "Reports parameters, buffers and inputs of one training step whose floating-point dtypes disagree "
        "(float64 inputs into a float32 model, a half-precision buffer in a float32 model).",
        "Mixed dtypes either raise deep inside a layer or are silently promoted: float64 inputs make every "
        "operation run in double precision (slow, and a different numerical result than the deployed "
        "model), half-precision parameters outside autocast lose updates to rounding.",
        "The probe and the loop monitor compare the dtypes of the model's parameters and buffers with the "
        "batch's floating-point tensors at the first call. Mixed dtypes under `torch.autocast` are "
        "expected and not reported.",
        """
x = torch.from_numpy(features)        # numpy defaults to float64
loss = loss_fn(model(x), y)           # model is float32
""",
        """
x = torch.from_numpy(features).float()
loss = loss_fn(model(x), y)
""",
        {"tensors": 'list of `{"name", "dtype"}`'},
    ),
    RuntimeRule(
        "SEN105",
        "non-finite-value",
        "the first NaN or Inf of a training step, pinned to a stage, a module and a step",
        "Reports where a NaN or an Inf first appears: in the input batch, in a module's forward output, in "
        "the loss, in a gradient during backward, or in a parameter after the update.",
        "One NaN spreads to every parameter within a step or two and the rest of the run is wasted; "
        "the loss printed at the end only says that it happened, not where. Typical causes: `log` or "
        "`sqrt` of zero, division by a zero norm, an exploding learning rate, an overflow in half "
        "precision, bad values in the data.",
        "Each step is checked cheaply (one reduction over the loss and the gradient norms). When a "
        "non-finite value is confirmed, the step is replayed from a snapshot with a hook on every module "
        "(forward outputs, then gradients in backward order, then the update) to name the first place "
        "it appears. The user's model, optimizer and RNG state are restored afterwards.",
        """
def forward(self, x):
    h = self.encoder(x)
    return h / h.norm(dim=1, keepdim=True)     # a zero row divides by zero
""",
        """
def forward(self, x):
    h = self.encoder(x)
    return F.normalize(h, dim=1, eps=1e-12)
""",
        {
            "stage": "`input`, `forward`, `loss`, `backward` or `update`",
            "module": "qualified name from `named_modules()` of the module where it appeared, or null",
            "parameter": "the parameter whose gradient or value became non-finite, or null",
            "step": "0-based index of the optimizer step",
        },
    ),
    RuntimeRule(
        "SEN106",
        "gradients-accumulate",
        "gradients of one step are added to the previous step's: no zero_grad between steps",
        "Reports the first optimizer step whose gradients still contained the previous step's gradients.",
        "`backward()` adds into `.grad`. Without `optimizer.zero_grad()` (or `set_to_none`) each step "
        "applies the sum of all gradients so far: the effective learning rate grows every step and "
        "training diverges or stalls. It is legal code, so nothing raises.",
        "The loop monitor puts a gradient hook on one parameter per optimizer and records which `.grad` "
        "tensor each step used. A new gradient added to that very tensor, with no reset in between, that "
        "then reaches the next `optimizer.step()`, is reported. Deliberate accumulation resets before "
        "each step and is not reported.",
        """
for x, y in loader:
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
""",
        """
for x, y in loader:
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
""",
        {"step": "the first optimizer step whose gradients still held the previous step's"},
    ),
    RuntimeRule(
        "SEN107",
        "evaluation-in-train-mode",
        "evaluation under no_grad ran dropout or batch-norm layers in training mode",
        "Reports dropout and batch-norm modules that ran in training mode while gradients were off "
        "(`torch.no_grad()`, `torch.inference_mode()`), which is how evaluation code looks.",
        "In training mode dropout zeroes activations at random and batch norm normalises with the "
        "batch's statistics and updates its running averages: validation metrics are noisy and "
        "pessimistic, and evaluating changes the model. `model.eval()` was forgotten.",
        "The loop monitor sees each call of a watched model with grad mode off and lists its dropout and "
        "batch-norm submodules whose `training` flag is still set.",
        """
with torch.no_grad():
    for x, y in val_loader:
        correct += (model(x).argmax(1) == y).sum()
""",
        """
model.eval()
with torch.no_grad():
    for x, y in val_loader:
        correct += (model(x).argmax(1) == y).sum()
model.train()
""",
        {"modules": "qualified names of the dropout / batch-norm modules that ran in training mode"},
    ),
    RuntimeRule(
        "SEN108",
        "graph-retained-across-steps",
        "autograd graphs of earlier steps are kept alive (total += loss, losses.append(loss))",
        "Reports a training loop that keeps the autograd graphs of earlier steps alive.",
        "A loss or output tensor stored across iterations keeps its whole graph, including every "
        "activation of the forward pass. Memory grows every step until the process runs out, and "
        "`total += loss` also chains all graphs together.",
        "Each step's model output gets a tiny marker in its graph; the marker dies with the graph. When "
        "markers of two or more earlier steps are still alive at a step, the graphs were retained.",
        """
running = 0.0
for x, y in loader:
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    running += loss
""",
        """
running = 0.0
for x, y in loader:
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    running += loss.item()
""",
        {"steps": "how many earlier steps' graphs were still alive"},
    ),
    RuntimeRule(
        "SEN109",
        "ranks-out-of-sync",
        "after an optimizer step a parameter differs across distributed ranks",
        "Under `torchrun`, compares every parameter across ranks after an optimizer step and reports those "
        "that differ from rank 0.",
        "Data-parallel training is only correct while every rank holds the same weights. Gradients that "
        "were not all-reduced (a forward through `ddp_model.module`, a model never wrapped in "
        "`DistributedDataParallel`, a `no_sync()` context never left) or ranks started from different "
        "initialisations make each rank train its own model; the checkpoint saved by rank 0 is one of "
        "them.",
        "Under `torchrun` every rank runs the loop monitor; after an optimizer step each rank's parameters "
        "are compared with rank 0's, and rank 0 reports the parameters whose copy differs, with the ranks.",
        """
ddp_model = DDP(model)
out = ddp_model.module(x)       # bypasses the wrapper: no gradient all-reduce
""",
        """
ddp_model = DDP(model)
out = ddp_model(x)
""",
        {
            "parameters": 'list of `{"name", "ranks"}`: ranks whose copy differs from rank 0',
            "step": "0-based index of the optimizer step",
            "ranks": "the ranks where the finding was seen",
        },
    ),
    RuntimeRule(
        "SEN110",
        "unexpected-initial-loss",
        "at initialisation a classification loss is far from ln(C) for C classes",
        "Reports a classification loss whose value at initialisation is far from what uniform predictions "
        "give: ln C for C classes.",
        "A freshly initialised classifier predicts roughly uniformly, so its cross-entropy starts near "
        "ln C. A much larger or smaller value points at a wrong activation/loss pairing, a broken "
        "initialisation (huge logits), or targets out of range, before any training time is spent.",
        "The probe computes the loss of the untrained model on the batch, infers the number of classes "
        "from the output, and compares the loss with ln C.",
        """
model = nn.Sequential(nn.Linear(32, 10))
nn.init.constant_(model[0].weight, 5.0)      # logits of hundreds: loss starts far above ln 10
""",
        """
model = nn.Sequential(nn.Linear(32, 10))     # default initialisation: loss starts near ln 10
""",
        {
            "initial_loss": "the loss at initialisation",
            "expected_loss": "ln C",
            "classes": "C, the number of classes",
        },
    ),
    RuntimeRule(
        "SEN111",
        "batch-samples-mixed",
        "in eval mode one sample's output depends on other samples of the batch",
        "Reports a model whose output for one sample changes when other samples of the batch change, "
        "with the model in eval mode.",
        "In eval mode samples are independent: nothing should mix the batch dimension. A `view` or "
        "`reshape` with the batch and feature dimensions swapped, a transpose before a flatten, or a "
        "softmax over dimension 0 silently mixes samples; the model still trains, on garbage.",
        "With the model in eval mode, the probe checks whether the output for one sample of the batch "
        "changes when only the other samples change, and lists the samples it depends on.",
        """
def forward(self, x):             # x: (batch, channels, length)
    h = self.conv(x)
    return self.fc(h.view(-1, h.shape[0]))     # mixes the batch dimension
""",
        """
def forward(self, x):
    h = self.conv(x)
    return self.fc(h.flatten(1))
""",
        {
            "sample": "index of the sample whose output was examined",
            "depends_on": "indices of the other samples it depends on",
        },
    ),
]

RUNTIME_RULES: dict[str, RuntimeRule] = {r.code: r for r in _RULES}


def runtime_rule(selector: str) -> RuntimeRule | None:
    """The runtime rule with this code or name, or None."""
    sel = selector.strip()
    for r in _RULES:
        if r.code == sel.upper() or r.name == sel.lower():
            return r
    return None
