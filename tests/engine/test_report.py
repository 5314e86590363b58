"""`glassbox report` end to end: JSON against a direct computation, and every kind of bad input."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.report import main

GOOD = '''
import torch
from torch import nn

def build():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 2))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, generator=g)
    y = (x[:, 0] > 0).long()
    return model, (x, y), nn.functional.cross_entropy
'''


def write(tmp_path: Path, body: str, name: str = "user_model.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def direct(steps: int, lr: float) -> tuple[list[float], dict[str, list[float]], dict[str, list[float]]]:
    """The same training with a plain loop: full batch (32 < 64), SGD."""
    namespace: dict = {}
    exec(GOOD, namespace)
    model, (x, y), loss_fn = namespace["build"]()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, grad_norms, act_std = [], {}, {}
    outs = {}
    handles = [m.register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, o.detach()))
               for n, m in model.named_modules() if n]
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        losses.append(loss.item())
        for name, module in model.named_modules():
            if not name:
                continue
            params = list(module.parameters(recurse=False))
            if params:
                norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
                grad_norms.setdefault(name, []).append(norm)
            act_std.setdefault(name, []).append(outs[name].double().std(unbiased=False).item())
        opt.step()
    for h in handles:
        h.remove()
    return losses, grad_norms, act_std


def test_report_json_matches_direct_computation(tmp_path: Path, capsys) -> None:
    model_file = write(tmp_path, GOOD)
    out = tmp_path / "report.json"
    code = main(["--model", f"{model_file}:build", "--steps", "6", "--optimizer", "sgd", "--lr", "0.5",
                 "--device", "cpu", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "0.weight" not in printed and "Sigmoid" in printed
    report = json.loads(out.read_text())
    assert report["steps"] == 6 and report["device"] == "cpu" and len(report["loss"]) == 6
    losses, grad_norms, act_std = direct(6, 0.5)
    # The report shuffles the full batch each epoch: same sums in another order, so float32
    # rounding differs slightly.
    np.testing.assert_allclose(report["loss"], losses, rtol=1e-5)
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert list(layers) == ["0", "1", "2", "3", "4"]
    assert layers["0"]["params"] == 3 * 5 + 5 and layers["1"]["params"] == 0
    for name, expected in grad_norms.items():
        np.testing.assert_allclose(layers[name]["grad_norm"], expected, rtol=1e-5)
    for name, expected in act_std.items():
        np.testing.assert_allclose(layers[name]["act_std"], expected, rtol=1e-5)
    assert layers["1"]["grad_norm"] is None and layers["1"]["dead_fraction"] is not None
    assert layers["3"]["saturated_fraction"] is not None and layers["1"]["saturated_fraction"] is None
    assert layers["0"]["dead_fraction"] is None
    assert report["diagnoses"] == []


def test_report_every_k_leaves_gaps_and_keeps_every_loss(tmp_path: Path) -> None:
    model_file = write(tmp_path, GOOD)
    out = tmp_path / "r.json"
    assert main(["--model", f"{model_file}:build", "--steps", "6", "--every", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert all(v is not None for v in report["loss"])
    grad = report["layers"][0]["grad_norm"]
    assert [v is not None for v in grad] == [False, False, True, False, False, True]


BAD_CASES = {
    "missing file": (None, "no_such_file.py:build", "no_such_file.py"),
    "syntax error": ("def build(:\n    pass\n", "{f}:build", "syntax"),
    "missing function": ("def other():\n    return 1\n", "{f}:build", "build"),
    "wrong return form": ("def build():\n    return 1, 2\n", "{f}:build", "expected"),
    "shape mismatch": ('''
import torch
from torch import nn
def build():
    return nn.Linear(4, 2), (torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), nn.functional.cross_entropy
''', "{f}:build", "shape"),
    "non-scalar loss": ('''
import torch
from torch import nn
def build():
    return nn.Linear(3, 2), (torch.randn(8, 3), torch.randn(8, 2)), lambda o, t: (o - t) ** 2
''', "{f}:build", "scalar"),
    "raises in forward": ('''
import torch
from torch import nn
class Net(nn.Linear):
    def forward(self, x):
        raise ValueError("my forward is broken")
def build():
    return Net(3, 2), (torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), nn.functional.cross_entropy
''', "{f}:build", "my forward is broken"),
    "nan in data": ('''
import torch
from torch import nn
def build():
    x = torch.randn(8, 3)
    x[2, 1] = float("nan")
    return nn.Linear(3, 2), (x, torch.zeros(8, dtype=torch.long)), nn.functional.cross_entropy
''', "{f}:build", "NaN"),
    "own BaseException in forward": ('''
import torch
from torch import nn
class Stop(BaseException):
    pass
class Net(nn.Linear):
    def forward(self, x):
        raise Stop("my own kind of stop")
def build():
    return Net(3, 2), (torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), nn.functional.cross_entropy
''', "{f}:build", "my own kind of stop"),
    "own BaseException in build": ('''
class Stop(BaseException):
    pass
def build():
    raise Stop("no model today")
''', "{f}:build", "no model today"),
    "no parameters": ('''
import torch
from torch import nn
def build():
    return nn.ReLU(), (torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), nn.functional.cross_entropy
''', "{f}:build", "a model with no parameters: there is nothing to train"),
    "every parameter frozen": ('''
import torch
from torch import nn
def build():
    model = nn.Linear(3, 2).requires_grad_(False)
    return model, (torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), nn.functional.cross_entropy
''', "{f}:build", "every parameter frozen"),
}

# Faults of a user's data loader or model that the first-batch check can't see: named with the
# step (and the batch) where they happened.
LATER_FAULTS = {
    "loader raises at batch 4": ('''
class Loader:
    def __iter__(self):
        for i in range(6):
            if i == 3:
                raise OSError("disk read failed")
            yield torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
def build():
    return nn.Linear(3, 2), Loader(), nn.functional.cross_entropy
''', "OSError during data loading at step 4: disk read failed"),
    "a batch of three": ('''
class Loader:
    def __iter__(self):
        for i in range(6):
            extra = (torch.zeros(4),) if i == 2 else ()
            yield (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)) + extra
def build():
    return nn.Linear(3, 2), Loader(), nn.functional.cross_entropy
''', "at step 3: batch 3 of the data loader is a tuple of 3 items; expected (x, y)"),
    "a batch of a dict": ('''
class Loader:
    def __iter__(self):
        for i in range(6):
            yield {"x": torch.randn(4, 3)} if i == 2 else (torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
def build():
    return nn.Linear(3, 2), Loader(), nn.functional.cross_entropy
''', "at step 3: batch 3 of the data loader is a dict; expected (x, y)"),
    "the CPU runs out of memory": ('''
class Net(nn.Linear):
    calls = 0
    def forward(self, x):
        Net.calls += 1
        if Net.calls > 3:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
        return super().forward(x)
def build():
    return Net(3, 2), (torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), nn.functional.cross_entropy
''', "out of memory during forward in Net at step 3: try a smaller batch size or model"),
}


@pytest.mark.parametrize("case", list(LATER_FAULTS))
def test_a_later_fault_names_its_step(case: str, tmp_path: Path, capsys) -> None:
    body, needle = LATER_FAULTS[case]
    path = write(tmp_path, "import torch\nfrom torch import nn\n" + body)
    assert main(["--model", f"{path}:build", "--steps", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert needle in err, err


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_gives_one_line_and_exit_2(case: str, tmp_path: Path, capsys) -> None:
    body, ref, needle = BAD_CASES[case]
    path = write(tmp_path, body) if body is not None else tmp_path / "no_such_file.py"
    out = tmp_path / "keep.json"
    out.write_text('{"earlier": true}')
    code = main(["--model", ref.format(f=path), "--steps", "3", "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("glassbox report: error: ")
    assert needle.lower() in lines[0].lower()
    assert "Traceback" not in err
    assert out.read_text() == '{"earlier": true}'  # what was written before stays intact


def test_report_subprocess_imports_no_qt_and_fails_cleanly(tmp_path: Path) -> None:
    code = ("import sys\nfrom app.main import main\nrc = main(['report', '--steps', '3', '--every', '1'])\n"
            "assert rc == 0, rc\nleaked = [m for m in ('PySide6', 'pyqtgraph', 'widgets') if m in sys.modules]\n"
            "assert not leaked, leaked\nprint('clean')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("clean")
    bad = subprocess.run([sys.executable, "-m", "app", "report", "--model", str(tmp_path / "nope.py:f")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_report_help_documents_every_flag() -> None:
    done = subprocess.run([sys.executable, "-m", "app", "report", "--help"], capture_output=True, text=True,
                          timeout=60)
    for flag in ("--scenario", "--model", "--steps", "--device", "--optimizer", "--lr", "--batch-size",
                 "--every", "--json", "--save"):
        assert flag in done.stdout


def test_report_save_writes_a_loadable_run_file(tmp_path: Path) -> None:
    from engine.runfile import load_run

    path = tmp_path / "run.glassbox"
    assert main(["--scenario", "xor-mlp", "--steps", "5", "--save", str(path)]) == 0
    loaded = load_run(path)
    assert loaded.config["scenario"] == "xor-mlp"
    assert len(loaded.history.series("loss").values) == 5


@pytest.mark.parametrize("flags, needle", [
    (["--lr", "0"], "--lr must be a positive number"), (["--lr", "nan"], "--lr must be a positive number"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--json", "no/such/folder/r.json"], "--json no/such/folder/r.json: no folder"),
    (["--save", "."], "--save .: is a folder"),
    (["--json", "r.out", "--save", "./r.out"], "--json and --save name the same file ./r.out"),
])
def test_bad_flags_and_destinations_are_refused_before_training(flags: list[str], needle: str, capsys,
                                                                monkeypatch, tmp_path: Path) -> None:
    import engine.report

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(engine.report, "collect_report", lambda *a, **k: pytest.fail("trained anyway"))
    assert main(["--scenario", "xor-mlp", "--steps", "3", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_a_failed_save_leaves_an_earlier_json_report_as_it_was(tmp_path: Path, monkeypatch, capsys) -> None:
    import engine.runfile

    out = tmp_path / "keep.json"
    out.write_text('{"earlier": true}')

    def full_disk(*args, **kwargs):
        raise OSError(28, "cannot write run.glassbox: No space left on device")

    monkeypatch.setattr(engine.runfile, "save_run", full_disk)
    code = main(["--scenario", "xor-mlp", "--steps", "2", "--json", str(out), "--save", str(tmp_path / "r.glassbox")])
    assert code == 2 and "No space left" in capsys.readouterr().err
    assert out.read_text() == '{"earlier": true}'


def test_sys_exit_in_a_training_forward_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, '''
import sys
import torch
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
    def forward(self, x):
        if self.training:
            sys.exit(0)
        return self.fc(x)
def build():
    return Net(), (torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), nn.functional.cross_entropy
''')
    assert main(["--model", f"{path}:build", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SystemExit during forward" in err


def test_a_wrong_flag_is_one_line_and_exit_2() -> None:
    done = subprocess.run([sys.executable, "-m", "app", "report", "--steps", "abc"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "glassbox report: error: argument --steps: invalid int value: 'abc' (see --help)"]


def test_the_model_file_is_never_an_output(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, "def build():\n    pass\n")
    before = path.read_text()
    assert main(["--model", f"{path}:build", "--json", str(path)]) == 2
    assert "--json and --model name the same file" in capsys.readouterr().err
    assert path.read_text() == before


def test_debug_shows_the_traceback_and_still_exits_2(capsys) -> None:
    assert main(["--scenario", "xor-mlp", "--steps", "0", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == \
        "glassbox report: error: --steps must be at least 1, got 0"


def test_the_table_says_when_the_loss_and_gradients_stopped_being_finite() -> None:
    from engine.report import format_table

    layer = {"name": "fc", "type": "Linear", "params": 8, "grad_norm": [1.5, 2.0, None, None],
             "weight_norm": [1.0] * 4, "act_mean": [0.0] * 4, "act_std": [0.5, 0.5, 0.5, 0.25],
             "dead_fraction": None, "saturated_fraction": None}
    relu = {**layer, "name": "act", "type": "ReLU", "params": 0, "grad_norm": [None] * 4,
            "dead_fraction": [0.0, 0.5, None, None]}
    text = format_table({"steps": 4, "device": "cpu", "loss": [0.75, 0.5, None, None],
                         "layers": [layer, relu], "diagnoses": []})
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith(("fc ", "act "))}
    assert rows["fc"][3:6] == ["1.5", "nan/inf", "0.25"]  # |g| first, |g| last, act std
    assert rows["act"][3:6] == ["—", "—", "0.25"] and rows["act"][6] == "nan/inf"  # no gradients; dead % lost
    assert "loss: first 0.75, last nan/inf over 4 steps on cpu (not finite from step 3)" in text


def test_warnings_are_diagnoses_before_training_and_one_line_once_after(tmp_path: Path, capsys) -> None:
    # MSELoss warns of a broadcast target at every step, from the check of the first batch on; the
    # model's own warning starts at its third training step (counted in training mode).
    path = write(tmp_path, '''
import warnings
import torch
from torch import nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1)
        self.calls = 0
    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls >= 3:
                warnings.warn("the model warns\\n  over two lines")
        return self.fc(x)
def build():
    return Net(), (torch.randn(16, 3), torch.zeros(16)), nn.MSELoss()
''')
    out = tmp_path / "report.json"
    assert main(["--model", f"{path}:build", "--steps", "5", "--json", str(out)]) == 0
    with pytest.warns(UserWarning) as torch_warning:  # what torch says of this broadcast, word for word
        nn_loss = torch.nn.MSELoss()
        nn_loss(torch.zeros(16, 1), torch.zeros(16))
    broadcast = " ".join(str(torch_warning[0].message).split())
    printed = capsys.readouterr()
    # The broadcast, raised on the first batch, is a diagnosis (with its fix), not printed again
    # as torch repeats it; the model's own warning comes later, in training, and is printed once.
    assert printed.err.splitlines() == ["glassbox report: warning (at step 3): the model warns over two lines"]
    assert f"[warning] model_warning before training: PyTorch warned while running your model on its first " \
           f"batch: {broadcast}" in [line.strip() for line in printed.out.splitlines()]
    (found,) = json.loads(out.read_text())["diagnoses"]
    assert (found["code"], found["severity"], found["step"], found["layers"]) == ("model_warning", "warning", 0, [])
    assert "(N, 1) output against (N,) targets is broadcast to (N, N)" in found["fixes"][1]


def test_a_frozen_layer_is_said_frozen_in_the_table_and_the_json(tmp_path: Path, capsys) -> None:
    frozen = GOOD.replace("    return model,", "    model[2].requires_grad_(False)\n"
                                              "    model[0].weight.requires_grad_(False)\n    return model,")
    model_file = write(tmp_path, frozen)
    out = tmp_path / "report.json"
    assert main(["--model", f"{model_file}:build", "--steps", "3", "--device", "cpu", "--json", str(out)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:] if line.strip()}
    assert rows["2"][3:5] == ["frozen", "frozen"] and rows["0"][3] != "frozen"
    layers = {layer["name"]: layer for layer in json.loads(out.read_text())["layers"]}
    assert {name: layer["trainable"] for name, layer in layers.items()} == {
        "0": True, "1": True, "2": False, "3": True, "4": True}
    assert {name: layer["frozen_params"] for name, layer in layers.items()} == {
        "0": ["weight"], "1": [], "2": [], "3": [], "4": []}  # (0 trains its bias: partly frozen)
    assert all(v is None for v in layers["2"]["grad_norm"])  # (the probe measures none)


def test_findings_before_training_are_printed_and_in_the_json(tmp_path: Path, capsys) -> None:
    """A softmax fed to cross-entropy, on 0-255 pixel values: both named before training."""
    path = write(tmp_path, '''
import torch
from torch import nn

def build():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 6, generator=g) * 255
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1))
    return model, (x, torch.randint(0, 3, (64,), generator=g)), nn.CrossEntropyLoss()
''')
    out = tmp_path / "report.json"
    assert main(["--model", f"{path}:build", "--steps", "3", "--device", "cpu", "--json", str(out)]) == 0
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()]
    for code, words in (("probabilities_to_logit_loss", "nn.CrossEntropyLoss applies a softmax of its own"),
                        ("input_scale", "has a standard deviation of")):
        line = next(line for line in printed if line.startswith(f"[warning] {code} before training: "))
        assert words in line
    found = {d["code"]: d for d in json.loads(out.read_text())["diagnoses"]}
    assert set(found) == {"probabilities_to_logit_loss", "input_scale"}
    assert all(d["step"] == 0 and d["severity"] == "warning" and d["fixes"] for d in found.values())
    assert found["input_scale"]["evidence"]["std"] > 50
