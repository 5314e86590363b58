"""Every figure of the probe against a direct computation on the same model and batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import engine.device_stats as device_stats
import engine.probe as probe_module
from engine.probe import Probe, ProbeConfig, first_tensor
from engine.snapshot import STAT_INDEX
from engine.stats import HIST_SAMPLE

RTOL = 1e-5
ATOL = 1e-7


class TwoCallNet(nn.Module):
    """Calls the same Linear and the same ReLU twice in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.shared = nn.Linear(6, 6)
        self.act = nn.ReLU()
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.shared(self.inp(x)))
        h = self.act(self.shared(h))
        return self.out(h)


class TinyTransformer(nn.Module):
    def __init__(self, need_weights: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 16)
        self.norm1 = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.norm2 = nn.LayerNorm(16)
        self.ff = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 7)
        self.need_weights = need_weights

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=self.need_weights)[0]
        x = x + self.ff(self.norm2(x))
        return self.head(x)


class SeqModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 8)
        self.rnn = nn.LSTM(8, 12, batch_first=True)
        self.act = nn.Tanh()
        self.head = nn.Linear(12, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))
        return self.head(self.act(out[:, -1]))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 8),
                         nn.Tanh(), nn.Linear(8, 3))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3))


def cnn_large_outputs() -> nn.Module:
    """Outputs above the probe's batching size (reduced at once on the CPU), a saturating one too."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 4, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 14 * 14, 3))


class Conv1dNet(nn.Module):
    """A ReLU after a conv1d (whose units are channels) with one dead channel; a Hardtanh with
    bounds of its own; a leaky ReLU (whose units can't die)."""

    channels_first = {"act"}  # the reference's unit axis for these layers' 3-D outputs

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.norm = nn.BatchNorm1d(4)
        self.clamp = nn.Hardtanh(-1.5, 2.0)
        self.leaky = nn.LeakyReLU(0.2)
        self.head = nn.Linear(4 * 6, 3)
        with torch.no_grad():
            self.conv.bias[0] = -100.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.leaky(self.clamp(self.norm(self.act(self.conv(x)))))
        return self.head(h.flatten(1))


CASES = {
    "mlp": (mlp, lambda: torch.randn(16, 5), lambda: torch.randint(0, 3, (16,))),
    "cnn_batchnorm": (cnn, lambda: torch.randn(8, 1, 8, 8), lambda: torch.randint(0, 3, (8,))),
    "transformer": (TinyTransformer, lambda: torch.randint(0, 7, (6, 5)), lambda: torch.randint(0, 7, (6, 5))),
    "lstm": (SeqModel, lambda: torch.randint(0, 5, (10, 7)), lambda: torch.randint(0, 2, (10,))),
    "two_calls": (TwoCallNet, lambda: torch.randn(12, 4), lambda: torch.randint(0, 3, (12,))),
    "conv1d": (Conv1dNet, lambda: torch.randn(10, 3, 6) * 2, lambda: torch.randint(0, 3, (10,))),
    "cnn_large_outputs": (cnn_large_outputs, lambda: torch.randn(12, 1, 28, 28) * 2 + 1,
                          lambda: torch.randint(0, 3, (12,))),
}


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


# The probe's ways of reducing: numpy on the host (CPUs), PyTorch on the device (GPUs); the
# latter also as big models take it: outputs and parameters summed segment by segment
# (segment_reduce), every output reduced in its hook (past the batch's budget), and the
# parameters a layer at a time, each segment in pieces (huge models), and in groups of layers
# whose figures the host makes from rows of their values (big models).
PATHS = {"numpy": ProbeConfig(), "torch": ProbeConfig(host_statistics=False),
         "torch_segments": ProbeConfig(host_statistics=False), "torch_unbatched": ProbeConfig(host_statistics=False),
         "torch_grouped": ProbeConfig(host_statistics=False), "torch_rows": ProbeConfig(host_statistics=False)}


@pytest.fixture(autouse=True)
def _big_model_limits(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    callspec = getattr(request.node, "callspec", None)
    path = callspec.params.get("path") if callspec is not None else None
    if path == "torch_segments":
        monkeypatch.setattr(device_stats, "ATOMIC_SUMS_MAX", 0)
        monkeypatch.setattr(device_stats, "UNIT_MAXIMA_FROM", 0)
    elif path == "torch_unbatched":
        monkeypatch.setattr(device_stats, "ATOMIC_SUMS_MAX", 0)
        monkeypatch.setattr(probe_module, "DEVICE_BATCH_BUDGET", 0)
    elif path == "torch_grouped":
        monkeypatch.setattr(device_stats, "ATOMIC_SUMS_MAX", 0)
        monkeypatch.setattr(device_stats, "SEGMENT_PIECE", 64)
        monkeypatch.setattr(probe_module, "DEVICE_PARAM_GROUP", 1)
    elif path == "torch_rows":
        monkeypatch.setattr(device_stats, "ATOMIC_SUMS_MAX", 0)
        monkeypatch.setattr(device_stats, "ROWS_FROM", 0)
        monkeypatch.setattr(device_stats, "SEGMENT_ROW", 8)
        monkeypatch.setattr(probe_module, "DEVICE_PARAM_GROUP", 256)


def run_reference_and_probe(name: str, path: str = "numpy"):
    """Run one SGD step with the probe attached, while recording the truth independently."""
    make_model, make_x, make_y = CASES[name]
    torch.manual_seed(0)
    model = make_model()
    x, y = make_x(), make_y()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0)
    outputs: dict[str, list[torch.Tensor]] = {}

    def recorder(layer_name: str):
        def hook(_m, _a, out):
            t = first_tensor(out)
            if t.requires_grad:
                t.retain_grad()
            outputs.setdefault(layer_name, []).append(t)
        return hook

    probe = Probe(model, PATHS[path])
    own = [m.register_forward_hook(recorder(n)) for n, m in model.named_modules()
           if n in {layer.name for layer in probe.layers}]
    try:
        with probe:
            probe.begin_step(True, tensors=False)
            out = model(x)
            loss = loss_fn(out, y)
            optimizer.zero_grad()
            loss.backward()
            probe.after_backward()
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
            probe.before_update()
            optimizer.step()
            probe.after_update()
            capture = probe.finish(1, torch.stack([loss.detach(), torch.tensor(float("nan"))])).get()
    finally:
        for handle in own:
            handle.remove()
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    return model, probe, capture, outputs, before, grads, after, float(loss.detach())


def direct_params(model: nn.Module, layer: str, tensors: dict[str, torch.Tensor]) -> np.ndarray:
    module = dict(model.named_modules())[layer]
    own = [f"{layer}.{n}" if layer else n for n, _ in module.named_parameters(recurse=False)]
    return np.concatenate([tensors[n].double().reshape(-1).numpy() for n in own])


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(CASES))
def test_every_statistic_matches_direct_computation(name: str, path: str) -> None:
    model, probe, capture, outputs, before, grads, after, loss = run_reference_and_probe(name, path)
    frame = capture.frame
    assert capture.scalars[0, 0] == pytest.approx(loss, rel=RTOL) and capture.frame.loss == capture.scalars[0, 0]
    checked = 0
    for info in probe.layers:
        row = frame.values[frame.layer_names.index(info.name)]
        if info.params:
            w = direct_params(model, info.name, before)
            g = direct_params(model, info.name, grads)
            d = direct_params(model, info.name, after) - w
            for prefix, arr in (("weight", w), ("grad", g)):
                np.testing.assert_allclose(row[STAT_INDEX[f"{prefix}_norm"]], np.linalg.norm(arr), RTOL, ATOL)
                np.testing.assert_allclose(row[STAT_INDEX[f"{prefix}_mean"]], arr.mean(), RTOL, 1e-6)
                np.testing.assert_allclose(row[STAT_INDEX[f"{prefix}_std"]], arr.std(), RTOL, ATOL)
            np.testing.assert_allclose(row[STAT_INDEX["update_ratio"]], np.linalg.norm(d) / np.linalg.norm(w),
                                       1e-4, ATOL)  # a difference of nearby floats: float32 rounding
            assert row[STAT_INDEX["nan_grads"]] == 0 and row[STAT_INDEX["inf_weights"]] == 0
            checked += 1
        else:
            assert np.isnan(row[STAT_INDEX["grad_norm"]])
        calls = outputs.get(info.name)
        if not info.called:
            assert calls is None and np.isnan(row[STAT_INDEX["act_mean"]])
            continue
        acts = np.concatenate([c.detach().double().reshape(-1).numpy() for c in calls])
        np.testing.assert_allclose(row[STAT_INDEX["act_mean"]], acts.mean(), RTOL, 1e-6)
        np.testing.assert_allclose(row[STAT_INDEX["act_std"]], acts.std(), RTOL, 1e-6)
        np.testing.assert_allclose(row[STAT_INDEX["act_min"]], acts.min(), RTOL, ATOL)
        np.testing.assert_allclose(row[STAT_INDEX["act_max"]], acts.max(), RTOL, ATOL)
        if all(c.grad is not None for c in calls):
            gout = np.sqrt(sum(float((c.grad.double() ** 2).sum()) for c in calls))
            np.testing.assert_allclose(row[STAT_INDEX["grad_output_norm"]], gout, RTOL, ATOL)
        lo, hi = (frame.hist_ranges[frame.layer_names.index(info.name)])
        bins = frame.histograms.shape[1]
        sample = acts[::-(-acts.size // HIST_SAMPLE)]  # big outputs: an evenly strided sample
        expected_hist = np.histogram(np.clip(sample, lo, hi), bins=bins, range=(lo, hi))[0] / sample.size
        np.testing.assert_allclose(frame.histograms[frame.layer_names.index(info.name)], expected_hist, atol=1e-6)
        module = dict(model.named_modules())[info.name]
        if isinstance(module, nn.ReLU):
            dead = []
            units = 0
            channels_first = info.name in getattr(model, "channels_first", ())
            for c in calls:
                a = c.detach().numpy()
                per_unit = a.reshape(a.shape[0], a.shape[1], -1).transpose(1, 0, 2).reshape(a.shape[1], -1) \
                    if a.ndim == 4 or (a.ndim == 3 and channels_first) else a.reshape(-1, a.shape[-1]).T
                dead.append((per_unit <= 0).all(axis=1).sum())
                units += per_unit.shape[0]
            np.testing.assert_allclose(row[STAT_INDEX["dead_fraction"]], sum(dead) / units, RTOL)
        elif isinstance(module, nn.LeakyReLU):  # its units still pass a gradient: never "dead"
            assert np.isnan(row[STAT_INDEX["dead_fraction"]])
        if isinstance(module, (nn.Sigmoid, nn.Tanh, nn.Hardtanh)):
            lo_b, hi_b = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0)}.get(type(module), None) \
                or (module.min_val, module.max_val)
            assert tuple(frame.hist_ranges[frame.layer_names.index(info.name)]) == (lo_b, hi_b)
            sat = ((acts < lo_b + 0.01) | (acts > hi_b - 0.01)).mean()
            np.testing.assert_allclose(row[STAT_INDEX["saturated_fraction"]], sat, RTOL, ATOL)
        else:
            assert np.isnan(row[STAT_INDEX["saturated_fraction"]])
    assert checked >= 2


