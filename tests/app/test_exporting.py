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
