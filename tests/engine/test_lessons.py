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

from engine.lessons import LESSONS, lesson_for_scenario
from engine.report import collect_report, main
from engine.scenarios import SCENARIOS, build_run


def report(scenario: str, steps: int, every: int = 1, seed: int = 0) -> dict:
    run = build_run(scenario, device="cpu", seed=seed)
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
    sigmoid = report("deep-sigmoid", 30)
    relu = report("deep-relu-he", 300, every=10)
    first, last = layer(sigmoid, "layers.0.linear"), layer(sigmoid, "head")
    assert first["grad_norm"][0] < 1e-4 * last["grad_norm"][0]
    found = codes(sigmoid)["vanishing_gradients"]
    assert found["step"] <= 3 and "layers.0.linear" in found["layers"]
    ratio = layer(relu, "layers.0.linear")["grad_norm"][9] / layer(relu, "head")["grad_norm"][9]
    assert ratio > 1e-2
    assert "vanishing_gradients" not in codes(relu)
    assert relu["validation"]["accuracy"][-1] >= 0.95


def input_std(scenario: str) -> float:
    run = build_run(scenario, device="cpu")
    try:
        return float(run.trainer.batches.x.std())
    finally:
        run.trainer.close()


@pytest.mark.parametrize("scenario, low, high", [
    ("init-he-half", 0.0, 1e-3),
    ("init-he", 0.1, 10.0),
    ("init-he-double", 1e3, math.inf),
])
def test_fifty_relu_layers_keep_their_spread_only_at_he_scale(scenario: str, low: float, high: float) -> None:
    rep = report(scenario, 1)
    spread = layer(rep, "layers.49.act")["act_std"][0] / input_std(scenario)
    assert low < spread < high, spread


def test_he_double_overflows_and_he_trains() -> None:
    double = report("init-he-double", 5)
    assert any(v is None for v in double["loss"][1:])  # NaN (JSON null) after the first update
    assert {"exploding_gradients", "nan_inf"} <= set(codes(double))
    he = report("init-he", 300, every=10)
    assert max(he["validation"]["accuracy"]) >= 0.9


def test_all_zero_init_is_caught_as_symmetry() -> None:
    rep = report("init-zeros", 40)
    found = codes(rep)["symmetry"]
    assert found["step"] <= 10
    assert {"layers.0.linear", "layers.1.linear"} <= set(found["layers"])
    assert mean_loss(rep, slice(-10, None)) > 0.68


def test_learning_rates_too_small_right_too_large_and_clipped() -> None:
    large = report("lr-too-large", 300)  # every step, as the app measures a small model
    clipped = report("lr-clipped", 300, every=10)
    right = report("lr-right", 300, every=10)
    small = report("lr-too-small", 300, every=10)
    assert codes(large)["diverging_loss"]["step"] <= 5
    assert max(v for v in large["loss"] if v is not None) > 100 * large["loss"][0]
    assert large["validation"]["accuracy"][-1] < 0.65
    assert "diverging_loss" not in codes(clipped)
    assert clipped["validation"]["accuracy"][-1] >= 0.95
    assert right["validation"]["accuracy"][-1] >= 0.95 and not codes(right)
    assert mean_loss(small, slice(-20, None)) > 0.8 * mean_loss(small, slice(0, 20))


def test_regularization_keeps_the_validation_loss_down() -> None:
    plain = report("overfit-mlp", 1000, every=50)
    decay = report("overfit-weight-decay", 1000, every=50)
    dropout = report("overfit-dropout", 1000, every=50)
    val = {name: np.array(rep["validation"]["loss"]) for name, rep in
           (("plain", plain), ("decay", decay), ("dropout", dropout))}
    assert len(val["plain"]) == 100  # every 10 steps
    assert mean_loss(plain, slice(-20, None)) < 0.01  # memorised
    assert val["plain"][-1] > 3 * val["plain"].min()  # early stopping would have kept the minimum
    assert np.argmin(val["plain"]) < 30
    assert val["decay"][-1] < 1.5 * val["decay"].min() and val["decay"][-1] < 1.0
    assert val["dropout"][-1] < val["plain"][-1] / 2


def test_batchnorm_lets_twenty_relu_layers_train() -> None:
    plain = report("deep-relu-plain", 600, every=25)
    normed = report("deep-relu-batchnorm", 600, every=25)
    assert mean_loss(plain, slice(-50, None)) > 0.68
    assert normed["validation"]["accuracy"][-1] >= 0.9


def test_cnn_beats_the_mlp_on_shapes() -> None:
    cnn = report("shapes-cnn", 500, every=25)
    mlp = report("shapes-mlp", 500, every=25)
    assert cnn["validation"]["accuracy"][-1] >= 0.9
    assert cnn["validation"]["accuracy"][-1] > mlp["validation"]["accuracy"][-1]
    # The lesson's claims: the gap is in generalisation, not in fitting the training set (both
    # training losses end near zero, the MLP's no higher than the CNN's), and the CNN leads early.
    assert np.mean(mlp["loss"][-50:]) < 0.1 and np.mean(cnn["loss"][-50:]) < 0.1
    assert min(cnn["validation"]["accuracy"][:4]) > max(mlp["validation"]["accuracy"][:4])


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


@pytest.mark.slow
def test_lstm_remembers_the_first_token_where_the_tanh_rnn_cannot() -> None:
    lstm = report("long-range-lstm", 1200, every=100)
    rnn = report("long-range-rnn", 1200, every=100)
    assert lstm["validation"]["accuracy"][-1] >= 0.9
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
