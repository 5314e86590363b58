"""Diagnostics on real runs: each pathology is found early on its broken network, naming the right
layers, and healthy networks raise nothing over a whole run."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.batches import TensorBatches
from engine.diagnostics import CODES, Diagnosis, Diagnostics, Thresholds, diagnose_frames
from engine.report import main
from engine.scenarios import build_run
from engine.snapshot import STAT_INDEX, Hyper
from engine.trainer import Trainer, TrainerConfig

EARLY = 50  # broken networks must be diagnosed within this many steps


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models: one intra-op thread is faster than two on a 2-core machine (and than fighting
    # other test processes for them).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def diagnose(trainer: Trainer, steps: int) -> tuple[Diagnosis, ...]:
    """Train ``steps`` steps capturing every one, feeding each frame to the diagnostics."""
    diagnostics = None
    try:
        for _ in range(steps):
            frame = trainer.step(capture=True).capture.get().frame
            if diagnostics is None:
                diagnostics = Diagnostics(trainer.probe.layers)
            diagnostics.update(frame)
    finally:
        trainer.close()
    assert diagnostics is not None
    return diagnostics.findings


def run(scenario: str, steps: int, model: dict | None = None, hyper: dict | None = None) -> tuple[Diagnosis, ...]:
    return diagnose(build_run(scenario, device="cpu", model=model, hyper=hyper, val_every=0).trainer, steps)


def only(findings: tuple[Diagnosis, ...], code: str) -> Diagnosis:
    matches = [d for d in findings if d.code == code]
    assert matches, f"no {code} among {[d.code for d in findings]}"
    return matches[0]


def problems(findings: tuple[Diagnosis, ...]) -> list[str]:
    return [f"{d.code} {d.layers} @ {d.step}: {d.message}" for d in findings if d.severity != "info"]


# --- healthy networks: nothing to report over a whole run ----------------------------------

@pytest.mark.parametrize("scenario, steps", [
    ("circles-mlp", 400), ("moons-mlp", 400), ("spirals-mlp", 400),
    ("shapes-cnn", 150), ("reverse-transformer", 150),
])
def test_healthy_network_raises_nothing(scenario: str, steps: int) -> None:
    assert problems(run(scenario, steps)) == []


# --- broken networks -------------------------------------------------------------------------

def test_deep_sigmoid_mlp_has_vanishing_gradients() -> None:
    found = run("spirals-mlp", 20, model={"depth": 10, "activation": "sigmoid", "init": "default"})
    d = only(found, "vanishing_gradients")
    assert d.step <= EARLY and d.severity == "warning"
    assert d.layers[0] == "layers.0.linear" and "head" not in d.layers
    assert d.evidence["ratio"] < 1e-4


def test_deep_relu_stack_at_twice_he_explodes() -> None:
    found = run("spirals-mlp", 8, model={"depth": 50, "activation": "relu", "init": "he", "init_scale": 2.0})
    d = only(found, "exploding_gradients")
    assert d.step <= EARLY and d.severity == "error"
    assert "head" in d.layers and "layers.0.linear" not in d.layers
    assert d.evidence["growth"] > 1e6


def test_negative_bias_kills_relu_units() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[2].bias.fill_(-20.0)
    x = torch.randn(256, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    trainer = Trainer(model, nn.functional.cross_entropy, TensorBatches(x, y), hyper=Hyper(optimizer="adam", lr=0.01),
                      config=TrainerConfig(val_every=0))
    d = only(diagnose(trainer, 20), "dead_units")
    assert d.step <= EARLY and d.layers == ("3",) and d.severity == "error"


def test_blown_up_relu_net_has_dead_units() -> None:
    found = run("circles-mlp", 30, model={"init": "normal", "init_std": 1.0, "init_scale": 10.0},
                hyper={"optimizer": "sgd", "lr": 1.0})
    d = only(found, "dead_units")
    assert d.step <= EARLY and "layers.0.act" in d.layers


def test_sigmoid_with_large_weights_saturates() -> None:
    found = run("spirals-mlp", 20, model={"activation": "sigmoid", "init_scale": 30.0})
    d = only(found, "saturation")
    assert d.step <= EARLY and set(d.layers) >= {"layers.1.act", "layers.2.act"}
    assert all(name.endswith(".act") for name in d.layers)


@pytest.mark.parametrize("model, layer", [
    ({"init": "zeros"}, "layers.1.linear"),
    ({"init": "constant", "bias": False}, "layers.1.linear"),
])
def test_zero_or_constant_init_is_symmetric(model: dict, layer: str) -> None:
    d = only(run("circles-mlp", 15, model=model), "symmetry")
    assert d.step <= EARLY and d.severity == "error" and layer in d.layers
    assert "head" not in d.layers


@pytest.fixture(scope="module")
def huge_lr() -> tuple[Diagnosis, ...]:
    return run("circles-mlp", 20, hyper={"optimizer": "sgd", "lr": 1e3})


def test_huge_learning_rate_diverges(huge_lr: tuple[Diagnosis, ...]) -> None:
    d = only(huge_lr, "diverging_loss")
    assert d.step <= EARLY and d.severity == "error" and d.evidence["growth"] > 10


def test_huge_learning_rate_goes_non_finite_forward(huge_lr: tuple[Diagnosis, ...]) -> None:
    d = only(huge_lr, "nan_inf")
    assert d.step <= EARLY and d.layers == ("layers.1.linear",)
    assert d.evidence["forward"] == 1.0 and d.evidence["backward"] == 0.0
    assert "forward" in d.message


def test_learning_rate_too_large_and_too_small() -> None:
    high = only(run("xor-mlp", 20, hyper={"optimizer": "sgd", "lr": 100.0}), "learning_rate")
    assert high.step <= EARLY and high.evidence["median_update_ratio"] > 0.1 and "head" in high.layers
    low = only(run("circles-mlp", 20, hyper={"optimizer": "sgd", "lr": 1e-6}), "learning_rate")
    assert low.step <= EARLY and low.evidence["max_median_update_ratio"] < 1e-6
    assert "too small" in low.message


def test_backward_origin_is_named() -> None:
    class Root(nn.Module):  # sqrt'(0) is infinite: the forward is finite, the backward is not
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(x)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), Root(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    x = torch.randn(32, 2)
    y = (x[:, 0] > 0).long()
    trainer = Trainer(model, nn.functional.cross_entropy, TensorBatches(x, y), config=TrainerConfig(val_every=0))
    d = only(diagnose(trainer, 2), "nan_inf")
    assert d.step == 1 and d.evidence["backward"] == 1.0 and d.layers == ("0",)


def test_findings_carry_documented_fields() -> None:
    assert set(CODES) == {"vanishing_gradients", "exploding_gradients", "dead_units", "saturation", "nan_inf",
                          "diverging_loss", "learning_rate", "symmetry", "model_warning",
                          "probabilities_to_logit_loss", "input_scale", "overfitting", "no_gradient"}
    assert Thresholds().vanishing_ratio == 1e-4 and Thresholds().dead_fraction == 0.9


# --- glassbox report -------------------------------------------------------------------------

def test_report_json_lists_diagnoses(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    assert main(["--scenario", "xor-mlp", "--steps", "20", "--optimizer", "sgd", "--lr", "100",
                 "--device", "cpu", "--json", str(broken)]) == 0
    diagnoses = json.loads(broken.read_text())["diagnoses"]
    assert {"diverging_loss", "learning_rate"} <= {d["code"] for d in diagnoses}
    for d in diagnoses:
        assert {"code", "severity", "layers", "step", "message", "fixes", "evidence"} <= set(d)
        assert d["code"] in CODES and d["severity"] in ("info", "warning", "error")
        assert isinstance(d["layers"], list) and isinstance(d["step"], int) and 1 <= d["step"] <= 20
        assert d["message"] and d["fixes"] and all(isinstance(f, str) for f in d["fixes"])
    healthy = tmp_path / "healthy.json"
    assert main(["--scenario", "xor-mlp", "--steps", "60", "--device", "cpu", "--json", str(healthy)]) == 0
    assert json.loads(healthy.read_text())["diagnoses"] == []


def test_activations_too_big_for_float32_squares_still_count_as_exploding() -> None:
    """A spread past ~1.8e19 is measured as inf (float32), with no inf among the values: that is
    the worst growth of all, not a layer to skip."""
    import numpy as np

    from engine.snapshot import STAT_INDEX, STAT_NAMES, LayerInfo, StatsFrame

    names = ("a", "b", "c")
    layers = [LayerInfo(index=i, name=n, type_name="ReLU", role="activation", params=0, activation="relu")
              for i, n in enumerate(names)]
    values = np.full((3, len(STAT_NAMES)), np.nan)
    values[:, STAT_INDEX["act_std"]] = [1.0, 3.0, np.inf]
    values[:, STAT_INDEX["nan_acts"]] = values[:, STAT_INDEX["inf_acts"]] = 0
    frame = StatsFrame(step=1, loss=0.5, layer_names=names, values=values,
                       histograms=np.zeros((3, 4), np.float32), hist_edges=np.linspace(-1, 1, 5, dtype=np.float32))
    found = Diagnostics(layers).update(frame)
    d = only(tuple(found), "exploding_gradients")
    assert d.layers == ("c",) and d.severity == "error"


def test_a_dead_units_warning_becomes_an_error_when_the_layer_dies_entirely() -> None:
    import numpy as np

    from engine.snapshot import STAT_INDEX, STAT_NAMES, LayerInfo, StatsFrame

    layers = [LayerInfo(index=0, name="act", type_name="ReLU", role="activation", params=0, activation="relu")]
    diagnostics = Diagnostics(layers)

    def frame(step: int, dead: float) -> StatsFrame:
        values = np.full((1, len(STAT_NAMES)), np.nan)
        values[0, STAT_INDEX["dead_fraction"]] = dead
        values[0, STAT_INDEX["nan_acts"]] = values[0, STAT_INDEX["inf_acts"]] = 0
        return StatsFrame(step=step, loss=0.5, layer_names=("act",), values=values,
                          histograms=np.zeros((1, 4), np.float32), hist_edges=np.linspace(-1, 1, 5, dtype=np.float32))

    for step in range(1, 21):
        diagnostics.update(frame(step, 0.95))
    first = only(diagnostics.findings, "dead_units")
    assert first.severity == "warning" and first.step == 1
    for step in range(21, 41):
        diagnostics.update(frame(step, 1.0))
    worse = only(diagnostics.findings, "dead_units")
    assert worse.severity == "error" and worse.step == 1 and worse.last_step == 40
    assert "100 %" in worse.message


def test_a_loss_that_makes_the_nan_is_named_not_the_backward() -> None:
    # The log of a sigmoid that underflowed to 0: every layer's output is finite, the loss is
    # infinite, and its gradient through the sigmoid is inf * 0 = NaN.
    model = nn.Sequential(nn.Linear(2, 1), nn.Sigmoid())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-200.0)
    x = torch.randn(32, 2)
    y = torch.ones(32, 1)

    def log_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -(target * torch.log(output)).mean()

    output = model(x)
    assert torch.isfinite(output).all() and math.isinf(float(log_loss(output, y).detach()))
    log_loss(output, y).backward()
    assert torch.isnan(model[0].weight.grad).all()
    model.zero_grad()
    trainer = Trainer(model, log_loss, TensorBatches(x, y), config=TrainerConfig(val_every=0))
    d = only(diagnose(trainer, 2), "nan_inf")
    assert d.step == 1 and d.layers == ()
    assert d.message == ("Every layer's output is finite but the loss is infinite at step 1: the loss function "
                         "made it (or a computation in forward after the last measured layer), and the gradients "
                         "computed from it are not finite either.")
    assert d.evidence["loss_fn"] == 1.0 and d.evidence["backward"] == 0.0 and d.evidence["forward"] == 0.0
    assert d.evidence["nan_grads"] > 0


def test_a_run_that_already_clips_is_not_told_to_clip(huge_lr: tuple[Diagnosis, ...]) -> None:
    from engine.diagnostics import _CLIP

    diagnostics = Diagnostics(())
    for d in huge_lr:  # (the findings of a run without clipping, fed back as found)
        diagnostics._found[d.code] = d
    told = [d for d in diagnostics.findings if _CLIP in d.fixes]
    assert {"diverging_loss", "nan_inf"} <= {d.code for d in told}
    diagnostics.clip_norm = 0.05
    for d in diagnostics.findings:
        assert _CLIP not in d.fixes
        if d.code in {t.code for t in told}:
            assert any(fix.startswith("Clipping is already on (clip_norm 0.05)") for fix in d.fixes)
            assert len(d.fixes) == len(next(t for t in told if t.code == d.code).fixes)
    diagnostics.clip_norm = None  # turned off again: the advice comes back
    assert {d.code for d in diagnostics.findings if _CLIP in d.fixes} == {t.code for t in told}


def xor_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))


def captured_frames(model: nn.Module, steps: int) -> tuple[list, tuple]:
    """Every step of ``model`` on XOR-like data captured: its frames, and its layers as the worker
    hands them over (after the first step)."""
    x = torch.randn(64, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    trainer = Trainer(model, nn.functional.cross_entropy, TensorBatches(x, y), config=TrainerConfig(val_every=0))
    try:
        frames = [trainer.step(capture=True).capture.get().frame for _ in range(steps)]
    finally:
        trainer.close()
    return frames, trainer.probe.layers


def with_a_stall(frames: list, layers: tuple, stalled: str) -> Diagnostics:
    """The diagnostics of ``frames`` with layer ``stalled`` updated by ~1e-9 of its size at every
    step while the head moves by 1e-3."""
    from engine.snapshot import STAT_INDEX

    diagnostics = Diagnostics(layers)
    for step, real in enumerate(frames, start=1):
        values = real.values.copy()
        values[real.layer_names.index(stalled), STAT_INDEX["update_ratio"]] = 1e-9
        values[real.layer_names.index("4"), STAT_INDEX["update_ratio"]] = 1e-3
        diagnostics.update(dataclasses.replace(real, step=step, values=values))
    return diagnostics


@pytest.mark.parametrize("frozen", ["0", "2"])
def test_a_frozen_layer_is_no_vanishing_gradient_finding_nor_hides_one(frozen: str) -> None:
    """A layer the user froze (requires_grad False on all it owns) gets no gradient and no update by
    choice. Health names it in no finding, and its zero update neither joins nor masks the stall
    of a trainable layer."""
    import numpy as np

    from engine.snapshot import STAT_INDEX

    model = xor_mlp()
    model.get_submodule(frozen).requires_grad_(False)
    frames, layers = captured_frames(model, 30)
    modules = dict(model.named_modules())
    assert {info.name: info.trainable for info in layers if info.params > 0} == {
        name: any(p.requires_grad for p in modules[name].parameters(recurse=False)) for name in ("0", "2", "4")}
    row = frames[-1].layer_names.index(frozen)
    assert np.isnan(frames[-1].values[row, STAT_INDEX["grad_norm"]])  # what the probe measures of it
    assert frames[-1].values[row, STAT_INDEX["update_ratio"]] == 0.0
    diagnostics = Diagnostics(layers)
    for frame in frames:  # the real run: healthy, nothing names the frozen layer
        diagnostics.update(frame)
    assert not [d for d in diagnostics.findings if frozen in d.layers]
    # The first trainable layer now stalls (its updates ~1e-9 of its size) while the head moves.
    stalled = next(name for name in ("0", "2") if name != frozen)
    d = only(with_a_stall(frames, layers, stalled).findings, "vanishing_gradients")
    assert d.layers == (stalled,)


def test_a_partly_frozen_layer_is_named_as_such_and_left_out_of_the_gradient_checks() -> None:
    """A Linear whose weight is frozen while its bias trains (bias-only fine-tuning): its gradient
    norm and update ratio are the bias's alone, so Health doesn't read them as the layer's; the
    layer info names what is frozen."""
    from engine.snapshot import STAT_INDEX

    model = xor_mlp()
    model[0].weight.requires_grad_(False)
    frames, layers = captured_frames(model, 12)
    bias_grad = float(model[0].bias.grad.norm())  # (the last step's, as backward left it)
    assert {info.name: (info.trainable, info.frozen_params) for info in layers if info.params > 0} == {
        "0": (True, ("weight",)), "2": (True, ()), "4": (True, ())}
    row = frames[-1].layer_names.index("0")
    assert frames[-1].values[row, STAT_INDEX["grad_norm"]] == pytest.approx(bias_grad, rel=1e-5)  # the bias's alone
    # Its updates are ~1e-9 of its size (the bias barely moves beside the frozen weight): no stall of
    # the layer is claimed, while a trainable layer's stall still is.
    for stalled, named in (("0", ()), ("2", ("2",))):
        diagnostics = with_a_stall(frames, layers, stalled)
        found = [d for d in diagnostics.findings if d.code == "vanishing_gradients"]
        assert tuple(name for d in found for name in d.layers) == named, (stalled, found)
        if not named:
            assert not [d for d in diagnostics.findings if stalled in d.layers]


def test_a_frozen_layer_of_equal_weights_is_no_symmetry_finding_but_a_trainable_one_is() -> None:
    """Equal weights that training can't tell apart are an error; ones the user froze (an averaging
    layer, say) are a choice."""
    findings = {}
    for frozen in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 2))
        for layer in (model[2], model[4]):  # (zero weights on both sides: equal, zero gradients)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        model[2].requires_grad_(not frozen)
        x = torch.randn(64, 2)
        trainer = Trainer(model, nn.functional.cross_entropy, TensorBatches(x, (x[:, 0] > 0).long()),
                          config=TrainerConfig(val_every=0))
        try:
            frames = [trainer.step(capture=True).capture.get().frame for _ in range(8)]
        finally:
            trainer.close()
        diagnostics = Diagnostics(trainer.probe.layers)
        for frame in frames:
            diagnostics.update(frame)
        findings[frozen] = [d for d in diagnostics.findings if d.code == "symmetry" and "2" in d.layers]
    assert findings[True] == []
    assert len(findings[False]) == 1


# --- overfitting: validation passes ------------------------------------------------------------

def validated(scenario: str, steps: int, every: int = 10) -> dict:
    """A built-in scenario's report (its validation passes fed to the diagnostics, as
    ``glassbox report`` does), measuring every ``every`` steps."""
    from engine.report import collect_report

    built = build_run(scenario, device="cpu")
    try:
        return collect_report(built, steps, every)
    finally:
        built.trainer.close()


def test_overfitting_is_found_once_the_validation_loss_climbs_while_the_training_loss_falls() -> None:
    import numpy as np

    report = validated("overfit-mlp", 140)
    lowest = report["validation"]["step"][int(np.argmin(report["validation"]["loss"]))]
    (found,) = [d for d in report["diagnoses"] if d["code"] == "overfitting"]
    assert found["severity"] == "warning" and found["layers"] == []
    assert lowest < found["step"] < found["last_step"] <= 140  # after the lowest point, confirmed since
    evidence = found["evidence"]
    assert evidence["best_step"] == lowest and evidence["best_val_loss"] == min(report["validation"]["loss"])
    assert evidence["val_loss"] > 1.5 * evidence["best_val_loss"]
    assert evidence["train_loss"] < 0.5 * evidence["train_loss_at_best"]
    assert f"lowest ({evidence['best_val_loss']:.3g} at step {lowest})" in found["message"]
    assert any("weight decay" in fix for fix in found["fixes"])
    healthy = validated("spirals-mlp", 500)
    assert [d["code"] for d in healthy["diagnoses"]] == [] and len(healthy["validation"]["step"]) == 10


def test_validation_needs_several_passes_and_takes_each_once_and_saved_runs_see_it_too() -> None:
    import numpy as np

    from engine.diagnostics import diagnose_frames
    from engine.snapshot import STAT_NAMES, StatsFrame

    def frame(step: int, loss: float) -> StatsFrame:
        return StatsFrame(step=step, loss=loss, layer_names=("fc",), values=np.full((1, len(STAT_NAMES)), np.nan),
                          histograms=np.zeros((1, 4), np.float32), hist_edges=np.linspace(-1, 1, 5, dtype=np.float32))

    # The validation loss is lowest at step 20, then climbs; the training loss falls all along.
    passes = list(zip(range(10, 101, 10), (0.8, 0.5, 0.55, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)))
    frames = [frame(step, 1.0 / step) for step in range(1, 101)]
    found = diagnose_frames((), frames, validation=passes)
    (d,) = [d for d in found if d.code == "overfitting"]
    # (steps 30 and 40 read less than 1.5 times the lowest; from 50 on, 5 passes in a row confirm it at 90)
    assert (d.step, d.last_step, d.evidence["best_step"]) == (50, 100, 20)
    assert d.evidence["train_loss"] == pytest.approx(np.mean([1.0 / s for s in range(81, 91)]))
    assert diagnose_frames((), frames, validation=passes[:8]) == ()  # (four passes only)
    assert diagnose_frames((), frames) == ()  # no validation, no finding
    diagnostics = Diagnostics(())
    for step, loss in passes[:7]:
        diagnostics.update_validation(step, loss, train_loss=1.0 / step)
        diagnostics.update_validation(step, loss, train_loss=1.0 / step)  # (the same pass again: ignored)
    assert diagnostics.findings == ()
    diagnostics.update_validation(80, 2.2, train_loss=1.0)  # the training loss stopped falling: no streak
    diagnostics.update_validation(90, 2.4, train_loss=0.01)
    assert diagnostics.findings == ()


class ForgottenAuxHead(nn.Module):
    """An auxiliary head that runs but whose output the loss leaves out (the aux loss forgotten)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(2, 8), nn.Tanh())
        self.cls = nn.Linear(8, 2)
        self.aux = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        self.aux_out = self.aux(h)  # (kept, never used in the loss)
        return self.cls(h)