def test_layers_in_forward_order_and_uncalled_parameter_owner_measured() -> None:
    model, probe, capture, *_ = run_reference_and_probe("transformer")
    names = [layer.name for layer in probe.layers]
    assert names == ["embed", "norm1", "attn", "attn.out_proj", "norm2", "ff.0", "ff.1", "ff.2", "head"]
    out_proj = probe.layers[names.index("attn.out_proj")]
    assert not out_proj.called and out_proj.params == 16 * 16 + 16
    row = capture.frame.values[names.index("attn.out_proj")]
    assert row[STAT_INDEX["grad_norm"]] > 0 and np.isfinite(row[STAT_INDEX["weight_norm"]])
    assert probe.layers[names.index("attn")].role == "attention"


@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_equals_multihead_attention_weights(need_weights: bool) -> None:
    torch.manual_seed(1)
    model = TinyTransformer(need_weights=need_weights)
    tokens = torch.randint(0, 7, (5, 6))
    probe = Probe(model)
    probe.focus_layer = "attn"
    probe.focus_example = 3
    seen = {}
    handle = model.norm1.register_forward_hook(lambda _m, _a, out: seen.__setitem__("h", out))
    with probe:
        probe.begin_step(True, tensors=True)
        out = model(tokens)
        out.sum().backward()
        probe.after_backward()
        capture = probe.finish(1, torch.zeros(1, 2)).get()
    handle.remove()
    h = seen["h"].detach()
    _, expected = model.attn(h, h, h, need_weights=True, average_attn_weights=False)
    np.testing.assert_allclose(capture.tensors.attention, expected[3].detach().numpy(), rtol=1e-5, atol=1e-6)
    assert capture.tensors.attention.shape == (4, 6, 6)


