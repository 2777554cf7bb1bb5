"""What sentinel knows about the torch API (and the few libraries around it), by qualified name.

Everything here is plain data plus small predicates; the interpreter consults it to give a call's
result an abstract value. Names are matched after import aliases are resolved, so
``import torch.nn.functional as F; F.softmax`` and ``from torch.nn.functional import softmax`` both
arrive as ``torch.nn.functional.softmax``.
"""

from __future__ import annotations

import re

SOFTMAX_FUNCS = frozenset(
    {
        "torch.softmax",
        "torch.nn.functional.softmax",
        "torch.special.softmax",
        "torch.Tensor.softmax",
    }
)
CROSS_ENTROPY_FUNCS = frozenset({"torch.nn.functional.cross_entropy"})
CROSS_ENTROPY_CLASSES = frozenset({"torch.nn.CrossEntropyLoss", "torch.nn.modules.loss.CrossEntropyLoss"})
SOFTMAX_CLASSES = frozenset({"torch.nn.Softmax", "torch.nn.modules.activation.Softmax"})

NO_GRAD_CTX = frozenset(
    {
        "torch.no_grad",
        "torch.inference_mode",
        "torch.autograd.no_grad",
        "torch.autograd.grad_mode.no_grad",
        "torch.autograd.grad_mode.inference_mode",
        "torch.autograd.inference_mode",
    }
)
ENABLE_GRAD_CTX = frozenset({"torch.enable_grad", "torch.autograd.enable_grad", "torch.autograd.grad_mode.enable_grad"})
SET_GRAD_ENABLED = frozenset(
    {"torch.set_grad_enabled", "torch.autograd.set_grad_enabled", "torch.autograd.grad_mode.set_grad_enabled"}
)

OPTIMIZER_NAMES = frozenset(
    {
        "SGD",
        "Adam",
        "AdamW",
        "RMSprop",
        "Adagrad",
        "Adadelta",
        "Adamax",
        "NAdam",
        "RAdam",
        "LBFGS",
        "SparseAdam",
        "ASGD",
        "Rprop",
        "Lion",
        "LAMB",
        "Lamb",
        "Adafactor",
        "FusedAdam",
        "FusedLAMB",
        "AdamW8bit",
        "Adam8bit",
        "Adan",
        "Muon",
        "Shampoo",
        "SophiaG",
        "AdaBelief",
        "Ranger",
    }
)

# results that carry no autograd graph whatever their input
NO_GRAPH_FUNCS = frozenset(
    {
        "argmax",
        "argmin",
        "argsort",
        "multinomial",  # sampled indices: no graph (a generation loop's next token)
        "bernoulli",
        "searchsorted",
        "bucketize",
        "eq",
        "ne",
        "gt",
        "lt",
        "ge",
        "le",
        "equal",
        "isnan",
        "isinf",
        "isfinite",
        "numel",
        "topk_indices",
        "randn",
        "rand",
        "randint",
        "randperm",
        "zeros",
        "ones",
        "empty",
        "full",
        "arange",
        "linspace",
        "logspace",
        "eye",
        "tensor",
        "as_tensor",
        "from_numpy",
        "zeros_like",
        "ones_like",
        "empty_like",
        "full_like",
        "randn_like",
        "rand_like",
        "randint_like",
        "manual_seed",
        "no_grad",
        "device",
        "count_nonzero",
        "sign",
        "nonzero",
        "where_indices",
        "load",
        "Generator",
    }
)

TENSOR_IDENTITY_METHODS = frozenset(
    {
        "view",
        "reshape",
        "squeeze",
        "unsqueeze",
        "permute",
        "transpose",
        "flatten",
        "contiguous",
        "clamp",
        "clamp_",
        "clip",
        "type_as",
        "expand",
        "expand_as",
        "view_as",
        "reshape_as",
        "float",
        "double",
        "half",
        "bfloat16",
        "t",
        "narrow",
        "select",
        "chunk_item",
        "requires_grad_",
    }
)
TENSOR_MOVE_METHODS = frozenset({"cpu", "cuda", "to"})
TENSOR_NO_GRAPH_METHODS = frozenset(
    {
        "argmax",
        "argmin",
        "argsort",
        "eq",
        "ne",
        "gt",
        "lt",
        "ge",
        "le",
        "long",
        "int",
        "bool",
        "byte",
        "sign",
        "nonzero",
        "size",
        "dim",
        "numel",
        "isnan",
        "isinf",
        "isfinite",
        "equal",
        "item",
        "tolist",
        "numpy",
        "__len__",
        "nelement",
        "element_size",
        "data_ptr",
        "get_device",
        "is_contiguous",
        # a torch.distributions object built from a tensor with a graph: `dist.sample()` draws
        # without one (`rsample()`, the reparameterized draw, keeps it)
        "sample",
        "sample_n",
        "enumerate_support",
    }
)
TENSOR_SCALAR_METHODS = frozenset({"item", "tolist", "numpy"})
MODEL_SELF_METHODS = frozenset(
    {
        "to",
        "cuda",
        "cpu",
        "float",
        "half",
        "double",
        "bfloat16",
        "requires_grad_",
        "share_memory",
        "apply",
        "type",
        "train",
        "eval",
        "xpu",
        "mps",
        "compile",
    }
)

