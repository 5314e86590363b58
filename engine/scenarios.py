"""Built-in scenarios (a data set, a model and hyperparameters) and how a run is built from one."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from engine.batches import LoaderBatches, TensorBatches
from engine.data import Dataset, DataSpec, make_dataset
from engine.models import ModelSpec, build_model
from engine.run import Run
from engine.snapshot import Hyper
from engine.trainer import Trainer, TrainerConfig, loss_for_task

__all__ = [
    "Scenario", "SCENARIOS", "EXAMPLE_NAMES", "DEFAULT_SCENARIO", "resolve_device", "build_run", "build_user_run",
    "scenario_names",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A built-in model × data pair with sensible hyperparameters."""

    name: str
    title: str
    description: str
    data: DataSpec
    model: ModelSpec
    hyper: Hyper = field(default_factory=Hyper)
    val_every: int = 50


def _mlp(**kw: Any) -> ModelSpec:
    return ModelSpec(kind="mlp", **kw)


_LIST = [
    Scenario("spirals-mlp", "Two spirals · tanh MLP",
             "Two interleaved spirals: a classic that a straight line cannot split. Watch the hidden "
             "units bend the input plane until the spirals come apart.",
             DataSpec("spirals", n=1000, noise=0.05),
             _mlp(depth=3, width=32, activation="tanh", init="xavier"),
             Hyper(optimizer="adam", lr=0.01, batch_size=64)),
    Scenario("xor-mlp", "XOR · one hidden layer",
             "XOR is not linearly separable; a single hidden layer of a few tanh units solves it.",
             DataSpec("xor", n=400, noise=0.1), _mlp(depth=1, width=8, activation="tanh"),
             Hyper(optimizer="adam", lr=0.03, batch_size=32)),
    Scenario("circles-mlp", "Circles · ReLU MLP", "One class inside a ring of the other.",
             DataSpec("circles", n=800, noise=0.08), _mlp(depth=2, width=16, activation="relu", init="he"),
             Hyper(optimizer="adam", lr=0.01, batch_size=64)),
    Scenario("moons-mlp", "Moons · ReLU MLP", "Two interlocking half moons.",
             DataSpec("moons", n=800, noise=0.15), _mlp(depth=2, width=16, activation="relu", init="he"),
             Hyper(optimizer="adam", lr=0.01, batch_size=64)),
    Scenario("blobs-mlp", "Gaussian blobs · MLP", "Three Gaussian clouds, three classes.",
             DataSpec("blobs", n=600, noise=0.3, classes=3), _mlp(depth=1, width=8, activation="relu"),
             Hyper(optimizer="adam", lr=0.01, batch_size=64)),
    Scenario("regression-mlp", "Curve fitting · tanh MLP",
             "Regression of a noisy one-dimensional curve with a mean-squared-error loss.",
             DataSpec("regression", n=500, noise=0.1), _mlp(depth=2, width=32, activation="tanh"),
             Hyper(optimizer="adam", lr=0.01, batch_size=64)),
    Scenario("shapes-cnn", "Shapes · CNN",
             "28×28 drawings of shapes and strokes at random positions, sizes and angles. The first "
             "conv layer's feature maps show where its filters find edges and strokes.",
             DataSpec("shapes", n=2000, noise=0.1),
             ModelSpec(kind="cnn", channels=(8, 16), activation="relu", norm="batch", init="he"),
             Hyper(optimizer="adam", lr=0.003, batch_size=64), val_every=100),
    Scenario("shapes-mlp", "Shapes · MLP",
             "The same pictures through a plain MLP, which has to learn every position separately.",
             DataSpec("shapes", n=2000, noise=0.1), _mlp(depth=2, width=64, activation="relu", init="he"),
             Hyper(optimizer="adam", lr=0.002, batch_size=64), val_every=100),
    Scenario("reverse-transformer", "Reverse a sequence · Transformer",
             "Each output position must read the mirrored input position: the attention maps learn "
             "an anti-diagonal alignment.",
             DataSpec("reverse", n=4000), ModelSpec(kind="transformer", depth=2, width=64, heads=4,
                                                    activation="gelu"),
             Hyper(optimizer="adam", lr=0.002, batch_size=64), val_every=100),
    Scenario("copy-transformer", "Copy a sequence · Transformer",
             "The identity task. The residual connection already carries each token to its own "
             "place, so attention has nothing to learn and its maps stay diffuse.",
             DataSpec("copy", n=4000), ModelSpec(kind="transformer", depth=2, width=64, heads=4, activation="gelu"),
             Hyper(optimizer="adam", lr=0.002, batch_size=64), val_every=100),
    Scenario("sort-transformer", "Sort a sequence · Transformer",
             "Output the input tokens in increasing order; attention spreads to find each rank.",
             DataSpec("sort", n=4000), ModelSpec(kind="transformer", depth=2, width=64, heads=4, activation="gelu"),
             Hyper(optimizer="adam", lr=0.002, batch_size=64), val_every=100),
    Scenario("long-range-rnn", "Long-range memory · tanh RNN",
             "The label is decided by the first token of a long sequence. A plain RNN's gradient "
             "fades on its way back through time, so it stays near chance.",
             DataSpec("long_range"), ModelSpec(kind="rnn", depth=1, width=32),
             Hyper(optimizer="adam", lr=0.002, batch_size=64, clip_norm=1.0), val_every=100),
    Scenario("long-range-lstm", "Long-range memory · LSTM",
             "The same task with an LSTM: its cell state carries the first token to the end.",
             DataSpec("long_range"), ModelSpec(kind="lstm", depth=1, width=32),
             Hyper(optimizer="adam", lr=0.002, batch_size=64, clip_norm=1.0), val_every=100),
    Scenario("long-range-gru", "Long-range memory · GRU",
             "The same task with a GRU, whose gates also keep the gradient alive.",
             DataSpec("long_range"), ModelSpec(kind="gru", depth=1, width=32),
             Hyper(optimizer="adam", lr=0.002, batch_size=64, clip_norm=1.0), val_every=100),
]