def test_a_head_left_out_of_the_loss_gets_a_no_gradient_finding() -> None:
    """Autograd leaves aux's gradients None; after 10 frames Health names it (and only it). A
    frozen layer, which gets none by choice, and a healthy model get no such finding."""
    model = ForgottenAuxHead()
    frames, layers = captured_frames(model, 12)
    assert model.aux.weight.grad is None and model.cls.weight.grad is not None  # (autograd's own word)
    diagnostics = Diagnostics(layers)
    for frame in frames[:9]:
        diagnostics.update(frame)
    assert "no_gradient" not in [d.code for d in diagnostics.findings]  # (not before 10 frames)
    for frame in frames[9:]:
        diagnostics.update(frame)
    found = [d for d in diagnostics.findings if d.code == "no_gradient"]
    assert len(found) == 1 and found[0].layers == ("aux",) and found[0].severity == "warning"
    assert found[0].step == frames[0].step and "aux gets no gradient" in found[0].message
    frozen = ForgottenAuxHead()
    frozen.aux.requires_grad_(False)
    for healthy in (frozen, xor_mlp()):
        frames, layers = captured_frames(healthy, 12)
        assert "no_gradient" not in [d.code for d in diagnose_frames(layers, frames)]


def test_heads_the_loss_uses_in_turn_get_no_no_gradient_finding() -> None:
    """Each head gets a gradient every other step: neither runs 10 frames without one, so neither is
    named (a streak kept for the model as a whole named whichever lacked one at the 10th frame)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 4))
    heads = nn.ModuleDict({"a": nn.Linear(4, 2), "b": nn.Linear(4, 2)})
    whole = nn.ModuleDict({"body": model, "heads": heads})
    turn = {"step": 0}

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.parts = whole

        def forward(self, x: torch.Tensor) -> tuple:
            h = self.parts["body"](x)
            return self.parts["heads"]["a"](h), self.parts["heads"]["b"](h)

    def in_turn(out: tuple, y: torch.Tensor) -> torch.Tensor:
        turn["step"] += 1
        return nn.functional.cross_entropy(out[turn["step"] % 2], y)

    x = torch.randn(64, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    trainer = Trainer(TwoHeads(), in_turn, TensorBatches(x, y), config=TrainerConfig(val_every=0))
    try:
        frames = [trainer.step(capture=True).capture.get().frame for _ in range(24)]
    finally:
        trainer.close()
    assert np.isnan(frames[-1].values[frames[-1].layer_names.index("parts.heads.a"), STAT_INDEX["grad_norm"]]) \
        != np.isnan(frames[-2].values[frames[-2].layer_names.index("parts.heads.a"), STAT_INDEX["grad_norm"]])
    assert "no_gradient" not in [d.code for d in diagnose_frames(trainer.probe.layers, frames)]