_SUBMODULE_PREFIXES = (
    "torch.nn.modules.",
    "torch.optim.optimizer.",
)


def normalize(qual: str) -> str:
    """Fold private module paths onto the public names users write."""
    for prefix in _SUBMODULE_PREFIXES:
        if qual.startswith(prefix):
            rest = qual[len(prefix) :]
            last = rest.rsplit(".", 1)[-1]
            return ("torch.nn." if prefix.startswith("torch.nn") else "torch.optim.") + last
    if qual.startswith("torch.nn.parallel.") or qual == "torch.nn.parallel":
        return qual
    return qual


def last(qual: str) -> str:
    return qual.rsplit(".", 1)[-1]


#: the class ``getattr(torch.optim, name)`` gives when the name is not a constant (chosen by a flag)
ANY_OPTIMIZER = "torch.optim.<chosen by name>"


def is_optimizer_class(qual: str) -> bool:
    name = last(qual)
    if "lr_scheduler" in qual or "scheduler" in name.lower():
        return False
    if qual == ANY_OPTIMIZER or qual.startswith("torch.optim.") and name[:1].isupper() and name != "Optimizer":
        return True
    return name in OPTIMIZER_NAMES


def is_scheduler(qual: str) -> bool:
    name = last(qual)
    low = qual.lower()
    return "lr_scheduler" in low or "schedule" in name.lower() or name.endswith("LR") or name.endswith("Scheduler")


def is_scaler_class(qual: str) -> bool:
    return last(qual) == "GradScaler"


def is_loss_class(qual: str) -> bool:
    return qual.startswith("torch.nn.") and last(qual).endswith("Loss")


def is_functional_loss(qual: str) -> bool:
    return qual.startswith("torch.nn.functional.") and (
        last(qual).endswith("_loss")
        or last(qual)
        in (
            "cross_entropy",
            "binary_cross_entropy",
            "binary_cross_entropy_with_logits",
            "kl_div",
            "triplet_margin_loss",
            "ctc_loss",
        )
    )


_TORCHVISION_NOT_MODELS = frozenset({"get_weight", "get_model_weights", "list_models", "get_model_builder"})


def is_module_class(qual: str) -> bool:
    """A constructor that returns an ``nn.Module`` (a layer, a container, a zoo model)."""
    name = last(qual)
    if (
        qual.startswith("torch.nn.")
        and not qual.startswith("torch.nn.functional")
        and not qual.startswith("torch.nn.init")
        and not qual.startswith("torch.nn.utils")
    ):
        return name[:1].isupper() and name not in ("Parameter", "ParameterList", "ParameterDict", "Module")
    if qual.startswith("torchvision.models."):
        # a zoo model (`resnet18(weights=...)`, `get_model(...)`), not its weights enum and what they give
        # (`ResNet18_Weights.DEFAULT.transforms()` is the preprocessing, `.get_state_dict()` a dict)
        parts = qual.split(".")
        return not any("Weights" in p for p in parts) and name not in _TORCHVISION_NOT_MODELS
    if qual.startswith("timm.create_model"):
        return True
    if qual.startswith("einops.layers."):  # `Rearrange("b c h w -> b (h w) c")`, `Reduce`, `EinMix`
        return name[:1].isupper()
    if qual.startswith("transformers.") and name == "from_pretrained":
        cls = qual.rsplit(".", 2)[-2] if qual.count(".") >= 2 else ""
        return "Model" in cls or "For" in cls
    return False


def starts_in_eval(qual: str) -> bool:
    """Does this constructor return its model in eval mode? Hugging Face's ``from_pretrained`` does
    (documented: "The model is set in evaluation mode by default")."""
    return qual.startswith("transformers.") and last(qual) == "from_pretrained"


CLIP_FUNCS = frozenset({"clip_grad_norm_", "clip_grad_value_", "clip_grad_norm"})

