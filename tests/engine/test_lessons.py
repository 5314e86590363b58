"""Every lesson of the gallery shows what it promises, measured through `glassbox report`'s engine.

Each test trains the lesson's scenarios headless with :func:`engine.report.collect_report` (the
code behind ``glassbox report --scenario NAME``) and checks the outcome its ``Lesson.outcome``
states, against numbers computed here from the report's JSON or the data set.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.lessons import LESSONS, lesson_for_scenario
from engine.report import collect_report, main
from engine.scenarios import SCENARIOS, build_run


def report(scenario: str, steps: int, every: int = 1, seed: int = 0, val_every: int | None = None) -> dict:
    run = build_run(scenario, device="cpu", seed=seed, val_every=val_every)
    try:
        return json.loads(json.dumps(collect_report(run, steps, every)))  # exactly what --json writes
    finally:
        run.trainer.close()


def layer(rep: dict, name: str) -> dict:
    return next(entry for entry in rep["layers"] if entry["name"] == name)


def codes(rep: dict) -> dict[str, dict]:
    return {d["code"]: d for d in rep["diagnoses"]}


def mean_loss(rep: dict, part: slice) -> float:
    values = [v for v in rep["loss"][part] if v is not None]
    return float(np.mean(values))


def test_every_lesson_names_real_scenarios_and_views() -> None:
    views = {"network", "boundary", "loss", "weights", "activations", "gradients", "features", "attention",
             "inspector", "health", "neuron"}
    assert len(LESSONS) == 9
    for lesson in LESSONS.values():
        assert len(lesson.runs) >= 2, lesson.name
        assert set(lesson.runs) <= set(SCENARIOS), lesson.name
        assert set(lesson.watch) <= views, lesson.name
        assert lesson.explanation.strip() and lesson.outcome.strip()
    assert lesson_for_scenario("deep-sigmoid").name == "vanishing-gradients"
    assert lesson_for_scenario("circles-mlp") is None


LESSON_SCENARIOS = sorted({name for lesson in LESSONS.values() for name in lesson.runs})


@pytest.mark.parametrize("scenario", LESSON_SCENARIOS)
def test_each_lesson_scenario_runs_through_the_report_command(tmp_path, capsys, scenario: str) -> None:
    out = tmp_path / "report.json"
    assert main(["--scenario", scenario, "--steps", "3", "--device", "cpu", "--json", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["scenario"] == scenario and len(written["loss"]) == 3
    assert "diagnoses:" in capsys.readouterr().out


def test_xor_needs_a_hidden_layer() -> None:
    linear = report("xor-linear", 400, every=10)
    hidden = report("xor-mlp", 400, every=10)
    assert mean_loss(linear, slice(-50, None)) > 0.65  # log 2 = 0.693: a coin toss
    assert linear["validation"]["accuracy"][-1] < 0.7
    assert hidden["validation"]["accuracy"][-1] >= 0.95


def test_sigmoid_stack_vanishes_where_relu_with_he_init_does_not() -> None:
    sigmoid = report("deep-sigmoid", 30, val_every=10)
    relu = report("deep-relu-he", 300, every=10)
    first, last = layer(sigmoid, "layers.0.linear"), layer(sigmoid, "head")
    assert first["grad_norm"][0] < 1e-4 * last["grad_norm"][0]
    # "around a billion times smaller", "a steep staircase, each bar about seven times shorter":
    # 11 weight layers, so ten steps of the staircase (3.5e-9 and 7.0 per step at seed 0).
    ratio = first["grad_norm"][0] / last["grad_norm"][0]
    assert 1e-10 < ratio < 1e-8, ratio
    assert 5.0 < ratio ** (-1 / 10) < 10.0
    found = codes(sigmoid)["vanishing_gradients"]
    assert found["step"] <= 3 and "layers.0.linear" in found["layers"]
    assert max(sigmoid["validation"]["accuracy"]) < 0.65  # stays at chance
    # ReLU: "the first layer's bar mostly within a factor of ten of the last one's" (it strays
    # past ten only briefly, at about one step in a hundred).
    firsts, lasts = layer(relu, "layers.0.linear")["grad_norm"], layer(relu, "head")["grad_norm"]
    ratios = np.array([f / g for f, g in zip(firsts, lasts) if f is not None])
    assert len(ratios) == 30
    assert np.mean((ratios > 0.1) & (ratios < 10)) >= 0.9, ratios
    assert "vanishing_gradients" not in codes(relu)
    assert relu["validation"]["accuracy"][-1] >= 0.95


def input_dependent_spreads(scenario: str) -> tuple[np.ndarray, np.ndarray]:
    """Per activation layer of the untrained model: each unit's spread over the training examples
    (the part of the output that depends on the input), averaged over units, and the overall spread."""
    run = build_run(scenario, device="cpu")
    outputs: list[torch.Tensor] = []
    try:
        model, x = run.trainer.model, run.trainer.batches.x
        hooks = [module.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
                 for name, module in model.named_modules() if name.endswith(".act")]
        with torch.no_grad(), run.trainer.probe.suspended():
            model.eval()
            model(x)
        for hook in hooks:
            hook.remove()
    finally:
        run.trainer.close()
    return (np.array([float(out.std(dim=0).mean()) for out in outputs]),
            np.array([float(out.std()) for out in outputs]))


def test_deep_stacks_fade_the_input_forward_as_the_lessons_say() -> None:
    # Vanishing gradients: "the forward pass fades the same way" (about sevenfold per layer).
    # Stop before the last layers, where sigmoid outputs near 0.5 reach float32's resolution.
    sigmoid, _ = input_dependent_spreads("deep-sigmoid")
    assert len(sigmoid) == 10
    assert 5.0 < (sigmoid[0] / sigmoid[7]) ** (1 / 7) < 10.0
    # Normalization: "the part that depends on the input shrinks about 2.5 times per layer (the
    # biases keep the overall spread near a constant)".
    relu, overall = input_dependent_spreads("deep-relu-plain")
    assert len(relu) == 20
    assert 2.0 < (relu[0] / relu[19]) ** (1 / 19) < 3.2
    assert overall[2:].max() < 3 * overall[2:].min()


def input_std(scenario: str) -> float:
    run = build_run(scenario, device="cpu")
    try:
        return float(run.trainer.batches.x.std())
    finally:
        run.trainer.close()


@pytest.mark.parametrize("scenario, low, high", [
    ("init-he-half", 1e-18, 1e-14),  # "below 1e-3 (about 1e-16)": 2.9e-16 at seed 0
    ("init-he", 1 / 30, 3.0),  # "between about 1/20 and 2": 0.32 at seed 0, 0.047 at seed 1
    ("init-he-double", 1e12, 1e16),  # "above 1e3 (about 1e14)": 3.6e14 at seed 0
])
def test_fifty_relu_layers_keep_their_spread_only_at_he_scale(scenario: str, low: float, high: float) -> None:
    rep = report(scenario, 1)
    spread = layer(rep, "layers.49.act")["act_std"][0] / input_std(scenario)
    assert low < spread < high, spread


def test_he_double_overflows_and_he_trains() -> None:
    double = report("init-he-double", 5)
    assert double["loss"][0] is not None and all(v is None for v in double["loss"][1:])  # NaN from step 2
    assert {"exploding_gradients", "nan_inf"} <= set(codes(double))
    # "its update is larger than the weights by a factor of about 1e11" (SGD, lr 0.01)
    linears = [entry for entry in double["layers"] if entry["name"].endswith("linear") or entry["name"] == "head"]
    update = np.median([0.01 * entry["grad_norm"][0] / entry["weight_norm"][0] for entry in linears])
    assert 1e10 < update < 1e13, update
    he = report("init-he", 300, every=10)
    assert max(he["validation"]["accuracy"]) >= 0.9


def test_all_zero_init_is_caught_as_symmetry() -> None:
    rep = report("init-zeros", 40)
    found = codes(rep)["symmetry"]
    assert found["step"] <= 10
    assert {"layers.0.linear", "layers.1.linear"} <= set(found["layers"])
    assert mean_loss(rep, slice(-10, None)) > 0.68
    # "no weight gets any gradient and only the output bias can move"
    assert all(v == 0.0 for name in ("layers.0.linear", "layers.1.linear") for v in layer(rep, name)["grad_norm"])
    assert max(layer(rep, "head")["grad_norm"]) > 0.0


def first_step_at(rep: dict, accuracy: float) -> float:
    """The first validation step with at least ``accuracy``; inf if none."""
    validation = rep["validation"]
    return next((step for step, acc in zip(validation["step"], validation["accuracy"]) if acc >= accuracy), math.inf)


def test_learning_rates_too_small_right_too_large_and_clipped() -> None:
    large = report("lr-too-large", 300)  # every step, as the app measures a small model
    clipped = report("lr-clipped", 300, every=10)
    right = report("lr-right", 300, every=10)
    small = report("lr-too-small", 300, every=10)
    assert codes(large)["diverging_loss"]["step"] <= 5
    assert max(v for v in large["loss"][:10] if v is not None) > 1000 * large["loss"][0]  # within a few steps
    assert large["validation"]["accuracy"][-1] < 0.65
    assert "diverging_loss" not in codes(clipped)
    assert clipped["validation"]["accuracy"][-1] >= 0.95
    assert right["validation"]["accuracy"][-1] >= 0.95 and not codes(right)
    # "reaches 95 % validation accuracy sooner than learning rate 0.1 does" (steps 50 and 150)
    assert first_step_at(clipped, 0.95) < first_step_at(right, 0.95)
    assert mean_loss(small, slice(-20, None)) > 0.8 * mean_loss(small, slice(0, 20))


def test_regularization_keeps_the_validation_loss_down() -> None:
    plain = report("overfit-mlp", 1000, every=50)
    decay = report("overfit-weight-decay", 1000, every=50)
    dropout = report("overfit-dropout", 1000, every=50)
    val = {name: np.array(rep["validation"]["loss"]) for name, rep in
           (("plain", plain), ("decay", decay), ("dropout", dropout))}
    assert len(val["plain"]) == 100  # every 10 steps
    assert mean_loss(plain, slice(-20, None)) < 0.01  # memorised
    # "lowest within the first fifty steps and ends about ten times higher" (step 20, 12×)
    assert plain["validation"]["step"][np.argmin(val["plain"])] <= 50
    assert val["plain"][-1] > 8 * val["plain"].min()
    assert val["decay"][-1] < 1.5 * val["decay"].min() and val["decay"][-1] < 1.0
    # "with dropout it still climbs, but ends about five times lower than without" (2.6× its
    # minimum, 5.1× below the plain run's end)
    assert val["dropout"][-1] > 1.5 * val["dropout"].min()
    assert 3 < val["plain"][-1] / val["dropout"][-1] < 8
    # "Both trade a little training accuracy for better generalization."
    train_accuracy = {name: np.mean(rep["accuracy"][-50:]) for name, rep in
                      (("plain", plain), ("decay", decay), ("dropout", dropout))}
    assert train_accuracy["plain"] > 0.99
    assert 0.8 < train_accuracy["decay"] < 1.0 and 0.8 < train_accuracy["dropout"] < 1.0
    assert decay["validation"]["accuracy"][-1] > plain["validation"]["accuracy"][-1]


def test_batchnorm_lets_twenty_relu_layers_train() -> None:
    plain = report("deep-relu-plain", 600, every=25)
    normed = report("deep-relu-batchnorm", 600, every=25)
    assert mean_loss(plain, slice(-50, None)) > 0.68
    assert normed["validation"]["accuracy"][-1] >= 0.9


def stroke_contrast(run) -> np.ndarray:
    """Per filter of the first conv layer (the one the Features view shows): its mean response
    on the drawn strokes over its mean response well away from them, each measured from the
    map's median, over the first 200 validation drawings."""
    images = run.trainer.val_data[0][:200]
    with torch.no_grad(), run.trainer.probe.suspended():
        maps = run.trainer.model.features[0].conv(images)
    stroke = (images > 0.5).float()
    near = F.max_pool2d(stroke, 3, 1, 1)  # the strokes and one pixel around them
    far = 1.0 - F.max_pool2d(stroke, 7, 1, 3)  # more than three pixels away
    response = (maps - maps.flatten(2).median(dim=-1).values[..., None, None]).abs()
    on = (response * near).sum((2, 3)) / near.sum((2, 3))
    off = (response * far).sum((2, 3)) / far.sum((2, 3))
    return (on / off).median(dim=0).values.numpy()