#: The general examples; the scenarios after them exist for the lessons gallery.
EXAMPLE_NAMES: tuple[str, ...] = tuple(s.name for s in _LIST)

# --- the lessons gallery's problems and cures (engine/lessons.py pairs them up) ------------
_CIRCLES = DataSpec("circles", n=800, noise=0.08)
_MOONS = DataSpec("moons", n=800, noise=0.15)
# 200 noisy points, half held out: few enough for a big MLP to memorise the training half.
_SMALL_NOISY = DataSpec("moons", n=200, noise=0.35, val_fraction=0.5)
_BIG_MLP = _mlp(depth=3, width=256, activation="relu", init="he")
_SPIRALS = DataSpec("spirals", n=1000, noise=0.05)
_50_RELU = dict(depth=50, width=64, activation="relu", init="he")
_SGD_DEEP = Hyper(optimizer="sgd", lr=0.01, batch_size=64)
_SMALL_MLP = _mlp(depth=2, width=16, activation="relu", init="he")


def _sgd(lr: float, clip: float | None = None) -> Hyper:
    return Hyper(optimizer="sgd", lr=lr, clip_norm=clip, batch_size=64)


_LIST += [
    Scenario("xor-linear", "XOR · no hidden layer",
             "A single linear layer draws one straight line through the plane, and no straight line "
             "puts XOR's opposite corners together: the loss stays near log 2 and accuracy near chance.",
             DataSpec("xor", n=400, noise=0.1), _mlp(depth=0),
             Hyper(optimizer="adam", lr=0.03, batch_size=32)),
    Scenario("deep-sigmoid", "10 sigmoid layers · vanishing gradients",
             "Ten sigmoid layers with PyTorch's default initialization. On its way back the error "
             "signal is scaled, layer after layer, by the weights and by the sigmoid's slope (never "
             "above 0.25): here by about 1/7 per layer, so the first layers get almost nothing.",
             _CIRCLES, _mlp(depth=10, width=32, activation="sigmoid"),
             Hyper(optimizer="adam", lr=0.01, batch_size=64)),
    Scenario("deep-relu-he", "10 ReLU layers · He init",
             "The same ten layers with ReLU and He initialization: the gradient reaches the first "
             "layer within about a factor of ten of the last, and the network learns the circles "
             "within a hundred steps.",
             _CIRCLES, _mlp(depth=10, width=32, activation="relu", init="he"),
             Hyper(optimizer="adam", lr=0.01, batch_size=64)),
    Scenario("init-he-half", "50 ReLU layers · He init × 0.5",
             "Weights half as large as He's: every layer halves the spread of its input, and after "
             "fifty layers the signal has shrunk by about 1e-15. Nothing reaches the output.",
             _CIRCLES, _mlp(**_50_RELU, init_scale=0.5), _SGD_DEEP),
    Scenario("init-he", "50 ReLU layers · He init",
             "He initialization keeps the spread of the activations roughly constant from layer to "
             "layer, so even fifty layers pass a usable signal forward and a usable gradient back.",
             _CIRCLES, _mlp(**_50_RELU), _SGD_DEEP),
    Scenario("init-he-double", "50 ReLU layers · He init × 2",
             "Weights twice He's: each layer doubles the spread, fifty layers multiply it by about "
             "1e15, and the first update is so large that the second step overflows into NaN.",
             _CIRCLES, _mlp(**_50_RELU, init_scale=2.0), _SGD_DEEP),
    Scenario("init-zeros", "All-zero initialization",
             "Every weight starts at zero. With ReLU every hidden output is then zero, where ReLU's "
             "slope is zero too, so no weight receives any gradient and only the output bias moves: "
             "the network stays at chance.",
             _CIRCLES, _mlp(depth=2, width=16, activation="relu", init="zeros"),
             Hyper(optimizer="adam", lr=0.01, batch_size=64)),
    Scenario("lr-too-small", "Learning rate too small (SGD 1e-4)",
             "Plain SGD with a learning rate of 1e-4: each update moves the weights by a "
             "hundred-thousandth of their size or less, and the loss barely moves in hundreds of steps.",
             _MOONS, _SMALL_MLP, _sgd(1e-4)),
    Scenario("lr-right", "Learning rate about right (SGD 0.1)",
             "SGD with a learning rate of 0.1: updates near a thousandth of the weights, a loss that "
             "falls steadily, the moons apart in a few hundred steps.",
             _MOONS, _SMALL_MLP, _sgd(0.1)),
    Scenario("lr-too-large", "Learning rate too large (SGD 10)",
             "SGD with a learning rate of 10: the first updates overshoot, within a few steps the loss "
             "is thousands of times higher, and the network never recovers (its last ReLUs die, or "
             "the loss turns NaN).",
             _MOONS, _SMALL_MLP, _sgd(10.0)),
    Scenario("lr-clipped", "Learning rate 10 with gradient clipping",
             "The same learning rate of 10, but each gradient is scaled down to a norm of at most "
             "0.05 before the update: no single step can throw the weights far, and it trains.",
             _MOONS, _SMALL_MLP, _sgd(10.0, clip=0.05)),
    Scenario("overfit-mlp", "Overfitting · big MLP, small noisy set",
             "A 133,000-parameter MLP on 100 noisy training points. It learns them by heart: the "
             "training loss heads for zero while the validation loss turns around and climbs.",
             _SMALL_NOISY, _BIG_MLP, Hyper(optimizer="adam", lr=0.003, batch_size=100), val_every=10),
    Scenario("overfit-weight-decay", "Overfitting tamed · weight decay",
             "The same network with an L2 penalty (weight decay 0.01) that keeps the weights small: "
             "the training loss stops near 0.2 and the validation loss stays down.",
             _SMALL_NOISY, _BIG_MLP, Hyper(optimizer="adam", lr=0.003, weight_decay=0.01, batch_size=100),
             val_every=10),
    Scenario("overfit-dropout", "Overfitting tamed · dropout",
             "The same network with dropout 0.5 after each hidden layer: no unit can rely on any "
             "other, which slows the memorising down.",
             _SMALL_NOISY, replace(_BIG_MLP, dropout=0.5), Hyper(optimizer="adam", lr=0.003, batch_size=100),
             val_every=10),
    Scenario("deep-relu-plain", "20 ReLU layers · no normalization",
             "Twenty ReLU layers with PyTorch's default initialization, which is too small for ReLU: "
             "the signal fades layer by layer and the loss sits at log 2.",
             _SPIRALS, _mlp(depth=20, width=32, activation="relu"),
             Hyper(optimizer="adam", lr=0.01, batch_size=64)),
    Scenario("deep-relu-batchnorm", "20 ReLU layers · BatchNorm",
             "The same twenty layers with BatchNorm after each linear layer: every layer's output is "
             "rescaled to zero mean and unit spread, so depth no longer shrinks the signal.",
             _SPIRALS, _mlp(depth=20, width=32, activation="relu", norm="batch"),
             Hyper(optimizer="adam", lr=0.01, batch_size=64)),
]