WRAPPERS = frozenset(
    {
        "torch.nn.DataParallel",
        "torch.nn.parallel.DataParallel",
        "torch.nn.parallel.DistributedDataParallel",
        "torch.compile",
        "torch.jit.script",
        "torch.nn.SyncBatchNorm.convert_sync_batchnorm",
        "torch.ao.quantization.prepare",
    }
)

_EVALISH = re.compile(
    r"(?:^|[_.\[\"'\W])(val|vals|valid|validation|validate|eval|evaluate|evaluation|test|testing|dev|holdout|"
    r"infer|inference|predict|prediction)"
    # `testloader`, `valset`, `testdata`: the tutorials' spelling, without an underscore
    r"(?:loaders?|sets?|data|dataset|batch|batches|iter|dl|ds|images|inputs|samples)?(?:$|[_\W\d])",
    re.IGNORECASE,
)
_EVALISH_FUNC = re.compile(
    r"(^|_)(val|valid|validate|validation|eval|evaluate|evaluation|test|infer|inference|"
    r"predict|score|translate|generate|greedy_decode|beam_search)(_|$|\d)",
    re.IGNORECASE,
)


def evalish(text: str) -> bool:
    """Does an identifier or expression text name validation/test data or code?"""
    if not text:
        return False
    return bool(_EVALISH.search(text)) or text.lower() in ("val", "valid", "test", "eval", "dev")


def evalish_function(name: str) -> bool:
    return bool(_EVALISH_FUNC.search(name))


_MODELISH = re.compile(
    r"^(model|net|network|classifier|generator|discriminator|encoder|decoder|student|teacher|backbone|"
    r"autoencoder|vae|gan|policy|critic|actor|module)s?(_\w+)?$|^(\w+_)?(model|net|network|classifier)\d*$|"
    r"^net[A-Z]\w*$|^model[A-Z0-9]\w*$|^[gd]_?net$|^net_?[gd]$",
)
_OPTIMIZERISH = re.compile(r"optimi[sz]er|optim(_|$|[A-Z0-9])|^opt(_|$|[A-Z0-9])|_opt(_|$|\d)|^optim$", re.IGNORECASE)
_SCHEDULERISH = re.compile(r"sched|lr_?policy|warmup", re.IGNORECASE)
_SCALERISH = re.compile(r"scaler", re.IGNORECASE)
_CRITERIONISH = re.compile(
    r"^(criterion|criterions|loss_?fn|loss_?func|loss_?function|loss_?module|lossfn|"
    r"objective)$|_criterion$|^criterion_",
    re.IGNORECASE,
)


#: `model_path`, `network_pkl`, `net_cfg`: data about a model (a file, a name, a configuration), not one
_ABOUT_A_MODEL = re.compile(
    r"_(paths?|files?|filename|fname|dirs?|root|url|uri|names?|type|kind|cfg|config|conf|args|kwargs|opts?|params"
    r"|ckpt|checkpoint|pkl|pth?|weights?|ids?|idx|str|keys?|list|dict|size|dim|arch|version|tag|prefix|suffix|fn"
    r"|func|factory|cls|class|spec|hash|md5)$"
)


def modelish(name: str) -> bool:
    return bool(_MODELISH.match(name)) and not _ABOUT_A_MODEL.search(name)


def optimizerish(name: str) -> bool:
    return bool(_OPTIMIZERISH.search(name)) and not _SCHEDULERISH.search(name)


def schedulerish(name: str) -> bool:
    return bool(_SCHEDULERISH.search(name))


def scalerish(name: str) -> bool:
    return bool(_SCALERISH.search(name))


def criterionish(name: str) -> bool:
    return bool(_CRITERIONISH.search(name))


#: a helper named for a counting metric (`accuracy`, `topk_correct`, `f1_score`): argmax and comparisons
#: leave no graph in what it returns
_METRICISH = re.compile(r"(^|_)(acc|accuracy|top_?k|top\d|correct|precision|recall|f1|auc|error_rate)(_|$)", re.I)


def metricish(name: str) -> bool:
    return bool(_METRICISH.search(name))


#: code after a gradient of its input (saliency maps, adversarial attacks), or a keyword asking for one
#: (`model(x, y, make_adv=True)`): the graph is what it wants
_GRADISH = re.compile(
    r"with_grad|input_grad|saliency|grad_?cam|attribut|integrated_grad|adversar|attack|fgsm|pgd|^(make_)?adv(_|$)",
    re.I,
)


def gradish(name: str) -> bool:
    return bool(_GRADISH.search(name))


_RESETISH = re.compile(r"zero_?grad|clear_?grad|reset_?grad|grad_?reset|zero_?gradients", re.IGNORECASE)