def test_cnn_beats_the_mlp_on_shapes() -> None:
    run = build_run("shapes-cnn", device="cpu")
    try:
        untrained = stroke_contrast(run)
        cnn = json.loads(json.dumps(collect_report(run, 500, every=25)))
        trained = stroke_contrast(run)
    finally:
        run.trainer.close()
    mlp = report("shapes-mlp", 500, every=25)
    assert len(mlp["validation"]["step"]) == 5  # steps 100 ... 500
    cnn_acc, mlp_acc = np.array(cnn["validation"]["accuracy"]), np.array(mlp["validation"]["accuracy"])
    # "ahead from step 100 on and passes 90 % accuracy by step 200"
    assert (cnn_acc > mlp_acc).all()
    assert cnn_acc[1] >= 0.9 and cnn_acc[-1] >= 0.9
    # "the MLP levels off around 85 % and its validation loss creeps back up"
    assert 0.8 < mlp_acc[-1] < 0.9 and abs(mlp_acc[-1] - mlp_acc[-3]) < 0.03
    assert mlp["validation"]["loss"][-1] > 1.1 * min(mlp["validation"]["loss"])
    # The gap is in generalisation, not in fitting the training set: both training losses end
    # near zero.
    assert np.mean(mlp["loss"][-50:]) < 0.1 and np.mean(cnn["loss"][-50:]) < 0.1
    # "the first layer's feature maps outline the shape from the first step" and "light up along
    # the edges of the drawn shape": every filter responds several times more on the strokes.
    assert untrained.min() > 3 and trained.min() > 3, (untrained, trained)


