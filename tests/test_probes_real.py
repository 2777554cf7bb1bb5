"""The probes on models shaped like real ones (fixtures/probes/healthy_real.py, buggy_real.py):
attention masks are not bad inputs, dropout and slow optimizers are not broken models, a NaN that
the user's own loss rejects is still localized, the odd dtype out is blamed, and the SEN110/SEN111
probes give their exact details. (tests/test_probe_corpus.py runs every factory of both files.)"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sentinel.findings import Report
from sentinel.probes import (
    check_batch_independence,
    check_finite,
    check_initial_loss,
    check_overfit,
    run_probes,
)
from sentinel.probes import curve as curves
from sentinel.probes.masks import mask_names, neg_inf_only

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "probes"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_probe_real_{name}", FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


real = _load("healthy_real")
bad = _load("buggy_real")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _args(made: dict) -> tuple:
    return made["model"], made.get("loss_fn"), made["batch"], made.get("optimizer")


def _kw(made: dict) -> dict:
    return {"compute_loss": made.get("compute_loss")}


# ------------------------------------------------------------------------------------- masks


def test_a_causal_float_mask_in_the_batch_is_not_a_non_finite_input():
    made = real.make_translation_transformer()
    result = check_finite(*_args(made), **_kw(made))
    assert (result.status, result.findings) == ("pass", [])


def test_which_batch_tensors_count_as_masks():
    square = torch.triu(torch.full((4, 4), float("-inf")), diagonal=1)
    flat = torch.zeros(8, 3)
    flat[2, 1] = float("-inf")
    nan = square.clone()
    nan[0, 0] = float("nan")
    assert neg_inf_only(square) and neg_inf_only(flat) and not neg_inf_only(nan)
    items = [("batch[0]", flat), ("batch[1]", square), ('batch["mask"]', flat), ("batch[2]", nan)]
    # square, or named *mask*: masks; a NaN is never a mask; a flat -inf feature is not one either
    assert mask_names(items, None, nn.Linear(3, 3)) == {"batch[1]", 'batch["mask"]'}
    image = torch.zeros(2, 3, 8, 8)
    image[0, 0, 1, 1] = float("-inf")  # a square image with log(0) in it is no mask
    assert mask_names([("batch[0]", image)], None, nn.Conv2d(3, 3, 1)) == set()
    # a model with attention modules takes additive masks of any shape
    assert "batch[0]" in mask_names(items, None, nn.TransformerEncoderLayer(4, 2))


def test_nan_next_to_a_mask_and_a_neg_inf_feature_are_still_input_findings():
    for made, value in ((bad.make_nan_features_next_to_mask(), "nan"), (bad.make_neg_inf_feature(), "inf")):
        [finding] = check_finite(*_args(made)).findings
        assert finding.details == {
            "stage": "input",
            "module": None,
            "parameter": None,
            "step": 0,
            "tensor": "batch[0]",
            "value": value,
        }


def test_a_fully_masked_attention_row_is_blamed_on_the_attention_module():
    [finding] = check_finite(*_args(bad.make_fully_masked_row())).findings
    assert (finding.details["stage"], finding.details["module"]) == ("forward", "attn")


# --------------------------------------------------------------------- the user's loss rejects NaN


def test_nan_rejected_by_bce_is_localized_with_the_users_error():
    made = bad.make_nan_rejected_by_bce()
    report = run_probes(*_args(made))
    [finding] = report.findings
    assert finding.code == "SEN105"
    assert finding.details == {
        "stage": "forward",
        "module": "features",
        "parameter": None,
        "step": 0,
        "value": "nan",
        "error": "loss_fn raised RuntimeError: all elements of input should be between 0 and 1",
    }
    assert finding.message.endswith(
        "The step then failed: loss_fn raised RuntimeError: all elements of input should be between 0 and 1."
    )
    assert report.exit_code() == 1  # a finding, not an error: the probes that crash on it are skipped
    assert [p.status for p in report.probes] == ["pass", "fail", "skipped", "skipped", "skipped", "skipped"]
    assert report.probes[2].message.startswith("not run: loss_fn raised RuntimeError")
    assert report.probes[2].message.endswith("(after the forward NaN/Inf in `features` reported as SEN105)")


def test_nan_logits_rejected_by_categorical_is_localized():
    made = bad.make_nan_rejected_by_categorical()
    [finding] = check_finite(*_args(made), **_kw(made)).findings
    assert (finding.details["stage"], finding.details["module"]) == ("forward", "scale")
    assert finding.details["error"].startswith("compute_loss raised ValueError: Expected parameter logits")


# ------------------------------------------------------------------------------- odd one out


def test_a_half_encoder_among_float32_layers_is_the_one_blamed():
    report = run_probes(*_args(bad.make_half_encoder()))
    [finding] = report.findings
    assert finding.code == "SEN104"
    assert [t["name"] for t in finding.details["tensors"]] == [
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.2.weight",
        "encoder.2.bias",
        "encoder.3.weight",
        "encoder.3.bias",
    ]
    assert {t["dtype"] for t in finding.details["tensors"]} == {"float16"}
    assert {t["expected"] for t in finding.details["tensors"]} == {"float32"}


# ------------------------------------------------------------------------------------ SEN110


def test_initial_loss_far_above_ln_c_is_reported_with_exact_details():
    result = check_initial_loss(*_args(bad.make_initial_logits_too_large()))
    [finding] = result.findings
    assert (finding.code, finding.name) == ("SEN110", "unexpected-initial-loss")
    d = finding.details
    assert set(d) == {"initial_loss", "expected_loss", "classes", "loss"}
    assert d["classes"] == 10 and d["loss"] == "cross_entropy"
    assert d["expected_loss"] == pytest.approx(math.log(10))
    assert d["initial_loss"] > 3 * math.log(10) + 2


def test_nll_loss_fed_raw_logits_is_reported_below():
    [finding] = check_initial_loss(*_args(bad.make_nll_on_raw_logits())).findings
    d = finding.details
    assert (d["classes"], d["loss"]) == (5, "nll_loss")
    assert d["expected_loss"] == pytest.approx(math.log(5))
    assert d["initial_loss"] < 0.5 * math.log(5)
    assert "log_softmax" in d["reason"]


def test_initial_loss_expected_value_follows_the_loss_options():
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    x, y = torch.randn(10, 6), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, -1])
    weight = torch.tensor([1.0, 2.0, 3.0, 4.0])
    summed = check_initial_loss(model, nn.CrossEntropyLoss(weight=weight, ignore_index=-1, reduction="sum"), (x, y))
    assert summed.status == "pass"
    assert summed.data["expected_loss"] == pytest.approx(math.log(4) * float(weight[y[:9]].sum()))
    smoothed = check_initial_loss(model, nn.CrossEntropyLoss(label_smoothing=0.2), (x, y.clamp(min=0)))
    assert smoothed.data["expected_loss"] == pytest.approx(math.log(4))
    binary = check_initial_loss(
        nn.Linear(6, 1), nn.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0])), (x, (y > 1).float()[:, None])
    )
    positives = float((y > 1).float().mean())
    assert binary.data["expected_loss"] == pytest.approx(math.log(2) * (3 * positives + (1 - positives)))
    assert binary.data["classes"] == 2


def test_initial_loss_is_skipped_for_losses_it_cannot_judge():
    vae = real.make_vae()
    result = check_initial_loss(*_args(vae))
    assert result.status == "skipped"
    assert result.message == (
        "not applicable: the loss is not one classification loss alone (other terms are added to it)"
    )
    sr = real.make_super_resolution()
    assert check_initial_loss(*_args(sr)).message.startswith("not applicable: the loss is not a classification loss")


def test_initial_loss_near_ln_c_on_real_classifiers():
    for make in (real.make_nanogpt, real.make_cifar_resnet, real.make_translation_transformer, real.make_gcn):
        made = make()
        result = check_initial_loss(*_args(made))
        assert result.status == "pass", (make.__name__, result.message)
        assert result.data["initial_loss"] == pytest.approx(result.data["expected_loss"], rel=0.2)


# ------------------------------------------------------------------------------------ SEN111


def test_batch_mixing_reshape_is_reported_with_exact_details():
    [finding] = check_batch_independence(*_args(bad.make_reshape_mixes_batch())).findings
    assert (finding.code, finding.name) == ("SEN111", "batch-samples-mixed")
    assert finding.details == {"sample": 0, "depends_on": [1, 2, 3], "input": "batch[0]"}


def test_sequence_first_attention_fed_batch_first_is_reported():
    [finding] = check_batch_independence(*_args(bad.make_attention_not_batch_first())).findings
    assert finding.details == {"sample": 0, "depends_on": [1, 2, 3, 4, 5], "input": "batch[0]"}


def test_batch_norm_in_eval_mode_and_token_embeddings_do_not_mix():
    cnn = check_batch_independence(*_args(real.make_cifar_resnet()))
    assert (cnn.status, cnn.data["inputs"]) == ("pass", ["batch[0]"])
    gpt = check_batch_independence(*_args(real.make_nanogpt()))
    assert (gpt.status, gpt.data["inputs"]) == ("pass", ["Embedding output for batch[0]"])


def _bag_classifier(mix: bool) -> dict:
    """Bag-of-words classifier: an ``nn.EmbeddingBag`` pools each row of token ids (one bag per
    sample); ``mix`` transposes the pooled features before the head, mixing the batch."""
    torch.manual_seed(0)

    class BagClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bag = nn.EmbeddingBag(50, 8, mode="mean")
            self.head = nn.Linear(8, 3)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            h = self.bag(tokens)
            if mix:
                h = h.t().reshape(tokens.shape[0], -1)
            return self.head(h)

    model = BagClassifier()
    batch = (torch.randint(0, 50, (8, 6)), torch.randint(0, 3, (8,)))
    return {"model": model, "loss_fn": nn.CrossEntropyLoss(), "batch": batch}


def test_an_embedding_bag_reads_one_sample_per_row_of_ids():
    healthy = check_batch_independence(*_args(_bag_classifier(mix=False)))
    assert (healthy.status, healthy.data["inputs"]) == ("pass", ["EmbeddingBag output for batch[0]"])
    [finding] = check_batch_independence(*_args(_bag_classifier(mix=True))).findings
    expected = {"sample": 0, "depends_on": [1, 2, 3, 4, 5, 6, 7], "input": "EmbeddingBag output for batch[0]"}
    assert finding.details == expected


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (real.make_gcn, "batch[1] looks like an adjacency matrix"),
        (real.make_gcn_buffer_graph, "the model holds an 30x30 tensor (adj)"),
        (real.make_rnn_adadelta, "no floating input (or embedding of token ids) with the batch dimension"),
        (real.make_mingpt_sdpa, "no output with the batch dimension depends on the inputs"),
        (real.make_seq_first_classifier, "sequence-first modules (batch_first=False)"),
    ],
)
def test_batch_independence_skips_with_the_reason(make, reason):
    made = make()
    result = check_batch_independence(*_args(made), **_kw(made))
    assert result.status == "skipped" and reason in result.message


# ------------------------------------------------------------------------- overfit on real models


@pytest.mark.parametrize("make", [real.make_gcn, real.make_vae, real.make_rnn_adadelta, real.make_super_resolution])
def test_dropout_sampling_and_slow_optimizers_are_not_broken_models(make):
    made = make()
    result = check_overfit(*_args(made), **_kw(made))
    assert (result.status, result.findings) == ("pass", []), result.message
    assert result.data["verdict"] in ("memorized", "slow")
    if result.data["verdict"] == "slow":
        assert result.message.startswith("slow: ") and "still falling" in result.message


def test_a_bce_floor_from_soft_targets_is_the_vae_target():
    d = check_overfit(*_args(real.make_vae()), steps=5).data
    assert d["floor"] > 0  # the entropy of the soft pixel targets: the loss cannot go below it
    assert d["threshold"] == pytest.approx(d["floor"] + 0.1 * (d["initial_loss"] - d["floor"]))


def test_a_bce_floor_of_a_loss_averaged_over_the_batch_by_hand_is_per_sample():
    # the common `(bce_sum + kld) / len(x)`: the sum's entropy floor is 16 times the loss it bounds
    made = real.make_vae()
    summed = check_overfit(*_args(made), steps=5).data["floor"]
    made = real.make_vae()
    made["loss_fn"] = lambda out, x: real.vae_loss(out, x) / x.shape[0]
    d = check_overfit(*_args(made), steps=5).data
    assert d["floor"] == pytest.approx(summed / 16) and 0 < d["floor"] < d["initial_loss"]
    assert d["threshold"] == pytest.approx(d["floor"] + 0.1 * (d["initial_loss"] - d["floor"]))


def test_a_noisy_curve_that_still_falls_is_slow_not_plateau_or_noisy():
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(100, generator=g) - 0.5).tolist()
    falling = [2.0 - 0.004 * i + 0.2 * n for i, n in enumerate(noise)]
    stalled = [2.0 - 0.004 * min(i, 30) + 0.2 * n for i, n in enumerate(noise)]
    assert curves.classify(falling) == "slow" and curves.still_falling(falling)
    assert curves.classify(stalled) in ("noisy", "plateau") and not curves.still_falling(stalled)


def test_the_overfit_curve_is_drawn_in_the_text_report():
    from rich.console import Console

    made = real.make_gcn()
    report = run_probes(*_args(made), steps=30)
    console = Console(record=True, width=200, color_system=None)
    console.print(report)
    text = console.export_text()
    line = next(x for x in text.splitlines() if x.startswith("  loss "))
    assert any(c in line for c in "▁▂▃▄▅▆▇█")
    assert "(target <= " in line


def test_plot_needs_matplotlib_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    path = tmp_path / "curve.png"
    result = check_overfit(*_args(real.make_gcn()), steps=5, plot=str(path))
    assert not path.exists() and "plot" not in result.data
    assert any("matplotlib is not installed" in n for n in result.data["notes"])


def test_plot_is_written_when_matplotlib_is_installed(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("SENTINEL_PLOT", str(tmp_path))
    made = real.make_gcn()
    result = check_overfit(*_args(made), steps=5)
    assert result.data["plot"] == str(tmp_path / "overfit-curve.png")
    assert (tmp_path / "overfit-curve.png").stat().st_size > 0


def test_report_json_has_the_new_probes():
    report = run_probes(*_args(bad.make_reshape_mixes_batch()), steps=5)
    assert isinstance(report, Report)
    data = report.to_dict()
    assert [p["name"] for p in data["probes"]] == [
        "devices",
        "finite",
        "updates",
        "initial-loss",
        "batch-independence",
        "overfit",
    ]
    sen111 = next(f for f in data["findings"] if f["code"] == "SEN111")
    assert sen111["name"] == "batch-samples-mixed" and sen111["details"]["depends_on"] == [1, 2, 3]