def resetish(name: str) -> bool:
    return bool(_RESETISH.search(name))


_NON_FORWARD = re.compile(
    r"^(init|reset|freeze|unfreeze|load|save|fit|train|eval|configure|parameters|named_|state_dict|"
    r"num_|get_|set_|extra_repr|zero_grad|apply|to$|cuda$|cpu$|half$|float$|double$|register|prune|"
    r"update|step|optimi[sz]e|backward|loss|compute_loss|training_step|summary|count)"
)


def non_forward_method(name: str) -> bool:
    """Methods of a model class that do not run it on data (setup, bookkeeping, training steps); the
    forward-like ``get_action`` / ``get_value`` are not among them."""
    return name not in FORWARD_METHODS and bool(_NON_FORWARD.match(name))


# methods of a model whose class sentinel cannot see that run it on data, like a forward
FORWARD_METHODS = frozenset(
    {
        "generate",
        "predict",
        "predict_proba",
        "sample",
        "encode",
        "decode",
        "embed",
        "inference",
        "infer",
        "act",
        "get_action",
        "get_action_and_value",
        "get_value",
        "get_logits",
        "get_features",
        "get_embedding",
        "get_embeddings",
        "forward_features",
        "extract_features",
    }
)

_NON_MODULE_ATTR = re.compile(
    r"^(config|cfg|conf|hparams|hyperparams|hyper_params|args|opts?|options|params_dict|settings|device|dtype|"
    r"name|names|vocab\w*|tokenizer|labels|classes|class_names|id2label|label2id|meta\w*|info|history|epoch|"
    r"global_step|step|version|training|input_shape|output_shape|shape|is_\w+|has_\w+|use_\w+|"
    r"in_features|out_features|in_channels|out_channels|padding_idx|eps|momentum|inplace|batch_first|"
    r"bidirectional|stride|padding|dilation|groups|p|"
    r"(num|n)_\w+|\w+_(size|dim|dims|rate|prob|count|len|length|shape|type|mode|path|dir|name)|dim)$"
)


#: a method named for what it does (``create_dummy_batch``, ``get_classifier``), not a submodule
_METHOD_ATTR = re.compile(
    r"^(create|make|build|get|set|compute|init|initialize|load|save|reset|update|prepare|register|apply|"
    r"freeze|unfreeze|enable|disable|convert|export|print|log|to)_\w+$"
)


def non_module_attribute(name: str) -> bool:
    """Attributes of a model that hold data (its configuration, device, sizes) or name one of its
    methods (read without a call: ``creator = model.create_dummy_batch``), not a submodule."""
    return bool(_NON_MODULE_ATTR.match(name) or _METHOD_ATTR.match(name))


# -- activations, losses that expect logits or log-probabilities, functional dropout --------------
LOG_SOFTMAX_FUNCS = frozenset(
    {
        "torch.log_softmax",
        "torch.nn.functional.log_softmax",
        "torch.special.log_softmax",
        "torch.Tensor.log_softmax",
    }
)
SIGMOID_FUNCS = frozenset(
    {"torch.sigmoid", "torch.nn.functional.sigmoid", "torch.special.expit", "torch.Tensor.sigmoid"}
)
# activation layer classes -> the activation kind their instances apply
ACTIVATION_CLASSES = {
    "torch.nn.Softmax": "softmax",
    "torch.nn.LogSoftmax": "log_softmax",
    "torch.nn.Sigmoid": "sigmoid",
}
FUNCTIONAL_DROPOUT = frozenset({"dropout", "dropout1d", "dropout2d", "dropout3d"})
FUNCTIONAL_ALPHA_DROPOUT = frozenset({"alpha_dropout", "feature_alpha_dropout"})


def loss_kind(name: str) -> str:
    """A loss class's or function's name folded to what it expects: ``ce`` (logits, softmax inside),
    ``bce_logits`` (logits, sigmoid inside), ``nll`` (log-probabilities); otherwise the name itself."""
    if name in ("ce", "CrossEntropyLoss", "cross_entropy"):
        return "ce"
    if name in ("BCEWithLogitsLoss", "binary_cross_entropy_with_logits"):
        return "bce_logits"
    if name in ("NLLLoss", "nll_loss"):
        return "nll"
    return name