@pytest.mark.parametrize("path", ["numpy", "torch"])
def test_attention_maps_are_labelled_with_the_examples_input_tokens(path: str) -> None:
    """A model fed token ids: the maps' axes are the focus example's tokens."""
    torch.manual_seed(1)
    model = TinyTransformer()
    tokens = torch.randint(0, 7, (5, 6))
    probe = Probe(model, PATHS[path])
    probe.focus_layer, probe.focus_example = "attn", 3
    with probe:
        probe.begin_step(True, tensors=True, targets=torch.zeros(5))
        model(tokens).sum().backward()
        probe.after_backward()
        views = probe.finish(1, torch.zeros(1, 2)).get().tensors
    assert views.tokens == tuple(str(int(t)) for t in tokens[3])
    assert len(views.tokens) == views.attention.shape[-1] == 6


@pytest.mark.parametrize("path", ["numpy", "torch"])
def test_attention_with_per_example_masks_when_the_focus_example_is_past_the_batch(path: str) -> None:
    """A 3-D attn_mask holds one mask per example and head; the focus example is clamped to the
    batch (the last one shown) for the mask as for the inputs."""
    torch.manual_seed(4)
    attn = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(3, 5, 8, requires_grad=True)
    mask = torch.rand(3 * 2, 5, 5) > 0.6
    mask[:, :, 0] = False  # every query sees at least one key
    probe = Probe(attn, PATHS[path])
    probe.focus_layer = ""
    probe.focus_example = 9
    with probe:
        probe.begin_step(True, tensors=True)
        attn(x, x, x, attn_mask=mask, need_weights=False)[0].sum().backward()
        probe.after_backward()
        capture = probe.finish(1, torch.zeros(1, 2)).get()
    _, expected = attn(x, x, x, attn_mask=mask, need_weights=True, average_attn_weights=False)
    np.testing.assert_allclose(capture.tensors.attention, expected[2].detach().numpy(), rtol=1e-5, atol=1e-6)
    assert capture.tensors.tokens is None  # (float inputs: no token labels)