def test_reverse_transformer_learns_an_anti_diagonal_attention() -> None:
    run = build_run("reverse-transformer", device="cpu")
    try:
        rep = collect_report(run, 500, every=25)
        assert rep["validation"]["accuracy"][-1] >= 0.9
        maps = run.trainer.inspect().get().tensors.attention  # (heads, T, T) of the last layer
    finally:
        run.trainer.close()
    mean_map = maps.mean(axis=0)
    size = mean_map.shape[0]
    anti_diagonal = mean_map[np.arange(size), size - 1 - np.arange(size)]
    assert anti_diagonal.mean() > 0.8
    np.testing.assert_allclose(maps.sum(axis=-1), 1.0, atol=1e-5)


def test_copy_transformer_solves_its_task_with_diffuse_attention() -> None:
    # "the copy model's maps stay diffuse": no position draws much more than a third of a row's
    # weight (0.34 at seed 0; 1/8 would be uniform), and there is no anti-diagonal.
    run = build_run("copy-transformer", device="cpu")
    try:
        rep = collect_report(run, 500, every=100)
        maps = run.trainer.inspect().get().tensors.attention
    finally:
        run.trainer.close()
    assert rep["validation"]["accuracy"][-1] >= 0.99
    size = maps.shape[-1]
    assert maps.max(axis=-1).mean() < 0.5
    assert maps[:, np.arange(size), size - 1 - np.arange(size)].mean() < 0.3


@pytest.mark.slow
def test_lstm_remembers_the_first_token_where_the_tanh_rnn_cannot() -> None:
    lstm = report("long-range-lstm", 1200, every=100)
    rnn = report("long-range-rnn", 1200, every=100)
    assert lstm["validation"]["accuracy"][-1] >= 0.9
    assert first_step_at(lstm, 0.9) <= 400  # "passes 90 % within about 400 steps"
    assert rnn["validation"]["accuracy"][-1] <= 0.65
    assert max(rnn["validation"]["accuracy"]) <= 0.7


def test_report_validation_matches_a_direct_evaluation() -> None:
    run = build_run("xor-mlp", device="cpu", val_every=5)
    try:
        rep = collect_report(run, 10)
        x, y = run.trainer.val_data
        run.trainer.model.eval()
        with torch.no_grad(), run.trainer.probe.suspended():
            out = run.trainer.model(x)
        expected = float(torch.nn.functional.cross_entropy(out, y))
    finally:
        run.trainer.close()
    assert rep["validation"]["step"] == [5, 10]
    assert rep["validation"]["loss"][-1] == pytest.approx(expected, rel=1e-6)
    assert len(rep["accuracy"]) == 10 and all(0.0 <= a <= 1.0 for a in rep["accuracy"])