# layers whose output has the rank of their input and keeps dimension 0 where it was
RANK_KEEPING_LAYERS = frozenset(
    {
        "Linear",
        "LazyLinear",
        "Identity",
        "Conv1d",
        "Conv2d",
        "Conv3d",
        "ConvTranspose1d",
        "ConvTranspose2d",
        "ConvTranspose3d",
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "LayerNorm",
        "GroupNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "Dropout",
        "Dropout1d",
        "Dropout2d",
        "Dropout3d",
        "AlphaDropout",
        "ReLU",
        "ReLU6",
        "LeakyReLU",
        "PReLU",
        "ELU",
        "SELU",
        "CELU",
        "GELU",
        "SiLU",
        "Mish",
        "Tanh",
        "Sigmoid",
        "Hardtanh",
        "Hardswish",
        "Hardsigmoid",
        "Softplus",
        "Softsign",
        "Tanhshrink",
        "Softmax",
        "LogSoftmax",
        "MaxPool1d",
        "MaxPool2d",
        "MaxPool3d",
        "AvgPool1d",
        "AvgPool2d",
        "AvgPool3d",
        "AdaptiveAvgPool1d",
        "AdaptiveAvgPool2d",
        "AdaptiveAvgPool3d",
        "AdaptiveMaxPool1d",
        "AdaptiveMaxPool2d",
        "AdaptiveMaxPool3d",
    }
)
# training frameworks whose objects, given a model, run it in modes of their own choosing (ignite's
# evaluator calls `model.eval()`, its trainer `model.train()`; Lightning, Hugging Face, fastai alike)
FRAMEWORKS = frozenset(
    {"ignite", "pytorch_lightning", "lightning", "transformers", "fastai", "catalyst", "skorch", "composer", "poutyne"}
)


def is_framework(qual: str) -> bool:
    return qual.split(".", 1)[0] in FRAMEWORKS


# torch.nn layers with no parameters and no train/eval behaviour: calling one is applying a function
# (`h = nn.Tanh(); h(x)` in a hand-written RNN cell), not running a model
STATELESS_LAYERS = frozenset(
    {
        *("ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Tanh", "Sigmoid"),
        *("Hardtanh", "Hardswish", "Hardsigmoid", "Softplus", "Softsign", "Tanhshrink", "Identity"),
        *("Flatten", "Unflatten", "Upsample", "PixelShuffle", "PixelUnshuffle"),
        *(f"{kind}Pool{d}d" for kind in ("Max", "Avg", "AdaptiveAvg", "AdaptiveMax") for d in (1, 2, 3)),
        *(f"{kind}Pad{d}d" for kind in ("Zero", "Constant", "Reflection", "Replication") for d in (1, 2, 3)),
    }
)


def is_stateless_layer(qual: str) -> bool:
    if qual.startswith("einops.layers."):
        return last(qual) in ("Rearrange", "Reduce", "Repeat")  # a reshaping of its input
    return qual.startswith("torch.nn.") and "functional" not in qual and last(qual) in STATELESS_LAYERS


DROPOUT_LAYERS = frozenset({"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout"})


def is_dropout_layer(qual: str) -> bool:
    return qual.startswith("torch.nn.") and "functional" not in qual and last(qual) in DROPOUT_LAYERS


def standalone_kind(qual: str) -> str | None:
    """What a torch.nn layer called on its own does without a model around it: ``"stateless"`` (a
    function of its input), ``"dropout"`` (a random mask, when applied to a tensor made in place), or
    None (a layer with parameters or state: a model forward)."""
    if is_stateless_layer(qual):
        return "stateless"
    return "dropout" if is_dropout_layer(qual) else None


# functions and tensor methods whose result has the shape of their (first) input
ELEMENTWISE = frozenset(
    {
        "relu",
        "relu_",
        "relu6",
        "leaky_relu",
        "gelu",
        "elu",
        "selu",
        "celu",
        "silu",
        "mish",
        "tanh",
        "sigmoid",
        "softplus",
        "hardtanh",
        "hardswish",
        "exp",
        "log",
        "abs",
        "neg",
        "sqrt",
        "square",
        "pow",
        "clamp",
        "clip",
        "dropout",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "layer_norm",
        "batch_norm",
        "normalize",
        "softmax",
        "log_softmax",
        "float",
        "double",
        "half",
        "contiguous",
        "to",
        "cpu",
        "cuda",
        "detach",
        "clone",
        "type_as",
        "requires_grad_",
        "bfloat16",
        "log1p",
        "expm1",
        "log2",
        "log10",
        "rsqrt",
        "reciprocal",
        "sign",
        "sin",
        "cos",
        "erf",
        "floor",
        "ceil",
        "round",
        "trunc",
        "nan_to_num",
        "hardsigmoid",
        "logsigmoid",
        "tanhshrink",
        "softsign",
        "prelu",
        "rrelu",
        "group_norm",
        "instance_norm",
        "local_response_norm",
        "sub",
        "add",
        "mul",
        "div",
    }
)