SCENARIOS: dict[str, Scenario] = {s.name: s for s in _LIST}
DEFAULT_SCENARIO = "spirals-mlp"


def scenario_names() -> tuple[str, ...]:
    return tuple(SCENARIOS)


def resolve_device(device: str = "auto") -> str:
    """'auto' picks CUDA when a GPU is present; an explicit 'cuda' without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA GPU is available (is the CUDA build of torch installed?)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


def _built(spec: ModelSpec, dataset: Dataset, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(spec, dataset)


def build_run(scenario: Scenario | str, *, device: str = "auto", seed: int = 0,
              hyper: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
              capture_every: int | None = 1, val_every: int | None = None) -> Run:
    """A ready-to-step run of a built-in scenario.

    Args:
        scenario: a :class:`Scenario` or its name.
        device: 'auto', 'cpu' or 'cuda'.
        seed: seeds the model's initial weights, the data order and dropout (the data set itself
            keeps the scenario's seed so runs compare on the same examples).
        hyper: overrides of the scenario's hyperparameters.
        model: overrides of the scenario's :class:`ModelSpec` fields (activation, init, width...).
        capture_every: probe capture interval (None: adaptive).
    """
    if isinstance(scenario, str):
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
        scenario = SCENARIOS[scenario]
    spec = replace(scenario.model, **(model or {}))
    if spec.kind == "cnn" and model and "depth" in model and spec.channels and len(spec.channels) != spec.depth:
        spec = replace(spec, channels=())  # a depth asked for: that many conv stacks, 8, 16, 32... channels
    dataset = make_dataset(scenario.data)
    net = _built(spec, dataset, seed)
    hp = replace(scenario.hyper, **(hyper or {}))

    def reinit(module: torch.nn.Module) -> None:
        # Rebuilding from the spec reproduces the very first weights for the same seed.
        module.load_state_dict(_built(spec, dataset, trainer.seed).state_dict())

    trainer = Trainer(
        net, loss_for_task(dataset.task), TensorBatches(dataset.x_train, dataset.y_train, seed=seed),
        hyper=hp, val_data=(dataset.x_val, dataset.y_val), reinit=reinit,
        config=TrainerConfig(seed=seed, device=resolve_device(device), capture_every=capture_every,
                             val_every=scenario.val_every if val_every is None else val_every),
    )
    boundary = None
    if dataset.input_shape == (2,) and dataset.task == "classification":
        take = min(len(dataset.x_train), 600)
        boundary = (dataset.x_train[:take].numpy().astype(np.float32), dataset.y_train[:take].numpy())
    config = {
        "kind": "scenario", "scenario": scenario.name, "seed": seed,
        "model": _jsonable(dataclasses.asdict(spec)), "data": _jsonable(dataclasses.asdict(scenario.data)),
        "hyper": dataclasses.asdict(hp),
    }
    return Run(name=scenario.name, trainer=trainer, description=scenario.description, config=config,
               boundary_data=boundary, n_classes=dataset.n_outputs if dataset.task != "regression" else 0,
               token_names=dataset.token_names)


#: Models up to this many parameters are measured every step by default; larger ones adaptively.
SMALL_MODEL_PARAMS = 1_000_000


#: Steps between validation passes of a user's model that came with validation data.
USER_VAL_EVERY = 50


def build_user_run(ref: str, *, device: str = "auto", seed: int = 0, hyper: dict[str, Any] | None = None,
                   capture_every: int | None | str = "auto") -> Run:
    """A run of the user's ``file.py:function`` model.

    Defaults: Adam, lr 1e-3, batch size 64 (the whole set when smaller), per-epoch shuffling.
    Raises :class:`engine.user_model.UserModelError` with a one-line message on bad input.
    """
    from engine.user_model import check_user_model, load_user_model, loader_boundary_sample

    user = load_user_model(ref, seed=seed)
    checked = check_user_model(user)
    hp = replace(Hyper(optimizer="adam", lr=1e-3, batch_size=64), **(hyper or {}))
    if capture_every == "auto":
        size = sum(p.numel() for p in user.model.parameters())
        capture_every = 1 if size <= SMALL_MODEL_PARAMS else None
    if user.loader is not None:
        batches = LoaderBatches(user.loader)
    else:
        batches = TensorBatches(user.x, user.y, seed=seed)
    # Reinitialize gives back the weights your function built, as it built them: its own init, a
    # layer it loaded or froze, parameters no reset_parameters() knows (MultiheadAttention's
    # in_proj_weight, a bare nn.Parameter). Kept on the host; the model moves to its device later.
    initial = {name: value.detach().to("cpu", copy=True) for name, value in user.model.state_dict().items()}

    def reinit(module: torch.nn.Module) -> None:
        module.load_state_dict(initial)

    # Validated every 50 steps when the function returned validation data (a fourth item).
    trainer = Trainer(user.model, user.loss_fn, batches, hyper=hp, val_data=user.val,
                      config=TrainerConfig(seed=seed, device=resolve_device(device), capture_every=capture_every,
                                           val_every=0 if user.val is None else USER_VAL_EVERY), reinit=reinit)
    boundary = None
    if user.x is not None and user.x.dim() == 2 and user.x.shape[1] == 2 and not user.y.is_floating_point():
        take = min(len(user.x), 600)
        boundary = (user.x[:take].detach().float().cpu().numpy(), user.y[:take].detach().cpu().numpy())
    elif user.loader is not None:  # (a sample of its first batches, if they are 2-D points and classes)
        boundary = loader_boundary_sample(user.loader)
    config = {"kind": "user", "model_ref": user.ref, "seed": seed, "hyper": dataclasses.asdict(hp)}
    return Run(name=ref, trainer=trainer, description=f"Your model from {ref}", config=config,
               boundary_data=boundary, model_warnings=checked.warnings, model_findings=checked.findings)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
