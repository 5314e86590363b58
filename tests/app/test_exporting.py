"""Run files open in the app whoever wrote them: the window itself, or `glassbox report --save`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from app.exporting import restore_run_factory, saved_view
from engine.report import main as report_main


def test_a_run_saved_by_the_report_opens_like_one_the_app_saved(tmp_path: Path) -> None:
    path = tmp_path / "xor.glassbox"
    assert report_main(["--scenario", "xor-mlp", "--steps", "6", "--save", str(path)]) == 0
    view = saved_view(str(path))
    snapshot = view.snapshot
    assert snapshot.step == 6 and snapshot.scenario == "xor-mlp"
    names = [layer.name for layer in snapshot.layers]
    assert names and all(layer.params > 0 for layer in snapshot.layers if layer.role == "param")
    # The first layer's weights are what the Weights view shows, with that layer selected.
    first = next(layer for layer in snapshot.layers if layer.weight_shape)
    assert view.selected_layer == first.name == snapshot.tensors.layer
    assert snapshot.tensors.weight.shape == first.weight_shape
    assert len(view.series["loss"].values) == 6 and np.isfinite(view.series["train_acc"].values).all()
    # Per-layer histograms, the network and one example's values: the file opened as "No network
    # to show yet" with empty histograms.
    stats = snapshot.stats
    assert stats.step == 6 and stats.layer_names == tuple(names) and len(view.frames) == 1
    np.testing.assert_allclose(stats.histograms.sum(axis=1), 1.0, rtol=1e-5)
    network = snapshot.network
    assert network.column_names == ("input", first.name, "head") and network.column_sizes == (2, 8, 2)
    np.testing.assert_array_equal(network.weights[0], snapshot.tensors.weight)  # (the same last weights)
    assert snapshot.tensors.activation.size == 8  # (one example of the 8 units)
    factory, current = restore_run_factory(str(path), "cpu")
    assert current == {"kind": "scenario", "name": "xor-mlp", "model": None}
    assert factory().name == "xor-mlp"


def test_a_user_model_run_saved_by_the_report_reopens_its_model(tmp_path: Path, monkeypatch) -> None:
    model = tmp_path / "mine.py"
    model.write_text("import torch\nfrom torch import nn\n\ndef build():\n"
                     "    return nn.Linear(3, 2), (torch.randn(16, 3), torch.randint(0, 2, (16,))), "
                     "nn.functional.cross_entropy\n")
    monkeypatch.chdir(tmp_path)  # a relative reference is stored as an absolute one
    path = tmp_path / "mine.glassbox"
    assert report_main(["--model", "mine.py:build", "--steps", "3", "--save", str(path)]) == 0
    monkeypatch.chdir(Path(__file__).parent)
    view = saved_view(str(path))
    assert [layer.name for layer in view.snapshot.layers] == ["<model>"]
    assert view.snapshot.tensors.weight.shape == (2, 3)
    factory, current = restore_run_factory(str(path), "cpu")
    assert current["kind"] == "user" and current["name"] == f"{model}:build"
    assert factory().trainer.model.weight.shape == (2, 3)


def test_csv_keeps_sparse_columns_and_whole_step_numbers(tmp_path: Path) -> None:
    import csv

    from app.exporting import save_history_csv
    from engine.history import History

    history = History(("loss", "val_loss", "never"))
    steps = np.arange(1_234_560, 1_234_560 + 30)
    rows = np.full((30, 3), np.nan)
    rows[:, 0] = np.linspace(1.0, 0.5, 30)
    rows[::10, 1] = [0.9, 0.8, 0.7]  # validation every 10 steps; the last step has none
    history.append_many(steps, rows)
    path = tmp_path / "series.csv"
    save_history_csv(history, str(path))
    table = list(csv.reader(path.open()))
    assert table[0] == ["step", "loss", "val_loss"]  # a column with no value at all is left out
    assert [int(r[0]) for r in table[1:]] == steps.tolist()  # whole numbers, not 1.23456e+06
    np.testing.assert_allclose([float(r[1]) for r in table[1:]], rows[:, 0], rtol=1e-6)
    assert [r[2] for r in table[1:]][:11] == ["0.9"] + [""] * 9 + ["0.8"]


def test_a_report_run_file_keeps_the_findings_and_the_boundary(tmp_path: Path) -> None:
    # Softmax outputs fed to cross_entropy: the report finds it before training. Opened in the
    # app, the file showed "No problems found so far" and no decision boundary for its 2-D data.
    import json

    import torch

    from engine.views import GRID

    model = tmp_path / "probs.py"
    model.write_text("import torch\nfrom torch import nn\n\ndef build():\n"
                     "    torch.manual_seed(0)\n    x = torch.randn(64, 2)\n    y = (x[:, 0] > 0).long()\n"
                     "    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Softmax(dim=1))\n"
                     "    return model, (x, y), nn.functional.cross_entropy\n")
    path, report = tmp_path / "probs.glassbox", tmp_path / "probs.json"
    assert report_main(["--model", f"{model}:build", "--steps", "4", "--save", str(path),
                        "--json", str(report)]) == 0
    found = json.loads(report.read_text())["diagnoses"]
    assert found and any(d["code"] == "probabilities_to_logit_loss" for d in found)
    snapshot = saved_view(str(path)).snapshot
    assert [(d.code, d.severity, d.layers, d.step, d.message, d.fixes) for d in snapshot.diagnoses] == \
        [(d["code"], d["severity"], tuple(d["layers"]), d["step"], d["message"], tuple(d["fixes"])) for d in found]
    assert snapshot.metrics.train_loss == json.loads(report.read_text())["loss"][-1]
    # The boundary: the saved weights' prediction over the grid, worked out here.
    boundary = snapshot.boundary
    assert boundary is not None and boundary.step == 4
    weight = torch.from_numpy(snapshot.tensors.weight).double()
    x0, x1, y0, y1 = boundary.extent
    gy, gx = torch.meshgrid(torch.linspace(y0, y1, GRID, dtype=torch.float64),
                            torch.linspace(x0, x1, GRID, dtype=torch.float64), indexing="ij")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    expected = torch.softmax(torch.softmax(grid @ weight.T, dim=1), dim=1)[:, 1].reshape(GRID, GRID)
    np.testing.assert_allclose(boundary.prediction, expected.numpy(), atol=1e-5)


def test_a_view_in_a_tab_behind_another_exports_as_it_shows_in_front(qtbot, tmp_path: Path) -> None:
    from PySide6 import QtGui

    from app.main_window import MainWindow

    window = MainWindow(remember_layout=False)  # the default layout: Health is a tab behind Loss
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    try:
        window.start_engine(scenario="xor-mlp", device="cpu", play=True)
        qtbot.waitUntil(lambda: window.bridge.latest is not None and window.bridge.latest.step >= 3, timeout=30000)
        window.pause()
        window.docks["loss"].raise_()
        qtbot.wait(100)
        health, loss = window.views["health"], window.views["loss"]
        assert health.visibleRegion().isEmpty() and not loss.visibleRegion().isEmpty()
        tab_size = loss.size()  # what a view of that tab measures in front
        image = QtGui.QImage(window.export_png("health", str(tmp_path / "health.png")))
        assert (image.width(), image.height()) == (tab_size.width(), tab_size.height())
        qtbot.wait(50)
        # The tab that was in front is in front again; a closed view exported stays closed.
        assert health.visibleRegion().isEmpty() and not loss.visibleRegion().isEmpty()
        window.docks["weights"].close()
        qtbot.wait(50)
        image = QtGui.QImage(window.export_png("weights", str(tmp_path / "weights.png")))
        assert image.width() > 100 and not window.docks["weights"].isVisible()
    finally:
        window.shutdown()


def test_a_partly_frozen_layer_reads_back_from_a_run_file_as_it_was_saved(tmp_path: Path) -> None:
    model = tmp_path / "bitfit.py"
    model.write_text("import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n"
                     "    x = torch.randn(64, 2)\n    y = (x[:, 0] > 0).long()\n"
                     "    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))\n"
                     "    model[0].weight.requires_grad_(False)\n    return model, (x, y), nn.CrossEntropyLoss()\n")
    path = tmp_path / "bitfit.glassbox"
    assert report_main(["--model", f"{model}:build", "--steps", "2", "--save", str(path)]) == 0
    layers = {info.name: info for info in saved_view(str(path)).snapshot.layers}
    assert layers["0"].frozen_params == ("weight",) and layers["2"].frozen_params == ()
    assert len({hash(info) for info in layers.values()}) == len(layers)  # (frozen values: tuples, not lists)


def test_a_report_run_file_shows_one_layer_in_every_view(tmp_path: Path) -> None:
    """The layer a report's file names for the Weights view is the one its saved views were
    measured for, also when the first weight layer (attention's in_proj_weight) has no ``weight``."""
    model = tmp_path / "attn.py"
    model.write_text("import torch\nfrom torch import nn\n\nclass M(nn.Module):\n"
                     "    def __init__(self):\n        super().__init__()\n"
                     "        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)\n"
                     "        self.head = nn.Linear(4, 2)\n"
                     "    def forward(self, x):\n        return self.head(self.attn(x, x, x)[0].mean(1))\n\n"
                     "def build():\n    torch.manual_seed(0)\n    x = torch.randn(32, 3, 4)\n"
                     "    return M(), (x, (x[:, 0, 0] > 0).long()), nn.functional.cross_entropy\n")
    path = tmp_path / "attn.glassbox"
    assert report_main(["--model", f"{model}:build", "--steps", "2", "--save", str(path)]) == 0
    view = saved_view(str(path))
    assert view.selected_layer == view.snapshot.tensors.layer == "attn"
    assert view.snapshot.tensors.weight.shape == (12, 4)  # (in_proj_weight: query, key and value rows)