def test_focus_tensors_for_conv_layer() -> None:
    torch.manual_seed(2)
    model = cnn()
    x = torch.randn(4, 1, 8, 8)
    probe = Probe(model)
    probe.focus_layer = "0"
    probe.focus_example = 2
    with probe:
        probe.begin_step(True, tensors=True)
        out = model(x)
        out.sum().backward()
        probe.after_backward()
        capture = probe.finish(1, torch.zeros(1, 2)).get()
    views = capture.tensors
    np.testing.assert_allclose(views.feature_maps, model[0](x)[2].detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(views.kernels, model[0].weight.detach().reshape(-1, 3, 3).numpy(), rtol=1e-6)
    np.testing.assert_allclose(views.weight, model[0].weight.detach().reshape(4, -1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(views.weight_grad, model[0].weight.grad.reshape(4, -1).numpy(), rtol=1e-6)


def test_large_tensors_are_shrunk_before_copy() -> None:
    model = nn.Sequential(nn.Linear(1500, 700))
    probe = Probe(model)
    probe.focus_layer = "0"
    with probe:
        probe.begin_step(True, tensors=True)
        model(torch.randn(2, 1500)).sum().backward()
        probe.after_backward()
        capture = probe.finish(1, torch.zeros(1, 2)).get()
    assert capture.tensors.weight.shape == (512, 512)
    np.testing.assert_allclose(capture.tensors.weight.mean(), model[0].weight.detach().mean().item(), atol=1e-5)


def test_hooks_exist_only_during_a_captured_step_and_are_removed_idempotently_and_on_error() -> None:
    model = mlp()
    probe = Probe(model)

    def hooks() -> int:
        return sum(len(m._forward_hooks) for m in model.modules())

    with pytest.raises(RuntimeError):
        with probe:
            probe.begin_step(True)
            assert hooks() == len(probe.layers)
            raise RuntimeError("interrupted")
    assert hooks() == 0
    probe.attach()
    probe.attach()
    probe.begin_step(False)  # an uncaptured step runs the bare model
    assert hooks() == 0 and probe.attached
    probe.begin_step(True)
    assert hooks() == len(probe.layers) and probe.armed
    model(torch.randn(3, 5)).sum().backward()
    probe.after_backward()
    assert probe.finish(1, torch.zeros(1, 2)) is not None
    assert hooks() == 0 and not probe.armed
    probe.begin_step(True)
    probe.abandon_step()
    assert hooks() == 0 and not probe.capturing
    probe.begin_step(True)
    probe.detach()
    probe.detach()
    assert hooks() == 0 and not probe.attached
    probe.begin_step(True)  # a detached probe captures nothing
    assert hooks() == 0 and probe.finish(1, torch.zeros(1, 2)) is None


@pytest.mark.parametrize("path", list(PATHS))
def test_nan_and_inf_counted(path: str) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
        model[0].bias[1] = float("inf")
    probe = Probe(model, PATHS[path])
    with probe:
        probe.begin_step(True)
        out = model(torch.ones(5, 3))
        out.sum().backward()
        probe.after_backward()
        capture = probe.finish(1, torch.zeros(1, 2)).get()
    row = capture.frame.values[0]
    assert row[STAT_INDEX["nan_weights"]] == 1 and row[STAT_INDEX["inf_weights"]] == 1
    assert row[STAT_INDEX["nan_acts"]] == 5 and row[STAT_INDEX["inf_acts"]] == 5


def test_a_diverged_big_model_counts_every_row_from_its_next_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parameters by rows count NaN and Inf only in the few rows whose variance isn't finite.
    Weights NaN in many rows: the first capture counts at least one in each layer (never more
    than there are), the next ones every one."""
    monkeypatch.setattr(device_stats, "ATOMIC_SUMS_MAX", 0)
    monkeypatch.setattr(device_stats, "ROWS_FROM", 0)
    monkeypatch.setattr(device_stats, "SEGMENT_ROW", 4)
    monkeypatch.setattr(probe_module, "DEVICE_PARAM_GROUP", 256)  # (a layer a group, as a big model's)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16))
    probe = Probe(model, ProbeConfig(host_statistics=False))
    counted = []
    with probe:
        for step in range(4):
            if step == 1:  # (after the first capture, which fixes the layers' order)
                with torch.no_grad():
                    model[0].weight[:, ::3] = float("nan")  # every row of the first layer's weights...
                    model[2].weight[::2, 5] = float("inf")  # ...and half of the second's
            probe.begin_step(True)
            model(torch.ones(2, 16)).sum().backward()
            probe.after_backward()
            frame = probe.finish(1, torch.zeros(1, 2)).get().frame
            counted.append([frame.values[frame.layer_names.index(name)][[STAT_INDEX["nan_weights"],
                                                                          STAT_INDEX["inf_weights"]]]
                            for name in ("0", "2")])
            model.zero_grad()
    clean, first, *later = np.array(counted)
    exact = np.array([[16 * 6, 0], [0, 8]])
    assert (clean == 0).all()
    assert (first <= exact).all() and (first.sum(1) > 0).all() and (first < exact).any()
    for counts in later:
        np.testing.assert_array_equal(counts, exact)


class _CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.relu(self.lin(x)))


@pytest.mark.parametrize("calls", [1, 2])
def test_big_outputs_are_counted_for_nan_and_inf_once_they_are_not_finite(calls: int,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An output reduced in its hook (a big one) is counted for NaN and Inf at its first capture
    and again once a capture finds it not finite; in between its min and max say 0 (also for a
    layer called twice, whose calls' counts add up)."""
    monkeypatch.setattr(probe_module, "DEVICE_BATCH_BUDGET", 0)  # (every output reduced in its hook)
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU()) if calls == 1 else _CalledTwice()
    name = "0" if calls == 1 else "lin"
    linear = model[0] if calls == 1 else model.lin
    probe = Probe(model, ProbeConfig(host_statistics=False))
    x = torch.ones(5, 3)
    poisoned = x.clone()
    poisoned[1] = float("nan")  # NaN in the Linear's output...
    poisoned[3, 0] = float("inf")  # ...and infinite values (of the weights' signs)
    counted = []
    with probe:
        for batch in (x, x, poisoned, poisoned, x):
            probe.begin_step(True)
            model(batch).sum().backward()
            probe.after_backward()
            frame = probe.finish(1, torch.zeros(1, 2)).get().frame
            counted.append(frame.values[frame.layer_names.index(name)][[STAT_INDEX["nan_acts"],
                                                                        STAT_INDEX["inf_acts"]]])
            model.zero_grad()
    with torch.no_grad():
        outputs = [linear(poisoned)] + ([linear(torch.relu(linear(poisoned)))] if calls == 2 else [])
    exact = [sum(int(out.isnan().sum()) for out in outputs), sum(int(out.isinf().sum()) for out in outputs)]
    assert exact[0] >= 3 and exact[1] >= 3
    np.testing.assert_array_equal(counted[0], [0, 0])
    np.testing.assert_array_equal(counted[1], [0, 0])
    assert counted[2][0] >= 1 and (counted[2] <= exact).all() and (counted[2] < exact).any()  # from min and max
    np.testing.assert_array_equal(counted[3], exact)
    np.testing.assert_array_equal(counted[4], [0, 0])


def test_uncaptured_step_records_nothing() -> None:
    model = mlp()
    probe = Probe(model)
    with probe:
        probe.begin_step(False)
        model(torch.randn(3, 5)).sum().backward()
        probe.after_backward()
        assert probe.finish(1, torch.zeros(1, 2)) is None


def test_attention_and_feature_maps_follow_a_layer_of_their_kind_when_focus_is_elsewhere() -> None:
    torch.manual_seed(3)
    model = TinyTransformer()
    probe = Probe(model)
    probe.focus_layer = "head"
    with probe:
        for _ in range(2):  # the first step fixes the forward order
            probe.begin_step(True, tensors=True)
            model(torch.randint(0, 7, (2, 4))).sum().backward()
            probe.after_backward()
            capture = probe.finish(1, torch.zeros(1, 2)).get()
    views = capture.tensors
    assert views.layer == "head" and views.weight.shape == (7, 16)
    assert views.attention_layer == "attn" and views.attention.shape == (4, 4, 4)
    np.testing.assert_allclose(views.attention.sum(axis=-1), 1.0, rtol=1e-5)
    assert views.feature_maps is None and views.feature_layer is None


class DefinedBackwards(nn.Module):
    """Modules defined in a different order from the one forward calls them in."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 2)
        self.act = nn.Tanh()
        self.hidden = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.hidden(x)))


def test_first_capture_after_reordering_attributes_everything_to_the_right_layer() -> None:
    torch.manual_seed(4)
    model = DefinedBackwards()
    probe = Probe(model)
    probe.focus_layer = "hidden"
    x = torch.randn(9, 4)
    with probe:
        probe.begin_step(False)
        model(x)  # an uncaptured forward first: nothing fixes the order yet
        probe.begin_step(True, tensors=True)
        out = model(x)
        out.sum().backward()
        probe.after_backward()
        probe.before_update()
        probe.after_update()
        capture = probe.finish(1, torch.zeros(1, 2)).get()
    frame = capture.frame
    assert frame.layer_names == ("hidden", "act", "head")
    hidden = model.hidden(x).detach().numpy()
    row = frame.values[frame.layer_names.index("hidden")]
    np.testing.assert_allclose(row[STAT_INDEX["act_mean"]], hidden.mean(), rtol=1e-5)
    squares = (model.hidden.weight.detach() ** 2).sum() + (model.hidden.bias.detach() ** 2).sum()
    np.testing.assert_allclose(row[STAT_INDEX["weight_norm"]], np.sqrt(float(squares)), rtol=1e-5)
    assert capture.tensors.layer == "hidden" and capture.tensors.weight.shape == (6, 4)
    assert capture.tensors.activation.shape == (1, 6)
    np.testing.assert_allclose(capture.tensors.activation[0], hidden[0], rtol=1e-5)


@pytest.mark.parametrize("path", list(PATHS))
def test_focus_views_and_graph_units_equal_the_steps_tensors(path: str) -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(7, 5)
    probe = Probe(model, PATHS[path])
    probe.focus_layer = "0"
    probe.focus_example = 4
    outputs = {}

    def keep(index: int):
        def hook(_m, _a, out: torch.Tensor) -> None:
            out.retain_grad()
            outputs[index] = out
        return hook

    handles = [model[i].register_forward_hook(keep(i)) for i in range(3)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with probe:
        probe.begin_step(True, tensors=True)
        model(x).square().sum().backward()
        probe.after_backward()
        before = model[0].weight.detach().clone()
        head_before = model[2].weight.detach().clone()
        probe.before_update()
        optimizer.step()
        probe.after_update()
        capture = probe.finish(1, torch.zeros(1, 2)).get()
    for handle in handles:
        handle.remove()
    views = capture.tensors
    np.testing.assert_allclose(views.activation.reshape(-1), outputs[0][4].detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(views.output_grad.reshape(-1), outputs[0].grad[4].numpy(), rtol=1e-6)
    np.testing.assert_allclose(views.weight_update, (model[0].weight.detach() - before).numpy(), rtol=1e-5, atol=1e-8)
    assert np.abs(views.weight_update).max() > 0
    for i, name in enumerate(("0", "1", "2")):
        np.testing.assert_allclose(capture.unit_values[name], outputs[i][4].detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(capture.unit_grads[name], outputs[i].grad[4].numpy(), rtol=1e-6)
    # Weights are shown as backward left them, like their statistics: before the update.
    np.testing.assert_allclose(capture.graph_weights["2"].reshape(model[2].weight.shape), head_before.numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(views.weight, before.numpy(), rtol=1e-6)


def test_captures_alternating_with_and_without_views_parse_alike() -> None:
    """Each layout of pieces gets its own parse plan, kept and reused: the same state captured
    with and without views, in turn, gives the same figures every time."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(9, 5)
    probe = Probe(model)
    probe.focus_layer = "2"
    frames, views = [], []
    with probe:
        for tensors in (False, True, False, True, True, False):
            probe.begin_step(True, tensors=tensors)
            model.zero_grad()
            model(x).square().sum().backward()
            probe.after_backward()
            capture = probe.finish(len(frames) + 1, torch.zeros(1, 2)).get()
            frames.append(capture.frame.values)
            views.append(capture.tensors)
    assert len(probe._parse_plans) == 2
    for values in frames[1:]:
        np.testing.assert_array_equal(values, frames[0])
    assert [v is not None for v in views] == [False, True, False, True, True, False]
    np.testing.assert_allclose(views[1].weight, model[2].weight.detach().numpy())
    hidden = model[1](model[0](x))
    np.testing.assert_allclose(frames[0][1, STAT_INDEX["dead_fraction"]],
                               (hidden <= 0).all(dim=0).float().mean().item(), rtol=1e-6)


def one_captured_step(model: nn.Module, x: torch.Tensor, config: ProbeConfig, focus: str | None = None,
                      optimizer: torch.optim.Optimizer | None = None):
    """A captured step (with views) of a sum-of-outputs loss; the probe and its capture."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, config)
    probe.focus_layer = focus
    with probe:
        probe.begin_step(True, tensors=True)
        out = model(x)
        loss = out.float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        probe.after_backward()
        probe.before_update()
        optimizer.step()
        probe.after_update()
        capture = probe.finish(1, torch.zeros(1, 2)).get()
    return probe, capture


@pytest.mark.parametrize("path", ["numpy", "torch"])
def test_a_dead_conv1d_channel_counts_as_one_dead_unit(path: str) -> None:
    torch.manual_seed(0)
    model = Conv1dNet()
    _, capture = one_captured_step(model, torch.randn(10, 3, 6) * 2, PATHS[path])
    frame = capture.frame
    assert frame.stat("dead_fraction")[frame.layer_names.index("act")] == 0.25  # channel 0 of 4


@pytest.mark.parametrize("path", ["numpy", "torch"])
def test_a_model_that_is_one_layer_gets_its_focus_views(path: str) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    weight, bias = model.weight.detach().clone(), model.bias.detach().clone()
    x = torch.randn(5, 4)
    probe, capture = one_captured_step(model, x, PATHS[path], focus="<model>")
    assert [layer.name for layer in probe.layers] == ["<model>"]
    views = capture.tensors
    assert views.layer == "<model>"
    np.testing.assert_allclose(views.weight, weight.numpy(), rtol=1e-6)
    np.testing.assert_allclose(views.activation.reshape(-1), (x[0] @ weight.T + bias).numpy(), rtol=1e-5)
    # loss = mean(out^2): its gradient w.r.t. the first example's output is 2 out / out.numel()
    np.testing.assert_allclose(views.output_grad.reshape(-1), (2 * (x[0] @ weight.T + bias) / 15).numpy(),
                               rtol=1e-5)
    np.testing.assert_allclose(views.weight_update, (model.weight.detach() - weight).numpy(), rtol=1e-4,
                               atol=1e-7)


@pytest.mark.parametrize("path", ["numpy", "torch"])
def test_sparse_gradients_are_measured_as_their_dense_values(path: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 2))
    tokens = torch.tensor([[1, 2, 2], [7, 1, 0]])
    reference = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    reference.load_state_dict(model.state_dict())
    reference(tokens).float().pow(2).mean().backward()
    expected = reference[0].weight.grad.double()
    _, capture = one_captured_step(model, tokens, PATHS[path], focus="0")
    frame = capture.frame
    row = frame.values[frame.layer_names.index("0")]
    np.testing.assert_allclose(row[STAT_INDEX["grad_norm"]], float(expected.norm()), rtol=1e-5)
    np.testing.assert_allclose(row[STAT_INDEX["grad_mean"]], float(expected.mean()), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(capture.tensors.weight_grad, expected.float().numpy(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("path", ["numpy", "torch"])
@pytest.mark.parametrize("width", [32, 20_000])  # batched, and reduced in its hook
def test_float64_outputs_keep_their_precision(path: str, width: int) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, width).double()
    with torch.no_grad():
        model.weight.mul_(1e-3)
        model.bias.fill_(1e5)  # a mean that dwarfs the spread
    x = torch.randn(4, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x).numpy()
    _, capture = one_captured_step(model, x, PATHS[path])
    row = capture.frame.values[0]
    np.testing.assert_allclose(row[STAT_INDEX["act_std"]], expected.std(), rtol=1e-5)


def test_finite_outputs_whose_float32_squares_overflow_get_their_true_spread() -> None:
    torch.manual_seed(0)
    for width in (16, 20_000):  # batched, and reduced in its hook
        model = nn.Linear(3, width)
        with torch.no_grad():
            model.weight.normal_(0, 1e20)
        x = torch.randn(4, 3)
        with torch.no_grad():
            expected = model(x).double().numpy()
        _, capture = one_captured_step(model, x, PATHS["numpy"])
        row = capture.frame.values[0]
        assert np.isfinite(expected).all() and row[STAT_INDEX["inf_acts"]] == 0
        np.testing.assert_allclose(row[STAT_INDEX["act_std"]], expected.std(), rtol=1e-5)


def test_big_parameters_whose_float32_squares_overflow_get_their_true_norm() -> None:
    model = nn.Linear(300, 300)  # 90,300 values: reduced where they lie, not joined in float64
    with torch.no_grad():
        model.weight.fill_(1e18)
    expected = float(model.weight.detach().double().norm()) ** 2 + float(model.bias.detach().double().norm()) ** 2
    _, capture = one_captured_step(model, torch.zeros(2, 300), PATHS["numpy"])
    row = capture.frame.values[0]
    np.testing.assert_allclose(row[STAT_INDEX["weight_norm"]], np.sqrt(expected), rtol=1e-6)
    assert row[STAT_INDEX["inf_weights"]] == 0


def test_a_lazy_layer_is_listed_before_its_first_forward_and_measured_after() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    probe = Probe(model)
    first = probe.layers[0]
    assert first.params == 0 and first.weight_shape is None  # nothing to count yet
    _, capture = one_captured_step(model, torch.randn(6, 5), PATHS["numpy"])
    assert probe.layers[0].params == 24 and probe.layers[0].weight_shape == (4, 5)  # built by the forward
    assert np.isfinite(capture.frame.stat("weight_norm")[0])


class DictHead(nn.Module):
    """Owns its weight and returns a dict whose first value isn't the output."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"steps": torch.arange(3), "logits": x @ self.weight.T}


def test_a_module_returning_a_dict_is_measured_on_its_first_tensor_value() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(DictHead())
    x = torch.randn(5, 3)
    with torch.no_grad():
        expected = (x @ model[0].weight.T).numpy()
    probe = Probe(model)
    with probe:
        probe.begin_step(True)
        out = model(x)
        (out["logits"] ** 2).mean().backward()
        probe.after_backward()
        capture = probe.finish(1, torch.zeros(1, 2)).get()
    frame = capture.frame
    row = frame.values[frame.layer_names.index("0")]
    np.testing.assert_allclose(row[STAT_INDEX["act_mean"]], expected.mean(), rtol=1e-5)
    np.testing.assert_allclose(row[STAT_INDEX["grad_output_norm"]], np.linalg.norm(2 * expected / expected.size),
                               rtol=1e-5)
    assert first_tensor({"a": 1, "b": (torch.ones(2),)}).shape == (2,)
    assert first_tensor((torch.arange(2), [torch.zeros(3)])).shape == (3,)  # floating first
    assert first_tensor((torch.arange(2),)).dtype == torch.int64  # else any tensor


def test_a_phase_step_shows_the_gradients_of_a_module_never_called_as_one() -> None:
    """MultiheadAttention reads out_proj's weight without calling it: its gradients come with
    the attention module's backward phase, named from it."""
    from engine.batches import TensorBatches
    from engine.trainer import Trainer

    torch.manual_seed(0)
    model = TinyTransformer()
    tokens = torch.randint(0, 7, (6, 5))
    trainer = Trainer(model, loss_fn, TensorBatches(tokens, tokens))
    phases = []
    while not phases or phases[-1].kind != "update":
        phases.append(trainer.next_phase())
    attention = next(p for p in phases if p.kind == "backward" and p.module == "attn")
    assert {"grad:out_proj.weight", "grad:out_proj.bias", "grad:in_proj_weight"} <= set(attention.tensors)
    np.testing.assert_allclose(attention.tensors["grad:out_proj.weight"],
                               model.attn.out_proj.weight.grad.numpy(), rtol=1e-6)  # the step's own
    assert not any(p.module == "attn.out_proj" for p in phases)


def test_a_layer_is_trainable_unless_every_parameter_it_owns_is_frozen() -> None:
    """``LayerInfo.trainable`` is False exactly when all the layer's own parameters have
    requires_grad False; it follows a freeze made between steps."""
    torch.manual_seed(0)
    model = TinyTransformer()
    model.embed.requires_grad_(False)  # a "pretrained" embedding the user froze
    model.attn.in_proj_weight.requires_grad_(False)  # its own: in_proj_weight and in_proj_bias
    model.attn.in_proj_bias.requires_grad_(False)  # (its out_proj, a Linear of its own, still trains)
    model.ff[0].weight.requires_grad_(False)  # partly frozen: its bias still trains
    probe, _ = one_captured_step(model, torch.randint(0, 7, (5, 6)), ProbeConfig())
    modules = dict(model.named_modules())

    def expected(name: str) -> bool:
        owned = list(modules[name].parameters(recurse=False))
        return not owned or not all(not p.requires_grad for p in owned)

    layers = {info.name: info.trainable for info in probe.layers}
    assert layers == {name: expected(name) for name in layers}
    assert [name for name, trainable in layers.items() if not trainable] == ["embed", "attn"]
    assert layers["attn.out_proj"] and layers["ff.0"] and layers["ff.1"]  # (ff.1: GELU, owns nothing)
    model.head.requires_grad_(False)  # frozen between steps: the next listing says so
    assert not {info.name: info for info in probe.layers}["head"].trainable
